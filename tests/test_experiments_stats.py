"""Statistics behind the result tables: standard errors, paired differences, detectable effects."""

import math
from pathlib import Path

import pytest

from ftcli.evaluation.metrics import metric_stderr
from ftcli.experiments.stats import (
    mean_mdd,
    minimal_detectable_difference,
    paired_difference,
    proportion_mdd,
    proportion_stderr,
    t_quantile,
)
from ftcli.experiments.sweep import paired_vs_baseline

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
            "seeds": [{"seed": s, "avg": a, "stderr": {"countdown": 0.01}, "sampling_stderr": {"countdown": 0.006}}
                      for s, a in accs.items()]}


def test_paired_vs_baseline_pairs_by_seed_and_reports_mdd():
    base = _variant("none", {0: 0.20, 1: 0.22, 2: 0.21}, baseline=True)
    flow = _variant("flow", {2: 0.24, 0: 0.22, 1: 0.25, 7: 0.9})  # seed 7 has no partner
    d = paired_vs_baseline(flow, base)
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx((0.02 + 0.03 + 0.03) / 3)
    assert d["mdd"] == pytest.approx(minimal_detectable_difference(d["std"], 3))
    assert paired_vs_baseline(base, base) is None


def test_results_md_prints_interval_and_detectable_difference(results_md):
    mod = results_md
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
    assert "task countdown, 4 steps · seeds 0, 1, 2" in md  # no training options beyond the preset's
    res["settings"]["base"] = {"val_every": 0, "task": "countdown", "prompts": 8, "group_size": 16, "save_every": 20}
    md = mod.sweep_md(res, {})
    assert "task countdown, 4 steps (--prompts 8, --group-size 16) · seeds 0, 1, 2" in md
    lo, hi = flow["paired_vs_baseline"]["ci"]
    assert f"+2.7 [{100 * lo:+.1f}, {100 * hi:+.1f}]" in md
    assert "minimal detectable paired difference" in md and "3 seeds" in md
    assert "noise floor of one evaluation (sampling alone, the problems fixed): standard error 0.60 points" in md
    assert "standard error per run" in md and "1.00 points" in md
    # results.json written before runs_trained was recorded: the time says what trained
    assert "12.5 s for the runs not reused" in mod.sweep_md({**res, "seconds": 12.5}, {})
    assert "every run trained by an earlier invocation" in mod.sweep_md({**res, "seconds": 0.0}, {})


def test_variant_seeds_spare_only_the_reference_rows():
    from ftcli.experiments.config import SweepConfig
    from ftcli.experiments.sweep import seeds_for
    from ftcli.experiments.variants import BASELINE, Variant

    cfg = SweepConfig(seeds=(0, 1, 2, 3, 4), variant_seeds=(0,))
    ref = [BASELINE, Variant("credit-flow", "FlowTracer", {"credit": "flow"}),
           Variant("gamma-1.5", "g", {"credit": "flow", "gamma": 1.5}), Variant("layers-mid", "m", {"layers": "mid"})]
    other = [Variant("credit-random", "Random", {"credit": "random"}), Variant("gamma-3", "g", {"gamma": 3.0}),
             Variant("layers-late", "l", {"layers": "late"}), Variant("bottom-0.4", "b", {"select": "bottom"}),
             Variant("w-mass", "w", {"weighting": "mass"})]
    assert all(seeds_for(cfg, v) == (0, 1, 2, 3, 4) for v in ref)
    assert all(seeds_for(cfg, v) == (0,) for v in other)
    # a sweep whose base moves the default (gamma 3 for every row) makes gamma 3 the reference
    cfg3 = SweepConfig(seeds=(0, 1), variant_seeds=(0,), base={"gamma": 3.0})
    assert seeds_for(cfg3, Variant("gamma-3", "g", {"gamma": 3.0})) == (0, 1)
    assert seeds_for(SweepConfig(seeds=(0, 1)), other[0]) == (0, 1)  # no --variant-seeds: all run all


