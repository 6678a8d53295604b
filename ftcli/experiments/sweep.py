"""Training sweeps (Tables 2-5, 7; Figs. 4-6): every variant x seed is trained by
`ftcli.train.loop.train` with otherwise identical options, then its final checkpoint is
evaluated by `ftcli.evaluation.benchmarks.evaluate`; finished runs and evaluations are reused on a rerun.
Runs train seed by seed; after each finished run, results.json and results.csv hold the table so
far (marked partial); at the end they hold all of it, with curves.png and bars.png, under the
sweep's `out`."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from pathlib import Path

import torch
from rich.table import Table

from ftcli.credit import RENAMED_RULES, get_rule
from ftcli.evaluation.benchmarks import evaluate, protocol_str
from ftcli.experiments.common import fmt_num, fmt_pct, fmt_pm_pct, guard_settings, write_csv
from ftcli.experiments.config import SweepConfig
from ftcli.experiments.plots import training_curves, variant_bars
from ftcli.experiments.stats import (
    mean_std,
    mean_std_dict,
    minimal_detectable_difference,
    paired_difference,
)
from ftcli.experiments.variants import Variant, dedupe
from ftcli.io import atomic_write_json
from ftcli.progress import progress_bar, stderr_console
from ftcli.rundir import NOT_RUN_OPTIONS, RunDir
from ftcli.train.config import resolve_config
from ftcli.train.loop import train


def _train_summary(run_dir: Path, last: int = 3) -> dict:
    rows = RunDir(run_dir).metrics()
    vals = [r["val_accuracy"] for r in rows if r.get("val_accuracy") is not None]
    rows = [r for r in rows if "reward_mean" in r]  # training steps (step 0 may hold only a validation)
    if not rows:
        return {}
    tail = rows[-last:]

    def avg(key, rs=tail):
        xs = [r[key] for r in rs if r.get(key) is not None]
        return sum(xs) / len(xs) if xs else None

    return {"steps": len(rows), "reward_last": avg("reward_mean"), "accuracy_last": avg("accuracy"),
            "frac_credited": avg("frac_credited", rows), "time_step": avg("time_step", rows),
            "time_credit": avg("time_credit", rows), "val_last": vals[-1] if vals else None,
            "val_best": max(vals) if vals else None}


_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _eval_stamp(run_dir: Path, suite: str, limit: int | None, overrides: dict) -> dict:
    """What an evaluation of a run's final checkpoint depends on (a rerun with the same stamp
    reuses it)."""
    weights = sorted(str(f.stat().st_mtime_ns) for f in RunDir(run_dir).final.glob("*.safetensors"))
    return {"suite": suite, "limit": limit, "overrides": overrides, "weights": weights}


def _reusable_eval(job: dict) -> tuple[Path, Path, dict, dict | None]:
    """(eval folder, stamp file, stamp, results doc or None): the doc of an evaluation of the
    job's final checkpoint made with this suite, limit, overrides and these weights."""
    run_dir = Path(job["run_dir"]).resolve()  # a run shared by symlink is evaluated under its own path
    suite = job["suite"]
    eval_dir = run_dir / "eval" / Path(suite).stem
    stamp = _eval_stamp(run_dir, suite, job["eval_limit"], job["eval_overrides"])
    stamp_file, res_file = eval_dir / "sweep_stamp.json", eval_dir / "results.json"
    doc = None
    if stamp_file.is_file() and res_file.is_file():
        try:
            if json.loads(stamp_file.read_text(encoding="utf-8")) == stamp:
                doc = json.loads(res_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            doc = None
    return eval_dir, stamp_file, stamp, doc


RULE_STAMP = "credit_rule.json"  # in a run folder: the credit rule definition it was trained with


def stamp_rule_definition(run_dir: Path, credit: str) -> None:
    """Refuse a run of `credit` trained before that name was given to another rule
    (`ftcli.credit.RENAMED_RULES`: such a run has metrics and no stamp); otherwise record the
    rule's current definition in the run folder (`RULE_STAMP`), before it trains."""
    stamp, rd = Path(run_dir) / RULE_STAMP, RunDir(run_dir)
    if stamp.is_file():
        was = json.loads(stamp.read_text(encoding="utf-8")).get("credit")
        if was != credit:
            raise ValueError(f"{run_dir} was trained with the credit rule `{was}`, not `{credit}`; "
                             "choose another --out or delete that run")
        return
    if credit in RENAMED_RULES and rd.has_run():
        raise ValueError(f"{run_dir} was trained with the earlier `{credit}` rule (now `{RENAMED_RULES[credit]}`); "
                         "choose another --out or delete that run")
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, {"credit": credit, "summary": get_rule(credit).summary})


