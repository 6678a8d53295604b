"""Benchmark: peak memory of one update micro-step per response token, the plain path (full
[B, T, V] logits, every layer's activations kept) against `--gradient-checkpointing` plus
chunked log-probs (`--logprob-chunk`, `ftcli.train.logprobs`), side by side in one run.

    python bench/bench_memory.py [--batch 4] [--tokens 1024] [--layers 4] [--hidden 512] [--chunk 1024]

Model: a random Qwen3 of Qwen3's vocabulary (151,936 entries), 4 layers, hidden 512 (8 heads,
4 KV heads, intermediate 1536), fp32 on CPU; one micro-batch of 4 x 1024 tokens. Each arm runs
in a fresh process (`ftcli.train.memprobe`): every gradient is allocated first (it exists in
both arms), then the resident-set peak of one forward + backward above the resident set before
it is read from VmHWM after resetting it. The dry run's estimate of the same terms
(`ftcli.train.memory`) is printed beside each measurement. The per-layer and per-vocab-entry
figures are also measured as growths (5 vs 1 layers; 36K vs 4K vocabulary), the calibration
that `tests/test_train_memory.py` checks within 25%.

Writes bench/results/memory.json. Goal (issue 25): at least 4x less peak memory above the
weights with checkpointing and chunked log-probs. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from ftcli.train.memprobe import measure_growth, measure_update_peak

ROOT = Path(__file__).resolve().parent
MB = 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default=str(ROOT / "results" / "memory.json"))
    a = ap.parse_args()
    shape = dict(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=3 * a.hidden, num_hidden_layers=a.layers,
                 num_attention_heads=8, num_key_value_heads=4, head_dim=a.hidden // 8)
    n = a.batch * a.tokens
    arms = {"plain (full logits, no checkpointing)": (False, 0),
            f"checkpointing + log-prob chunk {a.chunk}": (True, a.chunk)}
    rows = {}
    t0 = time.perf_counter()
    for name, (ckpt, chunk) in arms.items():
        m = measure_update_peak(shape, a.batch, a.tokens, ckpt, chunk)
        rows[name] = {**m, "bytes_per_token": m["peak"] / n}
        print(f"{name:45s} peak {m['peak'] / MB:9.1f} MB  ({m['peak'] / n / 1024:7.1f} KB/token)   "
              f"dry-run estimate {m['estimate'] / MB:9.1f} MB", flush=True)
    plain, lean = rows.values()
    ratio = plain["peak"] / lean["peak"]
    print(f"ratio: {ratio:.2f}x less peak memory above the weights (goal: >= 4x)")
    small = dict(shape, vocab_size=4096, num_hidden_layers=1)
    calib = {}
    for label, key, lo, hi, ckpt, chunk, T in (
            ("activations per token per layer", "num_hidden_layers", 1, 5, False, 128, 1024),
            ("activations per token per layer (checkpointing)", "num_hidden_layers", 1, 5, True, 128, 1024),
            ("log-probs per vocab entry (full logits)", "vocab_size", 4096, 36864, False, 0, 256),
            ("log-probs per vocab entry (chunked)", "vocab_size", 4096, 36864, False, 128, 256)):
        meas, est = measure_growth(small, key, lo, hi, 2, T, ckpt, chunk)
        calib[label] = {"measured": meas, "estimated": est, "ratio": meas / est}
        print(f"{label:50s} measured {meas / MB:8.1f} MB  estimated {est / MB:8.1f} MB  ({meas / est:.2f})", flush=True)
    out = {"shape": shape, "batch": a.batch, "tokens": a.tokens, "arms": rows, "ratio": ratio,
           "calibration": calib, "seconds": round(time.perf_counter() - t0, 1),
           "machine": platform.processor() or platform.machine()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
