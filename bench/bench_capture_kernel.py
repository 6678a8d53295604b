"""Micro-benchmark of the W recompute kernel (`ftcli.attention._accumulate_layer`) against the
previous implementation, kept below as the reference (`reference_accumulate_layer`).

One thread, random post-RoPE q/k of SmolLM2-135M's attention shapes (9 query heads, 3 KV heads,
head dim 64), B = 2 sequences of T tokens, `--layers` calls per timing (the 10 middle layers that
the fused capture recomputes in one forward). Old and new alternate inside each repetition; the
figures are medians (and minimums) over `--reps` repetitions. Two mask cases: `causal` (mask
None, as sdpa passes it without padding) and `padded` (4D bool causal mask, second row left-padded
by T/8, as sdpa passes it with padding). Each case also checks that both kernels give the same
buffer (max abs difference).

    OMP_NUM_THREADS=1 python bench/bench_capture_kernel.py            # T = 1024 2048 4096
    OMP_NUM_THREADS=1 python bench/bench_capture_kernel.py --ts 2048 --chunks 64 128 256

Writes bench/results/capture_kernel.json (a data file: not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ftcli.attention import DEFAULT_CHUNK
from ftcli.attention import _accumulate_layer as new_accumulate_layer  # the kernel under test

B, H, HKV, D = 2, 9, 3, 64  # SmolLM2-135M attention shapes
OUT = Path(__file__).resolve().parent / "results" / "capture_kernel.json"


def reference_accumulate_layer(
    buf, query, key, mask, pad, scaling, chunk, softcap=None, sliding_window=None, sinks=None
):
    """The kernel as it was before this benchmark (ftcli/attention.py, commit of issue 14):
    broadcast matmul per chunk, fresh [B, H_kv, g, c, kend] tensors, full-width masking,
    amax / exp / sum / div / nan_to_num passes, a transposed add into buf [B, Tk, Tq]."""
    B, H, Tq, d = query.shape
    Hkv, Tk = key.shape[1], key.shape[2]
    g = H // Hkv
    k32 = key.detach().to(torch.float32)  # [B, H_kv, Tk, d]
    off = Tk - Tq
    build = mask is None or mask.ndim == 2
    if mask is not None and mask.ndim == 2:
        pad = mask if pad is None else pad
    if pad is not None:
        pad = pad[:, -Tk:].to(device=key.device, dtype=torch.bool)  # [B, Tk]
    kpos = torch.arange(Tk, device=key.device)
    sink = None
    if sinks is not None:
        sink = sinks.detach().to(torch.float32).reshape(1, Hkv, g, 1, 1)
    for q0 in range(0, Tq, chunk):
        q1 = min(q0 + chunk, Tq)
        c = q1 - q0
        kend = Tk
        if build:
            kend = min(Tk, off + q1)
        elif (
            mask.dtype == torch.bool and off + q1 < Tk and not mask[..., q0:q1, off + q1 : Tk].any()
        ):
            kend = off + q1
        qc = query[:, :, q0:q1].detach().to(torch.float32)
        qc = qc.reshape(B, Hkv, g, c, d)  # [B, Hkv, g, c, d]
        kc = k32[:, :, None, :kend]  # [B, Hkv, 1, kend, d]
        s = torch.matmul(qc, kc.transpose(-1, -2)).mul_(scaling)  # [B, Hkv, g, c, kend]
        if softcap is not None:
            s.div_(softcap).tanh_().mul_(softcap)
        if build:
            qpos = torch.arange(off + q0, off + q1, device=key.device)[:, None]  # [c, 1]
            keep = kpos[None, :kend] <= qpos  # [c, kend] causal
            if sliding_window is not None:
                keep = keep & (kpos[None, :kend] > qpos - sliding_window)
            keep = keep[None, None, None]  # [1, 1, 1, c, kend]
            if pad is not None:
                keep = keep & pad[:, None, None, None, :kend]  # [B, 1, 1, c, kend]
            s.masked_fill_(~keep, float("-inf"))
        else:
            m = mask[..., q0:q1, :kend]  # [B|1, 1|H, c, kend]
            m = m.unsqueeze(2) if m.shape[1] == 1 else m.reshape(m.shape[0], Hkv, g, c, kend)
            if m.dtype == torch.bool:
                s.masked_fill_(~m, float("-inf"))
            else:
                s.add_(m.to(torch.float32))
        mx = s.amax(-1, keepdim=True)  # [B, Hkv, g, c, 1]
        if sink is not None:
            mx = torch.maximum(mx, sink)
        p = s.sub_(mx).exp_()
        den = p.sum(-1, keepdim=True)
        if sink is not None:
            den = den + torch.exp(sink - mx)
        p.div_(den)  # [B, Hkv, g, c, kend]
        p.nan_to_num_(nan=0.0)
        ph = p.sum(dim=(1, 2))  # [B, c, kend]
        buf[:, :kend, q0:q1].add_(ph.transpose(1, 2), alpha=1.0 / H)  # [B, kend, c]


def make_inputs(T: int, case: str, seed: int = 0):
    """query [B, H, T, d], key [B, H_kv, T, d] (bf16-rounded like a bf16 policy's, held in fp32),
    mask (None or 4D bool [B, 1, T, T]), pad [B, T] or None."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).to(torch.bfloat16).float()
    k = torch.randn(B, HKV, T, D, generator=g).to(torch.bfloat16).float()
    if case == "causal":
        return q, k, None, None
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1, : T // 8] = False  # left padding of the second row
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = (causal[None] & pad[:, None, :])[:, None]  # [B, 1, T, T] True = attend
    return q, k, mask, pad


def run_layers(fn, q, k, mask, pad, chunk: int, layers: int) -> tuple[float, torch.Tensor]:
    buf = torch.zeros(B, q.shape[2], q.shape[2])
    t0 = time.perf_counter()
    for _ in range(layers):
        fn(buf, q, k, mask, pad, D**-0.5, chunk)
    return time.perf_counter() - t0, buf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ts", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--cases", nargs="+", default=["causal", "padded"])
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument(
        "--ref-chunk", type=int, default=256, help="chunk of the reference (its default)"
    )
    ap.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=[DEFAULT_CHUNK],
        help="chunk sizes of the new kernel to time",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for T in args.ts:
        for case in args.cases:
            q, k, mask, pad = make_inputs(T, case)
            variants = [("old", reference_accumulate_layer, args.ref_chunk)]
            variants += [(f"new@{c}", new_accumulate_layer, c) for c in args.chunks]
            times = {name: [] for name, _, _ in variants}
            bufs = {}
            for name, fn, c in variants:  # warm-up (allocator, BLAS) and the parity check
                _, buf = run_layers(fn, q, k, mask, pad, c, 1)
                # the reference sums [B, key, query], the new kernel [B, query, key]
                bufs[name] = buf if name == "old" else buf.transpose(1, 2)
            for _ in range(args.reps):
                for name, fn, c in variants:
                    dt, _ = run_layers(fn, q, k, mask, pad, c, args.layers)
                    times[name].append(dt)
            old = statistics.median(times["old"])
            for name, _, c in variants:
                med = statistics.median(times[name])
                row = {
                    "T": T,
                    "case": case,
                    "kernel": name,
                    "chunk": c,
                    "layers": args.layers,
                    "median_s": round(med, 4),
                    "min_s": round(min(times[name]), 4),
                    "speedup_vs_old": round(old / med, 2),
                    "max_abs_diff_vs_old": float((bufs[name] - bufs["old"]).abs().max()),
                }
                rows.append(row)
                print(
                    f"T={T:5d} {case:7s} {name:8s} median {med:7.3f} s  min {min(times[name]):7.3f} s"
                    f"  x{row['speedup_vs_old']:.2f}  |diff| {row['max_abs_diff_vs_old']:.1e}",
                    flush=True,
                )
    meta = {
        "batch": B,
        "heads": H,
        "kv_heads": HKV,
        "head_dim": D,
        "threads": 1,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "reps": args.reps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
