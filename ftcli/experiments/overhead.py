"""Table 6: the cost of the credit in a training step; also what `bench/bench_overhead.py` runs.

Arms: none (plain GRPO), flow with W captured inside the update forward (fused), and flow with
the paper's separate no-grad pass, at each context length, interleaved in one process.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.table import Table

from ftcli.experiments.common import progress as progress_of
from ftcli.experiments.common import write_csv
from ftcli.experiments.config import OverheadConfig
from ftcli.experiments.stats import median
from ftcli.io import atomic_write_json
from ftcli.progress import stderr_console
from ftcli.sequences import TracedSeq, task_prompt
from ftcli.train.config import resolve_config
from ftcli.train.loop import Trainer
from ftcli.train.stats import Timer

OVERHEAD_ARMS = (("none", "fused"), ("flow", "fused"), ("flow", "separate"))


def overhead(cfg: OverheadConfig, *, console=None, progress: bool = True) -> dict:
    """Table 6: one update step (forward/backward, credit, optimizer) of `ft train`'s Trainer on
    synthetic sequences of exactly each context length (a real prompt, random response ids, the
    last 4 response tokens as the answer), arms none / flow fused / flow separate interleaved
    round by round (order rotated) in one process; medians over `repeats` after `warmup` rounds,
    wall and process CPU seconds. The step is the trainer's own (`PolicyUpdate.update`, its `Timer`).
    Generation is excluded: it is the same for every rule."""
    out = Path(cfg.out)
    console = stderr_console(console)
    scratch = out / "trainer"
    shutil.rmtree(scratch, ignore_errors=True)
    tcfg = resolve_config("cpu", model=cfg.model, task=cfg.task, credit="flow", prompts=1,
                          group_size=cfg.micro_batch, micro_batch=cfg.micro_batch, layers=cfg.layers,
                          out=str(scratch), progress=False, log_samples=0, steps=1, seed=cfg.seed)
    tr = Trainer(tcfg)
    try:
        with torch.enable_grad():  # the update needs autograd whatever the caller set
            tr.setup()
            tok = tr.tokenizer
            sample = tr.train_data[0]
            pr = task_prompt(tok, tr.task, sample)
            prompt_tokens = len(pr.ids)
            g = torch.Generator().manual_seed(cfg.seed)
            V = len(tok)
            batches = {}
            for T in cfg.lengths:
                n_resp = T - len(pr.ids)
                if n_resp < 8:
                    raise ValueError(f"context length {T} leaves no room for a response after a {len(pr.ids)}-token prompt")
                seqs = []
                for b in range(cfg.micro_batch):
                    resp = torch.randint(V // 4, V - 1, (n_resp,), generator=g).tolist()
                    seqs.append(TracedSeq(ids=pr.ids + resp, n_prompt=len(pr.ids), question=pr.question,
                                          answer=[False] * (n_resp - 4) + [True] * 4,
                                          advantage=1.0 if b % 2 == 0 else -1.0, seed=b))
                batches[T] = seqs
            times: dict[tuple[int, str], list[dict]] = {}
            rounds = cfg.warmup + cfg.repeats
            with progress_of(console, progress) as prog:
                bar = prog.add_task("overhead", total=rounds * len(cfg.lengths) * len(OVERHEAD_ARMS))
                for rnd in range(rounds):
                    order = OVERHEAD_ARMS[rnd % 3 :] + OVERHEAD_ARMS[: rnd % 3]  # rotated: no order bias
                    for T in cfg.lengths:
                        seqs = batches[T]
                        for rule, cpass in order:
                            timer = Timer()
                            t0, c0 = time.perf_counter(), time.process_time()
                            tr.updater.update(seqs, timer, rule, cpass)  # the trainer's own update and timers
                            step, cpu = time.perf_counter() - t0, time.process_time() - c0
                            if rnd >= cfg.warmup:
                                times.setdefault((T, f"{rule}-{cpass}"), []).append({"step": step, "cpu": cpu, **timer.t})
                            prog.advance(bar)
    finally:
        tr.close()
    rows = []
    for T in cfg.lengths:
        base = median([x["step"] for x in times[(T, "none-fused")]])
        base_cpu = median([x["cpu"] for x in times[(T, "none-fused")]])
        for rule, cpass in OVERHEAD_ARMS:
            xs = times[(T, f"{rule}-{cpass}")]
            step, cpu = median([x["step"] for x in xs]), median([x["cpu"] for x in xs])
            rows.append({"length": T, "arm": f"{rule}-{cpass}", "rule": rule, "credit_pass": cpass,
                         "step_s": step, "step_cpu_s": cpu, "ratio_cpu": cpu / base_cpu if base_cpu else None,
                         "credit_s": median([x.get("credit", 0.0) for x in xs]),
                         "fwd_bwd_s": median([x.get("fwd_bwd", 0.0) for x in xs]),
                         "optim_s": median([x.get("optim", 0.0) for x in xs]),
                         "ratio": step / base if base else None,
                         "overhead_pct": 100 * (step / base - 1) if base else None, "samples": len(xs)})
    results = {"experiment": "overhead", "table": "Table 6",
               "settings": {k: v for k, v in asdict(cfg).items() if k != "out"},
               "threads": torch.get_num_threads(), "prompt_tokens": prompt_tokens, "rows": rows,
               "note": "medians; ratio = wall step time / that of credit none at the same length (ratio_cpu: "
                       "process CPU seconds, robust to other jobs); same process, arms rotated per round"}
    atomic_write_json(out / "results.json", results)
    write_csv(out / "table.csv", [list(rows[0])] + [list(r.values()) for r in rows])
    return results


def overhead_table(results: dict):
    s = results["settings"]
    t = Table(title=f"Table 6 · credit overhead · {s['model']} · micro-batch {s['micro_batch']} · "
                    f"{results['threads']} thread(s) · median of {s['repeats']}")
    for c in ("context", "GRPO step (s)", "flow fused step (s)", "fused overhead\nwall / CPU",
              "flow separate step (s)", "separate overhead\nwall / CPU", "credit time (s)\nfused / separate"):
        t.add_column(c, justify="right")
    by = {(r["length"], r["arm"]): r for r in results["rows"]}

    def pct(r):
        return f"{r['overhead_pct']:+.1f}% / {100 * (r['ratio_cpu'] - 1):+.1f}%"

    for T in s["lengths"]:
        n, f, p = by[(T, "none-fused")], by[(T, "flow-fused")], by[(T, "flow-separate")]
        t.add_row(str(T), f"{n['step_s']:.3f}", f"{f['step_s']:.3f}", pct(f), f"{p['step_s']:.3f}", pct(p),
                  f"{f['credit_s']:.3f} / {p['credit_s']:.3f}")
    t.caption = "fused: W captured inside the update forward (credit = the flow solve); separate: an extra no-grad pass (counted as credit). Paper: 2.2-4.5% with its separate pass."
    return t
