"""The suite's one progress-bar layout (rich): label, bar, n/N, extra fields, elapsed, remaining."""

from __future__ import annotations


def progress_bar(label: str, *fields: str, console=None, disable: bool = False, transient: bool = False):
    """A `rich.progress.Progress` with the layout every long command uses.

    `label` and each of `fields` are `TextColumn` formats (they may read `{task.description}`
    or `{task.fields[name]}`).
    """
    # imported here: `ft --help` does not need rich.progress
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=disable, transient=transient,
    )


def stderr_console(console=None):
    """`console`, or a new rich Console on stderr (where progress and messages go)."""
    if console is None:
        from rich.console import Console  # imported here: ft --help does not need it

        console = Console(stderr=True)
    return console
