"""Character spans -> token positions (question and answer regions of the flow)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def span_to_token_mask(
    offsets: Sequence[tuple[int, int]], span: tuple[int, int] | None, length: int | None = None
) -> torch.Tensor:
    """Bool mask `[T]` of the tokens whose characters overlap `span = (start, end)`.

    A token overlaps when `tok_start < end and tok_end > start`, so a span that starts or
    ends inside a token includes that token. Zero-width tokens (special tokens, padding,
    offsets (0, 0)) never overlap. `span=None` gives an all-False mask.
    """
    T = len(offsets) if length is None else length
    mask = torch.zeros(T, dtype=torch.bool)  # [T]
    if span is None:
        return mask
    start, end = span
    if end <= start:
        return mask
    for t, (a, b) in enumerate(offsets[:T]):
        if b > a and a < end and b > start:
            mask[t] = True
    return mask


def find_question_span(prompt_text: str, question: str) -> tuple[int, int] | None:
    """Character span of the question text inside a chat-formatted prompt (last match).

    The question region excludes the system prompt and chat-template tokens (SPEC: Q).
    Falls back to the stripped question if the exact text is not found.
    """
    for q in (question, question.strip()):
        if q:
            i = prompt_text.rfind(q)
            if i >= 0:
                return (i, i + len(q))
    return None


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """Character span of the content of the last brace-matched `\\boxed{...}` (or `\\fbox{...}`).

    `\\boxed{\\frac{1}{2}}` gives the span of `\\frac{1}{2}`. An unclosed last box (truncated
    response) gives None. Linear in the length of the text.
    """
    best = None
    for key in ("\\boxed{", "\\fbox{"):
        i = text.rfind(key)
        if i >= 0 and (best is None or i > best[0]):
            best = (i, key)
    if best is None:
        return None
    start = best[0] + len(best[1])
    depth = 1
    for j in range(start, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return (start, j)
    return None
