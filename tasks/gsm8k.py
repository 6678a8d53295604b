"""GSM8K: grade-school word problems with integer answers (OpenAI release).

The gold is the text after the final `#### ` of the worked solution (thousands commas
removed). The model is prompted like the math family (Qwen2.5-Math CoT prompt); its answer
is the last `\\boxed{...}` if there is one, else what follows the last `####` (the GSM8K
final-answer marker), else the last number of the response. That span must be ONE number
(`to_number`: sign, `$`, thousands separators, a unit and a final period allowed; `1e18`,
`2^{18}`, `\\frac{1}{18}`, `17 or 18`, `1/24` are not), compared with the gold as an exact
rational number (no parser, no sandbox needed).
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from ftcli.tasks.base import Messages, Sample, Span, last_boxed_span, last_match, select_split
from ftcli.tasks.loading import (
    Records,
    check_field,
    data_file,
    read_records,
    resolve_root,
    row_error,
)
from ftcli.tasks.math import math_messages

from ftcli.spans import scan_start

HUB_ID = "openai/gsm8k"  # config "main"; the source for users with a hub
FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
MANIFEST = {"train": 7473, "test": 1319}
MAX_NUMBER_CHARS = 64
MAX_ANSWER_TEXT = 200  # an answer span longer than this is not one number

_ONE_NUMBER = re.compile(
    r"(?:[a-zA-Z]\s*=\s*)?"  # x = 18
    r"(?P<sign>[-+\u2212]?)\s*(?:\\?\$\s*)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"\s*(?P<unit>\\?%|\\(?:text|mathrm|mbox|textbf)\s*\{[^{}\d]*\}|[a-zA-Z]+(?:[ /][a-zA-Z]+)*)?"
    r"\s*\.?"
)
_TEXT_WRAP = re.compile(r"\\(?:text|mathrm|mbox|textbf)\s*\{([^{}]*)\}")
_JOINERS = re.compile(r"\b(?:or|and|to|plus|minus|times|over|divided|not)\b", re.IGNORECASE)
_AFTER_MARKER = re.compile(r"[ \t]*([^\s]*\d[^\s]*?)[.,;:!?]?(?=\s|$)")
_NUMBER_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?|\.\d+")
_ALTERNATIVE_BEFORE = re.compile(
    r"\d\s*(?:,|or|and|\\text\s*\{\s*(?:or|and)\s*\})\s*[-\u2212]?\\?\$?$", re.IGNORECASE
)
_THIN_SEPARATOR = re.compile(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3}(?!\d))")  # 1{,}000, 1\,000
_GLUE_LEFT = set("/:^_.\\")
_GLUE_RIGHT = set("/:^_")


def gold_from_solution(solution: str) -> str:
    """The text after the final `#### `, without thousands commas (`1,000` -> `1000`)."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def to_number(text: str) -> Fraction | None:
    """`text` as ONE number (exact Fraction), or None when it is anything else.

    Allowed around the number: a sign, a currency `$`/`\\$`, thousands separators (`1,000`,
    `1{,}000`, `1\\,000`), `$...$` or `\\text{...}` around it, `x =` in front, a trailing
    unit (`18 dollars`, `18\\%`, `18 \\text{ cm}`) and a final period. Anything else (`1e18`,
    `2^{18}`, `\\frac{1}{18}`, `1,8`, `17 \\text{ or } 18`, `1/24`, `3:1`) is not one number.
    """
    if len(text) > MAX_ANSWER_TEXT:
        return None
    s = _unwrap(text)
    m = _ONE_NUMBER.fullmatch(s)
    if m is None or len(m.group("num")) > MAX_NUMBER_CHARS:
        return None
    unit = m.group("unit") or ""
    if _JOINERS.search(_TEXT_WRAP.sub(r" \1 ", unit)):
        return None
    value = Fraction(m.group("num").replace(",", ""))
    return -value if m.group("sign") in ("-", "\u2212") else value


def _unwrap(text: str) -> str:
    """Drop what wraps a number without changing it: spacing commands, `$...$`, `\\(...\\)`,
    bold markers, one `\\text{...}` around everything."""
    s = _THIN_SEPARATOR.sub(",", text.strip()).replace("\\,", " ").replace("\\!", "")
    s = s.replace("\\ ", " ").replace("**", "").strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]"), ("$", "$")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            inner = s[len(left) : len(s) - len(right)]
            if "$" not in inner:
                s = inner.strip()
    m = _TEXT_WRAP.fullmatch(s)
    return m.group(1).strip() if m else s


