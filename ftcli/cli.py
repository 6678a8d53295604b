"""The `ft` command: a Typer app with one module per command group (ftcli/commands/*).

Errors print as one line (`Error: ...`) and exit 1; set FT_DEBUG=1 for the full traceback.
"""

from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperGroup

from ftcli.config import debug

# One module per command group; each defines `register(app)`.
COMMAND_MODULES = ("score", "data", "train", "eval", "ablate", "sft")


# Exceptions that click/typer format themselves (usage errors name the option). Typer >= 0.24
# vendors its own click, whose exception classes differ from the `click` package's: take the
# base class from typer's own BadParameter so both layouts pass through.
_CLICK_HANDLED = (
    click.exceptions.Exit, click.exceptions.Abort, click.ClickException, typer.Exit, typer.Abort,
    next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)


class _FriendlyGroup(TyperGroup):
    """Root group: turns any uncaught exception into a one-line error (unless FT_DEBUG)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _CLICK_HANDLED:
            raise
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - the CLI boundary
            if debug():
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            typer.echo(f"Error: {msg}  (FT_DEBUG=1 for the traceback)", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_FriendlyGroup,
    name="ft",
    help="FlowTracer experiment suite: answer-targeted token credit for GRPO.\n\n"
    "Examples:\n\n"
    "  ft score --prompt 'What is 2+3?' --response 'The sum is \\boxed{5}.'\n\n"
    "  ft train --task countdown --credit flow\n\n"
    "  ft eval aime24 --ckpt runs/x",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

for _name in COMMAND_MODULES:
    importlib.import_module(f"ftcli.commands.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
