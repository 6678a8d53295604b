"""`ft sft`: supervised warm start, building a small Qwen3 policy from scratch on Countdown traces."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import typer
from rich.console import Console

from ftcli.commands.data import DataRootOption
from ftcli.policy import DEFAULT_RECIPE as R
from ftcli.policy import MODEL_SIZES
from ftcli.train.tracking import create_tracker, report_to_callback

EPILOG = """Examples:

  ft sft --out ftcli/assets/default-policy          # rebuild the shipped default policy

  ft sft --out runs/sft-tiny --size tiny --steps 200 --problems 2000 --eval-problems 200

  ft sft --out runs/sft-seed1 --seed 1 --engine deepspeed

  ft sft --out runs/sft-tiny --size tiny --steps 200 --report-to tensorboard   # logs in runs/sft-tiny-logs/tb

  ft sft --out runs/sft-tz --data-source files     # TinyZero's Countdown files instead of the generator
"""


def sft(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (HF format, RECIPE.md, sft_report.json)."),
    seed: int = typer.Option(R.seed, help="Seed of traces, initialisation and batch order."),
    size: str = typer.Option(R.size, help=f"Model size: {' | '.join(MODEL_SIZES)}."),
    steps: int = typer.Option(R.steps, min=1, help="Optimizer steps."),
    batch_size: int = typer.Option(R.batch_size, min=1, help="Sequences per step."),
    lr: float = typer.Option(R.lr, min=0.0, help="Peak learning rate (linear warm-up, cosine decay)."),
    warmup_steps: int = typer.Option(R.warmup_steps, min=0, help="Warm-up steps."),
    weight_decay: float = typer.Option(R.weight_decay, min=0.0, help="AdamW weight decay (matrices only)."),
    problems: int = typer.Option(None, min=1, help="Training problems from the task's train split (default: all)."),
    data_source: str = typer.Option(R.data_source, "--data-source", help="generated: the seeded Countdown generator (no files; seeded by --seed) | files: TinyZero's parquet files from the data root (fetched on first use)."),
    data_root: DataRootOption = None,
    traces_per_problem: int = typer.Option(R.traces_per_problem, min=1, help="Traces per problem (different failed tries)."),
    vocab_size: int = typer.Option(R.vocab_size, min=300, help="BPE vocabulary size (upper bound)."),
    engine: str = typer.Option(R.engine, help="torch (AdamW) | deepspeed (ZeRO-0 engine, same update)."),
    eval_split: str = typer.Option(R.eval_split, help="Split the accuracy is measured on: validation | test."),
    eval_problems: int = typer.Option(None, min=1, help="Evaluate on the first N problems of the split (default: all)."),
    eval_temperatures: str = typer.Option(",".join(f"{t:g}" for t in R.eval_temperatures), help="Comma-separated sampling temperatures to measure (0 = greedy)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the accuracy measurement."),
    threads: int = typer.Option(1, min=1, help="torch threads (1 keeps the build bit-reproducible)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing checkpoint in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    report_to: str = typer.Option("none", "--report-to", callback=report_to_callback,
                                  help="Where to log the loss rows and the evaluation accuracies: none, tensorboard "
                                  "(<out>-logs/tb), wandb (<out>-logs/wandb; offline without an API key), or a comma list."),
):
    """Train a small Qwen3 from scratch on Countdown solver traces (loss on response tokens only)."""
    from ftcli.policy.recipe import build_policy  # imported here: ft --help stays fast

    if size not in MODEL_SIZES:
        raise typer.BadParameter(f"unknown size {size!r} (known: {', '.join(MODEL_SIZES)})", param_hint="--size")
    if data_source not in ("generated", "files"):
        raise typer.BadParameter("generated | files", param_hint="--data-source")
    if engine not in ("torch", "deepspeed"):
        raise typer.BadParameter("torch | deepspeed", param_hint="--engine")
    if out.exists() and any(out.iterdir()) and not force:
        raise typer.BadParameter(f"{out} is not empty (pass --force to replace it)", param_hint="--out")
    import torch  # the command runs: not for `ft sft --help`

    torch.set_num_threads(threads)
    try:
        temps = tuple(float(t) for t in eval_temperatures.split(",") if t.strip())
    except ValueError:
        raise typer.BadParameter("comma-separated numbers, e.g. 0,1", param_hint="--eval-temperatures") from None
    for flag, v, ok, rng in (("--lr", lr, lr > 0, "> 0"), ("--weight-decay", weight_decay, weight_decay >= 0, ">= 0"),
                             *(("--eval-temperatures", t, t >= 0, ">= 0 (0 = greedy)") for t in temps)):
        if not (math.isfinite(v) and ok):  # typer's ranges let nan through
            raise ValueError(f"{flag} must be {rng}, finite (got {v})")
    console = Console(stderr=True)
    recipe = replace(
        R, seed=seed, size=size, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(warmup_steps, steps),
        weight_decay=weight_decay, problems=problems, traces_per_problem=traces_per_problem,
        vocab_size=vocab_size, engine=engine, eval_split=eval_split, eval_problems=eval_problems,
        eval_temperatures=temps, data_source=data_source, data_root=str(data_root) if data_root else None,
    )
    # next to --out, not inside it: the checkpoint folder is replaced as a whole when it is saved;
    # a rebuild (--force) replaces the TensorBoard curves of the earlier one (resume_step -1)
    logs = out.with_name(f"{out.name}-logs")
    tracker = create_tracker(report_to, logs, asdict(recipe), resume_step=-1 if logs.exists() else 0)
    try:
        report = build_policy(out, recipe, progress=not quiet, console=console, evaluate=not no_eval,
                              log=lambda m: console.print(m), on_log=lambda row: tracker.log(row["step"], row))
    finally:
        tracker.close()
    summary = {k: report[k] for k in ("parameters", "vocab_size", "train_traces", "sft_seconds", "final_loss", "total_seconds")}
    if "eval" in report:
        summary["accuracy"] = {k: {"all": v["accuracy"], **{f"{g}-numbers": x["accuracy"] for g, x in v.get("by_group", {}).items()}}
                               for k, v in report["eval"].items()}
    console.print(f"wrote {out}")
    typer.echo(json.dumps(summary, indent=1))


def register(app: typer.Typer) -> None:
    app.command("sft", epilog=EPILOG)(sft)
