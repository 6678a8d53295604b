"""Task plugins: datasets, prompts, answer spans and verifiers (installed as `ftcli.tasks`).

    from ftcli import get_task
    task = get_task("math500")                  # options: get_task("countdown", num_numbers=(4,))
    samples = task.load("test")                 # [{"id", "question", "answer", ...}]
    messages = task.prompt(samples[0])          # chat messages; the question appears verbatim
    text = render(messages) + task.assistant_prefix(samples[0])
    task.answer_span(response)                  # (start, end) of the final answer, or None
    task.grade(response, samples[0])            # the one grading call: {"extracted", "correct",
                                                # "reward", ...}; math adds "math_verify" and "sympy"
    task.verify(response, samples[0])           # bool: grade(...)["correct"]
    task.reward(response, samples[0])           # float: grade(...)["reward"]

Built-in names: `math` (training), `math500`, `aime24`, `aime25`, `amc23`, `olympiadbench`,
`minerva`, `gsm8k`, `countdown`, `crossthinkqa`. Other packages add tasks through the entry
point group `ftcli.tasks` (`name = "module:factory"`, called as `factory(**options)`).
The task contract is `ftcli.tasks.base.Task`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ftcli.tasks.base import Task
from ftcli.tasks.countdown import CountdownTask, generate_problems, solve
from ftcli.tasks.crossthinkqa import CrossThinkQATask
from ftcli.tasks.gsm8k import GSM8KTask
from ftcli.tasks.math import MATH_SOURCES, MathTask

__all__ = ["Task", "get_task", "list_tasks", "register_task", "generate_problems", "solve"]

ENTRY_POINT_GROUP = "ftcli.tasks"
log = logging.getLogger("ftcli.tasks")

_BUILTIN: dict[str, Callable[..., Any]] = {
    **{name: functools.partial(MathTask, source) for name, source in MATH_SOURCES.items()},
    "gsm8k": GSM8KTask,
    "countdown": CountdownTask,
    "crossthinkqa": CrossThinkQATask,
}
_REGISTERED: dict[str, Callable[..., Any]] = {}


def register_task(name: str, factory: Callable[..., Any]) -> None:
    """Add a task factory in-process (packages should prefer the entry point group)."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in task")
    _REGISTERED[name] = factory


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_tasks() -> list[str]:
    """Names accepted by `get_task`: built-ins, registered ones, then entry points."""
    extra = (set(_REGISTERED) | set(_entry_points())) - set(_BUILTIN)
    return list(_BUILTIN) + sorted(extra)


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with `options` (ValueError for an unknown name)."""
    if name in _BUILTIN:
        return _BUILTIN[name](**options)
    if name in _REGISTERED:
        return _REGISTERED[name](**options)
    eps = _entry_points()
    if name in eps:
        return eps[name].load()(**options)
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
