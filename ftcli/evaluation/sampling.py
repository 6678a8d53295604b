"""The one evaluation loop: sample responses to a task's prompts and grade them.

Used by `ft eval` (`ftcli.evaluation.benchmarks.run_benchmark`, chunked and resumable), the trainer's
validation, `ft sft`'s accuracy (`ftcli.policy.sft.evaluate_task`) and the experiments. The prompt is
the task's own (`ftcli.sequences.task_prompt_text`); responses come from
`ftcli.generation.generate` or a backend with the same signature (`ftcli.generation.get_backend`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

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


def grade(task, response: str, sample: dict) -> tuple[str | None, bool]:
    """(extracted answer, correct) from the task's `grade` (or answer_span + verify)."""
    g = task.grade(response, sample) if hasattr(task, "grade") else {}
    ext = g.get("extracted")
    if ext is None and not g:
        span = task.answer_span(response)
        ext = response[span[0] : span[1]] if span else None
    ok = g.get("correct")
    if not isinstance(ok, bool):
        ok = bool(task.verify(response, sample))
    return (None if ext is None else str(ext)), ok


def accuracy(model, tokenizer, task, samples: Sequence[dict], **sampling) -> tuple[int, int]:
    """(correct, total) of one response per sample, judged by `task.verify`."""
    correct = 0
    for idx, groups in sample_task(model, tokenizer, task, samples, n=1, **sampling):
        correct += sum(bool(task.verify(g[0].response_text, samples[i])) for i, g in zip(idx, groups, strict=True))
    return correct, len(samples)
