"""The task contract, plus the small helpers every task plugin shares.

A task is any object with the attributes and methods of `Task` below (a structural protocol:
plugins do not inherit from it). Optional: `files` (split -> path in the data root, which
`ft data check` verifies), `manifest` (split -> record count) and `data_source()` (what a
run records about where the problems came from; see `ftcli.tasks.loading.describe_data`). Helpers here are plain functions the plugins compose:
answer-span finders (`last_boxed_span`, `last_number_span`) and the reproducible split carving
(`select_split`) that gives every task its `validation` split.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from ftcli.spans import Span, last_boxed_span, strip_span  # noqa: F401 - re-exported for plugins

Sample = dict[str, Any]
Messages = list[dict[str, str]]


@runtime_checkable
class Task(Protocol):
    """What the trainer, `ft eval` and `ft score` rely on (see tasks/__init__.py)."""

    name: str
    splits: tuple[str, ...]

    def load(self, split: str = "test") -> list[Sample]:
        """Samples with at least `id`, `question`, `answer` (gold, as a string)."""

    def prompt(self, sample: Sample) -> Messages:
        """Chat messages; `sample["question"]` appears verbatim in the user message."""

    def assistant_prefix(self, sample: Sample) -> str:
        """Text pre-filled at the start of the assistant turn ("" for none)."""

    def answer_span(self, response: str) -> Span | None:
        """Character span `(start, end)` of the final answer inside `response`, or None."""

    def verify(self, response: str, sample: Sample) -> bool:
        """Is the response's final answer correct? (`grade(...)["correct"]`)"""

    def reward(self, response: str, sample: Sample) -> float:
        """Scalar RL reward for the response. (`grade(...)["reward"]`)"""

    def grade(self, response: str, sample: Sample) -> dict[str, Any]:
        """The one grading call (the trainer, `ft eval` and the experiments make one per
        response): at least `extracted` (answer text or None), `correct` (what `verify`
        says) and `reward` (what `reward` says), plus any grader details."""


# ---------------------------------------------------------------------------------------------
# Answer spans
# ---------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_match(pattern: re.Pattern[str], text: str, pos: int = 0) -> re.Match[str] | None:
    """The last non-overlapping match of `pattern` in `text[pos:]` (one linear pass)."""
    found = None
    for found in pattern.finditer(text, pos):  # noqa: B007 - keep the last one
        pass
    return found


def last_number_span(text: str) -> Span | None:
    """Span of the last number in `text` (digits with optional thousands commas / decimals)."""
    last = last_match(_NUMBER, text)
    if last is None:
        return None
    start, end = last.span()
    while end > start and text[end - 1] == ",":  # "... 18, and" -> "18"
        end -= 1
    return (start, end)




# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
def carve(n: int, holdout: Mapping[str, int], seed: int) -> dict[str, list[int]]:
    """Disjoint index sets: `holdout` sizes drawn by a seeded shuffle, the rest is `train`.

    Deterministic for a given (n, holdout, seed); each set keeps file order.
    """
    need = sum(holdout.values())
    if need > n:
        raise ValueError(f"cannot hold out {need} of {n} records")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    parts: dict[str, list[int]] = {}
    pos = 0
    for split in sorted(holdout):
        parts[split] = sorted(order[pos : pos + holdout[split]])
        pos += holdout[split]
    parts["train"] = sorted(order[pos:])
    return parts


def available_splits(sources: Mapping[str, Any], holdout: Mapping[str, int]) -> tuple[str, ...]:
    """Split names a task offers: its files plus the splits carved from `train`."""
    names = set(sources) | (set(holdout) if "train" in sources else set())
    order = ("train", "validation", "test")
    return tuple(sorted(names, key=lambda s: (order.index(s) if s in order else 9, s)))


def select_split(
    task: str,
    split: str,
    sources: Mapping[str, Callable[[], list[Sample]]],
    holdout: Mapping[str, int],
    seed: int,
) -> list[Sample]:
    """Samples of `split`: a file split (`sources`) or a split carved from `train`.

    With a non-empty `holdout` (e.g. `{"validation": 500}`), `train` returns only what is not
    held out, so validation and train never overlap.
    """
    known = available_splits(sources, holdout)
    if split not in known:
        raise ValueError(f"task {task!r} has no {split!r} split (available: {', '.join(known)})")
    if split in sources and not (split == "train" and holdout):
        return sources[split]()
    rows = sources["train"]()
    idx = carve(len(rows), {k: v for k, v in holdout.items() if v > 0}, seed).get(split, [])
    return [rows[i] for i in idx]
