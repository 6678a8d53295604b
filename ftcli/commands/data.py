"""`ft data`: look at the benchmark files through the task plugins.

ft data show math500 --limit 2          # formatted prompts with their golds
ft data show countdown --split train
ft data check                           # load every task; counts against MANIFEST.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

data_app = typer.Typer(help="Inspect benchmark data: prompts, golds, counts.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `data` command group to the root app."""
    app.add_typer(data_app, name="data")


def _task(name: str, data_root: Path | None):
    from ftcli.tasks import get_task

    return get_task(name, **({"data_root": data_root} if data_root else {}))


@data_app.command("show")
def show(
    task: str = typer.Argument(..., help="Task name (see `ft data check` for the list)."),
    split: str = typer.Option("test", help="train | validation | test"),
    limit: int = typer.Option(3, "--limit", "-n", min=1, help="How many samples to print."),
    data_root: Path | None = typer.Option(
        None, help="Data root (default $FT_DATA or ../shared/data)."
    ),
) -> None:
    """Print the chat prompts of the first samples, with their gold answers."""
    t = _task(task, data_root)
    samples = t.load(split)
    for i, sample in enumerate(samples[:limit]):
        typer.echo(_format_sample(t, sample, f"{task} {split} [{i + 1}/{len(samples)}]"))


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


@data_app.command("check")
def check(
    data_root: Path | None = typer.Option(
        None, help="Data root (default $FT_DATA or ../shared/data)."
    ),
) -> None:
    """Load every task and split; compare file record counts with MANIFEST.md."""
    from ftcli.tasks import list_tasks

    problems = 0
    typer.echo(f"{'task':<14}{'split':<12}{'samples':>8}   file (records / manifest)")
    for name in list_tasks():
        try:
            rows, bad = _check_task(_task(name, data_root))
        except Exception as e:  # noqa: BLE001 - report every task, then fail once
            rows, bad = [f"{name:<14}ERROR: {str(e).splitlines()[0]}"], 1
        problems += bad
        typer.echo("\n".join(rows))
    if problems:
        typer.echo(f"{problems} problem(s) found", err=True)
        raise typer.Exit(1)
    typer.echo("all counts match the manifest")


def _check_task(task: Any) -> tuple[list[str], int]:
    """Table rows for one task and the number of mismatches."""
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
            note += f"; corrupt line(s) {', '.join(map(str, records.corrupt_lines))} skipped"
        if dropped:
            note += f"; {dropped} record(s) without a gold answer skipped"
        notes[split] = note
    rows = [
        f"{task.name:<14}{split:<12}{n:>8}   {notes.get(split, '')}".rstrip()
        for split, n in counts.items()
    ]
    return rows, bad
