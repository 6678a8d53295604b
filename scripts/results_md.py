#!/usr/bin/env python
"""Markdown tables of finished `ft ablate` results (for RESULTS.md): one table per folder.

Usage: python scripts/results_md.py runs/ablate/table3 runs/ablate/table5 ... [--paper KEY=VALUE ...]

A sweep folder (results.json of `ft ablate credit|ratio|gamma|layers|weighting`) gives one row
per variant: test accuracy mean ± std over seeds, the seeds' values, the paired change against
GRPO (same seeds) with its 95% t interval, the mean training reward of the last 3 steps and
seconds per step; under the table, the evaluation's standard error per run (over problems) and
the minimal paired difference detectable at 80% power with the seeds used; the results of a
sweep still running or stopped early say so and name the seeds each row has. An intervention folder
(`ft ablate intervene`) gives the Table 1 layout with counts and Wilson intervals; a token-class
or answer-format folder (`ft ablate tokens|format`) gives the Sec. 5.2 tables; each says under it
its noise floor and the smallest difference it can detect.
The `paper` column holds the FlowTracer paper's printed numbers (`PAPER`, by sweep and row
label); `--paper LABEL=NUMBER` adds the paper's number to the row of that variant label (or
replaces the built-in one).

Rule names: a results.json written before `correlation` and `attention` became the FlowTracer
paper's baselines (it has no `credit_rules`) names by them the rules now called `clip-cov` and
`fai` (`ftcli.credit.RENAMED_RULES`); their rows are labelled by what they ran, e.g.
"Clip-Cov (old `correlation`)", so that no paper number of the new rules lands beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The FlowTracer paper's printed numbers (accuracy %), as a review read them from its text (issue
# 28), by sweep (`experiment`) and row label. Table 3 (Countdown; the credit sweep of another task
# gets none), Table 5 (ratio and side), Table 7 (gamma and weightings; binary top-40% is its
# gamma 1.5 row, the same configuration). A number not printed here is not in our notes.
PAPER = {
    "credit": {"GRPO": "52.6", "Random": "55.0", "Entropy": "57.7", "Attention": "60.4", "FlowTracer": "63.2"},
    "ratio": {"Top-20%": "40.1", "Top-40%": "43.4", "Bottom-20%": "34.0", "Bottom-40%": "37.8",
              "Bottom-60%": "39.1"},
    "gamma": {"GRPO (no credit)": "37.1", "γ = 0.5": "36.1", "γ = 1.2": "38.2", "γ = 1.5": "39.4",
              "γ = 1.8": "37.8", "γ = 2": "33.3", "γ = 3": "29.7"},
    "weighting": {"GRPO (no credit)": "37.1", "binary top-40% (paper)": "39.4", "raw flow": "28.7"},
}
PAPER_TASK = {"credit": "countdown"}  # sweeps whose paper numbers hold for one task only


def paper_numbers(res: dict) -> dict[str, str]:
    """The paper's numbers for the rows of sweep `res` (`PAPER`), {} for another task's."""
    exp = res.get("experiment")
    if exp in PAPER_TASK and (res.get("settings") or {}).get("task") != PAPER_TASK[exp]:
        return {}
    return dict(PAPER.get(exp, {}))


def _pct(x, nd: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{nd}f}"


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _results_files(folder: Path) -> list[Path]:
    """The folder's results.json; a folder without one stands for its subfolders that have one
    (results/regime-levers/*). A missing file is returned as is, so that reading it says so."""
    own = folder / "results.json"
    if own.is_file() or not folder.is_dir():
        return [own]
    return sorted(folder.glob("*/results.json")) or [own]


def _wall(res: dict) -> str:
    """The wall time of the sweep's last invocation, for the runs it trained."""
    n = res.get("runs_trained")
    if n is None and res.get("seconds", 1):  # written before runs_trained was recorded
        return f"{res.get('seconds', '?')} s for the runs not reused"
    if not n:  # none trained (an old file: no time spent)
        return "every run trained by an earlier invocation (wall times in the text)"
    return f"{res.get('seconds', '?')} s for the {n} run{'s' * (n != 1)} trained by the last invocation"


def variant_label(res: dict, v: dict) -> str:
    """The row label of variant `v`: its own, or for a rule renamed since the file was written
    (no `credit_rules` in it), the label of the rule that computes what it ran."""
    from ftcli.credit import RENAMED_RULES
    from ftcli.experiments.variants import RULE_LABELS

    credit = (v.get("train_options") or {}).get("credit")
    if "credit_rules" in res or credit not in RENAMED_RULES or v["label"] != RULE_LABELS.get(credit):
        return v["label"]
    return f"{RULE_LABELS[RENAMED_RULES[credit]]} (old `{credit}`)"


def sweep_md(res: dict, paper: dict[str, str]) -> str:
    s = res["settings"]
    bench = next(iter(res["benchmarks"]))
    meta = res["benchmarks"][bench]
    shown = ("val_every", "train_size", "task", "data_source", "steps", "data_root",  # said elsewhere or not training
             "save_every", "keep_last", "log_samples", "report_to", "progress")
    opts = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in (s.get("base") or {}).items() if k not in shown)
    lines = [
        f"**{res['experiment']}** · model `{s['model']}` · task {s['task']}, {s['steps']} steps"
        + (f" ({opts})" if opts else "") + " · "
        f"seeds {', '.join(map(str, s['seeds']))}"
        + (f" (other rows: {', '.join(map(str, s['variant_seeds']))})" if s.get("variant_seeds") and s["variant_seeds"] != s["seeds"] else "")
        + f" · eval {meta.get('label', bench)} {meta['metric']}, "
        f"first {s['eval_limit']} test problems · "
        + (f"**partial: {res['partial']['finished']} of {res['partial']['runs']} runs finished**"
           if res.get("partial") else _wall(res)),
        "",
        "| variant | test accuracy % (mean ± std) | per seed | Δ vs GRPO, paired [95% CI] | train reward (last 3 steps) | s/step | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    ses, sses, mdds, paired_n = [], [], [], set()
    for v in res["variants"]:
        a = v["avg"]
        seeds = " / ".join(_pct(r["avg"]) for r in v["seeds"])
        ran = [r["seed"] for r in v["seeds"]]
        if ran not in (list(s["seeds"]), list(s.get("variant_seeds") or s["seeds"])):  # a sweep stopped early
            seeds += f" (seed{'s' * (len(ran) != 1)} {', '.join(map(str, ran)) or 'none yet'})"
        ses += [se for r in v["seeds"] for se in (r.get("stderr") or {}).values() if se is not None]
        sses += [se for r in v["seeds"] for se in (r.get("sampling_stderr") or {}).values() if se is not None]
        pd = v.get("paired_vs_baseline")
        if v["baseline"]:
            delta = ""
        elif pd and pd.get("n") == 1:
            delta = f"{100 * pd['mean']:+.1f} (seed {pd['seeds'][0]} only)"
        elif pd and pd.get("ci"):
            delta = f"{100 * pd['mean']:+.1f} [{100 * pd['ci'][0]:+.1f}, {100 * pd['ci'][1]:+.1f}]"
            if pd.get("mdd") is not None:
                mdds.append(pd["mdd"])
                paired_n.add(pd["n"])
        else:
            d = v.get("delta_vs_baseline")
            delta = "" if d is None else f"{100 * d:+.1f}"
        rew, sps = v["train"].get("reward_last"), v["train"].get("time_step")
        rew = "—" if rew is None else f"{rew:.3f}"
        sps = "—" if sps is None else f"{sps:.1f}"
        spread = f"{_pct(a['mean'])} (1 seed)" if len(v["seeds"]) == 1 else f"{_pct(a['mean'])} ± {_pct(a['std'])}"
        label = variant_label(res, v)
        lines.append(f"| {label} | {spread} | {seeds} | {delta} | {rew} | {sps} | "
                     f"{paper.get(label, '—')} |")
    notes = []
    if sses:
        notes.append(f"noise floor of one evaluation (sampling alone, the problems fixed): standard error "
                     f"{100 * _median(sses):.2f} points (median over runs)")
    if ses:
        notes.append(f"evaluation standard error per run (over problems): median {100 * _median(ses):.2f} points")
    if mdds:
        mdds.sort()
        span = (f"{100 * mdds[0]:.1f} points" if len(mdds) == 1 else
                f"{100 * mdds[0]:.1f}-{100 * mdds[-1]:.1f} points across variants (median {100 * _median(mdds):.1f})")
        ns = "-".join(str(n) for n in sorted({min(paired_n), max(paired_n)}))
        notes.append(f"minimal detectable paired difference (80% power, two-sided 5%, {ns} seeds): {span}")
    if notes:
        lines += ["", "; ".join(notes) + "."]
    return "\n".join(lines)


def intervene_md(res: dict) -> str:
    st = res["settings"]
    acc = res["original_accuracy"]
    lines = [
        f"**Table 1 (causal intervention)** · model `{st['model']}` · task {st['task']} ({st['split']}) · "
        f"{res['used']} problems with an answer (of {res['problems']} run) · original accuracy "
        f"{_pct(acc['rate'])}% ({acc['k']}/{acc['n']})",
        "",
        "| blocked 20% | mean k | answer change % [95% CI] (k/n) | correctness reversal % [95% CI] (k/n) "
        "| correct→wrong | wrong→correct | paper (change / reversal) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(p):
        return f"{_pct(p['rate'])} [{_pct(p['ci'][0])}, {_pct(p['ci'][1])}] ({p['k']}/{p['n']})"

    paper = res.get("paper", {})
    for arm in ("top", "random", "bottom", "none"):
        a = res["arms"].get(arm)
        if not a:
            continue
        pp = paper.get(arm)
        lines.append(f"| {a.get('label', arm)} | {a.get('mean_blocked', 0):.1f} | {cell(a['changed'])} | "
                     f"{cell(a['reversed'])} | {a['correct_to_wrong']['k']}/{a['correct_to_wrong']['n']} | "
                     f"{a['wrong_to_correct']['k']}/{a['wrong_to_correct']['n']} | "
                     f"{'—' if not pp else f'{pp[0]} / {pp[1]}'} |")
    n = res["used"]
    if n:
        from ftcli.experiments.stats import proportion_mdd, proportion_stderr

        ref = res["arms"].get("random")  # the middle arm: the rates a difference is measured from

        def mdd(key):
            return 100 * proportion_mdd(ref[key]["rate"] if ref else 0.5, n)

        lines += ["", f"noise floor: the standard error of one arm's rate is at most {100 * proportion_stderr(0.5, n):.1f} points "
                      f"({n} problems); minimal detectable difference between two arms (80% power, two-sided 5%, "
                      f"as if unpaired; the arms share their problems, and a paired test does better when their outcomes "
                      f"agree) at the random arm's rates: "
                      f"{mdd('changed'):.1f} points of answer change, {mdd('reversed'):.1f} of reversal."]
    return "\n".join(lines)


def tokens_md(res: dict) -> str:
    """Sec. 5.2 token classes (`ft ablate tokens`): shares of tokens, of the selected top set
    (Wilson 95% interval) and of throughput per class, with the highest- and lowest-flow tokens."""
    s = res["settings"]
    lines = [
        f"**Sec. 5.2 token classes** · model `{s['model']}` · task {s['task']} ({s['source']} responses) · "
        f"top {round(100 * s['ratio'])}% by flow · {res['used']} responses (of {res['problems']})",
        "",
        "| class | share of reasoning tokens % | share of the top set % [95% CI] | share of throughput % | lift |",
        "|---|---|---|---|---|",
    ]
    for c, r in res["classes"].items():
        lift = "—" if r["lift"] is None else f"{r['lift']:.2f}"
        lines.append(f"| {c} | {_pct(r['share_tokens'])} | {_pct(r['share_selected'])} "
                     f"[{_pct(r['selected_ci'][0])}, {_pct(r['selected_ci'][1])}] | {_pct(r['share_tau'])} | {lift} |")

    def toks(key):
        return ", ".join(f"`{x['token']}` ({x['rel_tau']:.2f})" for x in res[key][:10])

    selected = sum(r["selected"] for r in res["classes"].values())
    if selected:
        from ftcli.experiments.stats import proportion_mdd, proportion_stderr

        r = next(iter(res["classes"].values()))  # with two classes both give the same numbers
        lines += ["", f"noise floor: the standard error of a class's share of the top set is "
                      f"{100 * proportion_stderr(r['share_selected'], selected):.1f} points ({selected} selected tokens "
                      f"counted as independent; the tokens of one response are not, so the true error is larger); "
                      f"minimal detectable difference between a class's share of the top set and of the reasoning "
                      f"tokens (80% power, two-sided 5%): {100 * proportion_mdd(r['share_tokens'], selected, arms=1):.1f} points."]
    lines += ["", f"Highest mean relative throughput: {toks('top_tokens')}.",
              f"Lowest: {toks('bottom_tokens')}."]
    return "\n".join(lines)


def format_md(res: dict) -> str:
    """Sec. 5.2 answer formats (`ft ablate format`): overlap of the top set with the bare-value
    format's, Jaccard and Spearman of tau, against the chance overlap."""
    s = res["settings"]
    lines = [
        f"**Sec. 5.2 answer format** · model `{s['model']}` · task {s['task']} ({s['source']} reasoning) · "
        f"top {round(100 * s['ratio'])}% of reasoning tokens · {res['used']} problems (of {res['problems']})",
        "",
        "| answer written as | overlap with bare value (mean ± std) | Jaccard | Spearman ρ of τ (mean ± std) |",
        "|---|---|---|---|",
    ]

    def num(x, nd=2):
        return "—" if x is None else f"{x:.{nd}f}"

    for r in res["formats"].values():
        lines.append(f"| {r['label']} | {num(r['overlap_mean'])} ± {num(r['overlap_std'])} | {num(r['jaccard_mean'])} | "
                     f"{num(r['spearman_mean'])} ± {num(r['spearman_std'])} |")
    lines += ["", f"Chance overlap of a random set of the same size: {num(res['chance_overlap'])}."]
    sds = [r["overlap_std"] for k, r in res["formats"].items() if k != res.get("reference") and r["overlap_std"]]
    n = res["used"]
    if sds and n:
        from ftcli.experiments.stats import mean_mdd

        sd = _median(sds)
        lines[-1] += (f" Noise floor: the standard error of a mean overlap is {sd / n ** 0.5:.3f} (median over "
                      f"formats, {n} problems); minimal detectable difference between two formats' mean overlaps "
                      f"(80% power, two-sided 5%, as if unpaired): {mean_mdd(sd, n):.3f}.")
    return "\n".join(lines)


def eval_md(res: dict) -> str:
    """One `ft eval` results.json (e.g. the starting policy): a line per benchmark."""
    lines = []
    for b, e in res["benchmarks"].items():
        sse = e.get("sampling_stderr")
        lines.append(f"**{e.get('label', b)}** · model `{res.get('model', '?')}` · {e['metric']} = {_pct(e['value'], 2)}% "
                     f"(standard error over problems {_pct(e.get('stderr'), 2)}"
                     + ("" if sse is None else f", sampling alone {_pct(sse, 2)}")
                     + f"; {e['n_problems']} problems, {e['n_samples']} samples)")
    return "\n".join(lines)


def fidelity_md(res: dict) -> str:
    from ftcli.experiments.fidelity import fidelity_markdown

    return fidelity_markdown(res)


RENDER = {"tokens": tokens_md, "format": format_md, "fidelity": fidelity_md}


def main(argv: list[str]) -> None:
    paper: dict[str, str] = {}
    folders = []
    it = iter(argv)
    for a in it:
        if a == "--paper":
            k, _, v = next(it).partition("=")
            paper[k] = v
        else:
            folders.append(Path(a))
    for path in (p for f in folders for p in _results_files(f)):
        res = json.loads(path.read_text(encoding="utf-8"))
        if "variants" in res:
            print(sweep_md(res, {**paper_numbers(res), **paper}))
        elif "benchmarks" in res and "arms" not in res:
            print(eval_md(res))
        elif res.get("experiment") in RENDER:
            print(RENDER[res["experiment"]](res))
        else:
            print(intervene_md(res))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
