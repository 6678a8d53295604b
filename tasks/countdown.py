"""Countdown (TinyZero): combine the given numbers with + - * / to reach the target.

Prompt: TinyZero's `qwen-instruct` template as chat messages, with the assistant turn
pre-filled with "Let me solve this step by step.\\n<think>". The answer is the content of the
last `<answer>...</answer>`. Reward (TinyZero's `compute_score`): 0 without an answer tag,
1.0 when the expression uses each given number exactly once and equals the target, else
the format score 0.1 (wrong numbers, wrong value, division by zero, unparsable).

Expressions are never `eval`-ed: a character whitelist, then Python's `ast` parser, then a
walk that accepts only integer literals, `+ - * /` and parentheses (unary minus only with
`allow_unary_minus=True`), evaluated exactly with `fractions.Fraction`.

Data, `source="files"` (default): `train` = UFT's parquet (the first 10,240 rows of TinyZero's
train split; the prompt is rebuilt from `nums`/`target`), `test` = TinyZero's 1,024-row test
parquet, `validation` carved from train. `source="generated"`: no files at all; every split is
a seeded stream of the generator below (`generate_problems`), and the streams are disjoint.

The generator follows the one that made TinyZero's data (`Jiayi-Pan/Countdown-Tasks-3to4`,
built with the Stream-of-Search `CountDown.generate`): the target uniform in 10..100, then 3 or
4 numbers uniform in 1..99, redrawn until a search over integer steps (`a + b`, `a * b`,
`|a - b|`, exact division) reaches the target, so every problem is solvable by construction
and carries its `solution`. The rejection makes small numbers more frequent, as in the data
(measured on 2,000 problems against the 10,240 UFT rows: mean number 44.7 vs 45.1, repeated
numbers 5.0% vs 4.7%, target among the numbers 3.7% vs 3.7%).
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from ftcli.tasks.base import Messages, Sample, Span, select_split, strip_span
from ftcli.tasks.loading import (
    Records,
    check_field,
    data_file,
    describe_files,
    read_records,
    resolve_root,
    row_error,
)

HUB_ID = "Jiayi-Pan/Countdown-Tasks-3to4"  # the source for users with a hub
FILES = {
    "train": "countdown/uft_train/train.parquet",
    "test": "countdown/tinyzero_test/test.parquet",
}
MANIFEST = {"train": 10240, "test": 1024}

SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind "
    "and then provides the user with the answer."
)
INSTRUCTIONS = (
    "You can use basic arithmetic operations (+, -, *, /) and each number can only be used "
    "once. Show your work in <think> </think> tags. And return the final answer in "
    "<answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
ASSISTANT_PREFIX = "Let me solve this step by step.\n<think>"
FORMAT_SCORE = 0.1
MAX_EXPRESSION_CHARS = 200
_ALLOWED_CHARS = re.compile(r"[\d+\-*/().\s]*")


def question_text(numbers: list[int], target: int) -> str:
    """The problem statement (the flow's question region)."""
    return f"Using the numbers {list(numbers)}, create an equation that equals {target}."


def make_sample(numbers: list[int], target: int, sample_id: str, **extra: Any) -> Sample:
    """A Countdown sample: gold `answer` is the target (any correct expression scores)."""
    nums = [int(n) for n in numbers]
    return {
        "id": sample_id,
        "question": question_text(nums, int(target)),
        "answer": str(int(target)),
        "numbers": nums,
        "target": int(target),
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# Safe expression evaluation
# ---------------------------------------------------------------------------------------------
class ExpressionError(ValueError):
    """An answer that is not a whitelisted arithmetic expression."""


_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,  # Fraction / Fraction; ZeroDivisionError on 0
}


def parse_expression(text: str, allow_unary_minus: bool = False) -> ast.expr:
    """AST of a whitelisted expression (ints, + - * /, parentheses) or ExpressionError."""
    text = text.strip()
    if not text or len(text) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(text):
        raise ExpressionError("not an arithmetic expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ExpressionError(f"unparsable: {type(e).__name__}") from None
    _check(tree.body, allow_unary_minus)
    return tree.body


def _check(node: ast.AST, allow_unary_minus: bool) -> None:
    """Raise ExpressionError on any node outside the whitelist."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        _check(node.left, allow_unary_minus)
        _check(node.right, allow_unary_minus)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and allow_unary_minus:
        _check(node.operand, allow_unary_minus)
    elif not (isinstance(node, ast.Constant) and type(node.value) is int):
        raise ExpressionError(f"{type(node).__name__} is not allowed")


def evaluate(node: ast.expr) -> Fraction:
    """Exact value of a checked expression (ZeroDivisionError on division by zero)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -evaluate(node.operand)
    return _BINOPS[type(node.op)](evaluate(node.left), evaluate(node.right))


def literals(node: ast.expr) -> list[int]:
    """The integer literals of a checked expression, in order."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def score_expression(
    expression: str | None, numbers: list[int], target: int, allow_unary_minus: bool = False
) -> tuple[float, str]:
    """(reward, reason) for an extracted answer expression (None: no answer tag)."""
    if expression is None:
        return 0.0, "no_answer"
    try:
        tree = parse_expression(expression, allow_unary_minus)
    except ExpressionError:
        return FORMAT_SCORE, "bad_expression"
    if sorted(literals(tree)) != sorted(numbers):
        return FORMAT_SCORE, "wrong_numbers"
    try:
        value = evaluate(tree)
    except ZeroDivisionError:
        return FORMAT_SCORE, "division_by_zero"
    return (1.0, "correct") if value == target else (FORMAT_SCORE, "wrong_value")


def answer_tag_span(response: str) -> Span | None:
    """Content span of the last `<answer>...</answer>` (linear time, whitespace trimmed)."""
    close = response.rfind("</answer>")
    if close < 0:
        return None
    open_ = response.rfind("<answer>", 0, close)
    if open_ < 0:
        return None
    start = open_ + len("<answer>")
    return strip_span(response, (start, close)) or (start, start)


# ---------------------------------------------------------------------------------------------
# Solver and generator
# ---------------------------------------------------------------------------------------------
def solve(numbers: list[int], target: int) -> str | None:
    """An expression using every number once that equals `target`, or None (exact search)."""
    goal = Fraction(target)
    expr = reachable(numbers, stop_at=goal).get(goal)
    return _strip_outer(expr) if expr is not None else None


def reachable(numbers: list[int], stop_at: Fraction | None = None) -> dict[Fraction, str]:
    """Every value of an expression using each number exactly once, with one expression each.

    Exact search over all binary expression trees: for every subset of the numbers (bitmask,
    smallest first) the table holds each reachable value, built from the values of the
    subset's two halves. With `stop_at`, returns as soon as that value is reached.
    Expressions of combined values keep their outer parentheses (see `_strip_outer`).
    """
    full = (1 << len(numbers)) - 1
    table: dict[int, dict[Fraction, str]] = {
        1 << i: {Fraction(n): str(n)} for i, n in enumerate(numbers)
    }
    for mask in sorted(range(1, full + 1), key=lambda m: bin(m).count("1")):
        if mask in table:
            continue
        values: dict[Fraction, str] = {}
        for value, expr in _split_values(table, mask):
            if mask == full and value == stop_at:
                return {value: expr}
            values.setdefault(value, expr)
        table[mask] = values
    return table.get(full, {})


def _split_values(table: dict[int, dict[Fraction, str]], mask: int):
    """Every (value, expression) made by combining the two halves of each split of `mask`."""
    sub = (mask - 1) & mask
    while sub:
        other = mask ^ sub
        if sub < other:  # each unordered split once
            for a, ea in table[sub].items():
                for b, eb in table[other].items():
                    yield from _combine(a, ea, b, eb)
        sub = (sub - 1) & mask


def _combine(a: Fraction, ea: str, b: Fraction, eb: str):
    """Every value reachable from a and b with one operation (with its expression)."""
    yield a + b, f"({ea} + {eb})"
    yield a * b, f"({ea} * {eb})"
    yield a - b, f"({ea} - {eb})"
    yield b - a, f"({eb} - {ea})"
    if b != 0:
        yield a / b, f"({ea} / {eb})"
    if a != 0:
        yield b / a, f"({eb} / {ea})"


def _strip_outer(expr: str) -> str:
    return expr[1:-1] if expr.startswith("(") and expr.endswith(")") else expr


GENERATOR = "countdown-sos-v1"  # recorded in a run's config.json with the seed
TARGET_RANGE = (10, 100)
NUMBER_RANGE = (1, 99)
STREAMS = ("train", "validation", "test")


def integer_solution(numbers: list[int], target: int) -> str | None:
    """An expression reaching `target` through integer steps, or None (Stream-of-Search's
    search: pick two numbers, replace them by `a + b`, `a * b`, `|a - b|` or an exact quotient,
    until one number is left)."""
    return _integer_search([(n, str(n)) for n in numbers], target)


def _integer_search(items: list[tuple[int, str]], target: int) -> str | None:
    if len(items) == 1:
        return _strip_outer(items[0][1]) if items[0][0] == target else None
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = items[:i] + items[i + 1 : j] + items[j + 1 :]
            for item in _integer_steps(items[i], items[j]):
                found = _integer_search([*rest, item], target)
                if found is not None:
                    return found
    return None


def _integer_steps(x: tuple[int, str], y: tuple[int, str]):
    """Every (value, expression) of one integer step on x and y (the larger one first)."""
    (a, ea), (b, eb) = (x, y) if x[0] >= y[0] else (y, x)
    yield a + b, f"({ea} + {eb})"
    yield a * b, f"({ea} * {eb})"
    yield a - b, f"({ea} - {eb})"
    if b and a % b == 0:
        yield a // b, f"({ea} / {eb})"


def stream_of(numbers: list[int], target: int) -> str:
    """The split a problem belongs to (`train` / `validation` / `test`): a hash of the
    numbers (as a multiset) and the target, so generated splits never share a problem."""
    key = f"{sorted(int(n) for n in numbers)}|{int(target)}".encode()
    return STREAMS[int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 3]


def generate_problems(
    n: int,
    seed: int = 0,
    num_numbers: tuple[int, ...] = (3, 4),
    split: str | None = None,
) -> list[Sample]:
    """`n` new problems, each solvable by construction (see the module docstring).

    Deterministic for a given (seed, split); with `split`, only problems of that stream
    (`stream_of`), so the streams of different splits are disjoint. Each sample carries the
    search's `solution`.
    """
    stream = ProblemStream(seed, num_numbers, split)
    return [stream.next() for _ in range(n)]


class ProblemStream:
    """The seeded sequence of generated problems of one split (or of all, `split=None`)."""

    def __init__(self, seed: int, num_numbers: tuple[int, ...] = (3, 4), split: str | None = None):
        if split is not None and split not in STREAMS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(STREAMS)}")
        if not num_numbers or any(k < 2 for k in num_numbers):
            raise ValueError(f"num_numbers must be counts >= 2, got {num_numbers!r}")
        self.seed, self.split, self.num_numbers = seed, split, tuple(num_numbers)
        self.rng = random.Random(f"{GENERATOR}/{split or 'all'}/{seed}")
        self.count = 0

    def next(self) -> Sample:
        """The next problem of the stream."""
        rng = self.rng
        target = rng.randint(*TARGET_RANGE)
        k = rng.choice(self.num_numbers)
        while True:
            numbers = [rng.randint(*NUMBER_RANGE) for _ in range(k)]
            if self.split is not None and stream_of(numbers, target) != self.split:
                continue
            solution = integer_solution(numbers, target)
            if solution is not None:
                break
        prefix = f"gen{self.seed}-{self.split}" if self.split else f"gen-{self.seed}"
        sample = make_sample(numbers, target, f"{prefix}-{self.count}", solution=solution)
        self.count += 1
        return sample


class GeneratedSplit(Sequence):
    """`size` problems of a `ProblemStream`, generated on first access in order (so
    `split[:32]` costs 32 problems, not `size`)."""

    def __init__(self, stream: ProblemStream, size: int):
        self.stream, self.size, self.items = stream, int(size), []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(index)
        while len(self.items) <= index:
            self.items.append(self.stream.next())
        return self.items[index]


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------
SOURCES = ("files", "generated")


class CountdownTask:
    """Countdown with `train` / `validation` / `test` splits.

    Options: `source` (`files`: TinyZero's problems from the data root; `generated`: the
    seeded generator, no files), `seed` (generator seed, 0), `train_size` / `test_size`
    (generated split sizes, 10240 / 1024), `data_root`, `num_numbers` (keep only problems
    with these many numbers, e.g. `(4,)` as in the FlowTracer paper), `allow_unary_minus`
    (False), `val_size` (500), `val_seed` (0, the files' validation carving).
    `data_source()` says which source a run used (for its config.json).
    """

    name = "countdown"

    def __init__(
        self,
        data_root: str | Path | None = None,
        num_numbers: tuple[int, ...] = (3, 4),
        allow_unary_minus: bool = False,
        val_size: int = 500,
        val_seed: int = 0,
        source: str = "files",
        seed: int = 0,
        train_size: int = 10240,
        test_size: int = 1024,
    ):
        if source not in SOURCES:
            raise ValueError(f"unknown countdown source {source!r}; known: {', '.join(SOURCES)}")
        self.source, self.seed = source, int(seed)
        self.root = resolve_root(data_root)
        self.num_numbers = tuple(num_numbers)
        self.allow_unary_minus = allow_unary_minus
        self.holdout = {"validation": val_size}
        self.val_seed = val_seed
        self.splits = ("train", "validation", "test")
        if source == "generated":
            self.files, self.manifest = {}, {}
            self.sizes = {"train": train_size, "validation": val_size, "test": test_size}
            self._generated = {
                s: GeneratedSplit(ProblemStream(self.seed, self.num_numbers, s), n)
                for s, n in self.sizes.items()
            }
        else:
            self.files, self.manifest = dict(FILES), dict(MANIFEST)

    def load(self, split: str = "test") -> list[Sample]:
        """Samples with `id`, `question`, `answer` (the target), `numbers`, `target`.

        Generated splits are a lazy sequence: slicing generates only what is taken.
        """
        if self.source == "generated":
            if split not in self._generated:
                raise ValueError(f"task 'countdown' has no {split!r} split (available: "
                                 f"{', '.join(self.splits)})")
            return self._generated[split]
        sources = {s: (lambda s=s: self._read(s)) for s in FILES}
        return select_split(self.name, split, sources, self.holdout, self.val_seed)

    def data_source(self) -> dict[str, Any]:
        """Which problems this task serves: the generator and its seed, or the files and
        their sha256 (what a run's config.json records)."""
        if self.source == "generated":
            return {
                "source": "generated",
                "generator": GENERATOR,
                "seed": self.seed,
                "num_numbers": list(self.num_numbers),
                "sizes": dict(self.sizes),
            }
        return {**describe_files(self.root, self.files), "num_numbers": list(self.num_numbers)}

    def _read(self, split: str) -> list[Sample]:
        records = read_records(data_file(self.root, FILES[split]))
        samples = []
        for i in range(len(records.rows)):
            sample = _file_sample(records, i, split)
            if len(sample["numbers"]) in self.num_numbers:
                samples.append(sample)
        return samples

    def generate(self, n: int, seed: int = 0) -> list[Sample]:
        """Fresh solvable problems with this task's `num_numbers`."""
        return generate_problems(n, seed, num_numbers=self.num_numbers)

    def prompt(self, sample: Sample) -> Messages:
        """TinyZero's qwen-instruct template as chat messages."""
        user = f"{sample['question']} {INSTRUCTIONS}"
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]

    def assistant_prefix(self, sample: Sample) -> str:
        """TinyZero pre-fills the assistant turn."""
        return ASSISTANT_PREFIX

    def answer_span(self, response: str) -> Span | None:
        """Content of the last `<answer>...</answer>`."""
        return answer_tag_span(response)

    def grade(self, response: str, sample: Sample) -> dict[str, Any]:
        """`{extracted, correct, reward, reason}`."""
        span = self.answer_span(response)
        if span is None:  # no answer tag: nothing to check against the sample
            return {"extracted": None, "correct": False, "reward": 0.0, "reason": "no_answer"}
        extracted = response[span[0] : span[1]]
        reward, reason = score_expression(
            extracted, sample["numbers"], sample["target"], self.allow_unary_minus
        )
        return {
            "extracted": extracted,
            "correct": reward == 1.0,
            "reward": reward,
            "reason": reason,
        }

    def verify(self, response: str, sample: Sample) -> bool:
        """Each number used once and the value equals the target."""
        return self.grade(response, sample)["correct"]

    def reward(self, response: str, sample: Sample) -> float:
        """TinyZero reward: 1.0 / 0.1 / 0."""
        return self.grade(response, sample)["reward"]


def _file_sample(records: Records, i: int, split: str) -> Sample:
    """One checked parquet row: `nums` (at least 2 integers), `target` (an integer) and an
    optional `extra_info.index` (an integer); else DataError `FILE:row N: field ...`."""
    numbers = check_field(records, i, "nums", "int_list")
    if len(numbers) < 2:
        raise row_error(records, i, "nums", f"{numbers!r} has fewer than 2 numbers")
    target = check_field(records, i, "target", "int")
    info = records.rows[i].get("extra_info") or {}
    index = info.get("index", i) if isinstance(info, dict) else i
    if not isinstance(index, int) or isinstance(index, bool):
        raise row_error(records, i, "extra_info.index", f"{index!r} is not an integer")
    return make_sample(numbers, target, f"{split}-{index}")