def test_results_md_renders_the_section_5_2_tables(results_md):
    md = results_md
    settings = {"model": "m", "task": "gsm8k", "source": "gold", "ratio": 0.4}
    tokens = {"experiment": "tokens", "settings": settings, "problems": 5, "used": 4,
              "classes": {"structural": {"selected": 45, "share_tokens": 0.3, "share_selected": 0.45,
                                         "selected_ci": [0.4, 0.5], "share_tau": 0.5, "lift": 1.5},
                          "semantic": {"selected": 55, "share_tokens": 0.7, "share_selected": 0.55,
                                       "selected_ci": [0.5, 0.6], "share_tau": 0.5, "lift": 0.55 / 0.7}},
              "top_tokens": [{"token": "=", "rel_tau": 2.5}], "bottom_tokens": [{"token": "the", "rel_tau": 0.2}]}
    out = md.tokens_md(tokens)
    assert "| structural | 30.0 | 45.0 [40.0, 50.0] | 50.0 | 1.50 |" in out
    assert "`=` (2.50)" in out and "`the` (0.20)" in out
    # 100 selected tokens: se sqrt(.45 .55 / 100) = 4.97 points; mdd 2.8016 sqrt(.3 .7 / 100) = 12.84 points
    assert "share of the top set is 5.0 points (100 selected tokens" in out and ": 12.8 points." in out
    fmt = {"experiment": "format", "settings": settings, "problems": 5, "used": 5, "chance_overlap": 0.4,
           "formats": {"value": {"label": "bare value", "overlap_mean": 1.0, "overlap_std": 0.0, "jaccard_mean": 1.0,
                                 "spearman_mean": 1.0, "spearman_std": 0.0}}}
    out = md.format_md(fmt)
    assert "| bare value | 1.00 ± 0.00 | 1.00 | 1.00 ± 0.00 |" in out and "0.40" in out
    assert "Noise floor" not in out  # the reference alone: nothing to compare
    fmt.update(reference="value", formats={**fmt["formats"], "line": {
        "label": "full line", "overlap_mean": 0.8, "overlap_std": 0.1, "jaccard_mean": 0.7,
        "spearman_mean": 0.9, "spearman_std": 0.05}})
    out = md.format_md(fmt)  # sd 0.1 over 5 problems: se 0.045, mdd 2.8016 * 0.1 * sqrt(2 / 5) = 0.177
    assert "standard error of a mean overlap is 0.045" in out and "as if unpaired): 0.177." in out


def test_detectable_differences_of_rates_and_means():
    assert proportion_stderr(0.2, 100) == pytest.approx(0.04)
    k = 1.959964 + 0.841621  # z_.975 + z_.8
    assert mean_mdd(0.1, 5) == pytest.approx(k * 0.1 * math.sqrt(2 / 5), rel=1e-6)
    assert mean_mdd(0.1, 5, arms=1) == pytest.approx(k * 0.1 / math.sqrt(5), rel=1e-6)
    assert proportion_mdd(0.5, 100) == pytest.approx(k * math.sqrt(0.5 / 100), rel=1e-6)
    assert proportion_mdd(0.5, 100, alpha=0.01, power=0.9) == pytest.approx((2.575829 + 1.281552) * math.sqrt(0.005),
                                                                             rel=1e-6)
    assert proportion_mdd(0.5, 0) is None and proportion_stderr(0.5, 0) is None
    with pytest.raises(ValueError):
        proportion_mdd(0.5, 10, arms=3)


def test_results_md_renders_table_1_with_its_detectable_difference(results_md):
    def arm(label, changed, reversed_):
        return {"label": label, "mean_blocked": 3.0, "changed": proportion_like(changed), "reversed": proportion_like(reversed_),
                "correct_to_wrong": {"k": 1, "n": 2}, "wrong_to_correct": {"k": 0, "n": 98}}

    def proportion_like(k):
        return {"k": k, "n": 100, "rate": k / 100, "ci": [0.0, 1.0]}

    res = {"settings": {"model": "m", "task": "countdown", "split": "test"}, "used": 100, "problems": 104,
           "original_accuracy": proportion_like(2), "paper": {"top": [45.9, 14.9]},
           "arms": {"top": arm("Top-20% flow", 90, 20), "random": arm("Random 20%", 50, 10)}}
    out = results_md.intervene_md(res)
    assert "| Top-20% flow | 3.0 | 90.0 [0.0, 100.0] (90/100) |" in out and "| 45.9 / 14.9 |" in out
    # se at most 50 / sqrt(100) = 5 points; mdd at the random arm: 2.8016 sqrt(2 .5 .5 / 100) = 19.8,
    # 2.8016 sqrt(2 .1 .9 / 100) = 11.9
    assert "at most 5.0 points (100 problems)" in out and "19.8 points of answer change, 11.9 of reversal." in out


