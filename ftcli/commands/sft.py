"""`ft sft`: supervised warm start, building a small Qwen3 policy from scratch on Countdown traces."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import typer
from rich.console import Console

from ftcli.commands.data import DataRootOptions, data_root_params
from ftcli.commands.options import build, command, dataclass_params
from ftcli.options import option
from ftcli.policy import PolicyRecipe
from ftcli.train.tracking import create_tracker, report_to_callback

EPILOG = """Examples:

  ft sft --out ftcli/assets/default-policy          # rebuild the shipped default policy

  ft sft --out runs/sft-tiny --size tiny --steps 200 --problems 2000 --eval-problems 200

  ft sft --out runs/sft-seed1 --seed 1 --engine deepspeed

  ft sft --out runs/sft-tiny --size tiny --steps 200 --report-to tensorboard   # logs in runs/sft-tiny-logs/tb

  ft sft --out runs/sft-tz --data-source files     # TinyZero's Countdown files instead of the generator
"""


@dataclass
class SftOptions:
    """`ft sft`'s options beside the recipe's (`PolicyRecipe`)."""

    out: Path = option(..., "Checkpoint folder to write (HF format, RECIPE.md, sft_report.json).", flags=("-o",))
    no_eval: bool = option(False, "Skip the accuracy measurement.", toggle=False)
    threads: int = option(1, "torch threads (1 keeps the build bit-reproducible).", min=1)
    force: bool = option(False, "Replace an existing checkpoint in --out.", toggle=False)
    quiet: bool = option(False, "No progress bar.", flags=("-q",), toggle=False)
    report_to: str = option(
        "none", "Where to log the loss rows and the evaluation accuracies: none, tensorboard "
        "(<out>-logs/tb), wandb (<out>-logs/wandb; offline without an API key), or a comma list.",
        callback=report_to_callback)


def _params() -> list[inspect.Parameter]:
    return [
        *dataclass_params(SftOptions, only=("out",)),
        *dataclass_params(PolicyRecipe),
        *data_root_params(),
        *dataclass_params(SftOptions, only=("no_eval", "threads", "force", "quiet", "report_to")),
    ]


def sft(kw: dict) -> None:
    """Train a small Qwen3 from scratch on Countdown solver traces (loss on response tokens only)."""
    from ftcli.policy.recipe import build_policy  # imported here: ft --help stays fast

    opts = build(SftOptions, kw)
    data_root, report_to = build(DataRootOptions, kw).data_root, opts.report_to
    recipe = build(PolicyRecipe, kw, data_root=str(data_root) if data_root else None)
    recipe = replace(recipe, warmup_steps=min(recipe.warmup_steps, recipe.steps))
    for t in recipe.eval_temperatures:
        if not (math.isfinite(t) and t >= 0):  # the range of each value of a comma list
            raise ValueError(f"--eval-temperatures must be >= 0 (0 = greedy), finite (got {t})")
    out = opts.out
    if out.exists() and any(out.iterdir()) and not opts.force:
        raise typer.BadParameter(f"{out} is not empty (pass --force to replace it)", param_hint="--out")
    import torch  # the command runs: not for `ft sft --help`

    torch.set_num_threads(opts.threads)
    console = Console(stderr=True)
    # next to --out, not inside it: the checkpoint folder is replaced as a whole when it is saved;
    # a rebuild (--force) replaces the TensorBoard curves of the earlier one (resume_step -1)
    logs = out.with_name(f"{out.name}-logs")
    tracker = create_tracker(report_to, logs, asdict(recipe), resume_step=-1 if logs.exists() else 0)
    try:
        report = build_policy(out, recipe, progress=not opts.quiet, console=console, evaluate=not opts.no_eval,
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
    app.command("sft", epilog=EPILOG, help=sft.__doc__)(command(_params(), sft))
