"""The math family: one plugin (`MathTask`), configured per benchmark by a `MathSource`.

Benchmarks: `math` (RL training: MATH train from DeepScaleR), `math500`, `aime24`, `aime25`,
`amc23`, `olympiadbench`, `minerva`. Prompt: the Qwen2.5-Math CoT system message ("Please
reason step by step, and put your final answer within \\boxed{}.") with the question as the
user turn. Verdict: the content of the last brace-matched `\\boxed{...}` of the response,
graded by math-verify (primary) and, in `grade`, also by the independent sympy grader, both
sandboxed with a deadline (tasks/grading.py).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftcli.tasks import grading
from ftcli.tasks.base import (
    Messages,
    Sample,
    Span,
    available_splits,
    last_boxed_span,
    select_split,
)
from ftcli.tasks.loading import data_file, read_records, resolve_root

log = logging.getLogger("ftcli.tasks")

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
PROMPT_STYLES = ("qwen25-math-cot", "qwen-boxed")


def math_messages(question: str, style: str = "qwen25-math-cot") -> Messages:
    """Qwen2.5-Math harness prompts: `qwen25-math-cot` (instruction as system message) or
    `qwen-boxed` (generic system message, instruction appended to the question)."""
    if style == "qwen25-math-cot":
        return [
            {"role": "system", "content": QWEN_MATH_SYSTEM},
            {"role": "user", "content": question},
        ]
    if style == "qwen-boxed":
        return [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"{question}\n{QWEN_MATH_SYSTEM}"},
        ]
    raise ValueError(f"unknown prompt_style {style!r}; known: {', '.join(PROMPT_STYLES)}")


# ---------------------------------------------------------------------------------------------
# Gold answers and text fixes (one small function per benchmark quirk)
# ---------------------------------------------------------------------------------------------
def clean_gold(value: Any) -> str | None:
    """A gold answer as a clean string: `$` delimiters and a final period dropped, `27.0` -> `27`,
    leading zeros of integers dropped (AIME24 `"025"` -> `"25"`); None when empty."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = re.sub(r"(?<!\\)\$", "", str(value)).strip()  # math delimiters, not a currency \$
    if s.endswith(".") and not s.endswith("\\."):
        s = s[:-1].rstrip()
    if s.isdigit():
        s = str(int(s))
    return s or None


def gold_from_field(name: str) -> Callable[[dict], str | None]:
    """Gold = one field of the row."""
    return lambda row: clean_gold(row.get(name))


def gold_from_list(row: dict) -> str | None:
    """OlympiadBench: `final_answer` is a list; several answers are joined with ", "."""
    answers = row.get("final_answer") or []
    if isinstance(answers, str):
        answers = json.loads(answers) if answers.startswith("[") else [answers]
    parts = [p for p in (clean_gold(a) for a in answers) if p]
    return ", ".join(parts) or None


def gold_from_solution(row: dict) -> str | None:
    """Minerva: no answer field; the gold is the last `\\boxed{}` of the solution."""
    solution = row.get("solution") or ""
    span = last_boxed_span(solution)
    return clean_gold(solution[span[0] : span[1]]) if span else None


def fix_broken_escapes(text: str) -> str:
    """AIME25 (AReaL copy): JSON escapes that went wrong - form feed for `\\f` (ids 18, 27:
    `\\frac`) and TAB for `\\t` (id 19: `\\triangle`)."""
    return text.replace("\x0c", "\\f").replace("\t", "\\t")


def _unchanged(text: str) -> str:
    return text


@dataclass(frozen=True)
class MathSource:
    """Where one math benchmark lives and how to read its rows."""

    name: str
    files: dict[str, str]  # split -> path under the data root
    question_field: str
    gold: Callable[[dict], str | None]
    id_field: str | None
    hub_id: str  # the source for users who have a hub (not fetched here)
    manifest: dict[str, int]  # split -> records in the file (MANIFEST.md)
    fix_text: Callable[[str], str] = _unchanged
    extra_fields: tuple[str, ...] = ()
    holdout: dict[str, int] = field(default_factory=dict)  # carved from train


def _benchmark(name: str, path: str, records: int, hub_id: str, **fields: Any) -> MathSource:
    """A test-only benchmark with the common defaults (problem field, answer field, id)."""
    defaults: dict[str, Any] = {
        "question_field": "problem",
        "gold": gold_from_field("answer"),
        "id_field": "id",
    }
    return MathSource(
        name=name,
        files={"test": path},
        manifest={"test": records},
        hub_id=hub_id,
        **{**defaults, **fields},
    )


