"""Benchmark: `ft train`'s step against TRL's GRPOTrainer, and the update's layouts (issue 29).

    OMP_NUM_THREADS=1 python bench/bench_vs_trl.py                     # both parts, shipped policy
    OMP_NUM_THREADS=1 python bench/bench_vs_trl.py --model smollm2-135m --prompts 4 --group 4 --max-new 128
    OMP_NUM_THREADS=1 python bench/bench_vs_trl.py --parts layout     # ft's update layouts only

Parts:

- `layout`: the update of the same real rollouts (one `Trainer`, `ft train` defaults otherwise)
  under each layout, interleaved round by round: padded (length-sorted micro-batches), packed
  (`--pack`) and packed with one prompt copy per group (`--pack --share-prompt`), for plain
  GRPO (credit none) and flow credit; process CPU seconds of the update and the forward's
  token slots per response token.
- `trl`: whole steps (generation + update) of `ft train` and of TRL 1.16's GRPOTrainer
  (`ftcli.integrations.trl.FlowTracerGRPOTrainer`, `--credit none` = TRL's plain GRPO) on the
  same prompts (the task's rendered chat prompts of the same generated Countdown problems),
  model, group size, lengths, lr, temperature and one thread, in the configurations of
  `CONFIGS`: each framework in fp32 and in bf16 (TRL: accelerate's CPU autocast, its
  GRPOConfig default; ft: `--bf16`), and TRL as it comes (bf16 and gradient checkpointing).
  Each arm runs in its own process (peak RSS is the process's), arms interleaved over the
  rounds; each process runs `--warmup` untimed steps, then `--steps` timed ones. Reported:
  process CPU seconds per response token (the steps' CPU over the response tokens they
  generated), the ratios TRL / ft of `PAIRS` (same precision, and each framework's defaults),
  and the peak resident memory.

Writes bench/results/vs_trl[_<model>].json and prints a summary. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"padded": dict(pack=False, share_prompt=False), "packed": dict(pack=True, share_prompt=False),
           "packed+shared": dict(pack=True, share_prompt=True)}


def ft_config(args, out: str, **kw):
    from ftcli.train.config import resolve_config

    return resolve_config("cpu", model=args.model, out=out, prompts=args.prompts, group_size=args.group,
                          max_new_tokens=args.max_new, micro_batch=args.micro_batch, lr=args.lr, val_every=0,
                          progress=False, log_samples=0, steps=1000, train_size=args.problems, **kw)


# ---------------------------------------------------------------------------------------------
# layout: ft's update under each layout, same rollouts
# ---------------------------------------------------------------------------------------------
def slots(seqs, cfg) -> int:
    """Token slots the update's forward computes for `seqs` under `cfg`'s layout."""
    from ftcli.packing import packed_micro_batches, packed_slots
    from ftcli.sequences import micro_batches, padded_slots

    if cfg.pack:
        return sum(packed_slots(m, cfg.share_prompt) for m in
                   packed_micro_batches(seqs, cfg.micro_batch, cfg.micro_tokens, cfg.share_prompt))
    return padded_slots(micro_batches(seqs, cfg.micro_batch, cfg.micro_order, cfg.micro_tokens))


def part_layout(args) -> dict:
    import torch

    from ftcli.train.loop import Trainer
    from ftcli.train.stats import Timer

    arms = [(lay, rule) for rule in ("none", "flow") for lay in LAYOUTS]
    times: dict[str, list[float]] = {}
    per_tok: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="ft-bench-layout-") as d:
        tr = Trainer(ft_config(args, str(Path(d) / "run")))
        try:
            with torch.enable_grad():
                tr.setup()
                seqs = tr.rollouts(1)
                tr.updater.update(seqs, Timer(), "flow", "fused")  # warm-up
                for rnd in range(args.rounds):
                    seqs = tr.rollouts(2 + rnd)
                    resp = sum(s.n_response for s in seqs)
                    k = rnd % len(arms)
                    for lay, rule in arms[k:] + arms[:k]:
                        for f, v in LAYOUTS[lay].items():
                            setattr(tr.updater.cfg, f, v)
                        c0 = time.process_time()
                        tr.updater.update(seqs, Timer(), rule, "fused")
                        times.setdefault(f"{rule}/{lay}", []).append(time.process_time() - c0)
                        per_tok.setdefault(f"{lay}", []).append(slots(seqs, tr.updater.cfg) / resp)
                    print(f"  layout round {rnd + 1}/{args.rounds}", file=sys.stderr)
        finally:
            tr.close()
    rows = []
    for name, xs in times.items():
        rule, lay = name.split("/")
        base = times[f"{rule}/padded"]
        rows.append(dict(rule=rule, layout=lay, update_cpu_s=statistics.median(xs), update_cpu_min_s=min(xs),
                         speedup_vs_padded=statistics.median([b / x for b, x in zip(base, xs, strict=True)]),
                         slots_per_response_token=statistics.median(per_tok[lay])))
    return {"rows": rows, "times": times}


# ---------------------------------------------------------------------------------------------
# trl: whole steps, ft train vs TRL's GRPOTrainer, one process per arm
# ---------------------------------------------------------------------------------------------
# The configurations compared (arm = CONFIG:CREDIT). Precision decides most of the CPU cost on
# a CPU with bf16 matrix units (bf16 matmuls ran 4.5x fp32's on this machine), and TRL's
# GRPOConfig defaults to bf16 mixed precision (accelerate's CPU autocast) and gradient
# checkpointing, so each framework runs at both precisions and TRL also as it comes.
CONFIGS = {
    "ft": dict(framework="ft", bf16=False, label="ft train, fp32 (its CPU default)"),
    "ft-bf16": dict(framework="ft", bf16=True, label="ft train --bf16 (DeepSpeed bf16: bf16 weights, fp32 master)"),
    "trl": dict(framework="trl", bf16=False, gc=False, label="TRL, fp32, no gradient checkpointing"),
    "trl-bf16": dict(framework="trl", bf16=True, gc=False, label="TRL, bf16 autocast, no gradient checkpointing"),
    "trl-default": dict(framework="trl", bf16=True, gc=True, label="TRL as it comes (bf16 autocast, gradient checkpointing)"),
}
# (TRL config, ft config): the ratios reported, TRL's CPU per response token over ft's
PAIRS = {"fp32": ("trl", "ft"), "bf16": ("trl-bf16", "ft-bf16"), "defaults": ("trl-default", "ft")}


def run_ft_arm(args, credit: str, conf: dict) -> dict:
    import torch

    from ftcli.train.loop import Trainer

    extra = dict(pack=args.pack, share_prompt=args.share_prompt, bf16=conf["bf16"])
    with tempfile.TemporaryDirectory(prefix="ft-bench-vs-trl-") as d:
        tr = Trainer(ft_config(args, str(Path(d) / "run"), credit=credit, **extra))
        cpu, toks = [], []
        try:
            with torch.enable_grad():
                tr.setup()
                for step in range(1, args.warmup + args.steps + 1):
                    c0 = time.process_time()
                    row = tr.train_step(step)
                    if step > args.warmup:
                        cpu.append(time.process_time() - c0)
                        toks.append(row["response_len"] * args.prompts * args.group)
        finally:
            tr.close()
    return dict(cpu_s=cpu, response_tokens=toks)


def run_trl_arm(args, credit: str, conf: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig

    from ftcli.credit import CreditOptions
    from ftcli.fetch.models import load_tokenizer, resolve_model
    from ftcli.generation import render_prompt
    from ftcli.integrations.trl import FlowTracerGRPOTrainer

    tok = load_tokenizer(args.model)
    task, problems = ft_problems(args)
    rows = [{"prompt": render_prompt(tok, task.prompt(s), task.assistant_prefix(s)), "question": s["question"],
             "numbers": s["numbers"], "target": s["target"]} for s in problems]

    def reward(completions, numbers, target, **kw):
        return [task.reward(c, {"numbers": n, "target": t}) for c, n, t in zip(completions, numbers, target, strict=True)]

    n = args.prompts * args.group
    micro = min(args.micro_batch, n)
    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), max_steps=args.warmup + args.steps,
                     learning_rate=args.lr, lr_scheduler_type="constant", per_device_train_batch_size=micro,
                     gradient_accumulation_steps=n // micro, num_generations=args.group,
                     max_completion_length=args.max_new, temperature=1.0, beta=0.0, loss_type="dapo",
                     seed=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                     use_cpu=True, bf16=conf["bf16"], gradient_checkpointing=conf["gc"])
    marks: dict[str, list] = {"cpu": [], "tokens": []}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks["c0"] = time.process_time()

        def on_step_end(self, a, state, control, **kw):
            marks["cpu"].append(time.process_time() - marks["c0"])

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                marks["tokens"].append(logs["completions/mean_length"] * n)

    trainer = FlowTracerGRPOTrainer(model=resolve_model(args.model), reward_funcs=reward, args=cfg,
                                    train_dataset=Dataset.from_list(rows), processing_class=tok, credit=credit,
                                    layers="mid", task=task, credit_options=CreditOptions(), callbacks=[Clock()])
    torch.manual_seed(0)
    trainer.train()
    return dict(cpu_s=marks["cpu"][args.warmup:], response_tokens=marks["tokens"][args.warmup:])


def ft_problems(args):
    """The generated Countdown problems `ft train` uses (its default data source)."""
    from ftcli import get_task

    task = get_task("countdown", source="generated", seed=0)
    return task, list(task.load("train")[: args.problems])


def arm_main(args) -> None:
    """One arm in this process: prints its JSON result (with the peak RSS) on the last line."""
    name, credit = args.arm.split(":")
    conf = CONFIGS[name]
    res = (run_ft_arm if conf["framework"] == "ft" else run_trl_arm)(args, credit, conf)
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(res))


def part_trl(args) -> dict:
    arms = [f"{c}:{credit}" for credit in args.credits for c in args.configs]
    runs: dict[str, list[dict]] = {}
    base = [a for a in sys.argv[1:] if a not in ("--parts",) and a not in ("layout", "trl")]
    for rnd in range(args.rounds):
        k = rnd % len(arms)
        for arm in arms[k:] + arms[:k]:
            cmd = [sys.executable, __file__, *base, "--arm", arm]
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode or not line:
                raise SystemExit(f"arm {arm} failed:\n{p.stderr[-3000:]}")
            runs.setdefault(arm, []).append(json.loads(line[-1][7:]))
            print(f"  round {rnd + 1}/{args.rounds} {arm}: {runs[arm][-1]}", file=sys.stderr)
    out = {"configs": {c: CONFIGS[c]["label"] for c in args.configs}}
    for arm, rs in runs.items():
        per_tok = [sum(r["cpu_s"]) / max(sum(r["response_tokens"]), 1) for r in rs]
        out[arm] = dict(cpu_ms_per_response_token=1e3 * statistics.median(per_tok),
                        cpu_ms_per_response_token_min=1e3 * min(per_tok),
                        rounds_ms=[1e3 * x for x in per_tok], peak_rss_gb=statistics.median(r["peak_rss_gb"] for r in rs),
                        response_tokens=[sum(r["response_tokens"]) for r in rs])
    for credit in args.credits:
        for pair, (t, f) in PAIRS.items():
            if f"{t}:{credit}" not in runs or f"{f}:{credit}" not in runs:
                continue
            ft, trl = runs[f"{f}:{credit}"], runs[f"{t}:{credit}"]
            paired = [(sum(b["cpu_s"]) / sum(b["response_tokens"])) / (sum(a["cpu_s"]) / sum(a["response_tokens"]))
                      for a, b in zip(ft, trl, strict=True)]
            out[f"ratio_{credit}_{pair}"] = dict(
                trl=t, ft=f, trl_over_ft=out[f"{t}:{credit}"]["cpu_ms_per_response_token"]
                / out[f"{f}:{credit}"]["cpu_ms_per_response_token"],
                paired_median=statistics.median(paired), paired=paired)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["layout", "trl"], choices=["layout", "trl"])
    ap.add_argument("--model", default="default-policy")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=192)
    ap.add_argument("--micro-batch", type=int, default=16, help="sequences per forward, both frameworks")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True, help="ft arms: --pack")
    ap.add_argument("--share-prompt", action=argparse.BooleanOptionalAction, default=True, help="ft arms: --share-prompt")
    ap.add_argument("--configs", type=lambda x: x.split(","), default=list(CONFIGS),
                    help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--credits", type=lambda x: x.split(","), default=["none", "flow"], help="credit rules (none = plain GRPO)")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        arm_main(args)
        return 0
    import torch

    torch.set_num_threads(1)
    res = dict(settings={k: v for k, v in vars(args).items() if k != "arm"}, threads=1,
               load_before=list(os.getloadavg()))
    if "layout" in args.parts:
        res["layout"] = part_layout(args)
    if "trl" in args.parts:
        res["trl"] = part_trl(args)
    res["load_after"] = list(os.getloadavg())
    tag = "" if args.model == "default-policy" else "_" + args.model.replace("/", "_")
    path = ROOT / "bench" / "results" / f"vs_trl{tag}.json"
    if path.exists():  # keep the parts not run this time
        res = json.loads(path.read_text()) | res
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "layout"} | {"layout": res.get("layout", {}).get("rows")}, indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
