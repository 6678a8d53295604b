"""`ft train`: GRPO with token credit on a DeepSpeed engine.

The options are generated from `ftcli.train.config.TrainConfig` (one source of truth for names,
defaults and help); an option left out takes the `--preset` value, then the dataclass default.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import typer
from rich.console import Console

from ftcli.commands.options import build, command, dataclass_params
from ftcli.options import describe_limits, describe_rules, option
from ftcli.rundir import RunDir
from ftcli.train.config import PRESETS, TrainConfig, resolve_config

EPILOG = """Examples:

  ft train --task countdown --credit flow --out runs/flow

  ft train --task countdown --credit none --out runs/grpo --steps 20

  ft train --steps 2 --out runs/smoke          (a smoke run: shorter than --val-every, so not validated)

  ft train --data-source files --data-root /mnt/data --out runs/tz   (TinyZero's Countdown files)

  ft train --preset paper --model Qwen/Qwen3-4B-Base --task math --out runs/paper-flow

  ft train --out runs/flow --resume --steps 40            (continue a run)

  ft train --preset paper --model Qwen/Qwen3-4B-Base --dry-run --gpus 8   (memory per GPU; trains nothing)

  ft train --out runs/flow --report-to tensorboard      (tensorboard --logdir runs/flow/tb)

Multi-process (one process per GPU, or 2 CPU processes):

  deepspeed --num_gpus 2 --module ftcli.train --zero-stage 2 --out runs/x ...

  torchrun --nproc_per_node 2 -m ftcli.train --zero-stage 2 --out runs/x ...
"""

# options that may change when a run is resumed (everything else must match the saved config)
RESUMABLE = {"steps", "progress", "val_every", "save_every", "keep_last", "log_samples", "gen_batch_size", "data_root", "report_to"}


def _default_note(f) -> str:
    """What an option left out takes (`ft train --help`): the default, the paper preset's value
    and the range."""
    meta = f.metadata
    default = "off" if f.name == "clip_ratio_c" else "auto" if f.default is None else f.default
    paper = PRESETS["paper"].get(f.name)
    rng = describe_limits(meta) if any(meta.get(k) is not None for k in ("min", "max", "gt", "lt")) else None
    return f"  (default: {default}" + (f"; paper: {paper}" if paper is not None else "") + (f"; {rng}" if rng else "") + ")"


@dataclass
class TrainRunOptions:
    """`ft train`'s own options, beside TrainConfig's: the preset, resuming, the dry run."""

    preset: str = option(
        "cpu", f"Defaults for the options not given: {', '.join(PRESETS)} "
        "(paper: global batch 512 = 64 prompts x 8, micro 32, lr 1e-6, T 0.99, top-k 100, 1K tokens).", "Run")
    resume: bool = option(False, "Continue the run in --out from its newest checkpoint.", "Run", toggle=False)
    dry_run: bool = option(
        False, "Resolve every option, read the model's config (no weights) and print the "
        "per-GPU memory plan (weights, gradients, optimizer state, activations, log-prob temporaries, the W "
        "capture, the KV cache) with the micro-batch plan; warn on what does not fit; train nothing.",
        "Dry run", toggle=False)
    gpus: int | None = option(None, "GPUs (ranks) the dry run plans for (default: $WORLD_SIZE, else 1).", "Dry run", min=1)
    gpu_memory_gb: float = option(80.0, "Memory of one GPU in GiB, for the dry run.", "Dry run", min=1.0)
    prompt_tokens: int = option(256, "Prompt length the dry run assumes (responses at --max-new-tokens).", "Dry run", min=1)
    local_rank: int | None = option(None, "Set by the deepspeed launcher.", flags=("--local_rank",),
                                    typer_kw={"hidden": True})


def _build_params() -> list[inspect.Parameter]:
    """The run's own options, then one per TrainConfig field (None = not given: the preset's
    value, then the field's default)."""
    return dataclass_params(TrainRunOptions) + dataclass_params(TrainConfig, unset=True, note=_default_note)


def _resumed_options(out: str, given: dict) -> tuple[str, dict]:
    """(preset, options) of a saved run, with the explicitly given resumable options applied."""
    saved = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))
    names = {f.name for f in fields(TrainConfig)}
    opts = {k: v for k, v in saved.items() if k in names and k != "preset"}
    opts.setdefault("data_source", "files")  # runs saved before --data-source read the files
    for k, v in given.items():
        if v is None or k == "out":
            continue
        if k in RESUMABLE:
            opts[k] = v
        elif v != opts.get(k):
            raise typer.BadParameter(
                f"--{k.replace('_', '-')} differs from the saved run ({opts.get(k)!r}); "
                f"only {', '.join(sorted(RESUMABLE))} may change on --resume"
            )
    return saved.get("preset", "cpu"), opts


