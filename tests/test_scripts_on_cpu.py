"""The table scripts' shared settings (scripts/_countdown.sh) reach `ft ablate` as documented:
a stub `ft` on PATH records the command line instead of training."""

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _argv(tmp_path, **env) -> list[str]:
    stub = tmp_path / "bin" / "ft"
    stub.parent.mkdir(exist_ok=True)
    log = tmp_path / "argv.txt"
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {shlex.quote(str(log))}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    keep = {k: v for k, v in os.environ.items() if k not in ("PRESET", "PROMPTS", "GROUP", "STEPS")}
    subprocess.run(["bash", str(REPO / "scripts" / "table3.sh")], check=True, cwd=tmp_path,
                   env={**keep, **env, "PATH": f"{stub.parent}{os.pathsep}{keep['PATH']}"})
    return log.read_text().splitlines()


def _opt(argv: list[str], flag: str):
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.mark.parametrize(("env", "prompts", "group"), [
    ({}, "8", "16"),                                   # the cpu preset: the regime of issue 15
    ({"GROUP": "8"}, "8", "8"),                        # the earlier default (RESULTS.md's tables)
    ({"PRESET": "paper"}, None, None),                 # the paper's own 64 x 8
    ({"PRESET": "paper", "PROMPTS": "32"}, "32", None),
])
def test_countdown_sweep_batch_defaults(tmp_path, env, prompts, group):
    argv = _argv(tmp_path, **env)
    assert argv[:2] == ["ablate", "credit"]
    assert _opt(argv, "--prompts") == prompts and _opt(argv, "--group-size") == group
    assert _opt(argv, "--steps") == "80" and _opt(argv, "--preset") == env.get("PRESET", "cpu")
    assert "save_every=20" in argv  # a stopped sweep resumes its runs from a checkpoint
