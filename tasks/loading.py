"""Reading benchmark files from the data root with the `datasets` json / parquet builders.

Files are read in place (never copied into the repository) and cached per process. A JSON
Lines file with a corrupt row cannot go through the `datasets` json builder, so such a file
falls back to a line-by-line read: each bad line gives one warning naming the file and the
line, and the other rows still load.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcli.config import cache_dir, data_root

log = logging.getLogger("ftcli.tasks")


@dataclass(frozen=True)
class Records:
    """The rows of one data file, plus the 1-based line numbers that did not parse."""

    path: Path
    rows: list[dict[str, Any]]
    corrupt_lines: tuple[int, ...] = field(default=())


_CACHE: dict[tuple[str, float], Records] = {}
_LOCK = threading.Lock()


def resolve_root(root: str | Path | None = None) -> Path:
    """The data root: the `data_root` option, else `$FT_DATA`, else `../shared/data`."""
    return Path(root).expanduser() if root else data_root()


def data_file(root: Path, relpath: str) -> Path:
    """`root / relpath`, with a clear error (naming the option and variable) when missing."""
    path = root / relpath
    if not path.is_file():
        raise FileNotFoundError(
            f"benchmark file {path} not found (set the data root with FT_DATA or data_root=...)"
        )
    return path


def read_records(path: Path) -> Records:
    """All rows of a `.jsonl` / `.json` / `.parquet` file (cached per path and mtime)."""
    key = (str(path.resolve()), path.stat().st_mtime)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _read_uncached(path)
        return _CACHE[key]


def _read_uncached(path: Path) -> Records:
    builder = "parquet" if path.suffix == ".parquet" else "json"
    try:
        return Records(path, _read_with_datasets(path, builder))
    except Exception:  # noqa: BLE001 - any builder failure: retry line by line
        if path.suffix != ".jsonl":
            raise
        return _read_jsonl_lenient(path)


def _read_with_datasets(path: Path, builder: str) -> list[dict[str, Any]]:
    """Load one file with a `datasets` builder, in memory, quietly.

    The builder's arrow files go to a temporary folder under `cache_dir()` that is removed
    afterwards (the table is already in memory), so nothing stale piles up on disk.
    """
    import datasets

    datasets.disable_progress_bars()
    ds_logger = logging.getLogger("datasets")
    level = ds_logger.level
    ds_logger.setLevel(logging.CRITICAL)  # the builder logs an ERROR before raising
    try:
        with tempfile.TemporaryDirectory(prefix="datasets-", dir=cache_dir()) as tmp:
            ds = datasets.load_dataset(
                builder, data_files=str(path), split="train", keep_in_memory=True, cache_dir=tmp
            )
            return ds.to_list()
    finally:
        ds_logger.setLevel(level)


def _read_jsonl_lenient(path: Path) -> Records:
    """Parse JSON Lines one line at a time; warn once per line that does not parse."""
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                bad.append(lineno)
                log.warning("%s:%d: skipped a corrupt row (%s)", path, lineno, str(e)[:80])
                continue
            rows.append(row)
    return Records(path, rows, tuple(bad))
