"""Table 6: the cost of the credit in a training step; `ft ablate overhead` and `bench/bench_step.py` run it.

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
from ftcli.sequences import MICRO_ORDERS, TracedSeq, micro_batches, padded_slots, task_prompt
from ftcli.train.config import resolve_config
from ftcli.train.loop import Trainer
from ftcli.train.stats import Timer

OVERHEAD_ARMS = (("none", "fused"), ("flow", "fused"), ("flow", "separate"))
PAPER_OVERHEAD_PCT = {1024: 2.2, 8192: 4.5}  # Table 6 of the paper: flow's extra pass, % of a step


def arm_name(rule: str, credit_pass: str, micro_order: str = "length") -> str:
    """"flow-fused", "none-fused", "flow-separate"; "-group" for rollout-order micro-batches."""
    return f"{rule}-{credit_pass}" + ("" if micro_order == "length" else f"-{micro_order}")


def time_arms(updater, seqs, arms, rnd: int) -> dict[str, dict]:
    """One round: the trainer's own update (`PolicyUpdate.update`, its `Timer`) of `seqs` under
    each arm (rule, credit pass[, micro-batch order]), the order rotated by `rnd` (no order bias).
    Per arm: wall `step` and process `cpu` seconds, and the Timer's phases (fwd_bwd, capture =
    the separate pass, credit = the solve and weights, optim)."""
    k = rnd % len(arms)
    out = {}
    for arm in arms[k:] + arms[:k]:
        rule, cpass, order = (*arm, "length")[:3]
        timer = Timer()
        t0, c0 = time.perf_counter(), time.process_time()
        updater.update(seqs, timer, rule, cpass, order)
        out[arm_name(rule, cpass, order)] = {"step": time.perf_counter() - t0, "cpu": time.process_time() - c0, **timer.t}
    return out


def arm_rows(times: dict[str, list[dict]], base: str = "none-fused", gen_s: float | None = None) -> list[dict]:
    """Per arm: medians and minimums over the rounds, ratios to `base`, and paired (same round)
    differences. `fused_capture_s`: the capture inside the fused forward, as the median paired
    difference of fwd_bwd time to `base`. With `gen_s` (the generation of the step, the same for
    every arm) the arm's whole step is gen_s + its update, and `share_pct` is the arm's extra
    time over `base` as a percentage of the base's whole step."""
    b = times[base]
    rows = []
    for arm, xs in times.items():
        def med(key, xs=xs):
            return median([x.get(key, 0.0) for x in xs])

        step, cpu = med("step"), med("cpu")
        paired = [x["step"] - y["step"] for x, y in zip(xs, b, strict=True)]
        paired_cpu = [x["cpu"] - y["cpu"] for x, y in zip(xs, b, strict=True)]
        rule, cpass = arm.split("-")[:2]
        row = {"arm": arm, "rule": rule, "credit_pass": cpass,
               "step_s": step, "step_min_s": min(x["step"] for x in xs), "step_cpu_s": cpu,
               "ratio": step / med("step", b) if b else None, "ratio_cpu": cpu / med("cpu", b) if b else None,
               "overhead_pct": 100 * (step / med("step", b) - 1),
               "paired_extra_s": median(paired), "paired_extra_cpu_s": median(paired_cpu),
               "fwd_bwd_s": med("fwd_bwd"), "capture_s": med("capture"), "solve_s": med("credit"),
               "credit_s": median([x.get("capture", 0.0) + x.get("credit", 0.0) for x in xs]),
               "optim_s": med("optim"), "samples": len(xs),
               "fused_capture_s": median([x.get("fwd_bwd", 0.0) - y.get("fwd_bwd", 0.0) for x, y in zip(xs, b, strict=True)])
               if cpass == "fused" else 0.0}
        if gen_s is not None:
            whole = gen_s + med("step", b)
            row.update(gen_s=gen_s, whole_step_s=gen_s + step, share_pct=100 * median(paired) / whole,
                       share_cpu_pct=100 * median(paired_cpu) / (gen_s + med("cpu", b)))
        rows.append(row)
    return rows


def forced_generation_seconds(model, prompt_ids: list[int], rows: int, n_new: int, pad_id: int) -> float:
    """Wall seconds to sample exactly `n_new` tokens for `rows` copies of a prompt (HF
    `generate` with its KV cache, EOS held off): the generation a step of that length pays."""
    ids = torch.tensor([prompt_ids] * rows)  # [rows, P]
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                       min_new_tokens=n_new, do_sample=True, top_k=0, top_p=1.0, pad_token_id=pad_id)
    return time.perf_counter() - t0


