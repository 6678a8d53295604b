"""The paper's experiments as library functions: the engine of `ft ablate` and `scripts/*.sh`.

Analyses (forward passes and greedy decoding only):
- `intervene`  Table 1: block the information of the top / bottom / random 20% of reasoning
               tokens by flow and regenerate the answer; answer-change and correctness-reversal
               rates with Wilson 95% intervals.
- `answer_format`  Sec. 5.2: overlap of the top-40% reasoning tokens when the same reasoning
               ends in a bare value, a full line, an explanation, or a letter choice.
- `token_classes`  Sec. 5.2 / Fig. 3: structural delimiters vs semantic tokens among the
               high-flow tokens; ranked bars of the highest- and lowest-flow tokens.
- `overhead`   Table 6: step time and credit time, none vs flow (fused / separate pass), at
               two context lengths, interleaved in one process (ratios from one run).

Training sweeps (`run_sweep`: every variant x seed is trained by `ftcli.trainer.train` with
otherwise identical options, then evaluated by `ftcli.evaluate.evaluate`; finished runs and
evaluations are skipped on a rerun): `layer_variants` (Fig. 6), `ratio_variants` (Table 5),
`gamma_variants` and `weighting_variants` (Table 7), `credit_variants` (Tables 2-4, Figs. 4-5),
`token_class_variants` (Sec. 5.2: flow credit restricted to one token class).

Every experiment writes JSON (and CSV) under its `out` folder, plus PNGs (`ftcli.plots`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from ftcli.io import append_jsonl, atomic_write_json, atomic_write_text
from ftcli.models import DEFAULT_MODEL

Z95 = 1.959963984540054  # two-sided 95% normal quantile

# Reference numbers quoted from the paper (field notes, Sec. 2.3), printed beside ours.
PAPER_TABLE1 = {"top": (45.9, 14.9), "random": (29.5, 4.5), "bottom": (14.9, 0.5)}


# =============================================================================================
# Statistics
# =============================================================================================
def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n; (0, 1) when n == 0.

    centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(k: int, n: int) -> dict:
    """{"k", "n", "rate", "ci": [lo, hi]} with the Wilson 95% interval (rate None when n = 0)."""
    lo, hi = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "ci": [lo, hi]}


def mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; 0 for one value; None for none)."""
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    if a.numel() < 2:
        return None
    ra, rb = _avg_ranks(a.double()), _avg_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else None


def _avg_ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype)
    for v in torch.unique(x):  # ties share their mean rank
        m = x == v
        if int(m.sum()) > 1:
            ranks[m] = ranks[m].mean()
    return ranks


# =============================================================================================
# Shared helpers
# =============================================================================================
def _seed_of(*parts) -> int:
    h = hashlib.blake2b("\x00".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 62) - 1)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line (interrupted write)
    return rows


def _guard_settings(out: Path, settings: dict, ignore: Sequence[str] = ()) -> None:
    """Refuse to resume an output folder made with different settings (except `ignore`)."""
    f = out / "settings.json"
    if f.is_file():
        old = json.loads(f.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(settings) if k not in ignore and old.get(k) != settings.get(k))
        if diff:
            raise ValueError(
                f"{out} holds results made with other settings ({', '.join(diff)}); "
                "choose another --out or delete that folder"
            )
    atomic_write_json(f, settings)


def _progress(console, enabled: bool):
    from ftcli.progress import progress_bar

    return progress_bar("[bold]{task.description}", console=console, disable=not enabled)


def _console(console):
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    return console


def _load(model, device=None):
    """(model, tokenizer) from a name or an already loaded pair."""
    if isinstance(model, tuple):
        return model
    from ftcli.models import load_model

    return load_model(model, device=device)


def _task(task):
    if isinstance(task, str):
        from ftcli import get_task

        return get_task(task)
    return task


def _grade(task, response: str, sample: dict) -> tuple[str | None, bool]:
    """(extracted answer, correct) from the task's `grade` (or answer_span + verify)."""
    g = task.grade(response, sample) if hasattr(task, "grade") else {}
    ext = g.get("extracted")
    if ext is None and not g:
        span = task.answer_span(response)
        ext = response[span[0] : span[1]] if span else None
    ok = g.get("correct")
    if not isinstance(ok, bool):
        ok = bool(task.verify(response, sample))
    return (None if ext is None else str(ext)), ok


_NUM = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")


def same_answer(a: str | None, b: str | None) -> bool:
    """Do two extracted answers agree? Exact numbers when both parse as one (commas, `$` and
    spaces ignored), else the strings after `ftcli.metrics.normalize_answer`."""
    from ftcli.metrics import normalize_answer

    na, nb = normalize_answer(a), normalize_answer(b)
    if na is None or nb is None:
        return na == nb
    xa, xb = na.replace(",", ""), nb.replace(",", "")
    if _NUM.fullmatch(xa) and _NUM.fullmatch(xb):
        return Fraction(xa) == Fraction(xb)
    return na == nb


@dataclass
class _Prompt:
    text: str
    ids: list[int]
    question: list[bool]  # [len(ids)]


def _prompt(tok, task, sample: dict, question: str | None = None) -> _Prompt:
    """The task's rendered prompt, its ids (as `ftcli.generation` encodes them) and Q mask.
    `question` replaces the sample's question in the prompt (Q stays the original question)."""
    from ftcli.generation import encode_prompt, render_prompt
    from ftcli.spans import find_question_span, span_to_token_mask
    from ftcli.trainer import _prompt_offsets

    s = sample if question is None else dict(sample, question=question)
    text = render_prompt(tok, task.prompt(s), task.assistant_prefix(s) or "")
    ids = encode_prompt(tok, text)
    offs = _prompt_offsets(tok, text, ids)
    q = span_to_token_mask(offs, find_question_span(text, str(sample["question"])), len(ids))
    return _Prompt(text, ids, q.tolist())


@dataclass
class FlowRow:
    """One teacher-forced sequence for `flow_rows`: prompt then response, with Q and A."""

    prompt_ids: list[int]
    question: list[bool]  # [len(prompt_ids)]
    response_ids: list[int]
    answer: list[bool]  # [len(response_ids)]


def flow_rows(model, rows: Sequence[FlowRow], layers="mid", ratio: float = 0.4, gamma: float = 1.5,
              pad_id: int = 0, batch_size: int = 8) -> list[dict]:
    """`trace_flow` on W from one teacher-forced forward per batch (right padding; the flow is
    padding-invariant). Returns per row {"tau", "selected" ([n_response], response positions),
    "fallback"}."""
    from ftcli.attention import mean_attention
    from ftcli.flow import trace_flow

    device = next(model.parameters()).device
    out: list[dict] = []
    for b0 in range(0, len(rows), batch_size):
        chunk = rows[b0 : b0 + batch_size]
        B, T = len(chunk), max(len(r.prompt_ids) + len(r.response_ids) for r in chunk)
        ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
        am = torch.zeros(B, T, dtype=torch.long)  # [B, T]
        q, a, r = (torch.zeros(B, T, dtype=torch.bool) for _ in range(3))
        for b, row in enumerate(chunk):
            p, n = len(row.prompt_ids), len(row.prompt_ids) + len(row.response_ids)
            ids[b, :n] = torch.tensor(row.prompt_ids + row.response_ids)
            am[b, :n] = 1
            q[b, :p] = torch.tensor(row.question, dtype=torch.bool)
            a[b, p:n] = torch.tensor(row.answer, dtype=torch.bool)
            r[b, p:n] = True
        with torch.no_grad():
            W = mean_attention(model, ids.to(device), am.to(device), layers=layers).float().cpu()
        res = trace_flow(W, q, a, r, ratio=ratio, gamma=gamma, overwrite=True)
        for b, row in enumerate(chunk):
            p, n = len(row.prompt_ids), len(row.prompt_ids) + len(row.response_ids)
            out.append({"tau": res.tau[b, p:n].clone(), "selected": res.mask[b, p:n].clone(),
                        "fallback": bool(res.fallback[b])})
        del W
    return out