def test_sampling_stderr_counts_only_the_noise_within_problems():
    from ftcli.evaluation.metrics import sampling_stderr

    # problems always right or always wrong: the samples cannot disagree, no sampling noise
    assert sampling_stderr("avg@4", [[True] * 4, [False] * 4]) == 0.0
    # 2 problems, each 2 of 4 right: s^2 = .25 * 4/3 per problem, var of a mean of 4 = s^2 / 4
    want = math.sqrt(2 * (0.25 * 4 / 3) / 4) / 2
    assert sampling_stderr("avg@4", [[True, True, False, False]] * 2) == pytest.approx(want)
    # it is the binomial standard error when every problem has the same p (on average)
    rng = __import__("random").Random(0)
    rows = [[rng.random() < 0.2 for _ in range(4)] for _ in range(4000)]
    assert sampling_stderr("avg@4", rows) == pytest.approx(math.sqrt(0.2 * 0.8 / 16000), rel=0.05)
    assert sampling_stderr("avg@1", [[True], [False]]) is None
    assert sampling_stderr("pass@4", rows) is None


def test_variant_seeds_option_parses_from_the_command_line():
    from typer.testing import CliRunner

    from ftcli.cli import app
    from ftcli.commands.options import build
    from ftcli.experiments.config import SweepConfig

    assert build(SweepConfig, {"variant_seeds": "0,2"}).variant_seeds == (0, 2)
    assert build(SweepConfig, {"variant_seeds": None}).variant_seeds is None
    res = CliRunner().invoke(app, ["ablate", "gamma", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--variant-seeds" in res.output


def test_results_md_renders_a_plain_evaluation(results_md):
    md = results_md
    res = {"model": "default-policy", "benchmarks": {"countdown-mixed": {
        "label": "Countdown 3+4", "metric": "avg@4", "value": 0.1445, "stderr": 0.0081, "sampling_stderr": 0.0046,
        "n_problems": 1024, "n_samples": 4096}}}
    out = md.eval_md(res)
    assert "avg@4 = 14.45%" in out and "over problems 0.81" in out and "sampling alone 0.46" in out


def test_results_md_marks_one_seed_rows_as_descriptive(results_md):
    md = results_md
    base = _variant("none", {0: 0.20, 1: 0.22, 2: 0.21}, baseline=True)
    one = _variant("late", {0: 0.17})
    for v in (base, one):
        xs = [r["avg"] for r in v["seeds"]]
        v.update(avg={"mean": sum(xs) / len(xs), "std": 0.0}, train={})
    one["paired_vs_baseline"] = paired_vs_baseline(one, base)
    res = {"experiment": "layers", "settings": {"model": "m", "task": "countdown", "steps": 4, "seeds": [0, 1, 2],
                                                  "variant_seeds": [0], "eval_limit": 1024},
           "benchmarks": {"countdown": {"metric": "avg@4"}}, "variants": [base, one]}
    out = md.sweep_md(res, {})
    assert "seeds 0, 1, 2 (other rows: 0)" in out
    assert "| late | 17.0 (1 seed) | 17.0 | -3.0 (seed 0 only) |" in out
    res["settings"]["variant_seeds"] = [0, 1, 2]  # every row on every seed: nothing to point out
    assert "seeds 0, 1, 2 · eval" in md.sweep_md(res, {})


def test_just_results_prints_every_committed_table():
    """`just results` (results_md.py over results/*/) renders every committed results.json,
    nested ones (results/regime-levers/*) included."""
    import json
    import subprocess
    import sys

    folders = sorted(str(p) for p in (REPO / "results").glob("*/"))
    files = list((REPO / "results").glob("**/results.json"))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "results_md.py"), *folders],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    sweeps = [f for f in files if "variants" in json.loads(f.read_text(encoding="utf-8"))]
    assert len(sweeps) >= 5 and out.stdout.count("| variant | test accuracy") == len(sweeps)