def overhead(cfg: OverheadConfig, *, console=None, progress: bool = True, generation: bool = False) -> dict:
    """Table 6: one update step (forward/backward, credit, optimizer) of `ft train`'s Trainer on
    synthetic sequences of exactly each context length (a real prompt, random response ids, the
    last 4 response tokens as the answer), arms none / flow fused / flow separate interleaved
    round by round (order rotated) in one process; medians (and minimums) over `repeats` after
    `warmup` rounds, wall and process CPU seconds. The step is the trainer's own
    (`PolicyUpdate.update`, its `Timer`). With `generation`, the sampling of the responses
    (`micro_batch` rows, forced to the length) is timed once per length after the rounds (it is
    the same for every arm), which gives each arm's share of the whole step (`share_pct`)."""
    out = Path(cfg.out)
    console = stderr_console(console)
    scratch = out / "trainer"
    shutil.rmtree(scratch, ignore_errors=True)
    tcfg = resolve_config("cpu", model=cfg.model, task=cfg.task, credit="flow", prompts=1,
                          group_size=max(2, cfg.micro_batch), micro_batch=cfg.micro_batch, layers=cfg.layers,
                          out=str(scratch), progress=False, log_samples=0, steps=1, seed=cfg.seed,
                          data_root=cfg.data_root)
    tr = Trainer(tcfg)
    gen_s: dict[int, float] = {}
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
                    for T in cfg.lengths:
                        for arm, x in time_arms(tr.updater, batches[T], OVERHEAD_ARMS, rnd).items():
                            if rnd >= cfg.warmup:
                                times.setdefault((T, arm), []).append(x)
                        prog.advance(bar, len(OVERHEAD_ARMS))
                if generation:
                    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                    for T in cfg.lengths:
                        gen_s[T] = forced_generation_seconds(tr.engine.module, pr.ids, cfg.micro_batch, T - len(pr.ids), pad)
    finally:
        tr.close()
    rows = []
    for T in cfg.lengths:
        by_arm = {arm_name(*a): times[(T, arm_name(*a))] for a in OVERHEAD_ARMS}
        rows += [{"length": T, **r} for r in arm_rows(by_arm, gen_s=gen_s.get(T))]
    results = {"experiment": "overhead", "table": "Table 6",
               "settings": {k: v for k, v in asdict(cfg).items() if k != "out"},
               "threads": torch.get_num_threads(), "prompt_tokens": prompt_tokens, "rows": rows,
               "paper_overhead_pct": PAPER_OVERHEAD_PCT,
               "note": "medians (and minimums) over the rounds; ratio = wall update time / that of credit none at "
                       "the same length (ratio_cpu: process CPU seconds, robust to other jobs); paired_extra = "
                       "median over rounds of (arm - none) in the same round; credit_s = capture (separate "
                       "pass) + solve; fused_capture_s = median paired fwd_bwd difference; share_pct = "
                       "paired_extra / (generation + none update); same process, arms rotated per round"}
    atomic_write_json(out / "results.json", results)
    write_csv(out / "table.csv", [list(rows[0])] + [list(r.values()) for r in rows])
    return results


STEP_ARMS = (("none", "fused"), ("flow", "fused"), ("flow", "separate"), ("flow", "fused", "group"))


def rollout_overhead(tcfg, *, repeats: int = 3, arms=STEP_ARMS, progress=None) -> dict:
    """Table 6 on whole training steps of `tcfg` (real rollouts, e.g. the main job's 16 x 8):
    each round samples the step's rollouts once (`Trainer.rollouts`, timed as generation: the
    same for every arm) and then runs the trainer's update of them under every arm, rotated
    (`time_arms`). Round 0 is a warm-up (one untimed flow update). Also counts the update's
    padded token slots in rollout order and by length (`micro_batches`). `progress(i, n)` is
    called after each round."""
    tr = Trainer(tcfg)
    gen, pads, tokens, times = [], [], [], {}
    try:
        with torch.enable_grad():
            tr.setup()
            tr.updater.update(tr.rollouts(1), Timer(), "flow", "fused")  # warm-up
            for rnd in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                seqs = tr.rollouts(2 + rnd)
                gen.append({"step": time.perf_counter() - t0, "cpu": time.process_time() - c0})
                real = sum(len(s.ids) for s in seqs)
                pads.append({"real": real, **{o: padded_slots(micro_batches(seqs, tcfg.micro_batch, o)) for o in MICRO_ORDERS}})
                tokens.append(sum(s.n_response for s in seqs))
                for arm, x in time_arms(tr.updater, seqs, arms, rnd).items():
                    times.setdefault(arm, []).append(x)
                if progress:
                    progress(rnd + 1, repeats)
    finally:
        tr.close()
    gen_s = median([g["step"] for g in gen])
    rows = arm_rows(times, gen_s=gen_s)
    for r in rows:  # per round: the step of this arm = that round's generation + its update
        xs = [g["step"] + x["step"] for g, x in zip(gen, times[r["arm"]], strict=True)]
        r.update(whole_step_s=median(xs), whole_step_min_s=min(xs),
                 whole_step_per_response_token_ms=median([1e3 * x / n for x, n in zip(xs, tokens, strict=True)]))
    return {"rows": rows, "generation": gen, "generation_s": gen_s, "generation_min_s": min(g["step"] for g in gen),
            "response_tokens": tokens, "padding": pads,
            "padded_over_real": {o: median([p[o] / p["real"] for p in pads]) for o in MICRO_ORDERS},
            "times": times}


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

    gen = any("share_pct" in r for r in results["rows"])
    if gen:
        t.add_column("share of the whole step\nfused / separate", justify="right")
    for T in s["lengths"]:
        n, f, p = by[(T, "none-fused")], by[(T, "flow-fused")], by[(T, "flow-separate")]
        cells = [str(T), f"{n['step_s']:.3f}", f"{f['step_s']:.3f}", pct(f), f"{p['step_s']:.3f}", pct(p),
                 f"{f['credit_s']:.3f} / {p['credit_s']:.3f}"]
        if gen:
            cells.append(f"{f['share_pct']:+.2f}% / {p['share_pct']:+.2f}%")
        t.add_row(*cells)
    t.caption = "fused: W captured inside the update forward (credit = the flow solve); separate: an extra no-grad pass (counted as credit). Paper: 2.2-4.5% with its separate pass."
    return t
