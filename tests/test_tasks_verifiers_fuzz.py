"""Every verifier over the committed corpus of hostile outputs (tests/fuzz, issue 12).

Zero false accepts on the must-reject rows, nothing executed, and every call (extraction
included) returns within a bound of wall time: the worst case that the CPU budgets, screens
and wall cap guarantee (tasks/grading.py: at most 1.5 s of CPU per grader, 5.5 s of wall time
per request), not a speed measurement (bench/ measures speed). A request that follows a killed
worker also waits for its replacement to import, so the bound adds the start-up of a worker,
measured by the fixture under the machine's load at the time.
"""

import json
import sys
import time
from pathlib import Path

import pytest
from ftcli.tasks import grading

from ftcli import get_task

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
from make_corpus import CORPUS, huge_outputs  # noqa: E402

SLACK_S = 0.5  # Python-side extraction and pipe overhead around a request
TASKS = ("math", "gsm8k", "crossthinkqa", "countdown")
# verifier -> the task whose golds it reads (math also with the no-box fallback)
VERIFIERS = {
    "math": "math",
    "math_fallback": "math",
    "gsm8k": "gsm8k",
    "crossthinkqa": "crossthinkqa",
    "countdown": "countdown",
}
DEFAULT_GOLD = {
    "math": "7",
    "gsm8k": "7",
    "crossthinkqa": "B",
    "countdown": {"numbers": [1, 6], "target": 7},
}


def _sample(task: str, gold) -> dict:
    sample = {"id": "fuzz", "question": "q", "answer": gold, "options": ["x"] * 10}
    if task == "countdown":
        sample.update(gold, answer=str(gold["target"]))
    return sample


@pytest.fixture(scope="module")
def tasks():
    return {
        "math": get_task("math500"),
        "math_fallback": get_task("math500", extraction="boxed-or-last-math"),
        "gsm8k": get_task("gsm8k"),
        "crossthinkqa": get_task("crossthinkqa"),
        "countdown": get_task("countdown"),
    }


@pytest.fixture(scope="module")
def call_bound():
    """Seconds one verifier call may take: the wall cap of a grading request, plus the start-up
    of a replacement worker (twice the one measured here: a fresh worker's first request)."""
    grading.shutdown()
    start = time.monotonic()
    assert grading.grade_answer("1", "1") == {g: True for g in grading.GRADERS}
    startup = time.monotonic() - start
    bound = grading.DEFAULT_WALL_S + 2 * startup + SLACK_S
    print(f"worker start-up {startup:.2f}s -> call bound {bound:.2f}s")
    return bound


def _timed(fn, *args):
    start = time.monotonic()
    value = fn(*args)
    return value, time.monotonic() - start


def test_corpus_is_large_and_has_must_reject_rows():
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 2000
    assert sum(r["must_reject"] for r in rows) >= 1000
    assert {r["task"] for r in rows} == set(TASKS)


def test_every_verifier_over_the_corpus(tasks, call_bound, tmp_path):
    canary = tmp_path / "canary"
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    false_accepts, slow = [], []
    worst = (0.0, None)
    for row in rows:
        response = row["response"].replace("CANARY", str(canary))
        for name, kind in VERIFIERS.items():
            gold = row["gold"] if kind == row["task"] else DEFAULT_GOLD[kind]
            sample = _sample(kind, gold)
            graded, seconds = _timed(tasks[name].grade, response, sample)
            times = [seconds]
            if kind == row["task"]:  # reward: the same extraction, the task's own scheme
                reward, reward_s = _timed(tasks[name].reward, response, sample)
                times.append(reward_s)
            for s in times:
                worst = max(worst, (s, row["id"]), key=lambda w: w[0])
                if s > call_bound:
                    slow.append((row["id"], name, round(s, 2)))
            if kind == row["task"] and row["must_reject"]:
                full_reward = reward >= 1.0 if name in ("countdown", "crossthinkqa") else False
                if graded["correct"] or full_reward:
                    false_accepts.append((row["id"], name, graded.get("extracted")))
    print(f"worst call: {worst[0]:.2f}s ({worst[1]})")
    assert not false_accepts
    assert not slow
    assert not canary.exists()


@pytest.mark.parametrize("name", sorted(huge_outputs()))
def test_huge_outputs_built_at_test_time(tasks, call_bound, name):
    response = huge_outputs()[name]()
    for task_name, kind in VERIFIERS.items():
        task = tasks[task_name]
        sample = _sample(kind, DEFAULT_GOLD[kind])
        for seconds in (
            _timed(task.answer_span, response)[1],
            _timed(task.grade, response, sample)[1],
        ):
            assert seconds < call_bound, (task_name, seconds)
        assert task.verify(response, sample) is False
