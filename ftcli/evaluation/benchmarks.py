"""`ft eval` as a library: checkpoints, resumable sampling, grading, results, tables (the
suites, files in `evals/`, are `ftcli.evaluation.suites`).

Outputs (`out/` = `--out`, default `<run>/eval/<suite>`, or `<run>/eval/<tag>/<suite>` for
`:best` / `:step_N`, or `runs/eval/<model>/<suite>` for a plain model):
- one benchmark: `out/samples.jsonl`, `out/protocol.json`, `out/results.json`;
- a group: `out/<benchmark>/samples.jsonl` (+ protocol.json) and one `out/results.json`.
`samples.jsonl` gets all samples of a problem in one fsync'ed append; on restart, lines of
problems that are incomplete (an interrupted write) are dropped and only the missing problems
are generated. `protocol.json` guards against resuming with a different protocol.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ftcli import get_task
from ftcli.evaluation.metrics import (
    compute_metric,
    disagreement_rate,
    metric_stderr,
    sampling_stderr,
    standard_metrics,
)
from ftcli.evaluation.sampling import grade, sample_task
from ftcli.evaluation.suites import Benchmark, EvalError, apply_overrides, load_suite
from ftcli.fetch.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model, torch_dtype
from ftcli.generation import get_backend
from ftcli.io import atomic_write_json, atomic_write_text, read_jsonl
from ftcli.rundir import STEP_DIR, RunDir, checkpoint_damage, is_model_dir, is_training_state
from ftcli.tasks.loading import describe_data, task_data_options

RESULTS_SCHEMA = 1
# protocol keys that change the samples; resuming with any of them different is refused
_SAMPLE_KEYS = ("task", "task_options", "split", "n", "temperature", "top_p", "top_k", "max_new_tokens", "seed",
                "model_ref", "backend", "extraction")  # extraction: the rows hold its grades


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def split_ckpt_spec(spec: str) -> tuple[str, str | None]:
    """'runs/x:best' -> ('runs/x', 'best'); 'runs/x' -> ('runs/x', None). A colon only counts
    when the part after it is a selector (best, final, last, step_N or N), so Windows drive
    letters and hub ids pass through."""
    if ":" in spec:
        base, sel = spec.rsplit(":", 1)
        if sel in ("best", "final", "last") or STEP_DIR.match(sel) or sel.isdigit():
            return base, sel
    return spec, None


def best_step(metrics_file: Path, available: set[int] | None = None) -> tuple[int, float]:
    """(step, val_accuracy) of the best validation row in `metrics.jsonl`.

    Rows with a `val_accuracy` key (and a `step`) are candidates; if `available` is given, only
    steps with a saved checkpoint. Max val_accuracy wins; ties go to the later step.
    """
    if not metrics_file.is_file():
        raise EvalError(f"{metrics_file} not found (needed for :best)")
    rows = [(int(r["step"]), float(r["val_accuracy"])) for r in read_jsonl(metrics_file)  # a live run's torn line is skipped
            if r.get("val_accuracy") is not None and "step" in r]
    if not rows:
        raise EvalError(f"{metrics_file} has no val_accuracy rows")
    cand = [r for r in rows if available is None or r[0] in available]
    if not cand:
        raise EvalError(
            f"no saved checkpoint at any validated step in {metrics_file.parent} "
            f"(validated: {sorted({s for s, _ in rows})[:8]}...)"
        )
    step, acc = max(cand, key=lambda r: (r[1], r[0]))
    return step, acc


def resolve_checkpoint(spec: str) -> Path:
    """`--ckpt` spec -> a model folder (with config.json).

    - `runs/x` or `runs/x:final`: `runs/x/checkpoints/final`, else the highest `step_XXXXXX`;
    - `runs/x:best`: the step with the max `val_accuracy` in `runs/x/metrics.jsonl` (ties ->
      later step) among saved `checkpoints/step_XXXXXX`;
    - `runs/x:step_000200` or `runs/x:200`: that step;
    - any folder with a config.json: itself.
    """
    base, sel = split_ckpt_spec(spec)
    p = Path(base).expanduser()
    run = RunDir(p)
    ck = run.checkpoints
    if sel is None and is_model_dir(p) and not ck.is_dir():
        return p  # a model folder (a run folder also has a config.json, but checkpoints/ too)
    if not p.is_dir():
        raise EvalError(f"checkpoint {spec!r}: {p} does not exist")
    if not ck.is_dir():
        raise EvalError(f"{p} is neither a model folder (config.json) nor a run (no checkpoints/)")
    steps = run.step_checkpoints(complete="config.json")
    if sel in (None, "final", "last"):
        if is_model_dir(run.final):
            return run.final
        if steps:
            return steps[max(steps)]
        raise EvalError(f"no checkpoints in {ck}")
    if sel == "best":
        step, _ = best_step(run.metrics_file, set(steps))
        return steps[step]
    step = int(STEP_DIR.match(sel).group(1)) if STEP_DIR.match(sel) else int(sel)
    if step not in steps:
        raise EvalError(f"no checkpoint for step {step} in {ck} (have: {sorted(steps)})")
    return steps[step]


def checked_checkpoint(spec: str) -> Path:
    """`resolve_checkpoint`, then the files a model load reads checked against the
    checkpoint's manifest (the DeepSpeed and RNG state are not read by an eval): a damaged
    checkpoint is one EvalError naming the file."""
    path = resolve_checkpoint(spec)
    why = checkpoint_damage(path, skip=is_training_state)
    if why is not None:
        raise EvalError(f"checkpoint {path} is damaged: {why}; evaluate another step (runs/x:step_N)")
    return path


def _run_dir_of(ckpt_path: Path) -> Path | None:
    """runs/x/checkpoints/<c> -> runs/x."""
    if ckpt_path.parent.name == "checkpoints":
        return ckpt_path.parent.parent
    return None


def _ckpt_tag(spec: str, path: Path) -> str | None:
    """Output sub-folder tag: None for the final checkpoint, 'best' or 'step_N' otherwise."""
    _, sel = split_ckpt_spec(spec)
    if sel == "best":
        return "best"
    if sel not in (None, "final", "last"):
        return path.name
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_") or "model"


def default_out(suite: str, model: str | None, ckpt: str | None, ckpt_path: Path | None) -> Path:
    """Default output folder (see module docstring)."""
    if ckpt_path is not None:
        run = _run_dir_of(ckpt_path)
        if run is not None:
            tag = _ckpt_tag(ckpt or "", ckpt_path)
            return run / "eval" / (f"{tag}/{suite}" if tag else suite)
        return Path("runs") / "eval" / _safe(ckpt_path.name) / suite
    return Path("runs") / "eval" / _safe(Path(model or DEFAULT_MODEL).name) / suite


# ---------------------------------------------------------------------------------------------
# Model target
# ---------------------------------------------------------------------------------------------
@dataclass
class Target:
    """What is evaluated: a label for tables, what was loaded, and from where."""

    label: str
    model_ref: str  # alias / path / hub id actually loaded
    ckpt: str | None = None  # resolved checkpoint folder
    ckpt_spec: str | None = None


def _has_tokenizer(p: Path) -> bool:
    return any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def load_target(model: str | None = None, ckpt: str | None = None, device: str | None = None,
                dtype: str | None = None, weights: bool = True):
    """(model, tokenizer, Target). `ckpt` wins over `model`; a checkpoint without tokenizer
    files takes the tokenizer of `model` (default model when None). `weights=False` (vLLM,
    which loads its own) returns model None and a `model_ref` vLLM can open."""
    if not weights:
        if ckpt:
            path = checked_checkpoint(ckpt)
            run = _run_dir_of(path)
            tok = load_tokenizer(str(path) if _has_tokenizer(path) else model)
            label = f"{run.name}:{path.name}" if run is not None else path.name
            return None, tok, Target(label, str(path), str(path), ckpt)
        name = model or DEFAULT_MODEL
        return None, load_tokenizer(name), Target(name, resolve_model(name))

    if ckpt:
        path = checked_checkpoint(ckpt)
        run = _run_dir_of(path)
        label = f"{run.name}:{path.name}" if run is not None else path.name
        if _has_tokenizer(path):
            mdl, tok = load_model(str(path), dtype=dtype, device=device)
        else:
            from transformers import (
                AutoModelForCausalLM,  # imported here: `ft eval list` stays fast
            )

            tok = load_tokenizer(model)
            mdl = AutoModelForCausalLM.from_pretrained(str(path), dtype=_dtype(dtype))
            mdl = mdl.to(device or "cpu").eval()
        return mdl, tok, Target(label, str(path), str(path), ckpt)
    name = model or DEFAULT_MODEL
    mdl, tok = load_model(name, dtype=dtype, device=device)
    return mdl, tok, Target(name, name)


def _dtype(d):
    return torch_dtype(d) or torch.float32


# ---------------------------------------------------------------------------------------------
# Tasks and grading
# ---------------------------------------------------------------------------------------------
def grade_sample(task, bench: Benchmark, response: str, sample: dict) -> dict:
    """Verdicts for one response under `bench`'s graders (`ftcli.evaluation.sampling.grade`)."""
    return grade(task, response, sample, bench.grader, bench.second_grader)


