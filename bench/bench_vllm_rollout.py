"""Benchmark: rollouts from the in-process vLLM engine (`ftcli.vllm_engine`, what `ft train
--rollout vllm` samples with) against the compact decode loop (`ftcli.generation.generate`,
`--rollout hf`), side by side in one process.

Two shapes: the main job's (the shipped default policy, 16 Countdown prompts x 8, 192 new
tokens) and SmolLM2-135M-Instruct with 512 new tokens (8 prompts x 4 by default). Temperature 1,
EOS on, one torch thread, float32; the arms alternate order per repetition, each repetition
with its own seed (the same for both arms; their samplers differ, so they sample different
tokens). Reports useful generated tokens (response tokens, EOS included) per second, wall and
process-CPU medians, the ratio, the engine build time and one weight sync. Run it in the venv
of `just vllm-setup`:

    VLLM_ENABLE_V1_MULTIPROCESSING=0 ~/.cache/ftcli/vllm-venv/bin/python bench/bench_vllm_rollout.py [--reps 3]

Writes bench/results/vllm_rollout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).parent))

from bench_generation import countdown_prompts  # noqa: E402


def bench_shape(name: str, model_alias: str, prompts_n: int, group: int, max_new: int, reps: int) -> dict:
    """Both arms at one shape; returns the shape's result entry."""
    from ftcli.fetch.models import load_model, resolve_model
    from ftcli.generation import generate, stop_token_ids
    from ftcli.vllm_engine import EngineOptions, VLLMEngine, stream_parameters

    model, tok = load_model(model_alias)
    model.eval()
    prompts, source = countdown_prompts(tok, prompts_n)
    stops = stop_token_ids(model, tok)
    t0 = time.perf_counter()
    engine = VLLMEngine.shared(EngineOptions(model=str(resolve_model(model_alias))))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.load_weights(stream_parameters(model))
    sync_s = time.perf_counter() - t0
    rows = prompts_n * group
    kw = dict(n=group, max_new_tokens=max_new, temperature=1.0)

    def run(arm: str, seed: int) -> tuple[float, float, int]:
        t, c = time.perf_counter(), time.process_time()
        if arm == "vllm":
            groups = engine.generate(tok, prompts, stops=stops, seed=seed, **kw)
        else:
            with torch.no_grad():
                groups = generate(model, tok, prompts, seed=seed, batch_size=rows, **kw)
        return time.perf_counter() - t, time.process_time() - c, sum(len(r.response_ids) for g in groups for r in g)

    arms = ["compact", "vllm"]
    wall: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    toks: dict[str, list[int]] = {a: [] for a in arms}
    for rep in range(reps):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            dt, dc, n = run(arm, 1000 + rep)
            wall[arm].append(dt)
            cpu[arm].append(dc)
            toks[arm].append(n)
            print(f"{name} rep {rep} {arm:8s} wall {dt:7.2f} s  cpu {dc:7.2f} s  {n} tokens  {n / dt:8.1f} tok/s", flush=True)

    def stats(arm: str) -> dict:
        tps = [n / t for n, t in zip(toks[arm], wall[arm], strict=True)]
        return {"wall_s": [round(t, 3) for t in wall[arm]], "cpu_s": [round(t, 3) for t in cpu[arm]],
                "useful_tokens": toks[arm], "tok_per_s_median": round(statistics.median(tps), 1),
                "tok_per_s_max": round(max(tps), 1),
                "cpu_tok_per_s_median": round(statistics.median(n / c for n, c in zip(toks[arm], cpu[arm], strict=True)), 1)}

    res = {"model": model_alias, "prompts": prompts_n, "group": group, "rows": rows, "max_new_tokens": max_new,
           "prompt_source": source, "engine_build_s": round(build_s, 1), "weight_sync_s": round(sync_s, 3),
           "arms": {a: stats(a) for a in arms}}
    res["vllm_over_compact_tok_per_s"] = round(res["arms"]["vllm"]["tok_per_s_median"]
                                               / res["arms"]["compact"]["tok_per_s_median"], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smol-prompts", type=int, default=8)
    ap.add_argument("--smol-group", type=int, default=4)
    ap.add_argument("--skip-smol", action="store_true", help="only the main job's shape")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vllm_rollout.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import vllm

    shapes = {"main_job": bench_shape("main_job", "default-policy", 16, 8, 192, args.reps)}
    if not args.skip_smol:
        shapes["smollm2_512"] = bench_shape("smollm2_512", "smollm2-135m", args.smol_prompts, args.smol_group,
                                            512, args.reps)
    res = {"what": "useful generated tokens per second: in-process vLLM engine vs the compact decode loop",
           "temperature": 1.0, "eos": True, "dtype": "float32", "threads": args.threads, "reps": args.reps,
           "torch": torch.__version__, "vllm": vllm.__version__, "cpu": platform.processor() or platform.machine(),
           "shapes": shapes}
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
