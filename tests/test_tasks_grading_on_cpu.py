"""Hostile model output: every verdict is False within seconds, and nothing runs.

The screen refuses the obviously dangerous inputs at once; the deadline (worker subprocess,
killed and restarted) is tested separately with the screen bypassed, from the main thread,
from other threads and from a forked worker process.
"""

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from ftcli.tasks import grading
from ftcli.tasks.countdown import score_expression

from ftcli import get_task

SAMPLE = {"id": "h", "question": "q", "answer": "3"}


def _hostile(canary):
    cmd = f"__import__('os').system('touch {canary}')"
    return {
        "tower": "\\boxed{9^{9^{9^{9}}}}",
        "python_power": "\\boxed{10**10**10}",
        "nested": "\\boxed{" + "(" * 5000 + "1+6" + ")" * 5000 + "}",
        "one_megabyte": "\\boxed{" + "1" * (1 << 20) + "}",
        "one_megabyte_text": "x" * (1 << 20),
        "dunder": "\\boxed{" + cmd + "}",
        "dunder_text": "\\boxed{\\text{" + cmd + "}}",
        "exec_plain": cmd,
    }


@pytest.mark.parametrize("task_name", ["math500", "gsm8k", "crossthinkqa", "countdown"])
def test_hostile_responses_get_false_fast_and_run_nothing(tmp_path, task_name):
    canary = tmp_path / "canary"
    task = get_task(task_name)
    # gold 7: the hostile strings contain no 7, so any True would be a grader fault
    sample = dict(SAMPLE, numbers=[1, 6], target=7, options=["x", "y", "z"], answer="7")
    for name, response in _hostile(canary).items():
        start = time.monotonic()
        assert task.verify(response, sample) is False, name
        assert time.monotonic() - start < 5, name
    assert not canary.exists()


def test_countdown_expression_whitelist(tmp_path):
    canary = tmp_path / "canary"
    nums = [1, 2]
    for expr in (
        f"__import__('os').system('touch {canary}')",
        "2**100000",
        "(" * 5000 + "1+2" + ")" * 5000,
        "1" * (1 << 20),
        "1+2; 3",
        "lambda: 3",
    ):
        start = time.monotonic()
        reward, _ = score_expression(expr, nums, 3)
        assert reward == 0.1
        assert time.monotonic() - start < 1
    assert not canary.exists()


@pytest.mark.parametrize("expr", ["9^{9^{9^{9}}}", "10**10**10", "(" * 5000 + "1" + ")" * 5000])
def test_screen_refuses_dangerous_answers(expr):
    assert grading.screen(expr) is not None
    assert grading.grade_answer(expr, "3") == {"math_verify": False, "sympy": False}


def test_screen_lets_ordinary_answers_through():
    for expr in ("2^{10}", "10^{100}", "e^{x^2}", "\\frac{(1+2)}{[3]}", "5!", "x_{1}"):
        assert grading.screen(expr) is None, expr


def test_deadline_kills_a_hung_grader_and_the_next_grade_works():
    start = time.monotonic()
    reply = grading.grade_unscreened("math_verify", "9^{9^{9^{9}}}", "3", timeout=1.0)
    assert reply["ok"] is False and "timed out" in reply["error"]
    assert time.monotonic() - start < 3
    assert grading.grade_answer("\\frac{6}{2}", "3") == {"math_verify": True, "sympy": True}


@pytest.mark.parametrize("op", grading.GRADERS)
def test_graders_never_execute_text_even_unscreened(tmp_path, op):
    canary = tmp_path / "canary"
    for text in (
        f"__import__('os').system('touch {canary}')",
        f"\\text{{__import__('os').system('touch {canary}')}}",
        f"exec(\"open('{canary}', 'w')\")",
    ):
        assert grading.grade_unscreened(op, text, "0", timeout=3.0)["ok"] is False
    assert not canary.exists()


def test_sympy_grader_refuses_exploding_powers_unscreened():
    start = time.monotonic()
    assert grading.grade_unscreened("sympy", "9^{9^{9^{9}}}", "3", timeout=3.0)["ok"] is False
    assert time.monotonic() - start < 3


def test_grading_from_threads():
    task = get_task("math500")
    answers = ["3", "4", "\\frac{6}{2}", "9^{9^{9^{9}}}", "3.0", "x=3"]
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda a: task.verify(f"\\boxed{{{a}}}", SAMPLE), answers))
    assert verdicts == [True, False, True, False, True, True]


def _deadline_in_child(_):
    hung = grading.grade_unscreened("math_verify", "9^{9^{9^{9}}}", "3", timeout=1.0)
    return hung["ok"], grading.grade_answer("\\frac12", "0.5")["math_verify"]


def test_grading_from_a_forked_worker_process():
    grading.grade_answer("1", "1")  # the parent has a pool; the child must build its own
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(_deadline_in_child, [0]) == [(False, True)]
    assert grading.grade_answer("\\frac12", "0.5")["sympy"] is True
