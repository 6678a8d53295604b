"""Countdown solver traces: the SFT data of the default policy (see `ftcli.policy`)."""

from __future__ import annotations

import ast
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from ftcli.fetch.models import CHAT_TEMPLATE
from ftcli.generation import render_prompt
from ftcli.policy import IM_END, IM_START, PolicyError
from ftcli.tasks.countdown import ExpressionError, parse_expression, solve


# ---------------------------------------------------------------------------------------------
# Countdown samples: numbers and target
# ---------------------------------------------------------------------------------------------
def numbers_and_target(sample: dict) -> tuple[list[int], int]:
    """(numbers, target) of a Countdown sample, whatever the field names of the plugin."""
    for nk in ("numbers", "nums"):
        if nk in sample:
            nums = [int(x) for x in sample[nk]]
            break
    else:
        gt = (sample.get("reward_model") or {}).get("ground_truth") or {}
        if "numbers" not in gt:
            raise PolicyError(f"sample {sample.get('id')!r} has no numbers")
        nums = [int(x) for x in gt["numbers"]]
    if "target" in sample:
        return nums, int(sample["target"])
    gt = (sample.get("reward_model") or {}).get("ground_truth") or {}
    return nums, int(gt["target"])


# ---------------------------------------------------------------------------------------------
# Expressions as step chains
# ---------------------------------------------------------------------------------------------
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class Node:
    """A binary expression tree over the problem's numbers (a leaf has `op == ""`)."""

    value: Fraction | int
    op: str = ""
    left: Node | None = None
    right: Node | None = None

    @property
    def leaf(self) -> bool:
        return not self.op

    def text(self, top: bool = True) -> str:
        """`(79 - 60) + 17`: every inner operation in parentheses, the outermost bare."""
        if self.leaf:
            return _num(self.value)
        s = f"{self.left.text(False)} {self.op} {self.right.text(False)}"
        return s if top else f"({s})"

    def steps(self) -> list[tuple[Fraction, str, Fraction, Fraction]]:
        """Post-order `(a, op, b, value)` steps: the order a person computes them."""
        if self.leaf:
            return []
        return self.left.steps() + self.right.steps() + [(self.left.value, self.op, self.right.value, self.value)]


def _num(x: Fraction | int) -> str:
    if isinstance(x, int):
        return str(x)
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.4g}"


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b if b != 0 else None
    raise PolicyError(f"unknown operator {op!r}")


def expression_tree(expr: str) -> Node:
    """`"(79 - 60) + 17"` -> Node tree (exact arithmetic), parsed by the task's own bounded
    parser (`tasks.countdown.parse_expression`). Raises PolicyError if not + - * / on integers.

    `+` and `*` put their larger operand first (the canonical form of every trace)."""
    try:
        tree = parse_expression(expr)
    except ExpressionError as e:
        raise PolicyError(f"cannot parse expression {expr!r}: {e}") from None

    def walk(n) -> Node:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return Node(Fraction(n.value))
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            a, b, op = walk(n.left), walk(n.right), _OPS[type(n.op)]
            if op in "+*" and a.value < b.value:  # canonical: larger operand first
                a, b = b, a
            v = _apply(op, a.value, b.value)
            if v is None:
                raise PolicyError(f"division by zero in {expr!r}")
            return Node(v, op, a, b)
        raise PolicyError(f"unsupported expression {expr!r}")

    return walk(tree)


def render_attempt(node: Node, numbers: Sequence[int] | None = None) -> str:
    """One tried combination: `79 - 60 = 19, 19 + 17 = 36`.

    With `numbers` (the problem's, in prompt order), every step but the last is followed by
    the values still to be used, the new one last: `79 - 60 = 19 [17, 19]; 19 + 17 = 36`.
    """
    steps = node.steps()
    if numbers is None:
        return ", ".join(f"{_num(a)} {op} {_num(b)} = {_num(v)}" for a, op, b, v in steps)
    left = [Fraction(x) for x in numbers]
    parts = []
    for n, (a, op, b, v) in enumerate(steps):
        left.remove(Fraction(a))
        left.remove(Fraction(b))
        left.append(Fraction(v))
        part = f"{_num(a)} {op} {_num(b)} = {_num(v)}"
        if n < len(steps) - 1:
            part += " [" + ", ".join(_num(x) for x in left) + "]"
        parts.append(part)
    return "; ".join(parts)


def random_expression(numbers: Sequence[int], rng: random.Random, op_weights=(4, 4, 1, 1)) -> Node:
    """A random valid combination of all numbers: intermediate values are non-negative
    integers (`+ - *` put the larger operand first, `/` only when exact and not by 1)."""
    ops = rng.choices("+-*/", weights=op_weights, k=4 * len(numbers))
    for attempt in range(100):
        items = [Node(int(x)) for x in numbers]
        k = 0
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            a, b = items[i], items[j]
            op = ops[k % len(ops)] if attempt == 0 else rng.choices("+-*/", weights=op_weights)[0]
            k += 1
            if op in "+-*" and a.value < b.value:  # larger operand first (canonical, no negatives)
                a, b = b, a
            elif op == "/":
                if b.value in (0, 1) or a.value % b.value:
                    a, b = b, a
                if b.value in (0, 1) or a.value % b.value:
                    break
            v = {"+": a.value + b.value, "-": a.value - b.value, "*": a.value * b.value}.get(op)
            if v is None:
                v = a.value // b.value
            items = [x for n, x in enumerate(items) if n != i and n != j] + [Node(v, op, a, b)]
        if len(items) == 1:
            return items[0]
    raise PolicyError(f"no random combination found for {list(numbers)}")  # pragma: no cover