def _is_trained(job: dict) -> bool:
    """The job's run folder holds a final checkpoint with all its steps."""
    return RunDir(job["run_dir"]).is_finished(resolve_config(job["preset"], **job["train"]).steps)


def _sweep_job(job: dict, *, console=None, train_fn: Callable | None = None,
               eval_fn: Callable | None = None) -> dict:
    """Train (or resume, or reuse) one variant x seed, evaluate its final checkpoint (or reuse
    the evaluation), return its results row."""
    train_fn = train_fn or train
    eval_fn = eval_fn or evaluate
    console = stderr_console(console)
    head, run_dir = job["head"], Path(job["run_dir"])
    tcfg = resolve_config(job["preset"], **job["train"])
    rd = RunDir(run_dir)
    if rd.has_run() and (diff := rd.option_diff(tcfg)):
        raise ValueError(f"{run_dir} was trained with other options ({', '.join(diff)}); "
                         "choose another --out or delete that run")
    stamp_rule_definition(run_dir, tcfg.credit)
    if rd.is_finished(tcfg.steps):
        console.print(f"{head}: trained (reused)")
    else:
        resume = (run_dir / "metrics.jsonl").is_file()
        console.print(f"{head}: {'resuming' if resume else 'training'} {tcfg.steps} steps")
        with torch.enable_grad():  # robust to a caller that switched autograd off globally
            train_fn(tcfg, resume=resume, console=console)
    run_dir = run_dir.resolve()  # a run shared by symlink is evaluated under its own path
    suite, limit = job["suite"], job["eval_limit"]
    eval_dir, stamp_file, stamp, doc = _reusable_eval(job)
    if doc is not None:
        console.print(f"{head}: evaluated (reused)")
    else:
        console.print(f"{head}: evaluating on {suite}" + (f" (first {limit})" if limit else ""))
        with progress_bar("[bold]eval[/] {task.description}", console=console,
                          disable=not job["progress"], transient=True) as prog:
            doc, _ = eval_fn(suite, ckpt=f"{run_dir}:final", out=eval_dir, limit=limit,
                             batch_size=job["eval_batch_size"], overrides=job["eval_overrides"], progress=prog,
                             data_root=tcfg.data_root)
        atomic_write_json(stamp_file, stamp)
    return {
        "variant": job["variant"], "label": job["label"], "seed": job["seed"], "run_dir": str(run_dir),
        "eval": {b: e["value"] for b, e in doc["benchmarks"].items()},
        "stderr": {b: e.get("stderr") for b, e in doc["benchmarks"].items()},
        "sampling_stderr": {b: e.get("sampling_stderr") for b, e in doc["benchmarks"].items()},
        "avg": doc["avg"]["value"], "train": _train_summary(run_dir),
        "bench_meta": {b: {"label": e.get("label", b), "metric": e["metric"], "protocol": e.get("protocol")}
                       for b, e in doc["benchmarks"].items()},
    }


def _sweep_worker(job: dict) -> dict:
    """`_sweep_job` in a pool process: one torch thread, its own single-process 'world'."""
    for k in _DIST_VARS:  # inherited from a parent that trained in-process: pick a fresh port
        os.environ.pop(k, None)
    torch.set_num_threads(int(os.environ.get("FT_JOB_THREADS", "1")))
    return _sweep_job(job, console=stderr_console())


