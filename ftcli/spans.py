"""Character spans -> token positions (question and answer regions of the flow)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Span = tuple[int, int]


def span_to_token_mask(
    offsets: Sequence[tuple[int, int]], span: tuple[int, int] | None, length: int | None = None
) -> torch.Tensor:
    """Bool mask `[T]` of the tokens whose characters overlap `span = (start, end)`.

    A token overlaps when `tok_start < end and tok_end > start`, so a span that starts or
    ends inside a token includes that token. Zero-width tokens (special tokens, padding,
    offsets (0, 0)) never overlap. `span=None` gives an all-False mask.
    """
    import torch  # lazy: task plugins import this module without torch

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

    The question region excludes the system prompt and chat-template tokens (docs/flow.md: Inputs).
    Falls back to the stripped question if the exact text is not found.
    """
    for q in (question, question.strip()):
        if q:
            i = prompt_text.rfind(q)
            if i >= 0:
                return (i, i + len(q))
    return None


_BOXED_TOKENS = re.compile(r"\\\\|\\[{}]|\\(?:boxed|fbox)\s*\{|[{}]")
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*\{")
MAX_SCAN_CHARS = 100_000  # span search looks at most at this many final characters


def scan_start(text: str, limit: int = MAX_SCAN_CHARS) -> int:
    """Where a bounded backwards-looking search starts: only the last `limit` characters of a
    response are searched for its final answer (model output is untrusted; a 10 MB response
    must not cost seconds). An answer that begins before that is not found."""
    return max(0, len(text) - limit)


def last_boxed_span(text: str) -> Span | None:
    """Span of the content of the last brace-matched `\\boxed{...}` (or `\\fbox{...}`).

    One linear pass: escaped braces (`\\{`, `\\}`) do not count, an unclosed `\\boxed{` (a
    truncated response) is ignored, and for nested boxes the outermost one wins. "Last" means
    the box that closes last. The content is trimmed of surrounding whitespace.

    Bounded work: only the last `MAX_SCAN_CHARS` characters are scanned, starting at the first
    box command in them (a text without `\\boxed{`/`\\fbox{` costs one regex search), so
    `'}' * 10**7` returns at once. A box opened before that window is not seen.
    """
    first = _BOX_COMMAND.search(text, scan_start(text))
    if first is None:
        return None
    depth = 0
    open_boxes: list[tuple[int, int]] = []  # (depth inside the box, content start)
    best: Span | None = None
    for m in _BOXED_TOKENS.finditer(text, first.start()):
        tok = m.group()
        if tok == "}":
            if open_boxes and open_boxes[-1][0] == depth:
                _, start = open_boxes.pop()
                best = (start, m.start())
            depth = max(depth - 1, 0)
        elif tok == "{":
            depth += 1
        elif tok.startswith(("\\boxed", "\\fbox")):
            depth += 1
            open_boxes.append((depth, m.end()))
        # escaped braces and "\\\\" are skipped
    return strip_span(text, best) if best else None


def strip_span(text: str, span: Span) -> Span | None:
    """Shrink `span` so that it excludes leading/trailing whitespace (None if it is empty)."""
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None
