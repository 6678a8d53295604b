"""Options as dataclass fields: one source for names, defaults, help, CLI panels and limits.

`TrainConfig` (`ft train`) and the experiment configs (`ft ablate`) declare their fields with
`option(...)`; `ftcli.commands.options` turns them into Typer options, so a default or help
text is written once.
"""

from __future__ import annotations

import math
from dataclasses import field, fields


def option(default, help: str, panel: str | None = None, cli: bool = True, choices=None, *,
           flags: tuple[str, ...] = (), min=None, max=None, gt=None, lt=None, why: str | None = None,
           default_factory=None):
    """A dataclass field with CLI metadata: `help`, `panel` (rich help panel), `cli` (False:
    not an option), `choices`, extra `flags` (e.g. ("-m",)), numeric limits `min` / `max`
    (inclusive) and `gt` / `lt` (exclusive), and `why` (said when a value is out of range).
    `check_limits` enforces the limits; a float must also be finite."""
    meta = {"help": help, "panel": panel, "cli": cli, "choices": choices, "flags": flags, "min": min, "max": max,
            "gt": gt, "lt": lt, "why": why}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def describe_limits(meta) -> str:
    """The allowed range of a field, in words: '>= 1', 'in [0, 1]', '> 0 and <= 1'."""
    lo = f">= {meta['min']}" if meta.get("min") is not None else f"> {meta['gt']}" if meta.get("gt") is not None else None
    hi = f"<= {meta['max']}" if meta.get("max") is not None else f"< {meta['lt']}" if meta.get("lt") is not None else None
    if meta.get("min") is not None and meta.get("max") is not None:
        return f"in [{meta['min']}, {meta['max']}]"
    return " and ".join(x for x in (lo, hi) if x) or "finite"


def check_limits(obj) -> None:
    """Check every numeric field of dataclass `obj` against its `option` limits (None = not
    set, always allowed; a float must be finite). Raises ValueError, one line naming the
    option (`--group-size must be >= 2 (got 1): ...`)."""
    for f in fields(obj):
        v, meta = getattr(obj, f.name), f.metadata
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        ok = not isinstance(v, float) or math.isfinite(v)
        ok = ok and (meta.get("min") is None or v >= meta["min"]) and (meta.get("max") is None or v <= meta["max"])
        ok = ok and (meta.get("gt") is None or v > meta["gt"]) and (meta.get("lt") is None or v < meta["lt"])
        if not ok:
            rng = describe_limits(meta)
            if isinstance(v, float) and rng != "finite":
                rng += ", finite"
            why = f": {meta['why']}" if meta.get("why") else ""
            raise ValueError(f"--{f.name.replace('_', '-')} must be {rng} (got {v}){why}")
