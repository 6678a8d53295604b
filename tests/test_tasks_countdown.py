"""Countdown: TinyZero rewards, the exact solver, the seeded generator, the shared parquets."""

from fractions import Fraction

import pytest
from ftcli.tasks import generate_problems, solve
from ftcli.tasks.countdown import evaluate, parse_expression

from ftcli import get_task

needs_data = pytest.mark.needs_data  # conftest: fetched from FT_DATA_MIRROR, else skipped

SAMPLE = {"id": "t", "question": "q", "answer": "36", "numbers": [79, 17, 60], "target": 36}


def _answer(expr: str) -> str:
    return f" 79 - 60 = 19, 19 + 17 = 36 </think>\n<answer> {expr} </answer>"


@pytest.mark.parametrize(
    "response,reward,reason",
    [
        (_answer("79 - 60 + 17"), 1.0, "correct"),
        (_answer("(79 - 60) + 17"), 1.0, "correct"),
        (_answer("17 + 79 - 60"), 1.0, "correct"),
        (_answer("79 - 17 - 60"), 0.1, "wrong_value"),
        (_answer("79 - 60 + 17 + 17"), 0.1, "wrong_numbers"),  # a number reused
        (_answer("79 - 43"), 0.1, "wrong_numbers"),  # numbers missing
        (_answer("36"), 0.1, "wrong_numbers"),  # the bare target
        (_answer("79 / (60 - 60) + 17"), 0.1, "wrong_numbers"),
        (_answer("(17 / (79 - 79)) * 60"), 0.1, "wrong_numbers"),
        (_answer("79 - 60 + 17 = 36"), 0.1, "bad_expression"),
        (_answer("79 - 60 ** 17"), 0.1, "bad_expression"),
        (_answer("79.0 - 60 + 17"), 0.1, "bad_expression"),
        (_answer(""), 0.1, "bad_expression"),
        ("<answer> 1 </answer> then <answer>79 - 60 + 17</answer>", 1.0, "correct"),  # last tag
        ("79 - 60 + 17", 0.0, "no_answer"),
        ("<answer> 79 - 60 + 17", 0.0, "no_answer"),
    ],
)
def test_tinyzero_rewards(response, reward, reason):
    task = get_task("countdown")
    graded = task.grade(response, SAMPLE)
    assert (graded["reward"], graded["reason"]) == (reward, reason)
    assert task.reward(response, SAMPLE) == reward
    assert task.verify(response, SAMPLE) is (reward == 1.0)


def test_division_by_zero_and_exact_fractions():
    task = get_task("countdown")
    sample = dict(SAMPLE, numbers=[4, 2, 2], target=4)
    assert task.grade("<answer>4 / (2 - 2)</answer>", sample)["reason"] == "division_by_zero"
    sample = dict(SAMPLE, numbers=[3, 3, 8, 8], target=24)
    assert task.verify("<answer>8 / (3 - 8 / 3)</answer>", sample)  # needs exact 8/3
    assert evaluate(parse_expression("8 / (3 - 8 / 3)")) == Fraction(24)


def test_unary_minus_is_an_option():
    sample = dict(SAMPLE, numbers=[5, 2], target=-3)
    assert (
        get_task("countdown").grade("<answer>-5 + 2</answer>", sample)["reason"] == "bad_expression"
    )
    assert get_task("countdown", allow_unary_minus=True).verify("<answer>-5 + 2</answer>", sample)


def test_answer_span_is_the_last_answer_tag_content():
    task = get_task("countdown")
    response = "<think>try <answer>1</answer></think>\n<answer>  79 - 60 + 17 </answer>"
    start, end = task.answer_span(response)
    assert response[start:end] == "79 - 60 + 17"
    assert task.answer_span("no tags") is None


@pytest.mark.parametrize(
    "numbers,target,solvable",
    [
        ([79, 17, 60], 36, True),
        ([3, 3, 8, 8], 24, True),
        ([1, 1, 1], 100, False),
        ([2, 2], 5, False),
    ],
)
def test_solver(numbers, target, solvable):
    expr = solve(numbers, target)
    assert (expr is not None) is solvable
    if expr:
        tree = parse_expression(expr)
        assert evaluate(tree) == target
        assert sorted(
            n.value for n in __import__("ast").walk(tree) if hasattr(n, "value")
        ) == sorted(numbers)


def test_generator_is_seeded_and_every_problem_is_proven_solvable():
    task = get_task("countdown")
    a, b = generate_problems(20, seed=7), generate_problems(20, seed=7)
    assert a == b and a != generate_problems(20, seed=8)
    assert {len(s["numbers"]) for s in a} <= {3, 4}
    for s in a:
        assert 10 <= s["target"] <= 100 and all(1 <= n <= 99 for n in s["numbers"])
        assert task.verify(f"<answer>{s['solution']}</answer>", s)
        assert s["question"] in task.prompt(s)[1]["content"]
    four = get_task("countdown", num_numbers=(4,)).generate(5, seed=1)
    assert all(len(s["numbers"]) == 4 for s in four)


@needs_data
def test_shared_parquets_splits_and_prompt():
    task = get_task("countdown")
    test = task.load("test")
    assert len(test) == 1024
    assert sum(len(s["numbers"]) == 3 for s in test) == 490
    assert (test[0]["numbers"], test[0]["target"]) == ([79, 17, 60], 36)
    train, val = task.load("train"), task.load("validation")
    assert len(train) + len(val) == 10240 and len(val) == 500
    assert not {s["id"] for s in train} & {s["id"] for s in val}
    assert len(get_task("countdown", num_numbers=(4,)).load("test")) == 534
    messages = task.prompt(test[0])
    assert (
        test[0]["question"] == "Using the numbers [79, 17, 60], create an equation that equals 36."
    )
    assert messages[1]["content"].startswith(test[0]["question"])
    assert "<answer> (1 + 2) / 3 </answer>" in messages[1]["content"]
    assert task.assistant_prefix(test[0]) == "Let me solve this step by step.\n<think>"
