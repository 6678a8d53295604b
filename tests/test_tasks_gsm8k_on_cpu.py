"""GSM8K: `####` golds (with commas), boxed or final-number answers, splits."""

import pytest
from ftcli.tasks.gsm8k import gold_from_solution

from ftcli import get_task
from ftcli.config import data_root

needs_data = pytest.mark.skipif(not data_root().is_dir(), reason="no benchmark data")

SAMPLE = {"id": "t", "question": "q", "answer": "2125"}


def test_gold_after_hashes_without_commas():
    assert gold_from_solution("He has 2,000 + 125 = <<2000+125=2125>>2,125\n#### 2,125") == "2125"
    assert gold_from_solution("#### -3") == "-3"


@pytest.mark.parametrize(
    "response,correct",
    [
        ("So the total is \\boxed{2125}.", True),
        ("So the total is \\boxed{2,125}.", True),
        ("So the total is \\boxed{\\$2,125.00}.", True),
        ("2,000 + 125 = 2,125 dollars.", True),
        ("The answer is 2125. Check: 2125 - 125 = 2000", False),  # the last number counts
        ("\\boxed{2125} ... wait, 2000 + 125 = \\boxed{2120}", False),
        ("\\boxed{2125} then more text with 7 in it", True),  # a box beats later numbers
        ("no numbers", False),
    ],
)
def test_boxed_or_final_number(response, correct):
    task = get_task("gsm8k")
    assert task.verify(response, SAMPLE) is correct
    assert task.reward(response, SAMPLE) == float(correct)


def test_answer_span():
    task = get_task("gsm8k")
    response = "She earns 9 * 2 = $18 a day."
    start, end = task.answer_span(response)
    assert response[start:end] == "18"
    response = "\\boxed{ 18 } dollars, not 20"
    start, end = task.answer_span(response)
    assert response[start:end] == "18"


@needs_data
def test_real_files():
    task = get_task("gsm8k")
    test = task.load("test")
    assert len(test) == 1319 and test[0]["answer"] == "18"
    with_comma = [s for s in test if "#### 2,125" in s["solution"]]
    assert with_comma and with_comma[0]["answer"] == "2125"
    assert task.verify("\\boxed{2,125}", with_comma[0])
    train, val = task.load("train"), task.load("validation")
    assert len(train) + len(val) == 7473 and len(val) == 500
    assert not {s["id"] for s in train} & {s["id"] for s in val}
    assert test[0]["question"] in task.prompt(test[0])[1]["content"]
