"""One option pipeline: dataclass fields declared with `ftcli.options.option` become Typer options
through `ftcli.commands.options.dataclass_params`; `check_limits` enforces ranges and choices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftcli.commands.options import build, command, dataclass_params
from ftcli.options import check_limits, option


@dataclass
class _Opts:
    mode: str = option("fast", "How to run.", choices=("fast", "slow"))
    n: int = option(2, "How many.", min=1)
    ratio: float = option(0.5, "A fraction.", gt=0, max=1)
    widths: tuple[int, ...] = option((8, 16), "Comma list.")
    temps: tuple[float, ...] = option((0.0, 0.5), "Comma list.")
    set_: list[str] | None = option(None, "KEY=VALUE.")
    check: bool = option(True, "A toggle.")
    quiet: bool = option(False, "A plain flag.", flags=("-q",), toggle=False)
    name: str | None = option(None, "Not an option.", cli=False)


def test_check_limits_enforces_choices_in_one_line():
    check_limits(_Opts())
    check_limits(_Opts(mode="slow"))
    with pytest.raises(ValueError, match=r"^--mode must be one of fast, slow \(got 'medium'\)$"):
        check_limits(_Opts(mode="medium"))
    with pytest.raises(ValueError, match=r"^--n must be >= 1 \(got 0\)$"):
        check_limits(_Opts(n=0))
    with pytest.raises(ValueError, match=r"^--ratio must be > 0 and <= 1, finite \(got nan\)$"):
        check_limits(_Opts(ratio=float("nan")))


def test_generator_flags_defaults_and_help():
    params = {p.name: p for p in dataclass_params(_Opts)}
    assert "name" not in params  # cli=False
    opt = {k: p.default for k, p in params.items()}
    assert opt["mode"].param_decls == ("--mode",) and opt["mode"].help == "How to run. One of: fast, slow."
    assert opt["n"].default == 2 and opt["n"].min == 1
    assert opt["widths"].default == "8,16" and opt["temps"].default == "0,0.5"  # comma lists
    assert opt["set_"].param_decls == ("--set",)  # a trailing underscore is dropped
    assert opt["check"].param_decls == ("--check/--no-check",)
    assert opt["quiet"].param_decls == ("--quiet", "-q")
    unset = {p.name: p.default for p in dataclass_params(_Opts, only=("n", "mode"), unset=True, note=lambda f: " (!)")}
    assert list(unset) == ["mode", "n"]
    assert unset["n"].default is None and unset["n"].min is None and unset["n"].help == "How many. (!)"


def test_generated_command_parses_builds_and_checks(tmp_path: Path):
    import typer

    seen = {}
    app = typer.Typer()
    app.command()(command(dataclass_params(_Opts), lambda kw: seen.update(opts=build(_Opts, kw))))
    app.command("other")(lambda: None)  # two commands: typer keeps the sub-command name
    res = CliRunner().invoke(app, ["cmd", "--widths", "4,5", "-q", "--no-check", "--set", "a=1"])
    assert res.exit_code == 0, res.output
    o = seen["opts"]
    assert (o.widths, o.quiet, o.check, o.set_, o.mode) == ((4, 5), True, False, ["a=1"], "fast")
    res = CliRunner().invoke(app, ["cmd", "--mode", "medium"])
    assert res.exit_code != 0 and "--mode must be one of fast, slow" in str(res.exception)


def test_ft_sft_rejects_an_unknown_choice_in_one_line(tmp_path: Path):
    from ftcli.cli import app

    res = CliRunner().invoke(app, ["sft", "--out", str(tmp_path / "p"), "--size", "huge"])
    assert res.exit_code == 1
    assert "Error: --size must be one of micro, tiny, small, base (got 'huge')" in res.output
    assert not (tmp_path / "p").exists()
