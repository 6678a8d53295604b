"""Benchmark: the cost of FlowTracer credit in a training step (paper Table 6).

    python bench/bench_overhead.py [--model smollm2-135m] [--lengths 512 2048] [--rounds 3]

The measurement is `ft ablate overhead`'s (`ftcli.experiments.overhead.overhead`, one
implementation): one process, one DeepSpeed engine (ZeRO-0, fp32, CPU), the trainer's own
update (`PolicyUpdate.update`: forward, credit, backward, optimizer) on teacher-forced sequences
of exactly T tokens (the task's first training prompt, random response ids, the last 4 tokens
the answer), arms interleaved (rotated order) after one warm-up round:

    none-fused      plain GRPO update (policy forward + backward + optimizer step)
    flow-fused      --credit flow, W captured inside the update forward
    flow-separate   --credit flow, W from an extra no-grad pass (the paper's way)

Medians in wall seconds and process CPU seconds (CPU time is far less sensitive to other jobs
on a shared machine); the ratio flow / none is the overhead (goal: <= 1.01 fused; the paper
reports 1.022-1.045 with its extra pass). This script adds the CPU time to sample one response
of each length (HF generate, KV cache, batch 1, forced length), which gives the ratio for a
full step (sampling + update).

Writes bench/results/overhead.json and prints the table. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from ftcli.experiments.config import OverheadConfig
from ftcli.experiments.overhead import overhead, overhead_table
from ftcli.models import load_model

ROOT = Path(__file__).resolve().parent


def generation_cpu_seconds(model, prompt_len: int, n_new: int) -> float:
    """CPU seconds to sample `n_new` tokens after a `prompt_len`-token prompt (KV cache, batch 1)."""
    ids = torch.randint(10, model.config.vocab_size - 1, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    c0 = time.process_time()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                       min_new_tokens=n_new, do_sample=True, top_k=0, pad_token_id=0)
    return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="countdown")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "overhead.json"))
    ap.add_argument("--no-generation", dest="generation", action="store_false",
                    help="skip timing the sampling of the response (full-step ratios)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = OverheadConfig(model=args.model, task=args.task, lengths=tuple(args.lengths), repeats=args.rounds,
                         out=tempfile.mkdtemp(prefix="ft-bench-overhead-"))
    res = overhead(cfg, progress=False)
    if args.generation:  # a full step = sampling the response + the update
        model, _ = load_model(args.model)
        prompt_len = res["prompt_tokens"]
        for T in args.lengths:
            gen = generation_cpu_seconds(model, prompt_len, T - prompt_len)
            rows = {r["arm"]: r for r in res["rows"] if r["length"] == T}
            base = rows["none-fused"]["step_cpu_s"]
            for r in rows.values():
                r["generation_cpu_s"] = gen
                r["ratio_with_generation_cpu"] = (gen + r["step_cpu_s"]) / (gen + base)
    res["load_avg"] = os.getloadavg()
    res["torch"] = torch.__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    Console().print(overhead_table(res))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