def run_sweep(cfg: SweepConfig, variants: Sequence[Variant], *, console=None,
              train_fn: Callable | None = None, eval_fn: Callable | None = None, jobs: int = 1) -> dict:
    """Train and evaluate every variant x seed; write results.json, results.csv, curves.png and
    bars.png under cfg.out; return the results. Finished trainings (final checkpoint with all
    steps) and evaluations (same suite, limit, overrides and weights) are reused; an
    interrupted training resumes from its checkpoint.

    `jobs` > 1 runs that many variant x seed jobs at once in spawned processes (one torch
    thread each unless FT_JOB_THREADS says otherwise; no progress bars, one line per event).
    Each run is seeded by itself, so results do not depend on `jobs`.
    """
    console = stderr_console(console)
    out = Path(cfg.out)
    variants = dedupe(list(variants))
    if not variants:
        raise ValueError("no variants to train")
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    if jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("jobs > 1 runs single-process trainings side by side; under a launcher use jobs=1")
    if jobs > 1 and (train_fn is not None or eval_fn is not None):
        raise ValueError("custom train_fn / eval_fn run in-process only (jobs=1)")
    probe = resolve_config(cfg.preset, **cfg.base)  # validates the base options early
    suite = cfg.eval_suite or probe.task
    eval_over = {"max_new_tokens": probe.max_new_tokens, **cfg.eval_overrides}
    settings = {"name": cfg.name, "preset": cfg.preset, "base": cfg.base, "seeds": list(cfg.seeds),
                "variant_seeds": None if cfg.variant_seeds is None else list(cfg.variant_seeds),
                "model": probe.model, "task": probe.task, "steps": probe.steps,
                "eval_suite": suite, "eval_limit": cfg.eval_limit, "eval_overrides": eval_over,
                "reference": cfg.reference}
    guard_settings(out, settings, ignore=("seeds", "variant_seeds", "reference"), canonical=canonical_settings)
    for v in variants:  # fail before any training if a variant's options are invalid
        resolve_config(cfg.preset, **{**cfg.base, **v.train, "seed": cfg.seeds[0], "out": str(out)})
    seeds_of = {v.key: seeds_for(cfg, v) for v in variants}
    imported, ref_meta = reference_rows(cfg, settings, variants, seeds_of) if cfg.reference else ({}, {})
    if imported:
        console.print(f"{cfg.name}: {len(imported)} runs taken from {cfg.reference}")
    n_jobs = sum(len(s) for s in seeds_of.values()) - len(imported)
    order = [(v.key, seed) for v in variants for seed in seeds_of[v.key]]  # variant by variant
    by_key = {v.key: v for v in variants}
    job_list = []
    for key, seed in order:
        if (key, seed) in imported:
            continue
        v = by_key[key]
        run_dir = out / "runs" / v.key / f"seed{seed}"
        job_list.append({
            "variant": v.key, "label": v.label, "seed": seed, "run_dir": str(run_dir),
            "preset": cfg.preset,
            "train": {**cfg.base, **v.train, "seed": seed, "out": str(run_dir),
                      "progress": cfg.progress and jobs == 1},
            "suite": suite, "eval_limit": cfg.eval_limit, "eval_overrides": eval_over,
            "eval_batch_size": cfg.eval_batch_size, "progress": cfg.progress and jobs == 1,
        })
    trained_before = {j["run_dir"] for j in job_list if _is_trained(j)}
    n_train = len(job_list) - len(trained_before)  # runs this invocation trains (or resumes)
    done = {j["run_dir"] for j in job_list if j["run_dir"] in trained_before and _reusable_eval(j)[3] is not None}
    # first the runs an earlier invocation finished (read, not run: a table cut short holds
    # them all), then seed by seed (every variant of a seed before the next seed): a sweep cut
    # short leaves whole paired seeds, not some variants with all their seeds and others with none
    job_list.sort(key=lambda j: (j["run_dir"] not in done, j["seed"]))
    for i, j in enumerate(job_list):
        j["head"] = f"[{i + 1}/{n_jobs}] {cfg.name} · {j['label']} · seed {j['seed']}"
    t_start = time.time()
    trained, meta = {}, dict(ref_meta)

    def finished(row: dict) -> None:
        """Keep a finished run's row; while runs are pending, write the table so far
        (results.json and .csv, marked partial): a sweep that stops early keeps its results."""
        meta.update(row.pop("bench_meta", None) or {})
        trained[(row["variant"], row["seed"])] = row
        if len(trained) < len(job_list):
            done = [imported.get(k) or trained[k] for k in order if k in imported or k in trained]
            res = _aggregate(cfg, variants, done, meta, settings)
            res["partial"] = {"finished": len(done), "runs": len(order)}
            _write_sweep(out, res, figures=False)

    if jobs == 1 or not job_list:
        for j in job_list:
            finished(_sweep_job(j, console=console, train_fn=train_fn, eval_fn=eval_fn))
    else:
        console.print(f"{cfg.name}: {n_jobs} runs, {jobs} at a time")
        # a fresh process per run (Python >= 3.11): no process group, cache or RNG state carries over
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), **fresh) as pool:
            for f in as_completed([pool.submit(_sweep_worker, j) for j in job_list]):
                finished(f.result())
    results_rows = [imported.get(k) or trained[k] for k in order]  # variant by variant, seeds in order
    res = _aggregate(cfg, variants, results_rows, meta, settings)
    res["seconds"] = round(time.time() - t_start, 1)  # wall time of this invocation
    res["runs_trained"] = n_train
    _write_sweep(out, res)
    return res