def near_miss(numbers: Sequence[int], target: int, rng: random.Random, draws: int = 3,
              op_weights=(4, 4, 1, 1)) -> Node:
    """A failed try: the random combination (not hitting the target) closest to the target
    among `draws` random ones."""
    best: Node | None = None
    for _ in range(50):
        e = random_expression(numbers, rng, op_weights)
        if e.value == target:
            continue
        if best is None or abs(e.value - target) < abs(best.value - target):
            best = e
        draws -= 1
        if draws <= 0:
            break
    if best is None:  # pragma: no cover - every combination hits the target
        raise PolicyError(f"no failed try exists for {list(numbers)} -> {target}")
    return best


def search_solution(numbers: Sequence[int], target: int, rng: random.Random, tries: int = 400) -> Node | None:
    """A solution found by random tries (`random_expression`: non-negative integer steps,
    `+`/`-` drawn more often than `*`/`/`), or None after `tries` misses.

    This is the search the trace records, and it is what makes the demonstrated solutions
    easy to imitate: `solve` (the task's exhaustive solver, the fallback) returns the first
    expression of its own search order, often with negative intermediate values.
    """
    for _ in range(tries):
        e = random_expression(numbers, rng)
        if e.value == target:
            return e
    return None


def is_plain(node: Node) -> bool:
    """Every step value is a non-negative integer."""
    return all(v >= 0 and (isinstance(v, int) or v.denominator == 1) for _, _, _, v in node.steps())


@dataclass
class TraceOptions:
    """How traces look. `fail_probs[k]`: probability of k failed tries before the solution."""

    fail_probs: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)
    near_miss_draws: int = 3
    fail_op_weights: tuple[float, ...] = (1, 1, 0, 0)  # + - * / in failed tries
    search_tries: int = 3000
    show_remaining: bool = True  # list the values still to be used after each step


def countdown_trace(
    numbers: Sequence[int],
    target: int,
    solution: Node | str,
    rng: random.Random,
    opts: TraceOptions | None = None,
) -> str:
    """Response text (continuing an assistant prefix that ends with `<think>`) for one problem:
    failed tries, the solution's steps, `</think>`, `<answer>solution</answer>`."""
    opts = opts or TraceOptions()
    sol = expression_tree(solution) if isinstance(solution, str) else solution
    if sol.value != target:
        raise PolicyError(f"{sol.text()!r} does not make {target}")
    k = rng.choices(range(len(opts.fail_probs)), weights=opts.fail_probs)[0]
    shown = numbers if opts.show_remaining else None
    final = render_attempt(sol, shown)
    lines: list[str] = []
    for _ in range(k):  # distinct failed tries (a repeated try teaches nothing)
        for _ in range(10):
            line = render_attempt(near_miss(numbers, target, rng, opts.near_miss_draws, opts.fail_op_weights), shown)
            if line not in lines and line != final:
                lines.append(line)
                break
    lines.append(final)
    return "\n" + "\n".join(lines) + f"\n</think>\n<answer>{sol.text()}</answer>"


# ---------------------------------------------------------------------------------------------
# SFT examples from a task
# ---------------------------------------------------------------------------------------------
@dataclass
class SFTExample:
    """One demonstration: `prompt` (rendered chat prompt incl. assistant prefix) + `response`."""

    prompt: str
    response: str
    meta: dict = field(default_factory=dict)


def countdown_examples(
    task,
    samples: Sequence[dict],
    tokenizer_or_template,
    seed: int = 0,
    traces_per_problem: int = 1,
    opts: TraceOptions | None = None,
    solve: Callable[[list[int], int], str | None] | None = None,
    fallback_to_solver: bool = True,
    check: bool = True,
) -> list[SFTExample]:
    """Solver traces for Countdown samples, rendered through the task's own chat prompt.

    `tokenizer_or_template`: a tokenizer with a chat template (or None for the project's
    ChatML template). Solutions come from `search_solution` (random tries), falling back to
    `solve(numbers, target)`, by default the task plugin's exhaustive solver. Problems are
    skipped when there is no solution, when the only one found has negative or fractional
    steps, or when the random search misses and `fallback_to_solver` is off. With
    `check`, every trace is scored by `task.reward` and must get 1.0.
    """
    tok = tokenizer_or_template if tokenizer_or_template is not None else _TemplateOnly()
    solver = solve or _task_solver(task)
    opts = opts or TraceOptions()
    rng = random.Random(seed)
    out: list[SFTExample] = []
    for s in samples:
        nums, target = numbers_and_target(s)
        prompt = render_prompt(tok, task.prompt(s), task.assistant_prefix(s))
        sol = search_solution(nums, target, rng, opts.search_tries)
        if sol is None:
            if not fallback_to_solver:
                continue
            expr = solver(nums, target)
            if not expr:
                continue
            sol = expression_tree(expr)
            if not is_plain(sol):  # negative or fractional steps: too hard to imitate, skip
                continue
        for _ in range(traces_per_problem):
            resp = countdown_trace(nums, target, sol, rng, opts)
            if check:
                r = task.reward(resp, s)
                if r != 1.0:
                    raise PolicyError(f"trace for {nums} -> {target} scored {r}: {resp!r}")
            out.append(SFTExample(prompt, resp, {"numbers": nums, "target": target}))
    return out


def _task_solver(task):
    return getattr(task, "solve", None) or solve


class _TemplateOnly:
    """Minimal stand-in for a tokenizer when only the chat template is needed."""

    chat_template = CHAT_TEMPLATE

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        out = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return out + (f"{IM_START}assistant\n" if add_generation_prompt else "")
