"""Paths and settings shared by every command (data root, caches, debug switch)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Root of the benchmark files: `$FT_DATA`, else `../shared/data` beside the checkout."""
    env = os.environ.get("FT_DATA")
    if env:
        return Path(env).expanduser()
    for base in (REPO_ROOT, Path.cwd()):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return REPO_ROOT.parent / "shared" / "data"


def cache_dir() -> Path:
    """Where converted models and other derived artefacts live: `$FT_CACHE` or ~/.cache/ftcli."""
    env = os.environ.get("FT_CACHE")
    p = Path(env).expanduser() if env else Path.home() / ".cache" / "ftcli"
    p.mkdir(parents=True, exist_ok=True)
    return p


def debug() -> bool:
    """`FT_DEBUG=1` shows full tracebacks instead of one-line errors."""
    return os.environ.get("FT_DEBUG", "") not in ("", "0", "false", "False")