def _train_command(**kw):
    from ftcli.train.loop import train  # imported here: `ft --help` stays fast

    run = build(TrainRunOptions, kw)
    preset, resume = run.preset, run.resume
    dry = {k: getattr(run, k) for k in ("dry_run", "gpus", "gpu_memory_gb", "prompt_tokens")}
    if dry["dry_run"]:
        _dry_run(resolve_config(preset, **kw), dry)
        return
    out = kw.get("out") or "runs/train"
    if resume and (Path(out) / "config.json").is_file():
        preset, kw = _resumed_options(out, kw)
        kw["out"] = out
    cfg = resolve_config(preset, **kw)
    console = Console(stderr=True)
    run_dir = train(cfg, resume=resume, console=console)
    _summary(console, Path(run_dir), cfg)


def _dry_run(cfg, dry: dict) -> None:
    """`ft train --dry-run`: the per-GPU memory plan of the run (`ftcli.train.memory`)."""
    from ftcli.fetch.models import model_config
    from ftcli.train.memory import model_shape, plan_memory, render_plan

    world = dry["gpus"] or int(os.environ.get("WORLD_SIZE", "1"))
    shape = model_shape(model_config(cfg.model))
    bf16 = True if cfg.bf16 is None else bool(cfg.bf16)  # the GPU default
    plan = plan_memory(cfg, shape, world, dry["gpu_memory_gb"], dry["prompt_tokens"], bf16=bf16)
    console = Console()
    console.print(f"[bold]dry run[/]: {cfg.model} ({shape.params / 1e9:.2f}B parameters, {shape.layers} layers, "
                  f"vocab {shape.vocab}), preset {cfg.preset}, ZeRO-{cfg.zero_stage}, {'bf16' if bf16 else 'fp32'}, "
                  f"checkpointing {'on' if cfg.gradient_checkpointing else 'off'}, log-prob chunk "
                  f"{cfg.logprob_chunk or 'off'}, {cfg.prompts} x {cfg.group_size} sequences per step")
    render_plan(plan, console, f"{world} x {dry['gpu_memory_gb']:.0f} GiB")


def _summary(console, run_dir: Path, cfg) -> None:
    if os.environ.get("RANK", "0") != "0" or not cfg.progress:
        return
    rows = RunDir(run_dir).metrics()
    vals = [r["val_accuracy"] for r in rows if "val_accuracy" in r]
    rows = [r for r in rows if "reward_mean" in r]  # training steps (step 0 holds only a validation)
    if not rows:
        return
    k = max(1, min(5, len(rows) // 3))  # single steps are noisy: compare the first and last k

    def mean(key, rs):
        return sum(r[key] for r in rs) / len(rs)

    head, tail = rows[:k], rows[-k:]
    msg = (
        f"[bold]done[/]: {len(rows)} steps, reward {mean('reward_mean', head):.3f} -> {mean('reward_mean', tail):.3f}, "
        f"accuracy {mean('accuracy', head):.3f} -> {mean('accuracy', tail):.3f}"
        + (f" (means of the first and last {k} steps)" if k > 1 else "")
    )
    if vals:
        msg += f", val accuracy {vals[0]:.3f} -> {vals[-1]:.3f} (best {max(vals):.3f})"
    console.print(msg)
    console.print(f"run: {run_dir}  (metrics.jsonl, samples.jsonl, checkpoints/final)")


def make_command():
    """The `train` callback with a signature typer can read."""

    def train_cmd(kw):
        """Train a policy with GRPO and token credit (FlowTracer or a baseline rule)."""
        _train_command(**kw)

    return command(_build_params(), train_cmd)


def register(app: typer.Typer) -> None:
    app.command(
        "train",
        epilog=EPILOG,
        help=f"Train with GRPO and pluggable token credit ({describe_rules()}) on a DeepSpeed ZeRO "
        "engine; writes a run directory.",
    )(make_command())
