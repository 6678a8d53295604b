"""Benchmark: peak memory and wall time of `mean_attention` (W of paper Eq. 1, one [B, T, T] fp32
buffer) against eager `output_attentions=True` (every layer's [B, H, T, T] map) on the default
model (SmolLM2-135M-Instruct, 30 layers, 9 query heads), batch 1, CPU. A third row, "forward",
is the model's plain sdpa forward (no W, `logits_to_keep=1`): the floor any method pays.

    python bench/bench_capture.py [--lengths 512 1024] [--threads 1] [--repeats 2]

Writes bench/results/capture.json and prints a table. Not a test.

How memory is measured (CPU): every (method, T) runs in a fresh subprocess. The worker loads
the model, reads every parameter once (the safetensors weights are file-backed mmaps that only
become resident when touched; see `worker`), runs a tiny warm-up forward (T = 16, so one-time allocations such as thread pools and
kernel caches are not billed to the method), then records VmRSS as the baseline and resets the
kernel's peak-RSS counter by writing "5" to /proc/self/clear_refs (Linux >= 4.0), which sets
VmHWM to the current RSS. After one measured call, VmHWM - baseline is the peak extra resident
memory that call needed. This counts everything the process touched (torch's CPU allocator,
oneDNN scratch, Python objects), unlike tracemalloc, and unlike ru_maxrss it is not dominated by
the transient peak of model loading (ru_maxrss cannot be reset). If clear_refs is not writable,
the worker falls back to ru_maxrss - baseline and says so in the JSON ("mem_method"); that
fallback is only meaningful when the call's peak exceeds the loading peak. Both methods'
outputs are kept alive until the peak is read (eager keeps the whole attentions tuple, as a
caller averaging the maps would). The wall time is the median of `--repeats` further calls in
the same process, after the memory measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
METHODS = ("forward", "mean_attention", "eager")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(method: str, T: int, threads: int, repeats: int, model_name: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    from ftcli.attention import layer_range, mean_attention
    from ftcli.fetch.models import load_model

    model, _ = load_model(model_name)
    L = model.config.num_hidden_layers
    layers = layer_range(None, L)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size, (1, T), generator=g)
    am = torch.ones_like(ids)

    def run(x, m):
        if method == "mean_attention":
            return mean_attention(model, x, m)  # [B, T, T]
        if method == "forward":  # reference: the model's own sdpa forward, no W at all
            with torch.no_grad():
                return model(input_ids=x, attention_mask=m, use_cache=False, logits_to_keep=1)
        with torch.no_grad():
            model.set_attn_implementation("eager")
            try:
                out = model(input_ids=x, attention_mask=m, output_attentions=True, logits_to_keep=1)
            finally:
                model.set_attn_implementation("sdpa")
            att = out.attentions  # L x [B, H, T, T], all kept
            W = torch.stack([att[i] for i in layers]).mean(dim=(0, 2)).transpose(1, 2).triu(1)
            return W, att

    # Fault in every weight page first: safetensors weights are file-backed mmaps that enter RSS
    # only when touched (with readahead), so an embedding lookup of new token ids would
    # otherwise be billed tens of MiB of weight pages to whichever method runs first.
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.sum()
    run(ids[:, :16], am[:, :16])  # warm-up (thread pools, kernel caches)
    baseline_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = run(ids, am)
    first_s = time.perf_counter() - t0
    if reset:
        peak_kb, mem_method = _status_kb("VmHWM") - baseline_kb, "VmHWM after clear_refs"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max(baseline_kb, ru0)
        mem_method = "ru_maxrss fallback"
    del out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = run(ids, am)
        times.append(time.perf_counter() - t0)
        del r
    return {
        "method": method,
        "T": T,
        "threads": threads,
        "layers": [layers[0], layers[-1] + 1],
        "num_layers": L,
        "num_heads": model.config.num_attention_heads,
        "peak_extra_mib": round(peak_kb / 1024, 2),
        "baseline_rss_mib": round(baseline_kb / 1024, 2),
        "mem_method": mem_method,
        "first_call_s": round(first_s, 4),
        "wall_s": round(statistics.median(times) if times else first_s, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls after the memory run")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=str(ROOT / "results" / "capture.json"))
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        print(json.dumps(worker(a.worker, a.T, a.threads, a.repeats, a.model)))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    rows = []
    for T in a.lengths:
        for method in METHODS:
            cmd = [sys.executable, __file__, "--worker", method, "--T", str(T)]
            cmd += ["--threads", str(a.threads), "--repeats", str(a.repeats), "--model", a.model]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"worker {method} T={T} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))

    by = {(r["method"], r["T"]): r for r in rows}
    ratios = {}
    for T in a.lengths:
        m, e = by["mean_attention", T], by["eager", T]
        ratios[str(T)] = {
            "memory_eager_over_mean": round(
                e["peak_extra_mib"] / max(m["peak_extra_mib"], 1e-6), 2
            ),
            "time_eager_over_mean": round(e["wall_s"] / max(m["wall_s"], 1e-9), 2),
            "memory_mean_over_plain_forward": round(
                m["peak_extra_mib"] / max(by["forward", T]["peak_extra_mib"], 1e-6), 2
            ),
        }
    meta = {
        "model": a.model,
        "batch": 1,
        "threads": a.threads,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "cpu_count": os.cpu_count(),
        "memory": "peak extra RSS over the post-load baseline, fresh subprocess per row",
    }
    out = {"meta": meta, "rows": rows, "ratios": ratios}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")

    print(f"{'T':>5} {'method':>15} {'peak MiB':>10} {'wall s':>8}")
    for r in rows:
        print(f"{r['T']:>5} {r['method']:>15} {r['peak_extra_mib']:>10.1f} {r['wall_s']:>8.2f}")
    for T, rr in ratios.items():
        print(
            f"T={T}: eager/mean memory {rr['memory_eager_over_mean']}x, "
            f"time {rr['time_eager_over_mean']}x"
        )
    print(f"wrote {a.out}")


def _version(pkg: str) -> str:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
