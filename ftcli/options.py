"""Options as dataclass fields: one source for names, defaults, help, CLI panels and limits.

`TrainConfig` (`ft train`) and the experiment configs (`ft ablate`) declare their fields with
`option(...)`; `ftcli.commands.options` turns them into Typer options, so a default or help
text is written once.
"""

from __future__ import annotations

import math
from dataclasses import field, fields

# ---------------------------------------------------------------------------------------------
# Choices and help texts shared by the options, kept here so that building the CLI (and `ft
# --help`) imports no torch; the modules that use them (credit, attention, grpo, sequences)
# re-export them.
# ---------------------------------------------------------------------------------------------
SELECT_MODES = ("top", "bottom")
WEIGHTINGS = ("binary", "raw", "tanh", "sigmoid", "mad", "log1p", "mass")
TOKEN_CLASSES = ("structural", "semantic")
CREDIT_TOKENS = ("all", *TOKEN_CLASSES)
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
MICRO_ORDERS = ("length", "group")
LAYERS_HELP = (
    "Layers averaged into W: mid|early|late|all (thirds of the depth), "
    "paper-early|paper-mid|paper-late (Fig. 6's 0:15, 15:25, 25:35 of 36 layers, scaled to the "
    "model's depth), or A:B (half-open, e.g. 15:25)."
)
# The built-in credit rules, in registry order, and what each scores (`ftcli.credit` registers
# their score functions under these names and takes the summaries from here).
RULE_SUMMARIES = {
    "none": "plain GRPO (all weights 1)",
    "random": "uniform random scores, seeded per sequence",
    "entropy": "policy entropy of each token",
    "correlation": "mean |correlation| of a token's hidden state with the other response tokens' (Nie et al.)",
    "attention": "maximum attention received from a later token",
    "flow": "FlowTracer throughput tau (question -> answer)",
    "gradient": "answer log-likelihood gradient saliency",
    "clip-cov": "advantage x centred log-prob (Clip-Cov, Cui et al.)",
    "fai": "future attention influence: windowed mean of received attention",
}


def describe_rules(summaries: bool = False) -> str:
    """The built-in rule names for CLI help ("none, random, ..."); with `summaries`, each
    followed by what it scores ("none: plain GRPO (all weights 1); ...")."""
    if summaries:
        return "; ".join(f"{name}: {summary}" for name, summary in RULE_SUMMARIES.items())
    return ", ".join(RULE_SUMMARIES)


def option(default, help: str, panel: str | None = None, cli: bool = True, choices=None, *,
           flags: tuple[str, ...] = (), min=None, max=None, gt=None, lt=None, why: str | None = None,
           default_factory=None, toggle: bool = True, argument: bool = False, callback=None,
           cli_range: bool = True, typer_kw: dict | None = None):
    """A dataclass field with CLI metadata: `help`, `panel` (rich help panel), `cli` (False:
    not an option), `choices` (the allowed values), extra `flags` (e.g. ("-m",)), numeric
    limits `min` / `max` (inclusive) and `gt` / `lt` (exclusive), `why` (said when a value is
    out of range), and for a bool `toggle` (True: `--x/--no-x`; False: a plain `--x` flag).
    `check_limits` enforces the limits and the choices; a float must also be finite.

    `argument`: a positional CLI argument (default `...`: required); `callback`: typer's
    `callback=` (parses or normalises the value); `cli_range` (False: `min` / `max` are left to
    `check_limits`, a one-line error, not given to the parser); `typer_kw`: other keyword
    arguments of `typer.Option` (`show_default`, `hidden`, `exists`, `dir_okay`, ...)."""
    meta = {"help": help, "panel": panel, "cli": cli, "choices": choices, "flags": flags, "min": min, "max": max,
            "gt": gt, "lt": lt, "why": why, "toggle": toggle, "argument": argument, "callback": callback,
            "cli_range": cli_range, "typer_kw": typer_kw or {}}
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


def option_flag(name: str) -> str:
    """A field's option: `group_size` -> `--group-size`; a trailing underscore (a field named
    after a Python word, `set_`, `range_`) is dropped."""
    return "--" + name.rstrip("_").replace("_", "-")


def check_limits(obj) -> None:
    """Check every field of dataclass `obj` against its `option` choices (None = not set,
    always allowed) and numeric limits (a float must be finite). Raises ValueError, one line
    naming the option (`--group-size must be >= 2 (got 1): ...`, `--select must be one of
    top, bottom (got 'middle')`)."""
    for f in fields(obj):
        check_field(f, getattr(obj, f.name))


def check_field(f, v) -> None:
    """`check_limits` for one value `v` of dataclass field `f`."""
    meta = f.metadata
    if v is not None and meta.get("choices") and v not in meta["choices"]:
        raise ValueError(f"{option_flag(f.name)} must be one of {', '.join(map(str, meta['choices']))} (got {v!r})")
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    ok = not isinstance(v, float) or math.isfinite(v)
    ok = ok and (meta.get("min") is None or v >= meta["min"]) and (meta.get("max") is None or v <= meta["max"])
    ok = ok and (meta.get("gt") is None or v > meta["gt"]) and (meta.get("lt") is None or v < meta["lt"])
    if not ok:
        rng = describe_limits(meta)
        if isinstance(v, float) and rng != "finite":
            rng += ", finite"
        why = f": {meta['why']}" if meta.get("why") else ""
        raise ValueError(f"{option_flag(f.name)} must be {rng} (got {v}){why}")
