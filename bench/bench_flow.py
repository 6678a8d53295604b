"""Benchmark: `trace_flow` (fp32, in-place solves) against the float64 loop reference.

Side by side in one run, one torch thread by default; realistic causal-softmax attention with
an attention sink; response = second half, answer = 3 tokens near the end. Writes
bench/results/flow.json. Goal (issue 2): >= 100x at T = 2048.

    python bench/bench_flow.py [--lengths 512 1024 2048 4096] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def realistic_W(T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, T, generator=g) * 2.0  # [query, key]
    logits[:, 0] += 4.0  # attention sink
    logits += -0.02 * (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs()  # locality
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    attn = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    return attn.T.triu(1).contiguous()  # [key, query]


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    from ftcli.flow import trace_flow, trace_flow_reference

    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "flow.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'T':>6} {'trace_flow ms':>14} {'reference ms':>14} {'ratio':>9} {'max rel tau':>12} {'same sel':>9}")
    for T in args.lengths:
        W = realistic_W(T)
        r0 = T // 2
        Q, A = list(range(8, r0 - 8)), [T - 6, T - 5, T - 4]
        q = torch.zeros(1, T, dtype=torch.bool)
        a = torch.zeros_like(q)
        r = torch.zeros_like(q)
        q[0, Q] = True
        a[0, A] = True
        r[0, r0:] = True
        W32 = W[None].contiguous()
        fast = best_of(lambda W32=W32, q=q, a=a, r=r: trace_flow(W32, q, a, r), repeat=7)
        res = trace_flow(W32, q, a, r)
        W64 = W.double()
        t = time.perf_counter()
        ref = trace_flow_reference(W64, Q, A, (r0, T))
        slow = time.perf_counter() - t
        tau_ref = torch.tensor(ref["tau"], dtype=torch.float64)
        nz = tau_ref != 0
        rel = float(((res.tau[0].double() - tau_ref).abs()[nz] / tau_ref[nz].abs()).max())
        same = res.mask[0].long().tolist() == ref["mask"]
        rows.append(
            dict(T=T, trace_flow_s=fast, reference_s=slow, ratio=slow / fast, max_rel_tau=rel, same_selection=same)
        )
        print(f"{T:>6} {fast * 1e3:>14.2f} {slow * 1e3:>14.1f} {slow / fast:>8.0f}x {rel:>12.1e} {str(same):>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "flow", "threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