def final_answer_span(response: str) -> Span | None:
    """Where the final answer is: the last `\\boxed{}`, else the text after the last `####`
    (the GSM8K solution format; later sentences do not count), else the last number.

    A number glued to other symbols (`1/24`, `3:1`, `2^{18}`, `1e18`, `\\write18`) is taken
    with them, so that it does not read as a plain number. Only the last
    `MAX_SCAN_CHARS` characters are searched.
    """
    box = last_boxed_span(response)
    if box is not None:
        return box
    start = scan_start(response)
    marker = response.rfind("####", start)
    if marker >= 0:
        m = _AFTER_MARKER.match(response, marker + 4)
        if m and m.group(1):
            return _glued(response, m.start(1), m.end(1))
        return None
    last = last_match(_NUMBER_TOKEN, response, start)
    if last is None:
        return None
    a, b = last.span()
    while b > a and response[b - 1] in ",.":  # "... 18, and" / "18." -> "18"
        b -= 1
    if a > 0 and response[a - 1] in "-\u2212" and (a == 1 or not response[a - 2].isalnum()):
        a -= 1  # a sign, not a minus between two operands
    alternative = _ALTERNATIVE_BEFORE.search(response, max(0, a - 40), a)
    if alternative is not None:  # "17 or 18", "17, 18": two answers, not one
        a = alternative.start()
    return _glued(response, a, b)


def _glued(text: str, start: int, end: int) -> Span:
    """Widen the number `text[start:end]` over operators it is glued to (no space between),
    by at most `MAX_ANSWER_TEXT` characters on each side (longer is not one number anyway)."""
    low, high = max(0, start - MAX_ANSWER_TEXT), min(len(text), end + MAX_ANSWER_TEXT)
    while start > low and (
        text[start - 1] in _GLUE_LEFT
        or text[start - 1].isalnum()
        or (text[start - 1] == "{" and start > low + 1 and text[start - 2] in "^_}")
    ):
        start -= 1
    while end < high and (
        text[end] in _GLUE_RIGHT
        or (text[end] in "eE" and end + 1 < high and text[end + 1] in "0123456789+-")
    ):
        end += 1
        while end < high and (text[end].isalnum() or text[end] in "{}.,"):
            end += 1
    return (start, end)


class GSM8KTask:
    """GSM8K with `train` / `validation` (carved from train) / `test` splits.

    Options: `data_root`, `prompt_style` (as for math), `val_size` (500), `val_seed` (0).
    """

    name = "gsm8k"

    def __init__(
        self,
        data_root: str | Path | None = None,
        prompt_style: str = "qwen25-math-cot",
        val_size: int = 500,
        val_seed: int = 0,
    ):
        math_messages("", prompt_style)  # validate early
        self.root = resolve_root(data_root)
        self.prompt_style = prompt_style
        self.holdout = {"validation": val_size}
        self.val_seed = val_seed
        self.splits = ("train", "validation", "test")
        self.files, self.manifest = dict(FILES), dict(MANIFEST)

    def load(self, split: str = "test") -> list[Sample]:
        """Samples with `id`, `question`, `answer` (the `####` number) and `solution`."""
        sources = {s: (lambda s=s: self._read(s)) for s in FILES}
        return select_split(self.name, split, sources, self.holdout, self.val_seed)

    def _read(self, split: str) -> list[Sample]:
        records = read_records(data_file(self.root, FILES[split]))
        return [self._sample(records, i, split) for i in range(len(records.rows))]

    def _sample(self, records: Records, i: int, split: str) -> Sample:
        """One checked row: `question` and `answer` (worked solution ending `#### N`) are
        non-empty strings and N is one number, else DataError `FILE:LINE: field ...`."""
        question = check_field(records, i, "question", "text")
        solution = check_field(records, i, "answer", "text")
        if "####" not in solution:
            raise row_error(records, i, "answer", "no '####' final-answer marker")
        gold = gold_from_solution(solution)
        if to_number(gold) is None:
            raise row_error(records, i, "answer", f"final answer {gold[:40]!r} is not a number")
        return {"id": f"{split}-{i}", "question": question, "answer": gold, "solution": solution}

    def prompt(self, sample: Sample) -> Messages:
        """Qwen2.5-Math chat messages (same prompt as the math family)."""
        return math_messages(sample["question"], self.prompt_style)

    def assistant_prefix(self, sample: Sample) -> str:
        """No pre-filled assistant text."""
        return ""

    def answer_span(self, response: str) -> Span | None:
        """The last `\\boxed{...}`, else the number after the last `####`, else the last
        number of the response (`final_answer_span`)."""
        return final_answer_span(response)

    def grade(self, response: str, sample: Sample) -> dict[str, Any]:
        """`{extracted, correct, reward}`: the extracted span is one number equal to the gold
        (reward 1.0 when correct, else 0.0)."""
        span = self.answer_span(response)
        extracted = response[span[0] : span[1]] if span else None
        value = to_number(extracted) if extracted else None
        gold = to_number(sample["answer"])
        correct = value is not None and value == gold
        return {"extracted": extracted, "correct": correct, "reward": float(correct)}

    def verify(self, response: str, sample: Sample) -> bool:
        """Is the final number right?"""
        return self.grade(response, sample)["correct"]

    def reward(self, response: str, sample: Sample) -> float:
        """1.0 when `verify` holds, else 0.0."""
        return float(self.verify(response, sample))
