"""The one evaluation loop: sample responses to a task's prompts and grade them.

Used by `ft eval` (`ftcli.evaluation.benchmarks.run_benchmark`, chunked and resumable), the trainer's
validation, `ft sft`'s accuracy (`ftcli.policy.sft.evaluate_task`) and the experiments. The prompt is
the task's own (`ftcli.sequences.task_prompt_text`); responses come from
`ftcli.generation.generate` or a backend with the same signature (`ftcli.generation.get_backend`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ftcli.generation import Rollout, generate
from ftcli.sequences import task_prompt_text


def sample_task(model, tokenizer, task, samples: Sequence[dict], *, n: int = 1, max_new_tokens: int = 256,
                temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                batch_size: int = 16, chunk: int | None = None, backend=None,
                progress: Callable[[int], None] | None = None) -> Iterator[tuple[list[int], list[list[Rollout]]]]:
    """`n` responses to each sample's task prompt, `chunk` problems per generate call (default:
    all at once). Yields (indices into `samples`, their groups of `n` rollouts) per chunk, so a
    caller can grade and write each chunk before the next (resumable evaluations).

    Every rollout's seed depends on (seed, prompt, occurrence, sample) only, so chunking does
    not change the responses. Runs without autograd."""
    chunk = max(1, chunk or len(samples) or 1)
    kw = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
              seed=seed, batch_size=batch_size)
    if progress is not None:
        kw["progress"] = progress
    for c0 in range(0, len(samples), chunk):
        idx = list(range(c0, min(c0 + chunk, len(samples))))
        prompts = [task_prompt_text(tokenizer, task, samples[i]) for i in idx]
        with torch.no_grad():
            if backend is None:
                groups = generate(model, tokenizer, prompts, **kw)
            else:
                groups = backend.generate(model, tokenizer, prompts, **kw)
        yield idx, groups


def _extracted_from_span(task, response: str) -> str | None:
    fn = getattr(task, "answer_span", None)
    if fn is None:
        return None
    span = fn(response)
    if span is None:
        return None
    if isinstance(span, str):
        return span
    a, b = span
    return response[a:b]


def grade(task, response: str, sample: dict, grader: str = "verify", second_grader: str | None = None) -> dict:
    """The one grader: verdicts for one response, {'correct', 'verdicts': {grader: bool},
    'extracted', 'reward'} (plus 'timeouts' and 'grade_error' when they happen).

    The task's one grading call, `grade()`: the scoring verdict is `grade()[grader]` when
    the task reports that grader (math: `math_verify`), else its own verdict
    (`grade()["correct"]`, recorded as `verify`). Every boolean in `grade()` is kept in
    `verdicts`, so the second grader (math: `sympy`) is recorded beside it; the reward is
    `grade()["reward"]`. A grader that raises counts as wrong, with the error kept in
    `grade_error`.
    """
    rec: dict[str, Any] = {"verdicts": {}, "extracted": None}
    try:
        g = task.grade(response, sample)
        for k, v in g.items():
            if k != "correct" and (isinstance(v, bool) or (v is None and k in (grader, second_grader))):
                rec["verdicts"][k] = v
        if g.get("extracted") is not None and not isinstance(g.get("extracted"), bool):
            rec["extracted"] = str(g["extracted"])
        if isinstance(g.get("timeouts"), dict) and g["timeouts"]:  # {grader: "cpu" | "wall"}
            rec["timeouts"] = {str(k): str(v) for k, v in g["timeouts"].items()}
        if grader != "verify" and g.get(grader) is not None:
            rec["correct"] = bool(g[grader])
        else:
            rec["correct"] = bool(g["correct"])
            rec["verdicts"]["verify"] = rec["correct"]
        if rec["extracted"] is None:
            rec["extracted"] = _extracted_from_span(task, response)
        rec["reward"] = float(g["reward"])
    except Exception as e:  # noqa: BLE001 - a grader crash must not kill a long eval
        rec.setdefault("correct", False)
        rec.setdefault("reward", 0.0)
        rec["grade_error"] = f"{type(e).__name__}: {e}"[:300]
    return rec


def accuracy(model, tokenizer, task, samples: Sequence[dict], **sampling) -> tuple[int, int]:
    """(correct, total) of one response per sample, judged by `grade` (the task's own verdict)."""
    correct = 0
    for idx, groups in sample_task(model, tokenizer, task, samples, n=1, **sampling):
        correct += sum(grade(task, g[0].response_text, samples[i])["correct"] for i, g in zip(idx, groups, strict=True))
    return correct, len(samples)