def _select(scores: torch.Tensor, ratio: float, how: str, seed: int) -> torch.Tensor:
    """Positions (sorted) of ceil(ratio * n - 1e-9) of the n scores: `top` / `bottom` by score
    (ties to the lower position, zeros allowed so every arm blocks the same count) or `random`."""
    from ftcli.flow import num_selected, select_tokens

    n = scores.numel()
    k = int(num_selected(n, ratio))
    if how == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=g)[:k].sort().values
    m = select_tokens(scores[None], torch.ones(1, n, dtype=torch.bool), ratio, largest=how == "top", exclude_zero=False)
    return m[0].nonzero()[:, 0]


def _decode(tok, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


# =============================================================================================
# Table 1: causal intervention
# =============================================================================================
ARMS = ("top", "random", "bottom", "none")
ARM_LABELS = {"top": "Top-{p}% flow", "random": "Random {p}%", "bottom": "Bottom-{p}% flow", "none": "No block (control)"}


@dataclass
class InterveneConfig:
    model: str = DEFAULT_MODEL
    task: str = "gsm8k"
    split: str = "test"
    n: int = 50
    ratio: float = 0.2
    layers: str = "mid"
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    slack: int = 16
    keep_truncated: bool = False  # smoke runs with random models, which never finish
    batch_size: int = 8
    out: str = "runs/ablate/intervene"


INTERVENE_PROTOCOL = """\
1. Original: the prompt is the task's chat prompt; the response is generated once with
   --temperature (0 = greedy; else seeded sampling) and at most --max-new-tokens tokens.
   Problems whose response has no answer span (task.answer_span), or did not finish within
   --max-new-tokens (a truncated response has no final answer, only its last number), are
   skipped and counted.
2. Flow: one teacher-forced forward over prompt + original response gives W (--layers);
   trace_flow with Q = the question, A = the answer-span tokens, R = the response gives tau.
3. Candidates: the reasoning tokens, i.e. response tokens before the first answer token (n).
   Each arm blocks k = ceil(ratio * n) of them: top = highest tau, bottom = lowest tau (ties
   to the earlier token), random = a uniform draw seeded by (seed, problem id), none = nothing.
4. Kept fixed: the prompt and the reasoning tokens (teacher-forced, token for token, the same
   ids as the original); blocked: the keys of the k chosen tokens get zero attention from every
   later position in every layer and head (the reasoning after them, and all new tokens);
   regenerated: everything from the first answer token on, greedily with the KV cache, for at
   most (original tail length + slack) tokens. All arms of a problem run in one batch.
5. Measured against the original: answer change = the new extracted answer differs (numbers
   compared exactly, else normalised strings; no answer counts as a change); correctness
   reversal = the task's verdict flips (either way; both directions are also counted). Rates
   over the problems with an answer, with counts and Wilson 95% intervals. The unblocked arm
   is the control: it reproduces the original up to float differences of batched decoding."""


def _regenerate(model, tok, prefix: list[int], blocked: torch.Tensor, max_new: int) -> list[list[int]]:
    """Greedy KV-cached continuations of one prefix, one row per blocked mask ([A, len])."""
    from transformers import GenerationConfig

    from ftcli.generation import stop_token_ids
    from ftcli.intervention import block_keys

    stops = stop_token_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    A, L = blocked.shape
    device = next(model.parameters()).device
    ids = torch.tensor([prefix] * A, dtype=torch.long, device=device)  # [A, L]
    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, temperature=1.0,
                           top_p=1.0, top_k=50, repetition_penalty=1.0, use_cache=True,
                           pad_token_id=pad, eos_token_id=stops)
    with torch.no_grad(), block_keys(model, blocked.to(device)):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    res = []
    for row in out[:, L:].tolist():
        for t, x in enumerate(row):
            if x in stops:
                row = row[: t + 1]
                break
        res.append(row)
    return res


def _intervene_problem(model, tok, task, sample, prompt: _Prompt, ro, amask: list[bool], flow: dict,
                       cfg: InterveneConfig) -> dict:
    from ftcli.flow import num_selected

    pid = str(sample["id"])
    rec: dict = {"id": pid, "status": "ok"}
    answer0, correct0 = _grade(task, ro.response_text, sample)
    rec["original"] = {"response": ro.response_text, "answer": answer0, "correct": correct0,
                       "tokens": len(ro.response_ids), "finished": ro.finished}
    if not ro.finished and not cfg.keep_truncated:
        return {**rec, "status": "truncated"}
    if answer0 is None or not any(amask):
        return {**rec, "status": "no_answer"}
    if flow["fallback"]:
        return {**rec, "status": "no_question"}
    a0 = amask.index(True)  # first answer token (response position)
    tau = flow["tau"][:a0]  # [n] reasoning tokens
    k = int(num_selected(a0, cfg.ratio))
    if k == 0:
        return {**rec, "status": "no_reasoning"}
    P = len(prompt.ids)
    prefix = prompt.ids + list(ro.response_ids[:a0])
    masks = torch.zeros(len(ARMS), len(prefix), dtype=torch.bool)  # [arms, L]
    chosen = {}
    for j, arm in enumerate(ARMS):
        if arm == "none":
            chosen[arm] = []
            continue
        pos = _select(tau, cfg.ratio, arm, _seed_of(cfg.seed, "random", pid)).tolist()
        chosen[arm] = pos
        masks[j, [P + p for p in pos]] = True
    max_new = len(ro.response_ids) - a0 + cfg.slack
    conts = _regenerate(model, tok, prefix, masks, max_new)
    rec.update(n_reasoning=a0, k=k, n_positive=int((tau > 0).sum()),
               tau=[float(f"{x:.6g}") for x in tau.tolist()], arms={})
    for arm, cont in zip(ARMS, conts, strict=True):
        text = _decode(tok, list(ro.response_ids[:a0]) + cont)
        ans, ok = _grade(task, text, sample)
        rec["arms"][arm] = {
            "blocked": chosen[arm],
            "blocked_text": [_decode(tok, [ro.response_ids[p]]) for p in chosen[arm]],
            "continuation": _decode(tok, cont),
            "answer": ans,
            "correct": ok,
            "changed": not same_answer(answer0, ans),
            "reversed": ok != correct0,
        }
    return rec


