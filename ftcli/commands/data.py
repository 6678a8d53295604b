"""`ft data`: get the benchmark files, check them, look at them through the task plugins.

ft data fetch aime24 gsm8k              # into the data cache (~/.cache/ftcli/data)
ft data fetch --all --from /mnt/mirror  # an offline mirror laid out like the data root
ft data check                           # per file: verified / missing / corrupt; every row
ft data show math500 --limit 2          # formatted prompts with their golds

`DataRootOptions` (its options: `data_root_params()`) and `resolve_data_root` are the one
`--data-root` option and resolution order (option, then $FT_DATA, then the data cache) for every command that reads data.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ftcli.commands.options import build, command, dataclass_params
from ftcli.config import data_cache, data_mirror, resolve_data_root
from ftcli.options import option

__all__ = ["DataRootOptions", "data_root_params", "resolve_data_root", "register"]


@dataclass
class DataRootOptions:
    """The one `--data-root` option of every command that reads benchmark data."""

    data_root: Path | None = option(
        None, "Folder with the benchmark files, laid out like the data cache (default: "
        "$FT_DATA, else the data cache $FT_CACHE/data, filled by `ft data fetch`).",
        typer_kw={"show_default": False})


def data_root_params() -> list[inspect.Parameter]:
    """`--data-root`, for a command's generated signature (`ftcli.commands.options.command`)."""
    return dataclass_params(DataRootOptions)


@dataclass
class FetchOptions:
    """`ft data fetch`."""

    names: list[str] | None = option(None, "Task names (aime24, countdown, ...) or paths.", argument=True)
    all_: bool = option(False, "Every file of the registry.", toggle=False)
    from_: str | None = option(
        None, "A mirror: folder or http(s) base URL laid out like the data root "
        "(default: $FT_DATA_MIRROR, else each file's pinned upstream URL).",
        typer_kw={"show_default": False})


@dataclass
class ShowOptions:
    """`ft data show` (and `--data-root`)."""

    task: str = option(..., "Task name (see `ft data check` for the list).", argument=True)
    split: str = option("test", "train | validation | test")
    limit: int = option(3, "How many samples to print.", flags=("-n",), min=1)