def grader_names(task, bench: Benchmark, sample: dict | None = None) -> tuple[str, str | None]:
    """(primary, second) grader names as recorded. Probes `task.grade("", sample)` for the
    graders the task reports; one it lacks falls back to the task's own verdict, `verify`."""
    if bench.grader == "verify":
        return "verify", None
    try:
        keys = set(task.grade("", sample or {}))
    except Exception:  # noqa: BLE001 - probing only
        keys = {bench.grader, bench.second_grader}
    first = bench.grader if bench.grader in keys else "verify"
    second = bench.second_grader if bench.second_grader and bench.second_grader in keys else None
    return first, second


# ---------------------------------------------------------------------------------------------
# Samples file (resumable)
# ---------------------------------------------------------------------------------------------
def read_samples(path: Path, n: int) -> dict[str, list[dict]]:
    """Complete problems in `samples.jsonl`: {problem id: [n rows sorted by sample index]}.
    Torn lines and problems with fewer than n distinct sample indices are ignored."""
    by: dict[str, dict[int, dict]] = {}
    for r in read_jsonl(path):
        try:
            pid, j = str(r["id"]), int(r["sample"])
        except (KeyError, TypeError, ValueError):
            continue
        by.setdefault(pid, {})[j] = r
    return {pid: [rows[j] for j in range(n)] for pid, rows in by.items() if all(j in rows for j in range(n))}


