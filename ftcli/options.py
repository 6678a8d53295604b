"""Options as dataclass fields: one source for names, defaults, help, CLI panels and limits.

`TrainConfig` (`ft train`) and the experiment configs (`ft ablate`) declare their fields with
`option(...)`; `ftcli.commands.options` turns them into Typer options, so a default or help
text is written once.
"""

from __future__ import annotations

from dataclasses import field


def option(default, help: str, panel: str | None = None, cli: bool = True, choices=None, *,
           flags: tuple[str, ...] = (), min=None, max=None, default_factory=None):
    """A dataclass field with CLI metadata: `help`, `panel` (rich help panel), `cli` (False:
    not an option), `choices`, extra `flags` (e.g. ("-m",)) and numeric `min` / `max`."""
    meta = {"help": help, "panel": panel, "cli": cli, "choices": choices, "flags": flags, "min": min, "max": max}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)
