"""Benchmark: the cost of FlowTracer credit in a training step (paper Table 6).

    python bench/bench_overhead.py [--model smollm2-135m] [--lengths 512 2048] [--rounds 3]

One process, one DeepSpeed engine (ZeRO-0, fp32, CPU), the same config for every variant:

    none      plain GRPO update (policy forward + backward + optimizer step)
    fused     --credit flow, W captured inside the update forward (ftcli.attention.capture_attention)
    separate  --credit flow, W from an extra no-grad pass (ftcli.attention.mean_attention; the
              paper's way, it stops after the last middle layer)

Each measured step is the trainer's own update (`Trainer.update`: forward, credit, backward,
optimizer) on one fixed teacher-forced sequence of T tokens (64-token prompt with a 16-token
question span, response of T - 64 tokens whose last 8 tokens are the answer), micro-batch 1.
Generation is left out: it does not depend on the credit rule, so including it would only
shrink the ratios (on CPU it would also take most of the run). Variants are interleaved
(rotated order) over `--rounds` rounds after one warm-up round per length; the reported time is
the median, in wall seconds and in process CPU seconds (1 thread; CPU time is far less
sensitive to other jobs on a shared machine). The ratio flow / none is the overhead (goal:
<= 1.01 fused; the paper reports 1.022-1.045 with its extra pass). Also reported: the credit
time alone (flow solves and selection; for `separate` also the extra pass), and the CPU time
to sample the response once (HF generate, KV cache, batch 1, forced to T - 64 tokens), which
gives the ratio for a full step (sampling + update).

Writes bench/results/overhead.json and prints a table. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VARIANTS = ("none", "fused", "separate")


class _NoData:
    name = "bench"

    def load(self, split="train"):
        return [{"id": 0, "question": "q", "answer": "0"}]


def _sequence(T: int, vocab: int, seed: int = 0):
    import torch

    from ftcli.trainer import Seq

    g = torch.Generator().manual_seed(seed)
    P = 64
    ids = torch.randint(10, vocab - 1, (T,), generator=g).tolist()
    question = [16 <= i < 32 for i in range(P)]
    answer = [i >= T - P - 8 for i in range(T - P)]
    return Seq(ids=ids, n_prompt=P, question=question, answer=answer, advantage=1.0, seed=seed,
               reward=1.0, correct=True, has_answer=True, finished=True, index=10**6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "overhead.json"))
    ap.add_argument("--no-generation", dest="generation", action="store_false",
                    help="skip timing the sampling of the response (full-step ratios)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ftcli.credit import get_rule
    from ftcli.trainer import Trainer, _Timer, resolve_config

    tmp = tempfile.mkdtemp(prefix="ft-bench-overhead-")
    cfg = resolve_config(model=args.model, out=tmp, prompts=1, group_size=1, micro_batch=1,
                         credit="flow", progress=False, max_new_tokens=max(args.lengths), lr=1e-7)
    trainer = Trainer(cfg, task=_NoData())
    trainer._setup()
    vocab = trainer.engine.module.config.vocab_size
    none_rule, flow_rule = get_rule("none"), get_rule("flow")

    def step(variant: str, seq) -> dict:
        trainer.rule = none_rule if variant == "none" else flow_rule
        trainer.cfg.credit_pass = "separate" if variant == "separate" else "fused"
        timer = _Timer()
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.update([seq], timer)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"step": wall, "step_cpu": cpu, **{k: timer.t.get(k, 0.0) for k in ("credit", "fwd_bwd", "optim")}}

    def generation_time(seq) -> float:
        """CPU seconds to sample this sequence's response (KV cache, batch 1, forced length)."""
        model = trainer.engine.module
        ids = torch.tensor([seq.ids[: seq.n_prompt]])
        n = len(seq.ids) - seq.n_prompt
        c0 = time.process_time()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                           min_new_tokens=n, do_sample=True, top_k=0, pad_token_id=0)
        return time.process_time() - c0

    results = []
    for T in args.lengths:
        seq = _sequence(T, vocab)
        for v in VARIANTS:  # warm-up
            step(v, seq)
        times: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for v in order:
                times[v].append(step(v, seq))
                print(f"T={T} round {r} {v}: {times[v][-1]['step']:.3f}s", file=sys.stderr, flush=True)
        med = {v: {k: statistics.median(x[k] for x in times[v]) for k in times[v][0]} for v in VARIANTS}
        base, base_cpu = med["none"]["step"], med["none"]["step_cpu"]
        gen = generation_time(seq) if args.generation else None
        row = {
            "T": T,
            "median_s": med,
            "ratio_fused": med["fused"]["step"] / base,
            "ratio_separate": med["separate"]["step"] / base,
            "ratio_fused_cpu": med["fused"]["step_cpu"] / base_cpu,
            "ratio_separate_cpu": med["separate"]["step_cpu"] / base_cpu,
            "credit_share_fused": med["fused"]["credit"] / med["fused"]["step"],
            "credit_share_separate": med["separate"]["credit"] / med["separate"]["step"],
            "all_s": times,
        }
        if gen is not None:  # a full step = sampling the response + the update
            row["generation_cpu_s"] = gen
            row["ratio_fused_with_generation_cpu"] = (gen + med["fused"]["step_cpu"]) / (gen + base_cpu)
            row["ratio_separate_with_generation_cpu"] = (gen + med["separate"]["step_cpu"]) / (gen + base_cpu)
        results.append(row)
    out = {
        "what": "update-step time with --credit flow over --credit none (same engine, same sequence)",
        "model": args.model,
        "threads": args.threads,
        "rounds": args.rounds,
        "batch": "1 sequence per step (64 prompt tokens + T-64 response tokens), ZeRO-0 fp32, CPU",
        "layers": cfg.layers,
        "load_avg": os.getloadavg(),
        "torch": torch.__version__,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"{'T':>6} {'none s':>8} {'fused s':>8} {'sep s':>8} {'fused/none':>10} {'sep/none':>9}"
          f" {'cpu fused':>10} {'cpu sep':>8} {'+gen fused':>10} {'+gen sep':>9}")
    for r in results:
        m = r["median_s"]
        g = (f" {r['ratio_fused_with_generation_cpu']:>10.4f} {r['ratio_separate_with_generation_cpu']:>9.4f}"
             if "generation_cpu_s" in r else "")
        print(f"{r['T']:>6} {m['none']['step']:>8.3f} {m['fused']['step']:>8.3f} {m['separate']['step']:>8.3f} "
              f"{r['ratio_fused']:>10.4f} {r['ratio_separate']:>9.4f} {r['ratio_fused_cpu']:>10.4f} "
              f"{r['ratio_separate_cpu']:>8.4f}{g}")
    print(f"wrote {args.out}")
    trainer.close()


if __name__ == "__main__":
    main()