def test_results_md_labels_renamed_rules_and_quotes_the_paper(results_md):
    """A results.json from before `correlation` and `attention` were renamed (no `credit_rules`)
    labels their rows by what they ran, so the paper's Attention number does not land beside the
    old `attention` (FAI); a new file keeps the labels and gets the paper's numbers."""
    rows = [_variant("credit-none", {0: 0.2}, baseline=True), _variant("credit-correlation", {0: 0.21}),
            _variant("credit-attention", {0: 0.22}), _variant("credit-flow", {0: 0.23})]
    for v, (credit, label) in zip(rows, (("none", "GRPO"), ("correlation", "Correlation"),
                                         ("attention", "Attention"), ("flow", "FlowTracer")), strict=True):
        v.update(label=label, train_options={"credit": credit}, avg={"mean": v["seeds"][0]["avg"], "std": 0.0},
                 train={"reward_last": 0.3, "time_step": 5.0})
    res = {"experiment": "credit", "settings": {"model": "m", "task": "countdown", "steps": 4, "seeds": [0],
                                                  "eval_limit": 1024},
           "benchmarks": {"countdown": {"metric": "avg@1"}}, "variants": rows}

    def row(md, label):
        return next(line for line in md.splitlines() if line.startswith(f"| {label} |"))

    old = results_md.sweep_md(res, results_md.paper_numbers(res))
    assert row(old, "Clip-Cov (old `correlation`)").endswith("| — |")
    assert row(old, "FAI (old `attention`)").endswith("| — |")
    assert row(old, "GRPO").endswith("| 52.6 |") and row(old, "FlowTracer").endswith("| 63.2 |")
    new = {**res, "credit_rules": {"correlation": "...", "attention": "..."}}
    md = results_md.sweep_md(new, results_md.paper_numbers(new))
    assert row(md, "Attention").endswith("| 60.4 |") and row(md, "Correlation").endswith("| — |")
    other = {**new, "settings": {**res["settings"], "task": "gsm8k"}}  # Table 3's numbers are Countdown's
    assert results_md.paper_numbers(other) == {}
    assert results_md.paper_numbers({"experiment": "gamma"})["γ = 1.2"] == "38.2"
    assert results_md.paper_numbers({"experiment": "ratio"})["Bottom-20%"] == "34.0"


def test_a_run_of_a_renamed_rule_is_refused_not_reused(tmp_path):
    import json

    from ftcli.experiments.sweep import RULE_STAMP, stamp_rule_definition

    old = tmp_path / "credit-correlation" / "seed0"  # trained when `correlation` was Clip-Cov
    old.mkdir(parents=True)
    (old / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="earlier `correlation` rule \\(now `clip-cov`\\)"):
        stamp_rule_definition(old, "correlation")
    new = tmp_path / "credit-attention" / "seed0"  # a new run: stamped before it trains
    stamp_rule_definition(new, "attention")
    assert json.loads((new / RULE_STAMP).read_text())["credit"] == "attention"
    (new / "metrics.jsonl").write_text('{"step": 1}\n')
    stamp_rule_definition(new, "attention")  # resumed or reused later: its stamp says it is the new rule
    with pytest.raises(ValueError, match="trained with the credit rule `attention`, not `fai`"):
        stamp_rule_definition(new, "fai")
    flow = tmp_path / "credit-flow" / "seed0"  # a rule whose definition did not change: reused as before
    flow.mkdir(parents=True)
    (flow / "metrics.jsonl").write_text('{"step": 1}\n')
    stamp_rule_definition(flow, "flow")