data_app = typer.Typer(
    help="Benchmark data: fetch it, check it, show prompts and golds.\n\n"
    "Examples:\n\n"
    "  ft data fetch aime24 gsm8k\n\n"
    "  ft data fetch --all --from /mnt/mirror/data\n\n"
    "  ft data check\n\n"
    "  ft data show math500 --limit 2",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the root app."""
    app.add_typer(data_app, name="data")


def _task(name: str, data_root: Path | None):
    from ftcli.tasks import get_task

    return get_task(name, **({"data_root": data_root} if data_root else {}))


# ---------------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------------
def fetch_cmd(kw: dict) -> None:
    """Download benchmark files into the data cache, checking each file's sha256.

    Files already there and verified are skipped; an interrupted fetch resumes; a file whose
    digest differs from the registry (tasks/sources.toml) is rejected and nothing of it is
    kept.

    Examples:

      ft data fetch aime24

      ft data fetch --all --from /mnt/mirror/data

      ft data fetch countdown --from http://10.0.0.5:8000/data
    """
    from ftcli.fetch.data import fetch, select

    opts = build(FetchOptions, kw)
    sources = select(opts.names or [], all_files=opts.all_)
    mirror = opts.from_ or data_mirror()
    dest = data_cache()

    def report(src, status):
        typer.echo(f"{status:<9}{src.path}  ({src.size:,} bytes)")

    fetch(sources, dest=dest, mirror=mirror, on_done=report)
    typer.echo(f"{len(sources)} file(s) verified in {dest}")


data_app.command("fetch")(command(dataclass_params(FetchOptions), fetch_cmd))


# ---------------------------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------------------------
def show(kw: dict) -> None:
    """Print the chat prompts of the first samples, with their gold answers.

    Examples:

      ft data show math500 --limit 2

      ft data show countdown --split train
    """
    o, data_root = build(ShowOptions, kw), build(DataRootOptions, kw).data_root
    t = _task(o.task, data_root)
    samples = t.load(o.split)
    for i, sample in enumerate(samples[:o.limit]):
        typer.echo(_format_sample(t, sample, f"{o.task} {o.split} [{i + 1}/{len(samples)}]"))


data_app.command("show")(command([*dataclass_params(ShowOptions), *data_root_params()], show))


def _format_sample(task: Any, sample: dict, title: str) -> str:
    """A readable block: header, each message, the assistant pre-fill, the gold."""
    lines = [f"=== {title}  id={sample['id']} ==="]
    for message in task.prompt(sample):
        lines.append(f"[{message['role']}]")
        lines.append(message["content"])
    prefix = task.assistant_prefix(sample)
    if prefix:
        lines.append("[assistant, pre-filled]")
        lines.append(prefix)
    lines.append(f"--> gold: {sample['answer']}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------
def check(kw: dict) -> None:
    """Check every benchmark file (verified / missing / corrupt) and every row of every task.

    A file is verified when its size and sha256 match the registry (tasks/sources.toml).
    Then each task whose files are present loads every split: a bad row fails the check in
    one line `FILE:LINE: field X: what is wrong`; record counts are compared with the
    manifest. Exit status 1 on any problem.

    Examples:

      ft data check

      ft data check --data-root /mnt/mirror/data
    """
    from ftcli.fetch.data import file_status, registry
    from ftcli.tasks import list_tasks

    data_root = build(DataRootOptions, kw).data_root
    root = resolve_data_root(data_root)
    typer.echo(f"data root: {root}")
    problems = 0
    status: dict[str, str] = {}
    for src in registry():
        status[src.path] = file_status(root, src)
        note = ""
        if status[src.path] == "missing":
            note = f"  (ft data fetch {src.tasks[0]})"
        elif status[src.path] == "corrupt":
            note = f"  (size or sha256 differs from the registry; ft data fetch {src.tasks[0]})"
        problems += status[src.path] != "verified"
        typer.echo(f"{status[src.path]:<10}{src.path}{note}")

    typer.echo(f"\n{'task':<14}{'split':<12}{'samples':>8}   file (records / manifest)")
    for name in list_tasks():
        try:
            task = _task(name, data_root)  # tasks resolve the same default themselves
            absent = [p for p in getattr(task, "files", {}).values() if status.get(p) == "missing"]
            if absent:
                typer.echo(f"{name:<14}ERROR: missing {', '.join(absent)} (ft data fetch {name})")
                continue
            rows, bad = _check_task(task, status)
        except Exception as e:  # noqa: BLE001 - report every task, then fail once
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            rows, bad = [f"{name:<14}ERROR: {msg}"], 1
        problems += bad
        typer.echo("\n".join(rows))
    if problems:
        typer.echo(f"{problems} problem(s) found", err=True)
        raise typer.Exit(1)
    typer.echo("all files verified; all counts match the manifest")


def _check_task(task: Any, status: dict[str, str]) -> tuple[list[str], int]:
    """Table rows for one task and the number of problems.

    Lines that do not parse count as problems unless the file is the registry's verified
    one (the CrossThinkQA copy ends in a cut-off line by construction).
    """
    from ftcli.tasks.loading import data_file, read_records

    counts = {split: len(task.load(split)) for split in task.splits}
    files = getattr(task, "files", {})
    manifest = getattr(task, "manifest", {})
    holdout = getattr(task, "holdout", {})
    notes: dict[str, str] = {}
    bad = 0
    for split, relpath in files.items():
        records = read_records(data_file(task.root, relpath))
        expected = manifest.get(split)
        derived = [split] + (sorted(holdout) if split == "train" else [])
        dropped = len(records.rows) - sum(counts.get(s, 0) for s in derived)
        ok = expected is None or expected == len(records.rows)
        bad += not ok
        note = f"{relpath} ({len(records.rows)} / {expected if expected is not None else '?'})"
        note += " ok" if ok else " MISMATCH"
        if records.corrupt_lines:
            lines = ", ".join(map(str, records.corrupt_lines))
            if status.get(relpath) == "verified":
                note += f"; corrupt line(s) {lines} skipped"
            else:
                note += f"; corrupt line(s) {lines}: {records.path}:{records.corrupt_lines[0]}"
                bad += 1
        if dropped > 0:
            note += f"; {dropped} record(s) without a gold answer skipped"
        notes[split] = note
    rows = [
        f"{task.name:<14}{split:<12}{n:>8}   {notes.get(split, '')}".rstrip()
        for split, n in counts.items()
    ]
    return rows, bad


data_app.command("check")(command(data_root_params(), check))