def _credit_identity(cfg: SweepConfig, train: dict) -> tuple:
    """The options that tell one row's credit from another's, resolved against the sweep's base."""
    c = resolve_config(cfg.preset, **{**cfg.base, **train})
    keys = ("credit", *c.credit_options_kwargs(), "layers", "credit_tokens", "credit_pass")
    return tuple((k, getattr(c, k)) for k in keys)


def is_reference(v: Variant, cfg: SweepConfig) -> bool:
    """GRPO (the baseline) or FlowTracer with every credit option at the sweep's default: the
    rows that every table shares, which always run all of --seeds."""
    return v.baseline or _credit_identity(cfg, v.train) == _credit_identity(cfg, {"credit": "flow"})


def canonical_settings(settings: dict) -> dict:
    """A sweep's settings with its `base` resolved against the preset, without the seed and the
    options that do not change what a run computes (folder, data location, reporting, saving):
    `--group-size 8` and no `--group-size` are the same sweep when the preset's group size is
    8, and so is one that also checkpoints every 20 steps."""
    base = settings.get("base")
    if not isinstance(base, dict):
        return settings
    c = resolve_config(settings.get("preset") or "cpu", **base)
    return {**settings, "base": {f.name: getattr(c, f.name) for f in fields(c)
                                 if f.name not in (*NOT_RUN_OPTIONS, "seed")}}


# What must agree between a sweep and its --reference for their runs to be the same runs.
_REFERENCE_KEYS = ("preset", "base", "model", "task", "steps", "eval_suite", "eval_limit", "eval_overrides")