def summarize_intervention(records: Sequence[dict], ratio: float = 0.2, keep_truncated: bool = False) -> dict:
    """Per-arm counts, rates and Wilson intervals over the problems with status ok (unless
    `keep_truncated`, a record whose original response did not finish counts as truncated,
    also when an older version stored it as ok)."""

    def status_of(r):
        st = r.get("status", "?")
        cut = st == "ok" and not r["original"].get("finished", True) and not keep_truncated
        return "truncated" if cut else st

    ok = [r for r in records if status_of(r) == "ok"]
    status: dict[str, int] = {}
    for r in records:
        status[status_of(r)] = status.get(status_of(r), 0) + 1
    n0_correct = sum(bool(r["original"]["correct"]) for r in ok)
    arms = {}
    for arm in ARMS:
        rows = [r["arms"][arm] for r in ok]
        orig = [r["original"]["correct"] for r in ok]
        arms[arm] = {
            "label": ARM_LABELS[arm].format(p=round(100 * ratio)),
            "changed": proportion(sum(x["changed"] for x in rows), len(rows)),
            "reversed": proportion(sum(x["reversed"] for x in rows), len(rows)),
            "correct_to_wrong": proportion(sum(x["reversed"] and o for x, o in zip(rows, orig, strict=True)), n0_correct),
            "wrong_to_correct": proportion(sum(x["reversed"] and not o for x, o in zip(rows, orig, strict=True)), len(rows) - n0_correct),
            "accuracy": proportion(sum(x["correct"] for x in rows), len(rows)),
            "mean_blocked": (sum(len(x["blocked"]) for x in rows) / len(rows)) if rows else 0.0,
        }
    return {"problems": len(records), "used": len(ok), "status": status,
            "original_accuracy": proportion(n0_correct, len(ok)), "arms": arms}


