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


# the generator itself is the one place that calls typer.Option / typer.Argument
HAND_WRITTEN_ALLOWED = {"options.py": "the generator (`dataclass_params`)"}


def test_no_command_declares_typer_options_by_hand():
    import re

    import ftcli.commands

    found = []
    for path in sorted(Path(ftcli.commands.__file__).parent.glob("*.py")):
        if path.name in HAND_WRITTEN_ALLOWED:
            continue
        text = path.read_text(encoding="utf-8")
        found += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"typer\.(Option|Argument)\(", text)]
    assert not found, f"declare these as dataclass fields with ftcli.options.option(...): {found}"


@dataclass
class _Args:
    name: str = option(..., "A required argument.", argument=True)
    extra: list[str] | None = option(None, "More arguments.", argument=True)
    level: str = option("low", "Upper-cased by a callback.", callback=lambda v: v.upper())
    top: int = option(8, "Checked after parsing.", min=0, cli_range=False)


def test_generator_arguments_callbacks_and_check_only_limits():
    import typer

    seen = {}
    app = typer.Typer()
    app.command()(command(dataclass_params(_Args), lambda kw: seen.update(opts=build(_Args, kw))))
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["cmd", "x", "y", "z", "--level", "high"])
    assert res.exit_code == 0, res.output
    assert (seen["opts"].name, seen["opts"].extra, seen["opts"].level) == ("x", ["y", "z"], "HIGH")
    res = CliRunner().invoke(app, ["cmd"])
    assert res.exit_code == 2  # NAME is required
    res = CliRunner().invoke(app, ["cmd", "x", "--top", "-1"])  # the parser leaves the range to check_limits
    assert res.exit_code == 1 and str(res.exception) == "--top must be >= 0 (got -1)"


def test_parse_field_reads_by_type_and_checks_limits():
    from ftcli.commands.options import parse_field

    assert parse_field(_Opts, "n", " 3") == 3 and parse_field(_Opts, "ratio", "0.25") == 0.25
    assert parse_field(_Opts, "check", "off") is False and parse_field(_Opts, "widths", "1,2") == (1, 2)
    assert parse_field(_Opts, "mode", "slow") == "slow"
    with pytest.raises(ValueError, match=r"^--mode must be one of fast, slow"):
        parse_field(_Opts, "mode", "medium")
    with pytest.raises(ValueError, match=r"^--n must be >= 1 \(got 0\)$"):
        parse_field(_Opts, "n", "0")
    with pytest.raises(ValueError, match=r"^--n: 'x' is not a valid integer"):
        parse_field(_Opts, "n", "x")