MATH_SOURCES: dict[str, MathSource] = {
    "math": MathSource(
        name="math",
        files={"train": "math_train/deepscaler/math.json"},
        manifest={"train": 7474},
        hub_id="agentica-org/DeepScaleR-Preview-Dataset (MATH train split)",
        question_field="problem",
        gold=gold_from_field("answer"),
        id_field=None,
        extra_fields=("difficulty", "type"),
        holdout={"validation": 500},
    ),
    "math500": _benchmark(
        "math500",
        "math500/test.jsonl",
        500,
        "HuggingFaceH4/MATH-500",
        id_field="unique_id",
        extra_fields=("subject", "level"),
    ),
    "aime24": _benchmark("aime24", "aime24/test.jsonl", 30, "HuggingFaceH4/aime_2024"),
    "aime25": _benchmark(
        "aime25", "aime25/test.jsonl", 30, "math-ai/aime25", fix_text=fix_broken_escapes
    ),
    "amc23": _benchmark("amc23", "amc23/test.jsonl", 40, "math-ai/amc23"),
    "olympiadbench": _benchmark(
        "olympiadbench",
        "olympiadbench/test.jsonl",
        675,
        "Hothan/OlympiadBench (OE_TO_maths_en_COMP)",
        question_field="question",
        gold=gold_from_list,
        extra_fields=("answer_type", "unit", "is_multiple_answer"),
    ),
    "minerva": _benchmark(
        "minerva",
        "minerva_math/test.jsonl",
        272,
        "math-ai/minervamath",
        gold=gold_from_solution,
        id_field="idx",
        extra_fields=("type",),
    ),
}


class MathTask:
    """A math benchmark: boxed-answer prompt, last-`\\boxed{}` answer span, sandboxed graders.

    Options: `data_root`, `prompt_style` (`qwen25-math-cot` | `qwen-boxed`), `grader` (the
    verdict of `verify`/`reward`: `math_verify`, `sympy` or `any`), `grade_timeout` (seconds
    per grader call), `val_size` / `val_seed` (validation carved from train).
    """

    def __init__(
        self,
        source: MathSource,
        data_root: str | Path | None = None,
        prompt_style: str = "qwen25-math-cot",
        grader: str = "math_verify",
        grade_timeout: float | None = None,
        val_size: int | None = None,
        val_seed: int = 0,
    ):
        if grader not in (*grading.GRADERS, "any"):
            raise ValueError(f"unknown grader {grader!r}; known: math_verify, sympy, any")
        math_messages("", prompt_style)  # validate early
        self.source, self.name = source, source.name
        self.root = resolve_root(data_root)
        self.prompt_style, self.grader, self.grade_timeout = prompt_style, grader, grade_timeout
        self.holdout = dict(source.holdout)
        if val_size is not None and "validation" in self.holdout:
            self.holdout["validation"] = val_size
        self.val_seed = val_seed
        self.splits = available_splits(source.files, self.holdout)
        self.files, self.manifest = dict(source.files), dict(source.manifest)

    def __repr__(self) -> str:
        return f"MathTask({self.name!r}, root={str(self.root)!r})"

    # -- data ----------------------------------------------------------------------------------
    def load(self, split: str = "test") -> list[Sample]:
        """Samples of `split` (`train`/`validation` only for `math`, `test` for benchmarks)."""
        sources = {s: (lambda s=s: self._read(s)) for s in self.source.files}
        return select_split(self.name, split, sources, self.holdout, self.val_seed)

    def _read(self, split: str) -> list[Sample]:
        relpath = self.source.files[split]
        records = read_records(data_file(self.root, relpath))
        samples, missing = [], []
        for i, row in enumerate(records.rows):
            sample = self._sample(row, i, split)
            if sample is None:
                missing.append(i)
            else:
                samples.append(sample)
        if missing:
            log.info("%s: %d record(s) without a gold answer skipped", relpath, len(missing))
        return samples

    def _sample(self, row: dict, index: int, split: str) -> Sample | None:
        gold = self.source.gold(row)
        if gold is None:
            return None
        src = self.source
        raw_id = row.get(src.id_field) if src.id_field else None
        sample = {
            "id": str(raw_id) if raw_id is not None else f"{split}-{index}",
            "question": src.fix_text(str(row[src.question_field])),
            "answer": gold,
        }
        sample.update({k: row.get(k) for k in src.extra_fields})
        return sample

    # -- prompting -----------------------------------------------------------------------------
    def prompt(self, sample: Sample) -> Messages:
        """Qwen2.5-Math chat messages for the sample."""
        return math_messages(sample["question"], self.prompt_style)

    def assistant_prefix(self, sample: Sample) -> str:
        """No pre-filled assistant text for math."""
        return ""

    # -- verdicts ------------------------------------------------------------------------------
    def answer_span(self, response: str) -> Span | None:
        """Content of the last brace-matched `\\boxed{...}`."""
        return last_boxed_span(response)

    def grade(self, response: str, sample: Sample) -> dict[str, Any]:
        """Both graders' verdicts: `{extracted, math_verify, sympy, correct}`."""
        return self._grade(response, sample, grading.GRADERS)

    def verify(self, response: str, sample: Sample) -> bool:
        """The configured grader's verdict (math-verify by default)."""
        graders = grading.GRADERS if self.grader == "any" else (self.grader,)
        return self._grade(response, sample, graders)["correct"]

    def reward(self, response: str, sample: Sample) -> float:
        """1.0 when `verify` holds, else 0.0."""
        return float(self.verify(response, sample))

    def _grade(self, response: str, sample: Sample, graders: tuple[str, ...]) -> dict[str, Any]:
        span = self.answer_span(response)
        if span is None:
            verdicts = {g: False for g in graders}
            extracted = None
        else:
            extracted = response[span[0] : span[1]]
            verdicts = grading.grade_answer(
                extracted, sample["answer"], graders, timeout=self.grade_timeout
            )
        if self.grader == "any":
            correct = any(verdicts.values())
        else:
            correct = verdicts.get(self.grader, False)
        return {"extracted": extracted, **verdicts, "correct": correct}
