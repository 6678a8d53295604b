"""`ft eval`: benchmarks with the paper family's protocol; `ft eval compare` for two runs.

`ft eval SUITE ...` is shorthand for `ft eval run SUITE ...` (any first word that is not a
sub-command is taken as a suite).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ftcli.commands.data import DataRootOptions, data_root_params
from ftcli.commands.options import build, command, dataclass_params
from ftcli.evaluation.suites import list_suites, load_suite
from ftcli.fetch.models import torch_dtype
from ftcli.options import option
from ftcli.progress import progress_bar

EPILOG = """Examples:

  ft eval aime24 --ckpt runs/x

  ft eval math --ckpt runs/x:best

  ft eval math500 --limit 5 --max-new-tokens 256

  ft eval aime24 --model tiny-qwen3 --limit 1 --data-root /mnt/mirror/data

  ft eval paper-llama --model meta-llama/Llama-3.2-3B-Instruct --backend vllm

  ft eval compare runs/grpo runs/flow

  ft eval list
"""


class _DefaultRunGroup(TyperGroup):
    """Routes `ft eval SUITE ...` (and `ft eval --opt ... SUITE`) to `ft eval run`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=_DefaultRunGroup,
    help="Evaluate a run's checkpoint or any model on a benchmark suite (AIME avg@16, others "
    "pass@1; protocol printed with every number).",
    epilog=EPILOG,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@dataclass
class EvalRunOptions:
    """`ft eval run`'s options (and `--data-root`)."""

    suite: str = option(..., "Suite name (`ft eval list`) or a path to a suite .toml.", argument=True)
    ckpt: str | None = option(None, "runs/x (final checkpoint), runs/x:best (best val_accuracy), runs/x:step_N, or a model folder.", flags=("-c",))
    model: str | None = option(None, "Alias, local path or hub id (default model if neither --ckpt nor --model); with --ckpt, the tokenizer source when the checkpoint has none.", flags=("-m",))
    limit: int | None = option(None, "Only the first N problems of each benchmark.", min=1)
    out: Path | None = option(None, "Output folder (default: <run>/eval/<suite>, or runs/eval/<model>/<suite>).", flags=("-o",))
    n: int | None = option(None, "Samples per problem (avg@k / maj@k follow n).", min=1)
    max_new_tokens: int | None = option(None, "Response token budget.", min=1)
    temperature: float | None = option(None, "0 = greedy.", flags=("-T",), min=0.0)
    top_p: float | None = option(None, "", min=0.0, max=1.0)
    top_k: int | None = option(None, "0 = off.", min=0)
    seed: int | None = option(None, "Sampling seed (suite default: 0).")
    batch_size: int = option(16, "Sequences per generate call.", flags=("-b",), min=1)
    backend: str = option("hf", "hf (CPU/GPU) or vllm (one in-process vLLM engine, up to 512 problems per call; GPU: the package's gpu extra, CPU: the venv of `just vllm-setup`).")
    device: str | None = option(None, "cpu / cuda (default: cuda when available).")
    dtype: str | None = option(None, "fp32 / bf16 / fp16 (default: bf16 on cuda, fp32 on cpu).")
    extraction: str | None = option(None, "Math tasks' answer extraction: boxed (the paper's protocol; suite default) or boxed-or-last-math (the field's fallback: without a \\boxed{}, the last math expression). Named in every result's protocol line.")
    quiet: bool = option(False, "No progress bar.", flags=("-q",), toggle=False)


@dataclass
class EvalCompareOptions:
    """`ft eval compare`'s two runs."""

    a: str = option(..., "Run (runs/a, runs/a:best), eval folder or results.json.", argument=True)
    b: str = option(..., "The other one; Δ = B - A.", argument=True)


def run(kw: dict):
    """Evaluate on SUITE; writes samples.jsonl and results.json (resumes if interrupted).

    Benchmark files come from --data-root, else $FT_DATA, else the data cache (a missing file
    is fetched on first use unless FT_NO_DOWNLOAD=1; `ft data fetch`); results.json records
    each benchmark's files and their sha256."""
    from ftcli.evaluation.benchmarks import (  # imported here: `ft --help` stays fast
        evaluate,
        results_table,
    )

    o, data_root = build(EvalRunOptions, kw), build(DataRootOptions, kw).data_root
    suite, device, dtype = o.suite, o.device, o.dtype
    load_suite(suite)  # fail fast on an unknown suite (lists the known ones)
    torch_dtype(dtype)  # and on an unknown --dtype (one line listing the choices)
    if device is None:
        import torch  # the command runs: not for `ft eval --help`

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None and device.startswith("cuda"):
        dtype = "bf16"
    console = Console()
    overrides = dict(n=o.n, max_new_tokens=o.max_new_tokens, temperature=o.temperature, top_p=o.top_p,
                     top_k=o.top_k, seed=o.seed, extraction=o.extraction)
    with progress_bar("{task.description}", "samples", console=console, disable=o.quiet) as prog:
        doc, path = evaluate(suite, model=o.model, ckpt=o.ckpt, out=o.out, limit=o.limit, batch_size=o.batch_size,
                             backend=o.backend, device=device, dtype=dtype, overrides=overrides,
                             progress=prog, data_root=data_root)
    console.print(results_table([(doc["model"], doc["benchmarks"])], title=f"ft eval {doc['suite']}"))
    console.print(f"wrote {path} (samples beside it)")


def compare(kw: dict):
    """Print two runs' eval results side by side with deltas (common benchmarks)."""
    from ftcli.evaluation.benchmarks import (  # imported here: `ft --help` stays fast
        collect_results,
        results_table,
    )

    o = build(EvalCompareOptions, kw)
    a, b = o.a, o.b
    la, ra = collect_results(a)
    lb, rb = collect_results(b)
    if la == lb:
        la, lb = a, b
    Console().print(results_table([(la, ra), (lb, rb)], title="ft eval compare", delta=True))


def list_cmd():
    """List the suites (benchmarks with their protocol, then groups)."""
    from ftcli.evaluation.benchmarks import protocol_str  # imported here: `ft --help` stays fast

    t = Table(title="eval suites")
    t.add_column("suite")
    t.add_column("benchmarks / protocol")
    for name in list_suites():
        s = load_suite(name)
        if s.is_group:
            t.add_row(name, "group: " + ", ".join(b.name for b in s.benchmarks))
        else:
            b = s.benchmarks[0]
            p = dict(metric=b.metric, temperature=b.temperature, top_p=b.top_p, top_k=b.top_k, n=b.n,
                     seed=b.seed, max_new_tokens=b.max_new_tokens, grader=b.grader)
            t.add_row(name, f"{b.task}/{b.split} · {protocol_str(p)}")
    Console().print(t)


eval_app.command("run", epilog=EPILOG)(command([*dataclass_params(EvalRunOptions), *data_root_params()], run))
eval_app.command("compare")(command(dataclass_params(EvalCompareOptions), compare))
eval_app.command("list")(list_cmd)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