def _read_reference(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--reference {path}: not a readable results.json ({e})") from None
    if not isinstance(doc, dict) or "variants" not in doc or "settings" not in doc:
        raise ValueError(f"--reference {path}: not the results.json of an `ft ablate` training sweep")
    return doc


def reference_rows(cfg: SweepConfig, settings: dict, variants: Sequence[Variant],
                   seeds_of: dict[str, tuple[int, ...]]) -> tuple[dict[tuple[str, int], dict], dict]:
    """(`{(variant key, seed): results row}`, the file's benchmark metadata) for the rows whose
    seeds an earlier sweep's results.json (`cfg.reference`) already holds: the same training and
    evaluation settings (the folder with the data aside) and the same credit options make them
    the same runs, so a table can pair its new rows with them without training them again
    (on another machine, from the committed results/). That is GRPO and FlowTracer from another
    table, or any row of a committed partial results.json of the same sweep (a long sweep goes
    on where it stopped on another machine). Each row keeps its `run_dir` as it was and says
    where it came from (`reference`)."""
    doc = _read_reference(cfg.reference)
    theirs = doc["settings"]

    theirs, mine = canonical_settings(theirs), canonical_settings(settings)
    diff = [k for k in _REFERENCE_KEYS if theirs.get(k) != mine.get(k)]
    if diff:
        raise ValueError(f"--reference {cfg.reference} was made with other settings ({', '.join(diff)})")
    out = {}
    renamed = set() if "credit_rules" in doc else set(RENAMED_RULES)  # a file from before the renames
    for v in variants:
        mine = _credit_identity(cfg, v.train)
        if dict(mine)["credit"] in renamed:  # its row of that name ran another rule
            continue
        match = next((rv for rv in doc["variants"]
                      if _credit_identity(cfg, rv.get("train_options") or {}) == mine), None)
        for r in (match or {}).get("seeds", []):
            if r.get("seed") in seeds_of[v.key] and r.get("avg") is not None:
                out[(v.key, r["seed"])] = {**r, "variant": v.key, "label": v.label, "reference": str(cfg.reference)}
    return out, doc.get("benchmarks", {})


def seeds_for(cfg: SweepConfig, v: Variant) -> tuple[int, ...]:
    """--seeds for the reference rows, --variant-seeds (when given) for the others."""
    if cfg.variant_seeds is None or is_reference(v, cfg):
        return tuple(cfg.seeds)
    return tuple(cfg.variant_seeds)


def _aggregate(cfg: SweepConfig, variants: Sequence[Variant], rows: list[dict], bench_meta: dict, settings: dict) -> dict:
    benches = list(bench_meta)
    out_vars = []
    base = next((v for v in variants if v.baseline), None)
    base_avg = None
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.key]
        stats = {b: mean_std_dict([r["eval"].get(b) for r in mine]) for b in benches}
        avg = mean_std_dict([r["avg"] for r in mine])
        tr = {k: mean_std([r["train"].get(k) for r in mine])[0] for k in
              ("reward_last", "accuracy_last", "frac_credited", "time_step", "val_best")}
        out_vars.append({"key": v.key, "label": v.label, "train_options": v.train, "group": v.group,
                         "baseline": v.baseline, "benchmarks": stats, "avg": avg, "train": tr, "seeds": mine})
        if base is not None and v.key == base.key:
            base_avg = avg["mean"]
    for ov in out_vars:
        ov["delta_vs_baseline"] = (ov["avg"]["mean"] - base_avg) if base_avg is not None and ov["avg"]["mean"] is not None else None
        if base is not None:
            ov["paired_vs_baseline"] = paired_vs_baseline(ov, next(o for o in out_vars if o["key"] == base.key))
    credits = sorted({resolve_config(cfg.preset, **{**cfg.base, **v.train}).credit for v in variants})
    return {"experiment": cfg.name, "settings": settings, "benchmarks": bench_meta, "variants": out_vars,
            # the rules' definitions (a file without it predates RENAMED_RULES: scripts/results_md.py)
            "credit_rules": {c: get_rule(c).summary for c in credits},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def paired_vs_baseline(variant: dict, base: dict) -> dict | None:
    """The variant's accuracy minus the baseline's on the seeds both ran (same problems and
    sampling seeds per arm): the paired difference with its 95% t interval, and the minimal
    difference detectable at 80% power with that many seeds and this spread of differences."""
    mine = {r["seed"]: r["avg"] for r in variant["seeds"] if r.get("avg") is not None}
    theirs = {r["seed"]: r["avg"] for r in base["seeds"] if r.get("avg") is not None}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds or variant["key"] == base["key"]:
        return None
    d = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
    d["seeds"] = seeds
    d["mdd"] = minimal_detectable_difference(d["std"], d["n"]) if d["std"] is not None else None
    return d


def _write_sweep(out: Path, res: dict, *, figures: bool = True) -> None:
    atomic_write_json(out / "results.json", res)
    benches = list(res["benchmarks"])
    rows = [["variant", "label", "seed", *benches, "avg", "reward_last", "frac_credited", "time_step"]]
    for v in res["variants"]:
        for r in v["seeds"]:
            t = r["train"]
            rows.append([v["key"], v["label"], r["seed"], *[r["eval"].get(b) for b in benches], r["avg"],
                         t.get("reward_last"), t.get("frac_credited"), t.get("time_step")])
    write_csv(out / "results.csv", rows)
    if not figures:
        return
    # rows taken from a --reference keep their run_dir, which may be on another machine
    runs = {v["label"]: [r["run_dir"] for r in v["seeds"] if Path(r["run_dir"]).exists()] for v in res["variants"]}
    training_curves(runs, out / "curves.png", title=res["experiment"])
    labels = [v["label"] for v in res["variants"]]
    means = [100 * (v["avg"]["mean"] or 0.0) for v in res["variants"]]
    stds = [100 * (v["avg"]["std"] or 0.0) for v in res["variants"]]
    base = next((v for v in res["variants"] if v["baseline"]), None)
    variant_bars(labels, means, stds, out / "bars.png", ylabel="Avg (%)", title=res["experiment"],
                 baseline=100 * base["avg"]["mean"] if base and base["avg"]["mean"] is not None else None)


def sweep_table(res: dict, title: str | None = None):
    """Rich table: one row per variant, one column per benchmark (mean ± std over seeds, %),
    Avg, Δ vs the baseline, and the training side (final reward, credited fraction, s/step)."""
    s = res["settings"]
    t = Table(title=title or f"{res['experiment']} · {s['model']} · {s['task']}, {s['steps']} steps · "
                             f"seeds {', '.join(map(str, s['seeds']))} · mean ± std, %")
    t.add_column("variant")
    for m in res["benchmarks"].values():
        t.add_column(f"{m['label']}\n{m['metric']}", justify="right")
    t.add_column("Avg", justify="right", style="bold")
    t.add_column("Δ", justify="right")
    t.add_column("train reward\n(last 3)", justify="right")
    t.add_column("credited", justify="right")
    t.add_column("s/step", justify="right")
    for v in res["variants"]:
        cells = [fmt_pm_pct(v["benchmarks"][b]) for b in res["benchmarks"]]
        d = v["delta_vs_baseline"]
        tr = v["train"]
        t.add_row(v["label"], *cells, fmt_pm_pct(v["avg"]), "" if d is None or v["baseline"] else f"{100 * d:+.1f}",
                  fmt_num(tr.get("reward_last")), fmt_pct(tr.get("frac_credited")), fmt_num(tr.get("time_step"), 1))
    proto = next(iter(res["benchmarks"].values())).get("protocol") or {}
    if proto:
        try:
            t.caption = "eval: " + protocol_str(proto)
        except KeyError:
            pass
    return t


def pivot_table(res: dict, row_key: str, col_key: str, title: str):
    """Avg (%) laid out as rows = values of `row_key`, columns = values of `col_key` (Table 5)."""
    cells: dict = {}
    rows_v, cols_v = [], []
    for v in res["variants"]:
        g = v["group"]
        if row_key in g and col_key in g:
            r, c = g[row_key], g[col_key]
            cells[(r, c)] = v["avg"]
            rows_v += [r] if r not in rows_v else []
            cols_v += [c] if c not in cols_v else []
    t = Table(title=title)
    t.add_column(row_key)
    for c in cols_v:
        t.add_column(f"{round(100 * c)}%" if isinstance(c, float) and c <= 1 else str(c), justify="right")
    for r in rows_v:
        t.add_row(str(r), *[fmt_pm_pct(cells[(r, c)]) if (r, c) in cells else "—" for c in cols_v])
    base = next((v for v in res["variants"] if v["baseline"]), None)
    if base is not None:
        t.caption = f"{base['label']}: {fmt_pm_pct(base['avg'])}"
    return t
