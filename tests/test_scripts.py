"""The table scripts' shared settings (scripts/_countdown.sh) reach `ft ablate` as documented:
a stub `ft` on PATH records the command line instead of training."""

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _calls(tmp_path, script="table3.sh", argv=(), **env) -> list[list[str]]:
    """The argument lists of every `ft` call the script makes when run with `argv` (a stub `ft`
    records them)."""
    stub = tmp_path / "bin" / "ft"
    stub.parent.mkdir(exist_ok=True)
    log = tmp_path / "argv.txt"
    log.unlink(missing_ok=True)
    stub.write_text(f'#!/bin/sh\n{{ for a in "$@"; do printf "%s\\n" "$a"; done; echo "--end--"; }} >> {shlex.quote(str(log))}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    keep = {k: v for k, v in os.environ.items()
            if k not in ("PRESET", "PROMPTS", "GROUP", "STEPS", "RULES", "GAMMAS", "MASSES", "RANGES", "PARTS", "WEIGHTINGS")}
    subprocess.run(["bash", str(REPO / "scripts" / script), *argv], check=True, cwd=tmp_path,
                   env={**keep, **env, "PATH": f"{stub.parent}{os.pathsep}{keep['PATH']}"})
    calls, cur = [], []
    for line in log.read_text().splitlines():
        if line == "--end--":
            calls.append(cur)
            cur = []
        else:
            cur.append(line)
    return calls


def _argv(tmp_path, **env) -> list[str]:
    (argv,) = _calls(tmp_path, **env)
    return argv


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


def test_table7_runs_the_papers_gammas_and_weightings(tmp_path):
    gamma, weighting = _calls(tmp_path, "table7.sh")
    assert gamma[:2] == ["ablate", "gamma"] and _opt(gamma, "--gammas") == "0.5,1.2,1.5,1.8,2.0,3.0"
    assert weighting[:2] == ["ablate", "weighting"]
    assert _opt(weighting, "--weightings") == "binary,raw,tanh,sigmoid,mad,log1p,mass"
    assert _opt(weighting, "--masses") == "0.2,0.4,0.6,0.8"


def test_table4_runs_the_papers_rows(tmp_path):
    (argv,) = _calls(tmp_path, "table4.sh")
    assert argv[:2] == ["ablate", "credit"] and _opt(argv, "--rules") == "none,random,entropy,attention,flow"
    assert _opt(argv, "--eval-suite") == "paper-llama"


def test_table3_runs_every_paper_rule(tmp_path):
    (argv,) = _calls(tmp_path, "table3.sh")
    assert _opt(argv, "--rules") == "none,random,entropy,gradient,correlation,attention,flow"


def test_fig6_runs_the_papers_layer_ranges(tmp_path):
    (argv,) = _calls(tmp_path, "fig6.sh")
    assert argv[:2] == ["ablate", "layers"] and _opt(argv, "--range") == "paper-early,paper-mid,paper-late"
    assert not (tmp_path / "runs/ablate/fig6/runs/layers-mid").exists()  # mid is not one of them
    (t3 := tmp_path / "runs/ablate/table3/runs/credit-flow").mkdir(parents=True)
    (argv,) = _calls(tmp_path, "fig6.sh", RANGES="mid,paper-mid")
    assert _opt(argv, "--range") == "mid,paper-mid"
    assert (tmp_path / "runs/ablate/fig6/runs/layers-mid").resolve() == t3.resolve()  # shared with Table 3