def intervene(cfg: InterveneConfig, *, console=None, progress: bool = True, model=None, task=None) -> dict:
    """Table 1 (protocol: INTERVENE_PROTOCOL). Resumable: finished problems are kept in
    `problems.jsonl` and skipped. Writes results.json, table.csv, intervene.png; returns results."""
    from ftcli.generation import generate
    from ftcli.spans import span_to_token_mask

    out = Path(cfg.out)
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    _guard_settings(out, settings, ignore=("n", "batch_size"))
    task_obj = _task(task if task is not None else cfg.task)
    samples = list(task_obj.load(cfg.split))[: cfg.n]
    pfile = out / "problems.jsonl"
    done = {r["id"]: r for r in _read_jsonl(pfile)}
    todo = [s for s in samples if str(s["id"]) not in done]
    console = _console(console)
    if todo:
        mdl, tok = _load(model if model is not None else cfg.model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        with _progress(console, progress) as prog:
            bar = prog.add_task("intervene", total=len(samples), completed=len(samples) - len(todo))
            for c0 in range(0, len(todo), cfg.batch_size):
                chunk = todo[c0 : c0 + cfg.batch_size]
                prompts = [_prompt(tok, task_obj, s) for s in chunk]
                ros = [g[0] for g in generate(mdl, tok, [p.text for p in prompts], n=1,
                                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                              seed=cfg.seed, batch_size=cfg.batch_size)]
                frows = [FlowRow(p.ids, p.question, list(ro.response_ids),
                                 span_to_token_mask(ro.response_offsets, task_obj.answer_span(ro.response_text),
                                                    len(ro.response_ids)).tolist())
                         for p, ro in zip(prompts, ros, strict=True)]
                flows = flow_rows(mdl, frows, layers=cfg.layers, ratio=cfg.ratio, pad_id=pad,
                                  batch_size=cfg.batch_size)
                for s, p, ro, fr, fl in zip(chunk, prompts, ros, frows, flows, strict=True):
                    rec = _intervene_problem(mdl, tok, task_obj, s, p, ro, fr.answer, fl, cfg)
                    append_jsonl(pfile, rec)
                    done[rec["id"]] = rec
                    prog.advance(bar)
    records = [done[str(s["id"])] for s in samples if str(s["id"]) in done]
    summary = summarize_intervention(records, cfg.ratio, cfg.keep_truncated)
    results = {"experiment": "intervene", "table": "Table 1", "settings": settings,
               "protocol": INTERVENE_PROTOCOL, "paper": PAPER_TABLE1, **summary}
    atomic_write_json(out / "results.json", results)
    rows = [["arm", "blocked_mean", "n", "changed", "changed_rate", "changed_lo", "changed_hi",
             "reversed", "reversed_rate", "reversed_lo", "reversed_hi", "correct_to_wrong", "wrong_to_correct"]]
    for arm, s in summary["arms"].items():
        rows.append([arm, f"{s['mean_blocked']:.2f}", s["changed"]["n"], s["changed"]["k"], s["changed"]["rate"],
                     *s["changed"]["ci"], s["reversed"]["k"], s["reversed"]["rate"], *s["reversed"]["ci"],
                     s["correct_to_wrong"]["k"], s["wrong_to_correct"]["k"]])
    _write_csv(out / "table.csv", rows)
    if summary["used"]:
        from ftcli.plots import intervention_bars

        intervention_bars(list(ARMS), summary["arms"], out / "intervene.png",
                          title=f"{cfg.task}: blocking {round(100 * cfg.ratio)}% of reasoning tokens")
    return results


def intervention_table(results: dict):
    """Rich table in the layout of the paper's Table 1 (ours, then the paper's numbers)."""
    from rich.table import Table

    s = results["settings"]
    t = Table(title=f"Table 1 · causal intervention on {s['task']} · {results['used']} problems "
                    f"({results['problems']} run) · {s['model']}")
    for c in ("blocked tokens", "mean k", "answer change % [95% CI]", "correctness reversal % [95% CI]",
              "correct→wrong", "wrong→correct", "paper (change / reversal)"):
        t.add_column(c, justify="right" if c != "blocked tokens" else "left")
    for arm, a in results["arms"].items():
        ch, rv = a["changed"], a["reversed"]
        paper = results.get("paper", {}).get(arm)
        t.add_row(a["label"], f"{a['mean_blocked']:.1f}", _rate_ci(ch), _rate_ci(rv),
                  f"{a['correct_to_wrong']['k']}/{a['correct_to_wrong']['n']}",
                  f"{a['wrong_to_correct']['k']}/{a['wrong_to_correct']['n']}",
                  f"{paper[0]} / {paper[1]}" if paper else "—")
    return t


def _rate_ci(p: dict) -> str:
    if p["rate"] is None:
        return "—"
    return f"{100 * p['rate']:.1f} [{100 * p['ci'][0]:.1f}, {100 * p['ci'][1]:.1f}] ({p['k']}/{p['n']})"


def _write_csv(path: Path, rows: list[list]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write_text(path, buf.getvalue())


# =============================================================================================
# Sec. 5.2: answer formats and token classes (teacher-forced text)
# =============================================================================================
FORMATS = ("value", "line", "explain", "letter")
FORMAT_LABELS = {"value": "bare value", "line": "full line", "explain": "with explanation", "letter": "letter choice"}


@dataclass
class TextConfig:
    """Shared settings of `answer_format` and `token_classes`."""

    model: str = DEFAULT_MODEL
    task: str = "gsm8k"
    split: str = "test"
    n: int = 50
    ratio: float = 0.4
    layers: str = "mid"
    source: str = "gold"  # gold: the sample's worked solution; model: the model's own response
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 8
    out: str = "runs/ablate/format"


def _clean_solution(sol: str) -> str:
    """A worked solution without its final `#### answer` line and calculator `<<...>>` notes."""
    body = sol.rsplit("####", 1)[0]
    body = re.sub(r"<<[^>]*>>", "", body)
    return "\n".join(line.rstrip() for line in body.strip().splitlines() if line.strip())


def _reasonings(mdl, tok, task, samples: list[dict], cfg: TextConfig) -> list[tuple[dict, str, str, str]]:
    """(sample, reasoning text, final answer, full response) per usable sample. gold: the worked
    solution, the gold answer, and "reasoning + The answer is \\boxed{X}."; model: the model's
    greedy response, cut before the line that holds its answer span."""
    out = []
    if cfg.source == "gold":
        for s in samples:
            sol = s.get("solution")
            if not sol:
                raise ValueError(f"task {cfg.task!r} has no worked solutions; use --source model")
            body = _clean_solution(str(sol))
            if body:
                ans = str(s["answer"])
                out.append((s, body, ans, f"{body}\nThe answer is \\boxed{{{ans}}}."))
        return out
    if cfg.source != "model":
        raise ValueError(f"--source must be gold or model, got {cfg.source!r}")
    from ftcli.generation import generate

    prompts = [_prompt(tok, task, s).text for s in samples]
    groups = generate(mdl, tok, prompts, n=1, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                      seed=cfg.seed, batch_size=cfg.batch_size)
    for s, g in zip(samples, groups, strict=True):
        text = g[0].response_text
        span = task.answer_span(text)
        if span is None:
            continue
        cut = text.rfind("\n", 0, span[0])
        body = text[:cut].strip() if cut > 0 else ""
        if body:
            out.append((s, body, text[span[0] : span[1]].strip(), text))
    return out


def _letter_options(answer: str, seed: int) -> tuple[str, str]:
    """(options text, correct letter): the answer and three distractors, shuffled by `seed`."""
    a = answer.replace(",", "")
    if _NUM.fullmatch(a):
        v = Fraction(a)
        pool = [v + 1, v - 1, v * 2, v + 10, v - 10, v * 3]
        fmt = [str(int(x)) if x.denominator == 1 else str(float(x)) for x in pool]
        distract = [x for x in dict.fromkeys(fmt) if x != a][:3]
    else:
        distract = [f"{answer} + 1", f"2 * ({answer})", f"{answer} - 1"]
    choices = [answer] + distract
    order = torch.randperm(4, generator=torch.Generator().manual_seed(seed)).tolist()
    choices = [choices[i] for i in order]
    letters = "ABCD"
    text = "Options: " + " ".join(f"({letters[i]}) {c}" for i, c in enumerate(choices))
    return text, letters[choices.index(answer)]


def _format_segment(fmt: str, answer: str, reasoning: str, letter: str) -> str:
    last = reasoning.strip().splitlines()[-1].strip().rstrip(".")
    return {
        "value": answer,
        "line": f"The final answer is {answer}.",
        "explain": f"The final answer is {answer}, because {last}.",
        "letter": f"({letter})",
    }[fmt]


def answer_format(cfg: TextConfig, *, console=None, progress: bool = True, model=None, task=None) -> dict:
    """Sec. 5.2: is the top set of reasoning tokens stable across answer formats?

    The same reasoning (token for token) ends in each of FORMATS; A = the whole final answer
    segment as written (`value`: the number; `line`: "The final answer is X."; `explain`: the
    line plus "because <last reasoning step>"; `letter`: "(B)", with the options appended to the
    question in the prompt, Q still the original question). For each format the top
    ceil(ratio * n) of the n reasoning tokens by throughput form S_f; reported per format pair:
    overlap |S_f ∩ S_g| / k, Jaccard, and the Spearman correlation of tau over the reasoning
    tokens; chance overlap is k / n. Writes results.json, per-problem rows, overlap PNG."""
    out = Path(cfg.out)
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    _guard_settings(out, settings, ignore=("batch_size",))
    task_obj = _task(task if task is not None else cfg.task)
    console = _console(console)
    mdl, tok = _load(model if model is not None else cfg.model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    samples = list(task_obj.load(cfg.split))[: cfg.n]
    items = _reasonings(mdl, tok, task_obj, samples, cfg)
    per_problem = []
    with _progress(console, progress) as prog:
        bar = prog.add_task("answer formats", total=len(items))
        for c0 in range(0, len(items), max(1, cfg.batch_size // len(FORMATS))):
            chunk = items[c0 : c0 + max(1, cfg.batch_size // len(FORMATS))]
            rows, meta = [], []
            for s, body, ans, _ in chunk:
                reason_ids = tok(body + "\n", add_special_tokens=False)["input_ids"]
                opts, letter = _letter_options(ans, _seed_of(cfg.seed, "letter", s["id"]))
                for fmt in FORMATS:
                    pr = _prompt(tok, task_obj, s, f"{s['question']}\n{opts}" if fmt == "letter" else None)
                    seg = tok(_format_segment(fmt, ans, body, letter), add_special_tokens=False)["input_ids"]
                    resp = list(reason_ids) + list(seg) + ([eos] if eos is not None else [])
                    a = [False] * len(reason_ids) + [True] * len(seg) + ([False] if eos is not None else [])
                    rows.append(FlowRow(pr.ids, pr.question, resp, a))
                meta.append((s, len(reason_ids)))
            flows = flow_rows(mdl, rows, cfg.layers, cfg.ratio, pad_id=pad, batch_size=cfg.batch_size)
            for j, (s, n_r) in enumerate(meta):
                taus = {f: flows[j * len(FORMATS) + i]["tau"][:n_r] for i, f in enumerate(FORMATS)}
                fb = any(flows[j * len(FORMATS) + i]["fallback"] for i in range(len(FORMATS)))
                sets = {f: set(_select(t, cfg.ratio, "top", 0).tolist()) for f, t in taus.items()}
                k = len(sets["value"])
                pair = {}
                for f in FORMATS:
                    for g in FORMATS:
                        inter = len(sets[f] & sets[g])
                        union = len(sets[f] | sets[g])
                        pair[f"{f}|{g}"] = {"overlap": inter / k if k else None,
                                            "jaccard": inter / union if union else None,
                                            "spearman": spearman(taus[f], taus[g])}
                per_problem.append({"id": str(s["id"]), "n_reasoning": n_r, "k": k, "fallback": fb,
                                    "chance": k / n_r if n_r else None, "pairs": pair})
                prog.advance(bar)
    atomic_write_text(out / "problems.jsonl", "".join(json.dumps(r) + "\n" for r in per_problem))
    used = [r for r in per_problem if not r["fallback"] and r["k"]]
    matrix, summary = [], {}
    for f in FORMATS:
        row = []
        for g in FORMATS:
            m, sd = mean_std([r["pairs"][f"{f}|{g}"]["overlap"] for r in used])
            row.append(m if m is not None else 0.0)
        matrix.append(row)
        ov = mean_std([r["pairs"][f"{f}|value"]["overlap"] for r in used])
        jc = mean_std([r["pairs"][f"{f}|value"]["jaccard"] for r in used])
        sp = mean_std([r["pairs"][f"{f}|value"]["spearman"] for r in used])
        summary[f] = {"label": FORMAT_LABELS[f], "overlap_mean": ov[0], "overlap_std": ov[1],
                      "jaccard_mean": jc[0], "spearman_mean": sp[0], "spearman_std": sp[1]}
    chance = mean_std([r["chance"] for r in used])[0]
    results = {"experiment": "format", "section": "Sec. 5.2", "settings": settings, "problems": len(per_problem),
               "used": len(used), "formats": summary, "overlap_matrix": matrix, "chance_overlap": chance,
               "reference": "value"}
    atomic_write_json(out / "results.json", results)
    _write_csv(out / "table.csv", [["format", "overlap_vs_value", "std", "jaccard", "spearman"]] +
               [[f, s["overlap_mean"], s["overlap_std"], s["jaccard_mean"], s["spearman_mean"]] for f, s in summary.items()])
    if used:
        from ftcli.plots import overlap_heatmap

        overlap_heatmap(list(FORMATS), matrix, out / "format_overlap.png",
                        title=f"top-{round(100 * cfg.ratio)}% overlap (chance {chance:.2f})")
    return results


def format_table(results: dict):
    from rich.table import Table

    s = results["settings"]
    t = Table(title=f"Sec. 5.2 · answer format · top-{round(100 * s['ratio'])}% reasoning tokens · "
                    f"{results['used']} problems ({s['source']} reasoning) · {s['model']}")
    for c in ("answer written as", "overlap with bare value", "Jaccard", "Spearman ρ of τ"):
        t.add_column(c, justify="left" if c == "answer written as" else "right")
    for r in results["formats"].values():
        t.add_row(r["label"], _pm(r["overlap_mean"], r["overlap_std"]), _num(r["jaccard_mean"]),
                  _pm(r["spearman_mean"], r["spearman_std"]))
    t.caption = f"chance overlap of a random set of the same size: {_num(results['chance_overlap'])}"
    return t


def _num(x, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _pm(m, sd, nd: int = 3) -> str:
    return "—" if m is None else f"{m:.{nd}f} ± {sd:.{nd}f}"


# -- token classes ----------------------------------------------------------------------------
TOKEN_CLASSES = ("structural", "semantic")


def token_class(text: str) -> str:
    """`structural`: no letter or digit (whitespace, newlines, punctuation, operators, brackets,
    delimiters); `semantic`: anything with a letter or a digit (words, numbers, names)."""
    return "semantic" if any(ch.isalnum() for ch in text) else "structural"


def structural_lookup(tokenizer) -> torch.Tensor:
    """[V] bool: token id -> is structural (by its decoded text; special tokens structural)."""
    V = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(V)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    lut = torch.tensor([token_class(t) == "structural" for t in texts], dtype=torch.bool)
    for i in getattr(tokenizer, "all_special_ids", []) or []:
        if 0 <= i < V:
            lut[i] = True
    return lut


def register_token_class_rules(tokenizer) -> tuple[str, str]:
    """Register credit rules `flow-structural` and `flow-semantic` (the flow's throughput with
    every token of the other class scored 0, so the shared selection credits only this class)
    for `tokenizer`'s vocabulary; returns their names."""
    from ftcli.credit import register_rule, score_flow

    lut = structural_lookup(tokenizer)

    def make(cls: str):
        def score(inputs, opts):
            tau, fb = score_flow(inputs, opts)
            ids = inputs.input_ids.clamp(0, lut.numel() - 1)
            is_s = lut.to(ids.device)[ids]  # [B, T]
            keep = is_s if cls == "structural" else ~is_s
            return tau * keep, fb

        return score

    names = []
    for cls in TOKEN_CLASSES:
        name = f"flow-{cls}"
        register_rule(name, needs=("attention",), summary=f"flow throughput on {cls} tokens only")(make(cls))
        names.append(name)
    return tuple(names)


def _token_label(text: str) -> str:
    s = text.replace("\n", "\\n").replace("\t", "\\t")
    return s.strip() or repr(text)


def token_classes(cfg: TextConfig, *, console=None, progress: bool = True, model=None, task=None,
                  top: int = 20, min_count: int = 3) -> dict:
    """Sec. 5.2 / Fig. 3: which tokens carry the flow? Responses (`gold`: worked solution +
    "The answer is \\boxed{X}."; `model`: the model's own) are scored with the paper's selection
    (top ratio of response tokens). Analysed: the reasoning body only (not the final answer
    line). Per class: share of reasoning tokens, of the selected ones and of throughput; per
    token string: mean relative throughput (tau / the response's mean reasoning tau), ranked. Writes results.json, tokens.csv, fig3_tokens.png."""
    out = Path(cfg.out)
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    _guard_settings(out, settings, ignore=("batch_size",))
    task_obj = _task(task if task is not None else cfg.task)
    console = _console(console)
    mdl, tok = _load(model if model is not None else cfg.model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    samples = list(task_obj.load(cfg.split))[: cfg.n]
    items = _reasonings(mdl, tok, task_obj, samples, cfg)
    rows, texts = [], []
    from ftcli.spans import span_to_token_mask

    reasoning = []  # [n_response] bool: token inside the reasoning body (what is analysed)
    for s, body, _, resp in items:
        enc = tok(resp, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        span = task_obj.answer_span(resp)
        a = span_to_token_mask(offs, span, len(ids)).tolist()
        b0 = max(resp.find(body), 0)
        reasoning.append([e <= b0 + len(body) and not aa for (_, e), aa in zip(offs, a, strict=True)])
        pr = _prompt(tok, task_obj, s)
        rows.append(FlowRow(pr.ids, pr.question, ids, a))
        texts.append([_decode(tok, [i]) for i in ids])
    with _progress(console, progress) as prog:
        bar = prog.add_task("token classes", total=len(rows))
        flows = []
        for c0 in range(0, len(rows), cfg.batch_size):
            flows += flow_rows(mdl, rows[c0 : c0 + cfg.batch_size], cfg.layers, cfg.ratio, pad_id=pad,
                               batch_size=cfg.batch_size)
            prog.advance(bar, len(rows[c0 : c0 + cfg.batch_size]))
    counts = {c: {"tokens": 0, "selected": 0, "tau": 0.0} for c in TOKEN_CLASSES}
    per_tok: dict[str, list[float]] = {}
    cls_of: dict[str, str] = {}
    used = 0
    for fl, tx, keep in zip(flows, texts, reasoning, strict=True):
        if fl["fallback"]:
            continue
        used += 1
        tau = fl["tau"]
        mean_tau = float(tau[torch.tensor(keep)].mean()) if any(keep) else 0.0
        for t, (txt, kp) in enumerate(zip(tx, keep, strict=True)):
            if not kp:
                continue
            c = token_class(txt)
            counts[c]["tokens"] += 1
            counts[c]["selected"] += int(fl["selected"][t])
            counts[c]["tau"] += float(tau[t])
            if mean_tau > 0 and txt:
                lab = _token_label(txt)
                per_tok.setdefault(lab, []).append(float(tau[t]) / mean_tau)
                cls_of[lab] = c
    tot = {k: sum(counts[c][k] for c in TOKEN_CLASSES) for k in ("tokens", "selected", "tau")}
    classes = {}
    for c in TOKEN_CLASSES:
        share = {k: (counts[c][k] / tot[k]) if tot[k] else None for k in ("tokens", "selected", "tau")}
        classes[c] = {**counts[c], "share_tokens": share["tokens"], "share_selected": share["selected"],
                      "share_tau": share["tau"],
                      "lift": (share["selected"] / share["tokens"]) if share["tokens"] and share["selected"] is not None else None,
                      "selected_ci": proportion(counts[c]["selected"], tot["selected"])["ci"]}
    ranked = sorted(((lab, sum(v) / len(v), len(v)) for lab, v in per_tok.items() if len(v) >= min_count),
                    key=lambda x: -x[1])
    results = {"experiment": "tokens", "section": "Sec. 5.2 / Fig. 3", "settings": settings,
               "problems": len(rows), "used": used, "classes": classes,
               "top_tokens": [{"token": a, "rel_tau": b, "count": n, "class": cls_of[a]} for a, b, n in ranked[:top]],
               "bottom_tokens": [{"token": a, "rel_tau": b, "count": n, "class": cls_of[a]} for a, b, n in ranked[::-1][:top]]}
    atomic_write_json(out / "results.json", results)
    _write_csv(out / "tokens.csv", [["token", "mean_rel_tau", "count", "class"]] +
               [[a, b, n, cls_of[a]] for a, b, n in ranked])
    if ranked:
        from ftcli.plots import ranked_tokens

        ranked_tokens([(a, b) for a, b, _ in ranked[:top]], [(a, b) for a, b, _ in ranked[::-1][:top]],
                      out / "fig3_tokens.png", title=f"{cfg.task}: tokens by flow throughput (count ≥ {min_count})")
    return results


def tokens_table(results: dict):
    from rich.table import Table

    s = results["settings"]
    t = Table(title=f"Sec. 5.2 · token classes · top-{round(100 * s['ratio'])}% by flow · {results['used']} "
                    f"responses ({s['source']}) · {s['model']}")
    for c in ("class", "share of tokens", "share of selected [95% CI]", "share of throughput", "lift"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for c, r in results["classes"].items():
        t.add_row(c, _pct(r["share_tokens"]),
                  f"{_pct(r['share_selected'])} [{_pct(r['selected_ci'][0])}, {_pct(r['selected_ci'][1])}]",
                  _pct(r["share_tau"]), _num(r["lift"], 2))
    top = ", ".join(x["token"] for x in results["top_tokens"][:10])
    bottom = ", ".join(x["token"] for x in results["bottom_tokens"][:10])
    t.caption = f"highest flow: {top}\nlowest flow: {bottom}"
    return t


def _pct(x, nd: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{nd}f}"


# =============================================================================================
# Table 6: overhead
# =============================================================================================
OVERHEAD_ARMS = (("none", "fused"), ("flow", "fused"), ("flow", "separate"))


@dataclass
class OverheadConfig:
    model: str = DEFAULT_MODEL
    task: str = "countdown"
    lengths: tuple[int, ...] = (512, 2048)
    micro_batch: int = 1
    repeats: int = 3
    warmup: int = 1
    layers: str = "mid"
    seed: int = 0
    out: str = "runs/ablate/overhead"


def overhead(cfg: OverheadConfig, *, console=None, progress: bool = True) -> dict:
    """Table 6: one update step (forward/backward, credit, optimizer) of `ft train`'s Trainer on
    synthetic sequences of exactly each context length (a real prompt, random response ids, the
    last 4 response tokens as the answer), arms none / flow fused / flow separate interleaved
    round by round (order rotated) in one process; medians over `repeats` after `warmup` rounds,
    wall and process CPU seconds. The step is the trainer's own (`Trainer.update`, its `_Timer`).
    Generation is excluded: it is the same for every rule."""
    from ftcli.credit import get_rule
    from ftcli.trainer import Seq, Trainer, _Timer, resolve_config

    out = Path(cfg.out)
    console = _console(console)
    scratch = out / "trainer"
    if scratch.exists():
        import shutil

        shutil.rmtree(scratch)
    tcfg = resolve_config("cpu", model=cfg.model, task=cfg.task, credit="flow", prompts=1,
                          group_size=cfg.micro_batch, micro_batch=cfg.micro_batch, layers=cfg.layers,
                          out=str(scratch), progress=False, log_samples=0, steps=1, seed=cfg.seed)
    tr = Trainer(tcfg)
    try:
        with torch.enable_grad():  # the update needs autograd whatever the caller set
            tr._setup()
            tok = tr.tokenizer
            sample = tr.train_data[0]
            pr = _prompt(tok, tr.task, sample)
            g = torch.Generator().manual_seed(cfg.seed)
            V = len(tok)
            batches = {}
            for T in cfg.lengths:
                n_resp = T - len(pr.ids)
                if n_resp < 8:
                    raise ValueError(f"context length {T} leaves no room for a response after a {len(pr.ids)}-token prompt")
                seqs = []
                for b in range(cfg.micro_batch):
                    resp = torch.randint(V // 4, V - 1, (n_resp,), generator=g).tolist()
                    seqs.append(Seq(ids=pr.ids + resp, n_prompt=len(pr.ids), question=pr.question,
                                    answer=[False] * (n_resp - 4) + [True] * 4, advantage=1.0 if b % 2 == 0 else -1.0,
                                    seed=b, reward=0.0, correct=False, has_answer=True, finished=True, index=10**9))
                batches[T] = seqs
            times: dict[tuple[int, str], list[dict]] = {}
            rounds = cfg.warmup + cfg.repeats
            with _progress(console, progress) as prog:
                bar = prog.add_task("overhead", total=rounds * len(cfg.lengths) * len(OVERHEAD_ARMS))
                for rnd in range(rounds):
                    order = OVERHEAD_ARMS[rnd % 3 :] + OVERHEAD_ARMS[: rnd % 3]  # rotated: no order bias
                    for T in cfg.lengths:
                        seqs = batches[T]
                        for rule, cpass in order:
                            tr.rule = get_rule(rule)
                            tr.cfg.credit_pass = cpass
                            timer = _Timer()
                            t0, c0 = time.perf_counter(), time.process_time()
                            tr.update(seqs, timer)  # the trainer's own update and timers
                            step, cpu = time.perf_counter() - t0, time.process_time() - c0
                            if rnd >= cfg.warmup:
                                times.setdefault((T, f"{rule}-{cpass}"), []).append({"step": step, "cpu": cpu, **timer.t})
                            prog.advance(bar)
    finally:
        tr.close()
    rows = []
    for T in cfg.lengths:
        base = _median([x["step"] for x in times[(T, "none-fused")]])
        base_cpu = _median([x["cpu"] for x in times[(T, "none-fused")]])
        for rule, cpass in OVERHEAD_ARMS:
            xs = times[(T, f"{rule}-{cpass}")]
            step, cpu = _median([x["step"] for x in xs]), _median([x["cpu"] for x in xs])
            rows.append({"length": T, "arm": f"{rule}-{cpass}", "rule": rule, "credit_pass": cpass,
                         "step_s": step, "step_cpu_s": cpu, "ratio_cpu": cpu / base_cpu if base_cpu else None,
                         "credit_s": _median([x.get("credit", 0.0) for x in xs]),
                         "fwd_bwd_s": _median([x.get("fwd_bwd", 0.0) for x in xs]),
                         "optim_s": _median([x.get("optim", 0.0) for x in xs]),
                         "ratio": step / base if base else None,
                         "overhead_pct": 100 * (step / base - 1) if base else None, "samples": len(xs)})
    results = {"experiment": "overhead", "table": "Table 6",
               "settings": {k: v for k, v in asdict(cfg).items() if k != "out"},
               "threads": torch.get_num_threads(), "rows": rows,
               "note": "medians; ratio = wall step time / that of credit none at the same length (ratio_cpu: "
                       "process CPU seconds, robust to other jobs); same process, arms rotated per round"}
    atomic_write_json(out / "results.json", results)
    _write_csv(out / "table.csv", [list(rows[0])] + [list(r.values()) for r in rows])
    return results


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2) if n else float("nan")


def overhead_table(results: dict):
    from rich.table import Table

    s = results["settings"]
    t = Table(title=f"Table 6 · credit overhead · {s['model']} · micro-batch {s['micro_batch']} · "
                    f"{results['threads']} thread(s) · median of {s['repeats']}")
    for c in ("context", "GRPO step (s)", "flow fused step (s)", "fused overhead\nwall / CPU",
              "flow separate step (s)", "separate overhead\nwall / CPU", "credit time (s)\nfused / separate"):
        t.add_column(c, justify="right")
    by = {(r["length"], r["arm"]): r for r in results["rows"]}

    def pct(r):
        return f"{r['overhead_pct']:+.1f}% / {100 * (r['ratio_cpu'] - 1):+.1f}%"

    for T in s["lengths"]:
        n, f, p = by[(T, "none-fused")], by[(T, "flow-fused")], by[(T, "flow-separate")]
        t.add_row(str(T), f"{n['step_s']:.3f}", f"{f['step_s']:.3f}", pct(f), f"{p['step_s']:.3f}", pct(p),
                  f"{f['credit_s']:.3f} / {p['credit_s']:.3f}")
    t.caption = "fused: W captured inside the update forward (credit = the flow solve); separate: an extra no-grad pass (counted as credit). Paper: 2.2-4.5% with its separate pass."
    return t


# =============================================================================================
# Training sweeps
# =============================================================================================
@dataclass
class Variant:
    """One arm of a sweep: TrainConfig overrides on top of the sweep's base options."""

    key: str  # folder name (unique)
    label: str
    train: dict
    group: dict = field(default_factory=dict)  # coordinates for pivot tables, e.g. {"select": "top", "ratio": 0.2}
    baseline: bool = False


@dataclass
class SweepConfig:
    name: str
    out: str
    base: dict = field(default_factory=dict)  # TrainConfig overrides shared by every variant
    preset: str = "cpu"
    seeds: tuple[int, ...] = (0,)
    eval_suite: str | None = None  # default: the task's suite (same name)
    eval_limit: int | None = 64
    eval_overrides: dict = field(default_factory=dict)  # n, temperature, top_p, top_k, max_new_tokens, seed
    eval_batch_size: int = 16
    progress: bool = True


def _dedupe(variants: list[Variant]) -> list[Variant]:
    seen, out = set(), []
    for v in variants:
        if v.key not in seen:
            seen.add(v.key)
            out.append(v)
    return out


def _fmt_num(x: float) -> str:
    return f"{x:g}"


BASELINE = Variant("grpo", "GRPO (no credit)", {"credit": "none"}, baseline=True)


def layer_variants(ranges: Sequence[str]) -> list[Variant]:
    """Fig. 6: flow credit with W from each layer range (early [0, L/3), mid, late, all, A:B)."""
    return [Variant(f"layers-{r.replace(':', '_')}", f"layers {r}", {"credit": "flow", "layers": r}, {"layers": r})
            for r in ranges]


def ratio_variants(ratios: Sequence[float], selects: Sequence[str] = ("top", "bottom")) -> list[Variant]:
    """Table 5: flow credit on the top / bottom 20/40/60% of response tokens."""
    return [Variant(f"{s}-{_fmt_num(r)}", f"{s.capitalize()}-{round(100 * r)}%",
                    {"credit": "flow", "ratio": r, "select": s}, {"select": s, "ratio": r})
            for s in selects for r in ratios]


def gamma_variants(gammas: Sequence[float]) -> list[Variant]:
    """Table 7 (left): the weight of credited tokens."""
    return [Variant(f"gamma-{_fmt_num(g)}", f"γ = {_fmt_num(g)}", {"credit": "flow", "gamma": g}, {"gamma": g})
            for g in gammas]


WEIGHTING_LABELS = {"binary": "binary top-40% (paper)", "raw": "raw flow", "tanh": "tanh of z-score",
                    "sigmoid": "sigmoid of z-score", "mad": "MAD (robust z)", "log1p": "log1p", "mass": "soft mass"}


def weighting_variants(weightings: Sequence[str], masses: Sequence[float] = (0.2, 0.4, 0.6, 0.8)) -> list[Variant]:
    """Table 7 (right): flow scores -> weights by each map; `mass` expands to one variant per
    mass threshold (the soft 20-80% rows)."""
    out = []
    for w in weightings:
        if w == "mass":
            out += [Variant(f"mass-{_fmt_num(m)}", f"soft mass {round(100 * m)}%",
                            {"credit": "flow", "weighting": "mass", "mass": m}, {"weighting": "mass", "mass": m})
                    for m in masses]
        else:
            out.append(Variant(f"w-{w}", WEIGHTING_LABELS.get(w, w), {"credit": "flow", "weighting": w}, {"weighting": w}))
    return out


RULE_LABELS = {"none": "GRPO", "random": "Random", "entropy": "Entropy", "gradient": "Gradient",
               "correlation": "Correlation", "attention": "Attention", "flow": "FlowTracer",
               "flow-structural": "Flow on structural tokens", "flow-semantic": "Flow on semantic tokens"}


def credit_variants(rules: Sequence[str]) -> list[Variant]:
    """Tables 2-4, Figs. 4-5: one variant per credit rule (`none` is the GRPO baseline)."""
    return [Variant(f"credit-{r}", RULE_LABELS.get(r, r), {"credit": r}, {"credit": r}, baseline=r == "none")
            for r in rules]


def token_class_variants() -> list[Variant]:
    """Sec. 5.2: flow credit on all tokens vs restricted to one class (needs
    `register_token_class_rules(tokenizer)` first)."""
    return credit_variants(["flow", "flow-structural", "flow-semantic"])


def _train_done(run_dir: Path, steps: int) -> bool:
    final = run_dir / "checkpoints" / "final"
    if not (final / "config.json").is_file():
        return False
    rows = _read_jsonl(run_dir / "metrics.jsonl")
    return bool(rows) and max(int(r.get("step", 0)) for r in rows) >= steps


def _train_summary(run_dir: Path, last: int = 3) -> dict:
    rows = _read_jsonl(run_dir / "metrics.jsonl")
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
    final = run_dir / "checkpoints" / "final"
    weights = sorted(str(f.stat().st_mtime_ns) for f in final.glob("*.safetensors"))
    return {"suite": suite, "limit": limit, "overrides": overrides, "weights": weights}


def _sweep_job(job: dict, *, console=None, train_fn: Callable | None = None,
               eval_fn: Callable | None = None) -> dict:
    """Train (or resume, or reuse) one variant x seed, evaluate its final checkpoint (or reuse
    the evaluation), return its results row."""
    from ftcli.evaluate import evaluate
    from ftcli.progress import progress_bar
    from ftcli.trainer import resolve_config, train

    train_fn = train_fn or train
    eval_fn = eval_fn or evaluate
    console = _console(console)
    head, run_dir = job["head"], Path(job["run_dir"])
    tcfg = resolve_config(job["preset"], **job["train"])
    if _train_done(run_dir, tcfg.steps):
        console.print(f"{head}: trained (reused)")
    else:
        resume = (run_dir / "metrics.jsonl").is_file()
        console.print(f"{head}: {'resuming' if resume else 'training'} {tcfg.steps} steps")
        with torch.enable_grad():  # robust to a caller that switched autograd off globally
            train_fn(tcfg, resume=resume, console=console)
    run_dir = run_dir.resolve()  # a run shared by symlink is evaluated under its own path
    suite, limit = job["suite"], job["eval_limit"]
    eval_dir = run_dir / "eval" / Path(suite).stem
    stamp = _eval_stamp(run_dir, suite, limit, job["eval_overrides"])
    stamp_file, res_file = eval_dir / "sweep_stamp.json", eval_dir / "results.json"
    doc = None
    if stamp_file.is_file() and res_file.is_file():
        try:
            if json.loads(stamp_file.read_text(encoding="utf-8")) == stamp:
                doc = json.loads(res_file.read_text(encoding="utf-8"))
                console.print(f"{head}: evaluated (reused)")
        except (OSError, json.JSONDecodeError):
            doc = None
    if doc is None:
        console.print(f"{head}: evaluating on {suite}" + (f" (first {limit})" if limit else ""))
        with progress_bar("[bold]eval[/] {task.description}", console=console,
                          disable=not job["progress"], transient=True) as prog:
            doc, _ = eval_fn(suite, ckpt=f"{run_dir}:final", out=eval_dir, limit=limit,
                             batch_size=job["eval_batch_size"], overrides=job["eval_overrides"], progress=prog)
        atomic_write_json(stamp_file, stamp)
    return {
        "variant": job["variant"], "label": job["label"], "seed": job["seed"], "run_dir": str(run_dir),
        "eval": {b: e["value"] for b, e in doc["benchmarks"].items()},
        "avg": doc["avg"]["value"], "train": _train_summary(run_dir),
        "bench_meta": {b: {"label": e.get("label", b), "metric": e["metric"], "protocol": e.get("protocol")}
                       for b, e in doc["benchmarks"].items()},
    }


def _sweep_worker(job: dict) -> dict:
    """`_sweep_job` in a pool process: one torch thread, its own single-process 'world'."""
    import os

    for k in _DIST_VARS:  # inherited from a parent that trained in-process: pick a fresh port
        os.environ.pop(k, None)
    torch.set_num_threads(int(os.environ.get("FT_JOB_THREADS", "1")))
    from rich.console import Console

    return _sweep_job(job, console=Console(stderr=True))


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
    import os

    from ftcli.trainer import resolve_config

    console = _console(console)
    out = Path(cfg.out)
    variants = _dedupe(list(variants))
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
                "model": probe.model, "task": probe.task, "steps": probe.steps,
                "eval_suite": suite, "eval_limit": cfg.eval_limit, "eval_overrides": eval_over}
    _guard_settings(out, settings, ignore=("seeds",))
    for v in variants:  # fail before any training if a variant's options are invalid
        resolve_config(cfg.preset, **{**cfg.base, **v.train, "seed": cfg.seeds[0], "out": str(out)})
    n_jobs = len(variants) * len(cfg.seeds)
    job_list = []
    for v in variants:
        for seed in cfg.seeds:
            run_dir = out / "runs" / v.key / f"seed{seed}"
            job_list.append({
                "head": f"[{len(job_list) + 1}/{n_jobs}] {cfg.name} · {v.label} · seed {seed}",
                "variant": v.key, "label": v.label, "seed": seed, "run_dir": str(run_dir),
                "preset": cfg.preset,
                "train": {**cfg.base, **v.train, "seed": seed, "out": str(run_dir),
                          "progress": cfg.progress and jobs == 1},
                "suite": suite, "eval_limit": cfg.eval_limit, "eval_overrides": eval_over,
                "eval_batch_size": cfg.eval_batch_size, "progress": cfg.progress and jobs == 1,
            })
    t_start = time.time()
    if jobs == 1:
        results_rows = [_sweep_job(j, console=console, train_fn=train_fn, eval_fn=eval_fn) for j in job_list]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        console.print(f"{cfg.name}: {n_jobs} runs, {jobs} at a time")
        import sys

        # a fresh process per run (Python >= 3.11): no process group, cache or RNG state carries over
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), **fresh) as pool:
            futures = [pool.submit(_sweep_worker, j) for j in job_list]
            results_rows = [f.result() for f in futures]
    bench_meta = results_rows[-1].pop("bench_meta")
    for r in results_rows:
        r.pop("bench_meta", None)
    res = _aggregate(cfg, variants, results_rows, bench_meta, settings)
    res["seconds"] = round(time.time() - t_start, 1)
    _write_sweep(out, res)
    return res


def _ms(xs) -> dict:
    m, sd = mean_std(xs)
    return {"mean": m, "std": sd}


def _aggregate(cfg: SweepConfig, variants: Sequence[Variant], rows: list[dict], bench_meta: dict, settings: dict) -> dict:
    benches = list(bench_meta)
    out_vars = []
    base = next((v for v in variants if v.baseline), None)
    base_avg = None
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.key]
        stats = {b: _ms([r["eval"].get(b) for r in mine]) for b in benches}
        avg = _ms([r["avg"] for r in mine])
        tr = {k: mean_std([r["train"].get(k) for r in mine])[0] for k in
              ("reward_last", "accuracy_last", "frac_credited", "time_step", "val_best")}
        out_vars.append({"key": v.key, "label": v.label, "train_options": v.train, "group": v.group,
                         "baseline": v.baseline, "benchmarks": stats, "avg": avg, "train": tr, "seeds": mine})
        if base is not None and v.key == base.key:
            base_avg = avg["mean"]
    for ov in out_vars:
        ov["delta_vs_baseline"] = (ov["avg"]["mean"] - base_avg) if base_avg is not None and ov["avg"]["mean"] is not None else None
    return {"experiment": cfg.name, "settings": settings, "benchmarks": bench_meta, "variants": out_vars,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _write_sweep(out: Path, res: dict) -> None:
    from ftcli.plots import training_curves, variant_bars

    atomic_write_json(out / "results.json", res)
    benches = list(res["benchmarks"])
    rows = [["variant", "label", "seed", *benches, "avg", "reward_last", "frac_credited", "time_step"]]
    for v in res["variants"]:
        for r in v["seeds"]:
            t = r["train"]
            rows.append([v["key"], v["label"], r["seed"], *[r["eval"].get(b) for b in benches], r["avg"],
                         t.get("reward_last"), t.get("frac_credited"), t.get("time_step")])
    _write_csv(out / "results.csv", rows)
    runs = {v["label"]: [r["run_dir"] for r in v["seeds"]] for v in res["variants"]}
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
    from rich.table import Table

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
        cells = [_pm_pct(v["benchmarks"][b]) for b in res["benchmarks"]]
        d = v["delta_vs_baseline"]
        tr = v["train"]
        t.add_row(v["label"], *cells, _pm_pct(v["avg"]), "" if d is None or v["baseline"] else f"{100 * d:+.1f}",
                  _num(tr.get("reward_last")), _pct(tr.get("frac_credited")), _num(tr.get("time_step"), 1))
    proto = next(iter(res["benchmarks"].values())).get("protocol") or {}
    if proto:
        from ftcli.evaluate import protocol_str

        try:
            t.caption = "eval: " + protocol_str(proto)
        except KeyError:
            pass
    return t


def _pm_pct(st: dict) -> str:
    if st.get("mean") is None:
        return "—"
    return f"{100 * st['mean']:.1f}" + (f" ± {100 * st['std']:.1f}" if st.get("std") else "")


def pivot_table(res: dict, row_key: str, col_key: str, title: str):
    """Avg (%) laid out as rows = values of `row_key`, columns = values of `col_key` (Table 5)."""
    from rich.table import Table

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
        t.add_row(str(r), *[_pm_pct(cells[(r, c)]) if (r, c) in cells else "—" for c in cols_v])
    base = next((v for v in res["variants"] if v["baseline"]), None)
    if base is not None:
        t.caption = f"{base['label']}: {_pm_pct(base['avg'])}"
    return t