def _rewrite_complete(path: Path, done: dict[str, list[dict]]) -> None:
    """Rewrite samples.jsonl with only complete problems (atomic), before appending more."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for rows in done.values() for r in rows)
    atomic_write_text(path, text)


def _append_rows(path: Path, rows: list[dict]) -> None:
    """All samples of some problems in one write + fsync (a crash leaves at most one torn line)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def _check_protocol(out: Path, proto: dict) -> None:
    f = out / "protocol.json"
    if f.is_file() and (out / "samples.jsonl").is_file():
        old = json.loads(f.read_text(encoding="utf-8"))
        if "extraction" not in old and proto.get("extraction") in (None, "boxed"):
            old["extraction"] = proto.get("extraction")  # written before the option: boxed
        diff = [k for k in _SAMPLE_KEYS if old.get(k) != proto.get(k)]
        if diff:
            k = diff[0]
            raise EvalError(
                f"{out}/samples.jsonl was made with {k}={old.get(k)!r}, not {proto.get(k)!r}; "
                "use another --out or delete it"
            )
    atomic_write_json(f, proto)


# ---------------------------------------------------------------------------------------------
# Running a benchmark
# ---------------------------------------------------------------------------------------------
def protocol_of(bench: Benchmark, target: Target, backend: str, graders: tuple[str, str | None],
                limit: int | None, extraction: str | None = None) -> dict:
    """The protocol of a result (`extraction`: the task's answer extraction, math tasks)."""
    return {
        "task": bench.task, "task_options": bench.task_options, "split": bench.split, "metric": bench.metric, "n": bench.n,
        "temperature": bench.temperature, "top_p": bench.top_p, "top_k": bench.top_k,
        "max_new_tokens": bench.max_new_tokens, "seed": bench.seed,
        "grader": graders[0], "second_grader": graders[1],
        "model": target.label, "model_ref": target.model_ref, "ckpt": target.ckpt,
        "backend": backend, "limit": limit, "extraction": extraction,
    }


def protocol_str(p: dict) -> str:
    """One-line protocol: 'avg@16 · T=0.99 top-p=1 top-k=100 · n=16 · seed=0 · max 1024 tok ·
    math_verify · boxed' (the answer extraction of a task that has the option: math)."""
    t = "greedy" if p["temperature"] == 0 else f"T={p['temperature']:g} top-p={p['top_p']:g} top-k={p['top_k']}"
    lim = f" · first {p['limit']}" if p.get("limit") else ""
    ext = f" · {p['extraction']}" if p.get("extraction") else ""
    return f"{p['metric']} · {t} · n={p['n']} · seed={p['seed']} · max {p['max_new_tokens']} tok · {p['grader']}{ext}{lim}"


