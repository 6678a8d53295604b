"""Table 1: the causal intervention (protocol: `INTERVENE_PROTOCOL`).

Block the information of the top / bottom / random 20% of reasoning tokens by flow and
regenerate the answer; answer-change and correctness-reversal rates with Wilson 95% intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rich.table import Table
from transformers import GenerationConfig

from ftcli.evaluation.sampling import grade
from ftcli.experiments.blocking import block_keys
from ftcli.experiments.common import (
    decode,
    fmt_rate_ci,
    load_pair,
    open_experiment,
    pad_id_of,
    trace_flows,
    write_csv,
)
from ftcli.experiments.common import progress as progress_of
from ftcli.experiments.config import INTERVENE_PROTOCOL, InterveneConfig
from ftcli.experiments.plots import intervention_bars
from ftcli.experiments.stats import proportion, same_answer, select_positions
from ftcli.flow import num_selected
from ftcli.generation import generate, stop_token_ids
from ftcli.io import append_jsonl, atomic_write_json, read_jsonl
from ftcli.progress import stderr_console
from ftcli.seeds import derive_seed
from ftcli.sequences import Prompt, TracedSeq, task_prompt
from ftcli.spans import span_to_token_mask

# Reference numbers quoted from the paper (FlowTracer, Table 1), printed beside ours.
PAPER_TABLE1 = {"top": (45.9, 14.9), "random": (29.5, 4.5), "bottom": (14.9, 0.5)}


ARMS = ("top", "random", "bottom", "none")
ARM_LABELS = {"top": "Top-{p}% flow", "random": "Random {p}%", "bottom": "Bottom-{p}% flow", "none": "No block (control)"}


def regenerate(model, tok, prefix: list[int], blocked: torch.Tensor, max_new: int) -> list[list[int]]:
    """Greedy KV-cached continuations of one prefix, one row per blocked mask ([A, len])."""
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


def answer_tokens(task, ro) -> list[bool]:
    """[len(response)] bool: the response tokens of a rollout inside the task's answer span."""
    return span_to_token_mask(ro.response_offsets, task.answer_span(ro.response_text), len(ro.response_ids)).tolist()


def original_responses(mdl, tok, task, samples: Sequence[dict], cfg: InterveneConfig) -> list[tuple[Prompt, object, TracedSeq]]:
    """Step 1 of the protocol for a batch of samples: (the task's prompt, the original response
    (--temperature, seeded, at most --max-new-tokens), the traced prompt + response with its
    answer tokens marked) per sample."""
    prompts = [task_prompt(tok, task, s) for s in samples]
    ros = [g[0] for g in generate(mdl, tok, [p.text for p in prompts], n=1, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size)]
    return [(p, ro, p.traced(ro.response_ids, answer_tokens(task, ro))) for p, ro in zip(prompts, ros, strict=True)]


def done_and_todo(pfile, samples: Sequence[dict]) -> tuple[dict[str, dict], list[dict]]:
    """The rows of a resumable problems.jsonl by problem id, and the samples not in it yet."""
    done = {r["id"]: r for r in read_jsonl(pfile)}
    return done, [s for s in samples if str(s["id"]) not in done]


def unusable(finished: bool, answer, amask: Sequence[bool], fallback: bool, keep_truncated: bool) -> str | None:
    """Why an original response cannot be used (protocol step 1), or None: `truncated` (did not
    finish, unless `keep_truncated`), `no_answer` (no extracted answer or no answer token),
    `no_question` (the flow fell back: no question span)."""
    if not finished and not keep_truncated:
        return "truncated"
    if answer is None or not any(amask):
        return "no_answer"
    return "no_question" if fallback else None


def regraded(tok, task, sample, reasoning_ids: Sequence[int], cont: list[int], answer0, correct0: bool) -> dict:
    """A regenerated continuation graded against the reference answer `answer0` (and its
    verdict `correct0`): {"continuation", "answer", "correct", "changed", "reversed"}."""
    v = grade(task, decode(tok, list(reasoning_ids) + cont), sample)
    return {"continuation": decode(tok, cont), "answer": v["extracted"], "correct": v["correct"],
            "changed": not same_answer(answer0, v["extracted"]), "reversed": v["correct"] != correct0}


