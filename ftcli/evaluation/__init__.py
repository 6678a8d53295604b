"""`ft eval` and the one evaluation loop: suites (`suites`, files in `evals/`), metrics with
standard errors (`metrics`), the sampling loop and its grader (`sampling`: validation, ft eval,
ft sft, experiments), and benchmark scoring, checkpoints and results tables (`benchmarks`)."""

from __future__ import annotations

import warnings
from typing import Any

_SAMPLING = ("sample_task", "grade", "accuracy")


def __getattr__(name: str) -> Any:
    """`from ftcli.evaluation import sample_task` (the module of earlier releases) keeps working
    for one release: the names now live in `ftcli.evaluation.sampling`."""
    if name in _SAMPLING:
        warnings.warn(f"ftcli.evaluation.{name} moved to ftcli.evaluation.sampling.{name}",
                      DeprecationWarning, stacklevel=2)
        from ftcli.evaluation import sampling

        value = globals()[name] = getattr(sampling, name)  # warned once
        return value
    raise AttributeError(f"module 'ftcli.evaluation' has no attribute {name!r}")
