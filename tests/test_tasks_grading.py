"""Hostile model output: every verdict is False within seconds, and nothing runs.

The screen refuses the obviously dangerous inputs at once; the deadline (worker subprocess,
killed and restarted) is tested separately with the screen bypassed, from the main thread,
from other threads and from a forked worker process.
"""

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

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


def test_wall_cap_kills_a_hung_grader_and_the_next_grade_works():
    # a CPU budget far above the wall cap: the wall cap (the backstop) kills the worker
    reply = grading.grade_unscreened("math_verify", "9^{9^{9^{9}}}", "3", timeout=1.0, cpu=60)
    assert reply["ok"] is False and "timed out" in reply["error"] and reply["timeout"]
    assert grading.grade_answer("\\frac{6}{2}", "3") == {"math_verify": True, "sympy": True}


def test_cpu_budget_stops_a_grader_without_killing_the_worker():
    # issue 12: a grade must not depend on machine load, so the budget is CPU time
    grading.grade_answer("1", "1")  # the worker is up
    pids = _grader_pids(os.getpid())
    reply = grading.grade_unscreened("math_verify", "9^{9^{9^{9}}}", "3", timeout=60, cpu=0.5)
    assert reply == {"ok": False, "error": "cpu budget of 0.5s exceeded"}
    assert _grader_pids(os.getpid()) == pids  # the same worker carries on
    assert grading.grade_answer("\\frac{6}{2}", "3") == {"math_verify": True, "sympy": True}


def test_timeouts_are_counted_for_results(monkeypatch):
    grading.reset_timeout_counts()
    monkeypatch.setattr(grading, "screen", lambda text: None)
    detail = grading.grade_answer_detailed("9^{9^{9^{9}}}", "3", timeout=0.5)
    assert detail["verdicts"] == {"math_verify": False, "sympy": False}
    assert detail["timeouts"] == {"math_verify": "cpu"}  # sympy refuses the tower at once
    assert grading.timeout_counts() == {"cpu": 1, "wall": 0}
    grading.reset_timeout_counts()
    assert grading.timeout_counts() == {"cpu": 0, "wall": 0}
    graded = get_task("math500").grade("\\boxed{9^{9^{9^{9}}}}", SAMPLE)
    assert graded["timeouts"] == {"math_verify": "cpu"} and graded["correct"] is False


ISSUE_12_SLOW = [
    "\\exp(\\exp(\\exp(\\exp(100))))",
    "9^{(9)^{(9)^{(9)}}}",
    "1e99999999999",
    "((99)!)!",
    "{" * 64 + "1" + "}" * 64,
    "{" * 12 + "1" + "}" * 12,
    "e^{e^{e^{100}}}",
    "(x+1)^{9999}",
    "\\left(x+1\\right)^{500}",
    "99!!",
    "\\sin(10^{99999})",
    "\\cos(1e99999)",
]


@pytest.mark.parametrize("expr", ISSUE_12_SLOW)
def test_screen_refuses_the_inputs_that_used_the_whole_deadline(expr):
    assert grading.screen(expr) is not None
    assert grading.grade_answer_detailed(expr, "3")["refused"] is not None


def test_prepare_drops_a_final_period_and_reads_repeating_decimals():
    assert grading.prepare("284.") == "284"
    assert grading.prepare("\\text{Evelyn}.") == "\\text{Evelyn}"
    assert grading.prepare("\\text{Evelyn.}") == "\\text{Evelyn}"
    assert grading.prepare("0.\\overline{3}") == "\\frac{1}{3}"
    assert grading.prepare("2.\\overline{09}") == "\\frac{23}{11}"
    assert grading.prepare("1\\ldots") == "1\\ldots" and grading.prepare("3.5") == "3.5"
    assert grading.repeating_decimal("0", "8", "3") == Fraction(5, 6)


def _grader_pids(parent: int) -> set[int]:
    """Pids of the live (not zombie) children of `parent` (Linux /proc)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            pids.add(int(stat.parent.name))
    return pids


_BUSY_PARENT = """
from ftcli.tasks import grading
grading.grade_answer("1", "1")
print("ready", flush=True)
grading.grade_unscreened("math_verify", "9^{9^{9^{9}}}", "3", timeout=600, cpu=600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_dies_with_its_parent_killed_by_sigkill():
    # issue 12: a worker busy on a hostile input outlived its SIGKILLed parent (alive at 150 s)
    parent = subprocess.Popen([sys.executable, "-c", _BUSY_PARENT], stdout=subprocess.PIPE)
    try:
        assert parent.stdout.readline().strip() == b"ready"
        workers = _grader_pids(parent.pid)
        assert len(workers) == 1
        time.sleep(0.5)  # the worker is now busy on the tower
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{w}").exists() and _alive(w) for w in workers):
            assert time.monotonic() < deadline, "the grading worker outlived its parent"
            time.sleep(0.1)
    finally:
        parent.kill()
        parent.wait()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_started_from_a_finished_thread_stays_alive():
    # PR_SET_PDEATHSIG fires when the starting THREAD ends: workers start from a keeper thread
    grading.shutdown()
    before = _grader_pids(os.getpid())
    worker = threading.Thread(target=grading.grade_answer, args=("1", "1"))
    worker.start()
    worker.join()
    started = _grader_pids(os.getpid()) - before
    assert len(started) == 1
    time.sleep(0.5)
    assert grading.grade_answer("\\frac{6}{2}", "3") == {"math_verify": True, "sympy": True}
    assert started <= _grader_pids(os.getpid())  # the same worker, still alive


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
