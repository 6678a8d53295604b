"""Countdown (TinyZero): combine the given numbers with + - * / to reach the target.

Prompt: TinyZero's `qwen-instruct` template as chat messages, with the assistant turn
pre-filled with "Let me solve this step by step.\\n<think>". The answer is the content of the
last `<answer>...</answer>`. Reward (TinyZero's `compute_score`): 0 without an answer tag,
1.0 when the expression uses each given number exactly once and equals the target, else
the format score 0.1 (wrong numbers, wrong value, division by zero, unparsable).

Expressions are never `eval`-ed: a character whitelist, then Python's `ast` parser, then a
walk that accepts only integer literals, `+ - * /` and parentheses (unary minus only with
`allow_unary_minus=True`), evaluated exactly with `fractions.Fraction`.

Data: `train` = the shared UFT parquet (first 10,240 rows of TinyZero's train split; the prompt
is rebuilt from `nums`/`target`), `test` = TinyZero's 1,024-row test parquet, `validation`
carved from train. `generate_problems` makes new seeded problems that `solve` proves solvable.
"""

from __future__ import annotations

import ast
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from ftcli.tasks.base import Messages, Sample, Span, select_split, strip_span
from ftcli.tasks.loading import data_file, read_records, resolve_root

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


def generate_problems(
    n: int,
    seed: int = 0,
    num_numbers: tuple[int, ...] = (3, 4),
    number_range: tuple[int, int] = (1, 99),
    target_range: tuple[int, int] = (10, 100),
) -> list[Sample]:
    """`n` new problems (same ranges as TinyZero's data), each solvable by construction.

    Numbers are drawn uniformly; the target is drawn uniformly from the in-range integers the
    exact search (`reachable`) proves reachable, so no draw is wasted. Deterministic for a
    given seed; each sample carries the solver's `solution`.
    """
    rng = random.Random(seed)
    lo, hi = target_range
    out: list[Sample] = []
    while len(out) < n:
        numbers = [rng.randint(*number_range) for _ in range(rng.choice(num_numbers))]
        values = reachable(numbers)
        targets = sorted(int(v) for v in values if v.denominator == 1 and lo <= v <= hi)
        if not targets:
            continue
        target = rng.choice(targets)
        solution = _strip_outer(values[Fraction(target)])
        out.append(make_sample(numbers, target, f"gen-{seed}-{len(out)}", solution=solution))
    return out


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------
class CountdownTask:
    """Countdown with `train` / `validation` / `test` splits.

    Options: `data_root`, `num_numbers` (keep only problems with these many numbers, e.g.
    `(4,)` as in the FlowTracer paper), `allow_unary_minus` (False), `val_size` (500),
    `val_seed` (0).
    """

    name = "countdown"

    def __init__(
        self,
        data_root: str | Path | None = None,
        num_numbers: tuple[int, ...] = (3, 4),
        allow_unary_minus: bool = False,
        val_size: int = 500,
        val_seed: int = 0,
    ):
        self.root = resolve_root(data_root)
        self.num_numbers = tuple(num_numbers)
        self.allow_unary_minus = allow_unary_minus
        self.holdout = {"validation": val_size}
        self.val_seed = val_seed
        self.splits = ("train", "validation", "test")
        self.files, self.manifest = dict(FILES), dict(MANIFEST)

    def load(self, split: str = "test") -> list[Sample]:
        """Samples with `id`, `question`, `answer` (the target), `numbers`, `target`."""
        sources = {s: (lambda s=s: self._read(s)) for s in FILES}
        return select_split(self.name, split, sources, self.holdout, self.val_seed)

    def _read(self, split: str) -> list[Sample]:
        rows = read_records(data_file(self.root, FILES[split])).rows
        return [
            make_sample(row["nums"], row["target"], f"{split}-{_index(row, i)}")
            for i, row in enumerate(rows)
            if len(row["nums"]) in self.num_numbers
        ]

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


def _index(row: dict, position: int) -> int:
    info = row.get("extra_info") or {}
    return int(info.get("index", position))
