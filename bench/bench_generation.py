"""Benchmark: rollout generation, the compact decode loop against the HF `generate` reference.

The main job's sampling shapes: the shipped default policy, 16 Countdown prompts x 8 responses
(128 rows in one batch), 192 new tokens, temperature 1, EOS on. Both paths in one process,
interleaved (the order alternates per repetition), one torch thread by default; each
repetition uses its own seed, the same for both paths, so both decode the same rollouts.
Reports useful generated tokens (response tokens, EOS included) per second, medians and
minimums of the wall and process-CPU times (the CPU time is steadier on a shared machine), the ratio, and how many rows both paths sampled identically (float32:
a changed batch shape may flip a rare draw). `--compile` adds a third variant, the compact
loop with the model forward under `torch.compile(dynamic=True)` (issue 14, item 3).
Writes bench/results/generation.json. Goal (issue 14): >= 2x useful tokens/s.

    python bench/bench_generation.py [--prompts 16] [--group 8] [--max-new 192] [--reps 3] [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def countdown_prompts(tok, k: int) -> tuple[list[str], str]:
    """The first `k` Countdown train problems as rendered prompts (seeded problems when the
    benchmark data is not installed)."""
    from ftcli.tasks.countdown import CountdownTask

    from ftcli.generation import render_prompt

    task = CountdownTask()
    try:
        samples, source = task.load("train")[:k], "countdown train split"
    except (FileNotFoundError, ImportError) as e:  # data not installed (or its loader unavailable)
        print(f"countdown data unavailable ({e}); using seeded problems")
        samples, source = task.generate(k, seed=0), "countdown seeded problems"
    return [render_prompt(tok, task.prompt(s), task.assistant_prefix(s)) for s in samples], source


def main() -> None:
    from ftcli.fetch.models import load_model
    from ftcli.generation import generate

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default-policy")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=192)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time the compact loop under torch.compile")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model)
    model.eval()
    prompts, source = countdown_prompts(tok, args.prompts)
    rows = args.prompts * args.group
    kw = dict(n=args.group, max_new_tokens=args.max_new, temperature=1.0, batch_size=rows)

    variants = {"reference": dict(compact=False), "compact": dict(compact=True)}
    compile_s = None
    if args.compile:
        plain_forward = model.forward
        compiled_forward = torch.compile(plain_forward, dynamic=True)
        variants["compact+compile"] = dict(compact=True)
        t0 = time.perf_counter()  # warm-up: compiles prefill and decode graphs (not timed below);
        model.forward = compiled_forward  # batch 1 is a shape of its own (dynamic shapes specialise 1)
        try:
            generate(model, tok, prompts[:2], **{**kw, "n": 2, "max_new_tokens": 24, "batch_size": 4})
            generate(model, tok, prompts[:1], **{**kw, "n": 1, "max_new_tokens": 4, "batch_size": 1})
        finally:
            model.forward = plain_forward
        compile_s = time.perf_counter() - t0

    def run(name: str, seed: int):
        if name == "compact+compile":
            model.forward = compiled_forward
        try:
            t, c = time.perf_counter(), time.process_time()
            groups = generate(model, tok, prompts, seed=seed, **kw, **variants[name])
            return time.perf_counter() - t, time.process_time() - c, groups
        finally:
            if name == "compact+compile":
                model.forward = plain_forward

    times: dict[str, list[float]] = {v: [] for v in variants}  # wall seconds
    cpu: dict[str, list[float]] = {v: [] for v in variants}  # process CPU seconds (shared machine)
    useful: dict[str, list[int]] = {v: [] for v in variants}
    same_rows, slots_ref = [], []
    names = list(variants)
    for rep in range(args.reps):
        seed = 1000 + rep
        out = {}
        for name in names if rep % 2 == 0 else names[::-1]:
            dt, dc, groups = run(name, seed)
            ids = [r.response_ids for g in groups for r in g]
            out[name] = ids
            times[name].append(dt)
            cpu[name].append(dc)
            useful[name].append(sum(len(x) for x in ids))
            print(f"rep {rep} {name:16s} wall {dt:7.2f} s  cpu {dc:7.2f} s  {useful[name][-1] / dt:8.1f} useful tok/s",
                  flush=True)
        ref = out["reference"]
        same_rows.append(sum(a == b for a, b in zip(ref, out["compact"], strict=True)))
        slots_ref.append(rows * max(len(x) for x in ref))  # the reference decodes every row each step

    def stats(name: str) -> dict:
        tps = [u / t for u, t in zip(useful[name], times[name], strict=True)]
        return {"times_s": [round(t, 3) for t in times[name]],
                "median_s": round(statistics.median(times[name]), 3), "min_s": round(min(times[name]), 3),
                "cpu_s": [round(t, 3) for t in cpu[name]],
                "cpu_median_s": round(statistics.median(cpu[name]), 3), "cpu_min_s": round(min(cpu[name]), 3),
                "useful_tokens": useful[name],
                "useful_tok_per_s_median": round(statistics.median(tps), 1),
                "useful_tok_per_s_max": round(max(tps), 1)}

    res = {
        "what": "useful generated tokens per second, compact decode loop vs HF generate reference",
        "model": args.model, "prompts": args.prompts, "group": args.group, "rows": rows,
        "max_new_tokens": args.max_new, "temperature": 1.0, "eos": True, "prompt_source": source,
        "prompt_tokens": [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts],
        "threads": args.threads, "reps": args.reps, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "variants": {v: stats(v) for v in variants},
        "reference_useful_share_of_decoded_slots": round(sum(useful["reference"]) / sum(slots_ref), 3),
        "rows_identical_compact_vs_reference": f"{sum(same_rows)}/{rows * args.reps}",
    }
    ref_t = res["variants"]["reference"]
    for v in variants:
        if v != "reference":
            s = res["variants"][v]
            s["speedup_median"] = round(ref_t["median_s"] / s["median_s"], 2)
            s["speedup_min"] = round(ref_t["min_s"] / s["min_s"], 2)
            s["cpu_speedup_median"] = round(ref_t["cpu_median_s"] / s["cpu_median_s"], 2)
            s["cpu_speedup_min"] = round(ref_t["cpu_min_s"] / s["cpu_min_s"], 2)
    if compile_s is not None:
        c = res["variants"]["compact+compile"]
        c["compile_warmup_s"] = round(compile_s, 1)
        c["speedup_vs_compact_median"] = round(res["variants"]["compact"]["median_s"] / c["median_s"], 2)
        c["speedup_vs_compact_min"] = round(res["variants"]["compact"]["min_s"] / c["min_s"], 2)
        c["cpu_speedup_vs_compact_median"] = round(res["variants"]["compact"]["cpu_median_s"] / c["cpu_median_s"], 2)
    print(json.dumps({k: v for k, v in res.items() if k != "prompt_tokens"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
