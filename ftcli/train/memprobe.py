"""Peak memory of one update micro-step, measured in a fresh process on CPU.

`measure_update_peak(shape, B, T, checkpointing, chunk)` runs `python -m ftcli.train.memprobe`
on a random Qwen3 of `shape` (a Qwen3Config's keyword arguments): one forward through
`policy_logprobs` and one backward, with every parameter's gradient allocated beforehand (it
exists in every arm). It returns the resident-set peak above the resident set before the
micro-step (`/proc/self/status` VmHWM after resetting it through `/proc/self/clear_refs`;
allocations of 64 KB and more are mmap'd, so freed tensors leave the resident set) and the dry
run's estimate of the same terms (`ftcli.train.memory`). Linux only. Used by
`bench/bench_memory.py` and the tests that calibrate the dry run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _rss(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _probe(shape_kw: dict, B: int, T: int, checkpointing: bool, chunk: int) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ftcli.train.logprobs import policy_logprobs
    from ftcli.train.memory import activation_bytes, logprob_bytes, model_shape, recompute_bytes

    torch.set_num_threads(1)
    cfg = Qwen3Config(**{"tie_word_embeddings": False, **shape_kw})
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, cfg.vocab_size, (B, T))
    batch = dict(input_ids=ids, attention_mask=torch.ones(B, T, dtype=torch.bool), first=1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # reset the peak resident set (VmHWM)
    base = _rss("VmRSS")
    logp, _ = policy_logprobs(model, batch, 1.0, chunk, False, True)
    (logp * 0.01).sum().backward()
    peak = _rss("VmHWM") - base
    s = model_shape(cfg)
    n = B * T  # the dry run's update peak less the state (Plan.update_total)
    est = activation_bytes(s, n, 4, checkpointing) + max(logprob_bytes(s, n, 4, chunk),
                                                         recompute_bytes(s, n, 4, checkpointing))
    return {"peak": peak, "estimate": est, "tokens": n}


def measure_update_peak(shape_kw: dict, B: int, T: int, checkpointing: bool, chunk: int) -> dict:
    """Run the probe in a subprocess; {"peak", "estimate", "tokens"} (bytes, bytes, count)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    res = subprocess.run([sys.executable, "-m", "ftcli.train.memprobe", json.dumps([shape_kw, B, T, checkpointing, chunk])],
                         env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"memory probe failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure_growth(shape_kw: dict, key: str, lo: int, hi: int, B: int, T: int, checkpointing: bool,
                   chunk: int) -> tuple[float, float]:
    """(measured, estimated) growth of the update's peak when `shape_kw[key]` goes from `lo` to
    `hi`: the per-layer or per-vocab-entry figure, free of the terms that do not scale with it."""
    a = measure_update_peak({**shape_kw, key: lo}, B, T, checkpointing, chunk)
    b = measure_update_peak({**shape_kw, key: hi}, B, T, checkpointing, chunk)
    return b["peak"] - a["peak"], b["estimate"] - a["estimate"]


if __name__ == "__main__":
    print(json.dumps(_probe(*json.loads(sys.argv[1]))))
