"""Statistics behind the result tables: standard errors, paired differences, detectable effects."""

import importlib.util
import math
from pathlib import Path

import pytest

from ftcli.experiments.stats import minimal_detectable_difference, paired_difference, t_quantile
from ftcli.experiments.sweep import paired_vs_baseline
from ftcli.metrics import metric_stderr

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("p", "df", "want"), [
    (0.975, 1, 12.7062), (0.975, 4, 2.7764), (0.975, 30, 2.0423), (0.8, 4, 0.9410), (0.025, 4, -2.7764),
])
def test_t_quantile_matches_tables(p, df, want):
    assert t_quantile(p, df) == pytest.approx(want, abs=1e-4)


def test_paired_difference_is_a_t_interval_over_seeds():
    d = paired_difference([0.30, 0.32, 0.35], [0.28, 0.31, 0.31])  # differences .02 .01 .04
    assert d["n"] == 3 and d["mean"] == pytest.approx(7 / 300)
    sd = math.sqrt(((0.02 - 7 / 300) ** 2 + (0.01 - 7 / 300) ** 2 + (0.04 - 7 / 300) ** 2) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    assert d["std"] == pytest.approx(sd)
    assert d["ci"] == pytest.approx([7 / 300 - half, 7 / 300 + half], rel=1e-5)
    assert paired_difference([0.3], [0.2])["ci"] is None


def test_minimal_detectable_difference_shrinks_with_seeds():
    m3, m5, m10 = (minimal_detectable_difference(0.01, n) for n in (3, 5, 10))
    assert m3 > m5 > m10 > 0
    assert m5 == pytest.approx((2.776445 + 0.940965) * 0.01 / math.sqrt(5), rel=1e-5)
    assert minimal_detectable_difference(0.01, 1) is None


def test_metric_stderr_is_over_problems_not_samples():
    # 4 problems x 2 samples: per-problem avg@2 values 1, 1, 0, 0 -> sd 0.57735, SE 0.288675
    correct = [[True, True], [True, True], [False, False], [False, False]]
    assert metric_stderr("avg@2", correct) == pytest.approx(math.sqrt(1 / 3) / 2)
    # same 50% accuracy, but every problem half right: no spread between problems
    assert metric_stderr("avg@2", [[True, False]] * 4) == pytest.approx(0.0)
    assert metric_stderr("avg@1", [[True]]) is None


def _variant(key, accs, baseline=False):
    return {"key": key, "label": key, "baseline": baseline,
            "seeds": [{"seed": s, "avg": a, "stderr": {"countdown": 0.01}} for s, a in accs.items()]}


def test_paired_vs_baseline_pairs_by_seed_and_reports_mdd():
    base = _variant("none", {0: 0.20, 1: 0.22, 2: 0.21}, baseline=True)
    flow = _variant("flow", {2: 0.24, 0: 0.22, 1: 0.25, 7: 0.9})  # seed 7 has no partner
    d = paired_vs_baseline(flow, base)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx((0.02 + 0.03 + 0.03) / 3)
    assert d["mdd"] == pytest.approx(minimal_detectable_difference(d["std"], 3))
    assert paired_vs_baseline(base, base) is None


def test_results_md_prints_interval_and_detectable_difference():
    spec = importlib.util.spec_from_file_location("results_md", REPO / "scripts" / "results_md.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base = _variant("none", {0: 0.20, 1: 0.22, 2: 0.21}, baseline=True)
    flow = _variant("flow", {0: 0.22, 1: 0.25, 2: 0.24})
    for v in (base, flow):
        v.update(avg={"mean": sum(r["avg"] for r in v["seeds"]) / 3, "std": 0.01},
                 train={"reward_last": 0.3, "time_step": 5.0})
    flow["paired_vs_baseline"] = paired_vs_baseline(flow, base)
    res = {"experiment": "table3", "settings": {"model": "m", "task": "countdown", "steps": 4, "seeds": [0, 1, 2],
                                                  "eval_limit": 1024},
           "benchmarks": {"countdown": {"metric": "avg@1"}}, "variants": [base, flow]}
    md = mod.sweep_md(res, {})
    lo, hi = flow["paired_vs_baseline"]["ci"]
    assert f"+2.7 [{100 * lo:+.1f}, {100 * hi:+.1f}]" in md
    assert "minimal detectable paired difference" in md and "3 seeds" in md
    assert "standard error per run" in md and "1.00 points" in md
