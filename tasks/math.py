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
    last_match,
    select_split,
    strip_span,
)
from ftcli.tasks.loading import (
    Records,
    check_field,
    data_file,
    read_records,
    resolve_root,
    row_error,
)

from ftcli.spans import scan_start

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


EXTRACTIONS = ("boxed", "boxed-or-last-math")
MAX_FALLBACK_CHARS = 300  # a fallback answer (after "answer is", inline math) is short
_ANSWER_IS = re.compile(r"answer is\s*:?\s*", re.IGNORECASE)
_N = MAX_FALLBACK_CHARS
_INLINE_MATH = re.compile(
    rf"\$\$([^$]{{1,{_N}}})\$\$|\$([^$]{{1,{_N}}})\$|\\\((.{{1,{_N}}}?)\\\)|\\\[(.{{1,{_N}}}?)\\\]",
    re.DOTALL,
)
_SENTENCE = re.compile(rf"[^\n]{{1,{_N}}}?(?=\.\s|\.?$|\n)")


def last_math_span(response: str) -> Span | None:
    """The answer of a response without a box (math-verify's and the Qwen2.5-Math grader's
    fallback): after the last "answer is", its inline math (`The answer is $x = 2$.`) or the
    rest of the sentence; else the last inline math (`$...$`, `$$...$$`, `\\(...\\)`,
    `\\[...\\]`). Only the last `MAX_SCAN_CHARS` characters are searched."""
    start = scan_start(response)
    said = last_match(_ANSWER_IS, response, start)
    if said is not None:
        math = _INLINE_MATH.match(response, said.end())
        if math is not None:
            return strip_span(response, math.span(math.lastindex or 0))
        sentence = _SENTENCE.match(response, said.end())
        if sentence is not None:
            return strip_span(response, sentence.span())
    math = last_match(_INLINE_MATH, response, start)
    return strip_span(response, math.span(math.lastindex or 0)) if math else None


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
    gold_field: str = "answer"  # the row field the gold comes from, checked as `gold_kind`
    gold_kind: str = "scalar"  # a kind of `loading.KINDS`
    allow_missing_gold: bool = False  # rows without a gold are skipped (else a DataError)


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
        allow_missing_gold=True,  # 2 empty answers and 2 `$$`-only ones in MATH train
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
        gold_field="final_answer",
        gold_kind="answers",
        extra_fields=("answer_type", "unit", "is_multiple_answer"),
    ),
    "minerva": _benchmark(
        "minerva",
        "minerva_math/test.jsonl",
        272,
        "math-ai/minervamath",
        gold=gold_from_solution,
        gold_field="solution",
        gold_kind="text",
        id_field="idx",
        extra_fields=("type",),
    ),
}


class MathTask:
    """A math benchmark: boxed-answer prompt, last-`\\boxed{}` answer span, sandboxed graders.

    Options: `data_root`, `prompt_style` (`qwen25-math-cot` | `qwen-boxed`), `grader` (the
    verdict of `verify`/`reward`: `math_verify`, `sympy` or `any`), `grade_timeout` (CPU
    seconds per grader call), `extraction` (`boxed`, the paper's protocol and the default,
    or `boxed-or-last-math`: without a box, the math after the last "answer is", else the
    last inline math, as math-verify and the Qwen2.5-Math grader do), `val_size` /
    `val_seed` (validation carved from train).
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
        extraction: str = "boxed",
    ):
        if grader not in (*grading.GRADERS, "any"):
            raise ValueError(f"unknown grader {grader!r}; known: math_verify, sympy, any")
        if extraction not in EXTRACTIONS:
            raise ValueError(f"unknown extraction {extraction!r}; known: {', '.join(EXTRACTIONS)}")
        self.extraction = extraction
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
        for i in range(len(records.rows)):
            sample = self._sample(records, i, split)
            if sample is None:
                missing.append(i)
            else:
                samples.append(sample)
        if missing:
            log.info("%s: %d record(s) without a gold answer skipped", relpath, len(missing))
        return samples

    def _sample(self, records: Records, index: int, split: str) -> Sample | None:
        """One checked row (DataError `FILE:LINE: field ...` on a missing, null, empty or
        mistyped question, gold or id); None for a row without a gold where the source
        allows that."""
        src, row = self.source, records.rows[index]
        question = check_field(records, index, src.question_field, "text")
        if src.allow_missing_gold and row.get(src.gold_field) in (None, "", []):
            return None
        check_field(records, index, src.gold_field, src.gold_kind)
        gold = src.gold(row)
        if gold is None:
            if src.allow_missing_gold:
                return None
            raise row_error(records, index, src.gold_field, "holds no gold answer")
        raw_id = row.get(src.id_field) if src.id_field else None
        if raw_id is not None:
            check_field(records, index, src.id_field, "id")
        sample = {
            "id": str(raw_id) if raw_id is not None else f"{split}-{index}",
            "question": src.fix_text(question),
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
        """Content of the last brace-matched `\\boxed{...}`; without one, the fallback of
        `extraction="boxed-or-last-math"` (`last_math_span`)."""
        span = last_boxed_span(response)
        if span is None and self.extraction == "boxed-or-last-math":
            span = last_math_span(response)
        return span

    def grade(self, response: str, sample: Sample) -> dict[str, Any]:
        """Both graders' verdicts: `{extracted, math_verify, sympy, correct, reward, timeouts}`
        (`correct`: the configured grader's verdict, as `verify`; `reward`: 1.0 when correct;
        `timeouts`: `{grader: "cpu" | "wall"}` of the graders that ran out of time)."""
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
        timeouts: dict[str, str] = {}
        if span is None:
            verdicts = {g: False for g in graders}
            extracted = None
        else:
            extracted = response[span[0] : span[1]]
            detail = grading.grade_answer_detailed(
                extracted, sample["answer"], graders, timeout=self.grade_timeout
            )
            verdicts, timeouts = detail["verdicts"], detail["timeouts"]
        if self.grader == "any":
            correct = any(verdicts.values())
        else:
            correct = verdicts.get(self.grader, False)
        return {"extracted": extracted, **verdicts, "correct": correct, "reward": float(correct), "timeouts": timeouts}
