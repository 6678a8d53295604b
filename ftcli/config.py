"""Paths and settings shared by every command (data root, caches, debug switch).

The data root (where benchmark files are read from) is resolved in one order for every
command: the command's `--data-root` option, then `$FT_DATA`, then the data cache
`$FT_CACHE/data` (default `~/.cache/ftcli/data`), which `ft data fetch` fills and which a
task fills on first use (unless `FT_NO_DOWNLOAD=1`).
"""

from __future__ import annotations

import os
from pathlib import Path


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "False")


def cache_dir() -> Path:
    """Where converted models and other derived artefacts live: `$FT_CACHE` or ~/.cache/ftcli."""
    env = os.environ.get("FT_CACHE")
    p = Path(env).expanduser() if env else Path.home() / ".cache" / "ftcli"
    p.mkdir(parents=True, exist_ok=True)
    return p


def data_cache() -> Path:
    """The data cache `$FT_CACHE/data`: benchmark files fetched by `ft data fetch`, laid out
    like the data root (`aime24/test.jsonl`, `countdown/tinyzero_test/test.parquet`, ...)."""
    return cache_dir() / "data"


def resolve_data_root(option: str | Path | None = None) -> Path:
    """The data root: `option` (a command's `--data-root`), else `$FT_DATA`, else the data cache."""
    if option:
        return Path(option).expanduser()
    env = os.environ.get("FT_DATA")
    if env:
        return Path(env).expanduser()
    return data_cache()


def data_root() -> Path:
    """The data root without a command option: `$FT_DATA`, else the data cache."""
    return resolve_data_root(None)


def data_root_origin(option: str | Path | None = None) -> str:
    """Where `resolve_data_root(option)` came from: `--data-root`, `FT_DATA` or `data cache`."""
    if option:
        return "--data-root"
    return "FT_DATA" if os.environ.get("FT_DATA") else "data cache"


def data_mirror() -> str | None:
    """`$FT_DATA_MIRROR`: a folder or http(s) base URL laid out like the data root, or None."""
    return os.environ.get("FT_DATA_MIRROR") or None


def downloads_allowed() -> bool:
    """False when `FT_NO_DOWNLOAD=1`: nothing is fetched on first use."""
    return not _flag("FT_NO_DOWNLOAD")


def debug() -> bool:
    """`FT_DEBUG=1` shows full tracebacks instead of one-line errors."""
    return _flag("FT_DEBUG")