def gold_fields(sample: dict) -> dict:
    """What a samples.jsonl row carries of the problem, so that a grade can be audited without
    the data file: the gold `answer` (Countdown: also its `numbers`)."""
    return {k: sample[k] for k in ("answer", "numbers") if k in sample}


def grading_timeouts(rows: list[dict]) -> dict:
    """Grader calls that ran out of time over these samples, by kind: `cpu` (the worker's CPU
    budget) and `wall` (the wall-clock deadline), and the samples with any."""
    kinds = [k for r in rows for k in (r.get("timeouts") or {}).values()]
    return {"cpu": kinds.count("cpu"), "wall": kinds.count("wall"), "samples": sum(bool(r.get("timeouts")) for r in rows)}


def run_benchmark(model, tokenizer, bench: Benchmark, target: Target, out: Path, *,
                  limit: int | None = None, batch_size: int = 16, backend="hf",
                  progress=None, task=None, data_root: str | Path | None = None) -> dict:
    """Generate (resuming), grade and score one benchmark; writes samples.jsonl and protocol.json
    in `out` and returns its results entry (see `results.json`; `data`: the files and their
    sha256, read from `data_root`, else $FT_DATA, else the data cache)."""
    if task is None:
        opts = {**bench.task_options, **task_data_options(bench.task, data_root)}
        if bench.extraction != "boxed":
            opts["extraction"] = bench.extraction
        try:
            task = get_task(bench.task, **opts)
        except TypeError as e:
            if "extraction" not in str(e):
                raise
            raise EvalError(f"{bench.name}: --extraction {bench.extraction} is an option of the math tasks; "
                            f"{bench.task} has its own answer format") from None
    problems = list(task.load(bench.split))
    if limit is not None:
        problems = problems[: max(0, limit)]
    if not problems:
        raise EvalError(f"{bench.name}: no problems in split {bench.split!r}")
    pids = [str(p.get("id", i)) for i, p in enumerate(problems)]
    if len(set(pids)) != len(pids):
        raise EvalError(f"{bench.name}: duplicate problem ids in split {bench.split!r}")
    graders = grader_names(task, bench, problems[0])
    proto = protocol_of(bench, target, backend if isinstance(backend, str) else backend.name, graders, limit,
                        extraction=getattr(task, "extraction", None))
    out.mkdir(parents=True, exist_ok=True)
    _check_protocol(out, proto)
    sfile = out / "samples.jsonl"
    done = read_samples(sfile, bench.n)
    _rewrite_complete(sfile, done)
    todo = [i for i, pid in enumerate(pids) if pid not in done]

    eng = backend
    if isinstance(backend, str):
        eng = get_backend(backend, **({"model_path": target.model_ref} if backend == "vllm" else {}))
    task_id = None
    if progress is not None:
        task_id = progress.add_task(bench.label, total=len(pids) * bench.n,
                                    completed=(len(pids) - len(todo)) * bench.n)
    t0 = time.time()
    todo_problems = [problems[i] for i in todo]
    # problems per generate call (each chunk is graded and written before the next: resumable);
    # vLLM takes large calls (VLLMBackend.chunk_problems) and schedules the rows itself
    chunk = getattr(eng, "chunk_problems", None) or max(1, batch_size // bench.n)
    for chunk_idx, groups in sample_task(
        model, tokenizer, task, todo_problems, n=bench.n, max_new_tokens=bench.max_new_tokens,
        temperature=bench.temperature, top_p=bench.top_p, top_k=bench.top_k, seed=bench.seed,
        batch_size=batch_size, chunk=chunk, backend=eng,
        progress=(lambda k: progress.advance(task_id, k)) if progress is not None else None,
    ):
        idx = [todo[c] for c in chunk_idx]
        rows = []
        for i, group in zip(idx, groups, strict=True):
            for j, r in enumerate(group):
                g = grade_sample(task, bench, r.response_text, problems[i])
                rows.append({"id": pids[i], "sample": j, "response": r.response_text,
                             **gold_fields(problems[i]),
                             "extracted": g["extracted"], "correct": g["correct"],
                             "verdicts": g["verdicts"], "reward": g["reward"],
                             "finished": r.finished, "response_tokens": len(r.response_ids),
                             **({"grade_error": g["grade_error"]} if "grade_error" in g else {}),
                             **({"timeouts": g["timeouts"]} if g.get("timeouts") else {})})
            done[pids[i]] = rows[-len(group):]
        _append_rows(sfile, rows)
    rows_by = [done[pid] for pid in pids]
    return {**score_benchmark(bench, rows_by, proto, elapsed=time.time() - t0), "data": describe_data(task)}


def score_benchmark(bench: Benchmark, rows_by: list[list[dict]], proto: dict, elapsed: float = 0.0) -> dict:
    """Results entry of one benchmark from its samples (rows grouped per problem)."""
    correct = [[bool(r["correct"]) for r in rows] for rows in rows_by]
    answers = [[r.get("extracted") for r in rows] for rows in rows_by]
    flat = [r for rows in rows_by for r in rows]
    entry: dict[str, Any] = {
        "label": bench.label,
        "metric": bench.metric,
        "value": compute_metric(bench.metric, correct, answers),
        "stderr": metric_stderr(bench.metric, correct, answers),  # over problems
        "sampling_stderr": sampling_stderr(bench.metric, correct),  # the problems fixed
        "n_problems": len(rows_by),
        "n_samples": len(flat),
        "metrics": standard_metrics(correct, answers),
        "mean_reward": sum(float(r.get("reward", 0.0)) for r in flat) / max(1, len(flat)),
        "truncated_rate": sum(not r.get("finished", True) for r in flat) / max(1, len(flat)),
        "mean_response_tokens": sum(int(r.get("response_tokens", 0)) for r in flat) / max(1, len(flat)),
        "grade_errors": sum("grade_error" in r for r in flat),
        "grading_timeouts": grading_timeouts(flat),
        "protocol": proto,
        "seconds": round(elapsed, 2),
    }
    second = proto.get("second_grader")
    if second:
        sec = [[r.get("verdicts", {}).get(second) for r in rows] for rows in rows_by]
        have = all(v is not None for s in sec for v in s)
        entry["second_grader"] = {
            "name": second,
            "value": compute_metric(bench.metric, [[bool(v) for v in s] for s in sec], answers) if have else None,
            "disagreement_rate": disagreement_rate([r["correct"] for r in flat],
                                                   [r.get("verdicts", {}).get(second) for r in flat]),
        }
    return entry


def evaluate(suite_name: str, *, model: str | None = None, ckpt: str | None = None,
             out: str | Path | None = None, limit: int | None = None, batch_size: int = 16,
             backend: str = "hf", device: str | None = None, dtype: str | None = None,
             overrides: dict | None = None, progress=None, loaded=None,
             data_root: str | Path | None = None) -> tuple[dict, Path]:
    """Run a suite; returns (results document, results.json path). `loaded` = (model, tok,
    Target) skips loading (tests, the trainer's in-process eval); `data_root`: where the
    benchmark files are (default: $FT_DATA, else the data cache)."""
    suite = load_suite(suite_name)
    benches = [apply_overrides(b, **(overrides or {})) for b in suite.benchmarks]
    eng = get_backend(backend)  # a missing vLLM fails here, before any model is loaded
    if loaded is None:
        mdl, tok, target = load_target(model, ckpt, device=device, dtype=dtype,
                                       weights=backend != "vllm")
    else:
        mdl, tok, target = loaded
    if getattr(eng, "model_path", "") is None:
        eng.model_path = target.model_ref
    out_dir = Path(out) if out is not None else default_out(
        suite.name, model, ckpt, Path(target.ckpt) if target.ckpt else None)
    results = {}
    for b in benches:
        bout = out_dir / b.name if suite.is_group else out_dir
        results[b.name] = run_benchmark(mdl, tok, b, target, bout, limit=limit,
                                        batch_size=batch_size, backend=eng, progress=progress,
                                        data_root=data_root)
    vals = [r["value"] for r in results.values()]
    doc = {
        "schema": RESULTS_SCHEMA,
        "suite": suite.name,
        "label": suite.label,
        "model": target.label,
        "model_ref": target.model_ref,
        "ckpt": target.ckpt,
        "ckpt_spec": target.ckpt_spec,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "benchmarks": results,
        "avg": {"value": sum(vals) / len(vals), "of": list(results),
                "note": "plain mean of the benchmarks' primary metrics (Table 2 'Avg')"},
    }
    path = atomic_write_json(out_dir / "results.json", doc)
    return doc, path


# ---------------------------------------------------------------------------------------------
# Reading results back, tables
# ---------------------------------------------------------------------------------------------
def collect_results(spec: str) -> tuple[str, dict[str, dict]]:
    """(label, {benchmark: entry}) for `ft eval compare`: a results.json, an eval folder, or a
    run (`runs/x`, `runs/x:best`, `runs/x:step_N`) whose `eval/` holds results. When a
    benchmark was evaluated several times, the newest results.json wins."""
    p = Path(spec)
    if p.is_file():
        files = [p]
        label = p.parent.name
    else:
        base, sel = split_ckpt_spec(spec)
        bp = Path(base)
        if (bp / "results.json").is_file() and sel is None:
            files, label = [bp / "results.json"], bp.name
        elif (bp / "eval").is_dir():
            ev = bp / "eval"
            if sel in (None, "final", "last"):
                root, label = ev, bp.name
            else:
                tag = "best" if sel == "best" else (sel if sel.startswith("step_") else f"step_{int(sel):06d}")
                root, label = ev / tag, f"{bp.name}:{tag}"
            files = sorted(root.glob("*/results.json"))
        else:
            raise EvalError(f"{spec}: no results.json and no eval/ folder")
    if not files:
        raise EvalError(f"{spec}: no eval results found (run `ft eval SUITE --ckpt {spec}` first)")
    docs = []
    for f in files:
        try:
            docs.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise EvalError(f"{f}: unreadable results ({e})") from None
    docs.sort(key=lambda d: d.get("created", ""))
    merged: dict[str, dict] = {}
    for d in docs:
        merged.update(d.get("benchmarks", {}))
    return label, merged


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def results_table(rows: list[tuple[str, dict[str, dict]]], title: str | None = None, delta: bool = False):
    """Rich table in the layout of the paper's Table 2: one row per model, one column per
    benchmark (header = label and metric), then Avg; lines below give every column's protocol.
    `delta=True` (two rows) adds a Δ row = second - first, over the common benchmarks."""

    names: list[str] = []
    for _, res in rows:
        for k in res:
            if k not in names and all(k in r for _, r in rows):
                names.append(k)
    if not names:
        raise EvalError("no benchmark in common (" + "; ".join(f"{lab}: {', '.join(r) or '-'}" for lab, r in rows) + ")")
    t = Table(title=title)
    t.add_column("model")
    first = rows[0][1]
    for k in names:
        t.add_column(f"{first[k].get('label', k)}\n{first[k]['metric']}", justify="right")
    t.add_column("Avg", justify="right", style="bold")
    vals = []
    for label, res in rows:
        v = [res[k]["value"] for k in names]
        vals.append(v)
        t.add_row(label, *[_pct(x) for x in v], _pct(sum(v) / len(v)))
        sec = [res[k].get("second_grader") for k in names]
        if not delta and any(s and s.get("value") is not None for s in sec):
            sv = [s.get("value") if s else None for s in sec]
            known = [x for x in sv if x is not None]
            name = next(s["name"] for s in sec if s)
            t.add_row(f"  [dim]{name} grader[/dim]", *[_pct(x) for x in sv],
                      _pct(sum(known) / len(known)) if len(known) == len(sv) else "—", style="dim")
            dis = [s.get("disagreement_rate") if s else None for s in sec]
            t.add_row("  [dim]grader disagreement %[/dim]", *[_pct(x) for x in dis], "", style="dim")
    if delta and len(rows) == 2:
        d = [b - a for a, b in zip(vals[0], vals[1], strict=True)]
        avg = sum(vals[1]) / len(d) - sum(vals[0]) / len(d)
        fmt = lambda x: f"[{'green' if x > 0 else 'red' if x < 0 else ''}]{100 * x:+.1f}[/]" if x else "+0.0"  # noqa: E731
        t.add_row("Δ", *[fmt(x) for x in d], fmt(avg))
    lines = []
    for k in names:
        protos = list(dict.fromkeys(protocol_str(res[k]["protocol"]) for _, res in rows))
        n_pr = {res[k]["n_problems"] for _, res in rows}
        mark = "" if len(protos) == 1 else "  [red](protocols differ)[/red]"
        lines.append(f"{first[k].get('label', k)}: {' | '.join(protos)} · {'/'.join(map(str, sorted(n_pr)))} problems{mark}")
    lines.append("values in %; Avg = plain mean of the columns")

    return Group(t, *[Text.from_markup(x, style="dim") for x in lines])
