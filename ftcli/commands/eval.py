"""`ft eval`: benchmarks with the paper family's protocol; `ft eval compare` for two runs.

`ft eval SUITE ...` is shorthand for `ft eval run SUITE ...` (any first word that is not a
sub-command is taken as a suite).
"""

from __future__ import annotations

from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ftcli.commands.data import DataRootOption
from ftcli.evaluation.suites import list_suites, load_suite
from ftcli.fetch.models import torch_dtype
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


@eval_app.command("run", epilog=EPILOG)
def run(
    suite: str = typer.Argument(..., help="Suite name (`ft eval list`) or a path to a suite .toml."),
    ckpt: str = typer.Option(None, "--ckpt", "-c", help="runs/x (final checkpoint), runs/x:best (best val_accuracy), runs/x:step_N, or a model folder."),
    model: str = typer.Option(None, "--model", "-m", help="Alias, local path or hub id (default model if neither --ckpt nor --model); with --ckpt, the tokenizer source when the checkpoint has none."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N problems of each benchmark."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: <run>/eval/<suite>, or runs/eval/<model>/<suite>)."),
    n: int = typer.Option(None, "--n", min=1, help="Samples per problem (avg@k / maj@k follow n)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="Response token budget."),
    temperature: float = typer.Option(None, "--temperature", "-T", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(None, "--top-p", min=0.0, max=1.0),
    top_k: int = typer.Option(None, "--top-k", min=0, help="0 = off."),
    seed: int = typer.Option(None, "--seed", help="Sampling seed (suite default: 0)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Sequences per generate call."),
    backend: str = typer.Option("hf", "--backend", help="hf (CPU/GPU) or vllm (one in-process vLLM engine, up to 512 problems per call; GPU: the package's gpu extra, CPU: the venv of `just vllm-setup`)."),
    device: str = typer.Option(None, "--device", help="cpu / cuda (default: cuda when available)."),
    dtype: str = typer.Option(None, "--dtype", help="fp32 / bf16 / fp16 (default: bf16 on cuda, fp32 on cpu)."),
    extraction: str = typer.Option(None, "--extraction", help="Math tasks' answer extraction: boxed (the paper's protocol; suite default) or boxed-or-last-math (the field's fallback: without a \\boxed{}, the last math expression). Named in every result's protocol line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    data_root: DataRootOption = None,
):
    """Evaluate on SUITE; writes samples.jsonl and results.json (resumes if interrupted).

    Benchmark files come from --data-root, else $FT_DATA, else the data cache (a missing file
    is fetched on first use unless FT_NO_DOWNLOAD=1; `ft data fetch`); results.json records
    each benchmark's files and their sha256."""
    from ftcli.evaluation.benchmarks import (  # imported here: `ft --help` stays fast
        evaluate,
        results_table,
    )

    load_suite(suite)  # fail fast on an unknown suite (lists the known ones)
    torch_dtype(dtype)  # and on an unknown --dtype (one line listing the choices)
    if device is None:
        import torch  # the command runs: not for `ft eval --help`

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None and device.startswith("cuda"):
        dtype = "bf16"
    console = Console()
    overrides = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                     top_k=top_k, seed=seed, extraction=extraction)
    with progress_bar("{task.description}", "samples", console=console, disable=quiet) as prog:
        doc, path = evaluate(suite, model=model, ckpt=ckpt, out=out, limit=limit, batch_size=batch_size,
                             backend=backend, device=device, dtype=dtype, overrides=overrides,
                             progress=prog, data_root=data_root)
    console.print(results_table([(doc["model"], doc["benchmarks"])], title=f"ft eval {doc['suite']}"))
    console.print(f"wrote {path} (samples beside it)")


@eval_app.command("compare")
def compare(
    a: str = typer.Argument(..., help="Run (runs/a, runs/a:best), eval folder or results.json."),
    b: str = typer.Argument(..., help="The other one; Δ = B - A."),
):
    """Print two runs' eval results side by side with deltas (common benchmarks)."""
    from ftcli.evaluation.benchmarks import (  # imported here: `ft --help` stays fast
        collect_results,
        results_table,
    )

    la, ra = collect_results(a)
    lb, rb = collect_results(b)
    if la == lb:
        la, lb = a, b
    Console().print(results_table([(la, ra), (lb, rb)], title="ft eval compare", delta=True))


@eval_app.command("list")
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


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
