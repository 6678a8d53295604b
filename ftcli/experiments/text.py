"""Sec. 5.2 / Fig. 3 on teacher-forced text: answer formats and token classes.

- `answer_format`: overlap of the top-40% reasoning tokens when the same reasoning ends in a
  bare value, a full line, an explanation, or a letter choice.
- `token_classes`: structural delimiters vs semantic tokens among the high-flow tokens; ranked
  bars of the highest- and lowest-flow tokens. (Training with credit restricted to one class
  is the `credit_tokens` option of `ft train`: `ftcli.credit.token_class_filter`.)
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

import torch
from rich.table import Table

from ftcli.credit import TOKEN_CLASSES, token_class
from ftcli.evaluation.sampling import sample_task
from ftcli.experiments.common import (
    decode,
    fmt_num,
    fmt_pct,
    fmt_pm,
    load_pair,
    open_experiment,
    pad_id_of,
    trace_flows,
    write_csv,
)
from ftcli.experiments.common import progress as progress_of
from ftcli.experiments.config import TextConfig
from ftcli.experiments.plots import overlap_heatmap, ranked_tokens
from ftcli.experiments.stats import NUMBER, mean_std, proportion, select_positions, spearman
from ftcli.io import atomic_write_json, atomic_write_text
from ftcli.progress import stderr_console
from ftcli.seeds import derive_seed
from ftcli.sequences import task_prompt
from ftcli.spans import span_to_token_mask

FORMATS = ("value", "line", "explain", "letter")
FORMAT_LABELS = {"value": "bare value", "line": "full line", "explain": "with explanation", "letter": "letter choice"}


def clean_solution(sol: str) -> str:
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
            body = clean_solution(str(sol))
            if body:
                ans = str(s["answer"])
                out.append((s, body, ans, f"{body}\nThe answer is \\boxed{{{ans}}}."))
        return out
    if cfg.source != "model":
        raise ValueError(f"--source must be gold or model, got {cfg.source!r}")
    _, groups = next(sample_task(mdl, tok, task, samples, n=1, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                                 seed=cfg.seed, batch_size=cfg.batch_size), ([], []))
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
    if NUMBER.fullmatch(a):
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
    out, settings, task_obj = open_experiment(cfg, task, ignore=("batch_size",))
    console = stderr_console(console)
    mdl, tok = load_pair(model if model is not None else cfg.model)
    pad = pad_id_of(tok)
    eos = tok.eos_token_id
    samples = list(task_obj.load(cfg.split))[: cfg.n]
    items = _reasonings(mdl, tok, task_obj, samples, cfg)
    per_problem = []
    with progress_of(console, progress) as prog:
        bar = prog.add_task("answer formats", total=len(items))
        for c0 in range(0, len(items), max(1, cfg.batch_size // len(FORMATS))):
            chunk = items[c0 : c0 + max(1, cfg.batch_size // len(FORMATS))]
            rows, meta = [], []
            for s, body, ans, _ in chunk:
                reason_ids = tok(body + "\n", add_special_tokens=False)["input_ids"]
                opts, letter = _letter_options(ans, derive_seed(cfg.seed, "letter", s["id"]))
                for fmt in FORMATS:
                    pr = task_prompt(tok, task_obj, s, f"{s['question']}\n{opts}" if fmt == "letter" else None)
                    seg = tok(_format_segment(fmt, ans, body, letter), add_special_tokens=False)["input_ids"]
                    resp = list(reason_ids) + list(seg) + ([eos] if eos is not None else [])
                    a = [False] * len(reason_ids) + [True] * len(seg) + ([False] if eos is not None else [])
                    rows.append(pr.traced(resp, a))
                meta.append((s, len(reason_ids)))
            flows = trace_flows(mdl, rows, cfg.layers, cfg.ratio, pad_id=pad, batch_size=cfg.batch_size)
            for j, (s, n_r) in enumerate(meta):
                taus = {f: flows[j * len(FORMATS) + i]["tau"][:n_r] for i, f in enumerate(FORMATS)}
                fb = any(flows[j * len(FORMATS) + i]["fallback"] for i in range(len(FORMATS)))
                sets = {f: set(select_positions(t, cfg.ratio, "top", 0).tolist()) for f, t in taus.items()}
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
    write_csv(out / "table.csv", [["format", "overlap_vs_value", "std", "jaccard", "spearman"]] +
               [[f, s["overlap_mean"], s["overlap_std"], s["jaccard_mean"], s["spearman_mean"]] for f, s in summary.items()])
    if used:
        overlap_heatmap(list(FORMATS), matrix, out / "format_overlap.png",
                        title=f"top-{round(100 * cfg.ratio)}% overlap (chance {chance:.2f})")
    return results


def format_table(results: dict):
    s = results["settings"]
    t = Table(title=f"Sec. 5.2 · answer format · top-{round(100 * s['ratio'])}% reasoning tokens · "
                    f"{results['used']} problems ({s['source']} reasoning) · {s['model']}")
    for c in ("answer written as", "overlap with bare value", "Jaccard", "Spearman ρ of τ"):
        t.add_column(c, justify="left" if c == "answer written as" else "right")
    for r in results["formats"].values():
        t.add_row(r["label"], fmt_pm(r["overlap_mean"], r["overlap_std"]), fmt_num(r["jaccard_mean"]),
                  fmt_pm(r["spearman_mean"], r["spearman_std"]))
    t.caption = f"chance overlap of a random set of the same size: {fmt_num(results['chance_overlap'])}"
    return t


# -- token classes ----------------------------------------------------------------------------
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
    out, settings, task_obj = open_experiment(cfg, task, ignore=("batch_size",))
    console = stderr_console(console)
    mdl, tok = load_pair(model if model is not None else cfg.model)
    pad = pad_id_of(tok)
    samples = list(task_obj.load(cfg.split))[: cfg.n]
    items = _reasonings(mdl, tok, task_obj, samples, cfg)
    rows, texts = [], []
    reasoning = []  # [n_response] bool: token inside the reasoning body (what is analysed)
    for s, body, _, resp in items:
        enc = tok(resp, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        span = task_obj.answer_span(resp)
        a = span_to_token_mask(offs, span, len(ids)).tolist()
        b0 = max(resp.find(body), 0)
        reasoning.append([e <= b0 + len(body) and not aa for (_, e), aa in zip(offs, a, strict=True)])
        rows.append(task_prompt(tok, task_obj, s).traced(ids, a))
        texts.append([decode(tok, [i]) for i in ids])
    with progress_of(console, progress) as prog:
        bar = prog.add_task("token classes", total=len(rows))
        flows = []
        for c0 in range(0, len(rows), cfg.batch_size):
            flows += trace_flows(mdl, rows[c0 : c0 + cfg.batch_size], cfg.layers, cfg.ratio, pad_id=pad,
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
    write_csv(out / "tokens.csv", [["token", "mean_rel_tau", "count", "class"]] +
               [[a, b, n, cls_of[a]] for a, b, n in ranked])
    if ranked:
        ranked_tokens([(a, b) for a, b, _ in ranked[:top]], [(a, b) for a, b, _ in ranked[::-1][:top]],
                      out / "fig3_tokens.png", title=f"{cfg.task}: tokens by flow throughput (count ≥ {min_count})")
    return results


def tokens_table(results: dict):
    s = results["settings"]
    t = Table(title=f"Sec. 5.2 · token classes · top-{round(100 * s['ratio'])}% by flow · {results['used']} "
                    f"responses ({s['source']}) · {s['model']}")
    for c in ("class", "share of tokens", "share of selected [95% CI]", "share of throughput", "lift"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for c, r in results["classes"].items():
        t.add_row(c, fmt_pct(r["share_tokens"]),
                  f"{fmt_pct(r['share_selected'])} [{fmt_pct(r['selected_ci'][0])}, {fmt_pct(r['selected_ci'][1])}]",
                  fmt_pct(r["share_tau"]), fmt_num(r["lift"], 2))
    top = ", ".join(x["token"] for x in results["top_tokens"][:10])
    bottom = ", ".join(x["token"] for x in results["bottom_tokens"][:10])
    t.caption = f"highest flow: {top}\nlowest flow: {bottom}"
    return t
