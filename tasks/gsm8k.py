"""GSM8K: grade-school word problems with integer answers (OpenAI release).

The gold is the text after the final `#### ` of the worked solution (thousands commas
removed). The model is prompted like the math family (Qwen2.5-Math CoT prompt); its answer
is the last `\\boxed{...}` if there is one, else the last number of the response, and it is
compared with the gold as an exact rational number (no parser, no sandbox needed).
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from ftcli.tasks.base import Messages, Sample, Span, last_boxed_span, last_number_span, select_split
from ftcli.tasks.loading import data_file, read_records, resolve_root
from ftcli.tasks.math import math_messages

HUB_ID = "openai/gsm8k"  # config "main"; the source for users with a hub
FILES = {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
MANIFEST = {"train": 7473, "test": 1319}
MAX_NUMBER_CHARS = 64

_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")


def gold_from_solution(solution: str) -> str:
    """The text after the final `#### `, without thousands commas (`1,000` -> `1000`)."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def to_number(text: str) -> Fraction | None:
    """The last number in `text` as an exact Fraction (commas, `$`, units ignored)."""
    span = last_number_span(text)
    if span is None:
        return None
    digits = text[span[0] : span[1]].replace(",", "")
    if len(digits) > MAX_NUMBER_CHARS or not _PLAIN_NUMBER.fullmatch(digits):
        return None
    return Fraction(digits)


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
        rows = read_records(data_file(self.root, FILES[split])).rows
        return [
            {
                "id": f"{split}-{i}",
                "question": row["question"],
                "answer": gold_from_solution(row["answer"]),
                "solution": row["answer"],
            }
            for i, row in enumerate(rows)
        ]

    def prompt(self, sample: Sample) -> Messages:
        """Qwen2.5-Math chat messages (same prompt as the math family)."""
        return math_messages(sample["question"], self.prompt_style)

    def assistant_prefix(self, sample: Sample) -> str:
        """No pre-filled assistant text."""
        return ""

    def answer_span(self, response: str) -> Span | None:
        """The last `\\boxed{...}` content, else the last number of the response."""
        return last_boxed_span(response) or last_number_span(response)

    def grade(self, response: str, sample: Sample) -> dict[str, Any]:
        """`{extracted, correct}`: the extracted number equals the gold exactly."""
        span = self.answer_span(response)
        extracted = response[span[0] : span[1]] if span else None
        value = to_number(extracted) if extracted else None
        gold = to_number(sample["answer"])
        return {"extracted": extracted, "correct": value is not None and value == gold}

    def verify(self, response: str, sample: Sample) -> bool:
        """Is the final number right?"""
        return self.grade(response, sample)["correct"]

    def reward(self, response: str, sample: Sample) -> float:
        """1.0 when `verify` holds, else 0.0."""
        return float(self.verify(response, sample))
