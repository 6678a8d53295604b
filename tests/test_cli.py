"""The `ft` app: help for every command, one-line errors, FT_DEBUG tracebacks."""

import pytest
from typer.testing import CliRunner

from ftcli.cli import app

runner = CliRunner()


def _commands():
    import typer.main

    root = typer.main.get_command(app)
    out = []
    for name, cmd in root.commands.items():
        out.append([name])
        for sub in getattr(cmd, "commands", {}) or {}:
            out.append([name, sub])
    return out


def test_root_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "score" in res.output


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: " ".join(a))
def test_every_command_has_help(argv):
    res = runner.invoke(app, argv + ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_errors_are_one_line_and_debug_shows_traceback(monkeypatch):
    argv = ["score", "--model", "tiny-qwen3", "--prompt", "x", "--response", "y", "--layers", "zz"]
    res = runner.invoke(app, argv)
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:")
    monkeypatch.setenv("FT_DEBUG", "1")
    res = runner.invoke(app, argv)
    assert res.exit_code == 1 and isinstance(res.exception, ValueError)
