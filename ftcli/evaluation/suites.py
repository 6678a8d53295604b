"""Evaluation suites: files in `evals/` (package `ftcli.evals`), either one benchmark

    task = "aime24"; split = "test"; metric = "avg@16"; n = 16
    temperature = 0.99; top_p = 1.0; top_k = 100; max_new_tokens = 1024; seed = 0
    grader = "math_verify"; second_grader = "sympy"
    extraction = "boxed"      # math tasks; "boxed-or-last-math": the field's no-box fallback

or a group, `suites = ["aime24", "aime25", ...]`. A path to a .toml file works as a suite too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import ftcli.evals
from ftcli.evaluation.metrics import parse_metric

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class EvalError(ValueError):
    """Bad suite / checkpoint / output folder (one-line message for the CLI)."""


# ---------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------
@dataclass
class Benchmark:
    """One benchmark and its protocol (a single-benchmark suite file)."""

    name: str
    task: str
    split: str = "test"
    metric: str = "pass@1"
    n: int = 1
    temperature: float = 0.99
    top_p: float = 1.0
    top_k: int = 100
    max_new_tokens: int = 1024
    seed: int = 0
    grader: str = "math_verify"
    second_grader: str = "sympy"
    label: str = ""
    task_options: dict = field(default_factory=dict)  # keyword arguments of get_task
    extraction: str = "boxed"  # math tasks: boxed (the paper's protocol) or boxed-or-last-math

    def __post_init__(self):
        self.label = self.label or self.name
        kind, k = parse_metric(self.metric)
        if self.n < 1:
            raise EvalError(f"{self.name}: n must be >= 1")
        # imported here: `ft --help` does not load the tasks
        from ftcli.tasks.math import EXTRACTIONS

        if self.extraction not in EXTRACTIONS:
            raise EvalError(f"{self.name}: extraction must be one of {', '.join(EXTRACTIONS)} (got {self.extraction!r})")
        if k > self.n:
            raise EvalError(f"{self.name}: {self.metric} needs n >= {k} samples (n = {self.n})")


@dataclass
class Suite:
    name: str
    label: str
    benchmarks: list[Benchmark] = field(default_factory=list)

    @property
    def is_group(self) -> bool:
        return len(self.benchmarks) != 1 or self.benchmarks[0].name != self.name


def evals_dir() -> Path:
    return Path(ftcli.evals.__file__).resolve().parent


def list_suites() -> list[str]:
    """Names of the shipped suites (benchmarks and groups)."""
    return sorted(p.stem for p in evals_dir().glob("*.toml"))


def _suite_file(name: str) -> Path:
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p
    f = evals_dir() / f"{name}.toml"
    if not f.is_file():
        raise EvalError(f"unknown suite {name!r} (known: {', '.join(list_suites())})")
    return f


def load_suite(name: str, _seen: tuple[str, ...] = ()) -> Suite:
    """Suite by name (`evals/<name>.toml`) or .toml path; groups are expanded recursively."""
    f = _suite_file(name)
    sname = f.stem
    if sname in _seen:
        raise EvalError(f"suite {sname!r} includes itself")
    try:
        spec = tomllib.loads(f.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise EvalError(f"{f}: {e}") from None
    if "suites" in spec:
        benches: list[Benchmark] = []
        for member in spec["suites"]:
            for b in load_suite(member, _seen + (sname,)).benchmarks:
                if b.name not in {x.name for x in benches}:
                    benches.append(b)
        return Suite(sname, spec.get("label", sname), benches)
    known = set(Benchmark.__dataclass_fields__) - {"name"}
    extra = set(spec) - known - {"description"}
    if extra:
        raise EvalError(f"{f}: unknown keys {sorted(extra)} (known: {sorted(known)})")
    if "task" not in spec:
        raise EvalError(f"{f}: needs task = ... (or suites = [...] for a group)")
    b = Benchmark(name=sname, **{k: v for k, v in spec.items() if k in known})
    return Suite(sname, spec.get("label", b.label), [b])


def apply_overrides(b: Benchmark, **over) -> Benchmark:
    """CLI overrides (None = keep). `n` also rescales avg@k / maj@k to the new n; pass@k keeps k
    (and fails if k > n)."""
    over = {k: v for k, v in over.items() if v is not None}
    if not over:
        return b
    metric = b.metric
    if "n" in over:
        kind, k = parse_metric(metric)
        if kind in ("avg", "maj"):
            metric = f"{kind}@{over['n']}"
    return replace(b, metric=metric, **over)