def _intervene_problem(model, tok, task, sample, prompt: Prompt, ro, amask: list[bool], flow: dict,
                       cfg: InterveneConfig) -> dict:
    pid = str(sample["id"])
    rec: dict = {"id": pid, "status": "ok"}
    v0 = grade(task, ro.response_text, sample)
    answer0, correct0 = v0["extracted"], v0["correct"]
    rec["original"] = {"response": ro.response_text, "answer": answer0, "correct": correct0,
                       "tokens": len(ro.response_ids), "finished": ro.finished}
    skip = unusable(ro.finished, answer0, amask, flow["fallback"], cfg.keep_truncated)
    if skip:
        return {**rec, "status": skip}
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
        pos = select_positions(tau, cfg.ratio, arm, derive_seed(cfg.seed, "random", pid)).tolist()
        chosen[arm] = pos
        masks[j, [P + p for p in pos]] = True
    max_new = len(ro.response_ids) - a0 + cfg.slack
    conts = regenerate(model, tok, prefix, masks, max_new)
    rec.update(n_reasoning=a0, k=k, n_positive=int((tau > 0).sum()),
               tau=[float(f"{x:.6g}") for x in tau.tolist()], arms={})
    for arm, cont in zip(ARMS, conts, strict=True):
        rec["arms"][arm] = {"blocked": chosen[arm],
                            "blocked_text": [decode(tok, [ro.response_ids[p]]) for p in chosen[arm]],
                            **regraded(tok, task, sample, ro.response_ids[:a0], cont, answer0, correct0)}
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
    out, settings, task_obj = open_experiment(cfg, task, ignore=("n", "batch_size"))
    samples = list(task_obj.load(cfg.split))[: cfg.n]
    pfile = out / "problems.jsonl"
    done, todo = done_and_todo(pfile, samples)
    console = stderr_console(console)
    if todo:
        mdl, tok = load_pair(model if model is not None else cfg.model)
        pad = pad_id_of(tok)
        with progress_of(console, progress) as prog:
            bar = prog.add_task("intervene", total=len(samples), completed=len(samples) - len(todo))
            for c0 in range(0, len(todo), cfg.batch_size):
                chunk = todo[c0 : c0 + cfg.batch_size]
                prompts, ros, frows = zip(*original_responses(mdl, tok, task_obj, chunk, cfg), strict=True)
                flows = trace_flows(mdl, frows, layers=cfg.layers, ratio=cfg.ratio, pad_id=pad,
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
    write_csv(out / "table.csv", rows)
    if summary["used"]:
        intervention_bars(list(ARMS), summary["arms"], out / "intervene.png",
                          title=f"{cfg.task}: blocking {round(100 * cfg.ratio)}% of reasoning tokens")
    return results


def intervention_table(results: dict):
    """Rich table in the layout of the paper's Table 1 (ours, then the paper's numbers)."""
    s = results["settings"]
    t = Table(title=f"Table 1 · causal intervention on {s['task']} · {results['used']} problems "
                    f"({results['problems']} run) · {s['model']}")
    for c in ("blocked tokens", "mean k", "answer change % [95% CI]", "correctness reversal % [95% CI]",
              "correct→wrong", "wrong→correct", "paper (change / reversal)"):
        t.add_column(c, justify="right" if c != "blocked tokens" else "left")
    for arm, a in results["arms"].items():
        ch, rv = a["changed"], a["reversed"]
        paper = results.get("paper", {}).get(arm)
        t.add_row(a["label"], f"{a['mean_blocked']:.1f}", fmt_rate_ci(ch), fmt_rate_ci(rv),
                  f"{a['correct_to_wrong']['k']}/{a['correct_to_wrong']['n']}",
                  f"{a['wrong_to_correct']['k']}/{a['wrong_to_correct']['n']}",
                  f"{paper[0]} / {paper[1]}" if paper else "—")
    return t
