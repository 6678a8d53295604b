"""GSM8K: `####` golds (with commas), boxed or final-number answers, splits."""

import pytest
from ftcli.tasks.gsm8k import gold_from_solution

from ftcli import get_task

needs_data = pytest.mark.needs_data  # conftest: fetched from FT_DATA_MIRROR, else skipped

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


@pytest.mark.parametrize(
    "response",
    [
        # issue 12: all of these scored 1.0 for gold 18 (the last number was taken anywhere)
        "\\boxed{1e18}",
        "\\boxed{2^{18}}",
        "\\boxed{\\frac{1}{18}}",
        "\\boxed{1,8}",
        "\\boxed{17 \\text{ or } 18}",
        "\\write18{x}",
        "\\boxed{18 and 20}",
        "\\boxed{x^{18}}",
        "The answer is 17 or 18",
        "So 2^18",
        "1e18",
        "#### 1/18",
    ],
)
def test_a_final_answer_is_one_number(response):
    task = get_task("gsm8k")
    sample = dict(SAMPLE, answer="18")
    assert task.verify(response, sample) is False
    assert task.reward(response, sample) == 0.0


@pytest.mark.parametrize(
    "response",
    [
        "\\boxed{18}",
        "\\boxed{18.}",
        "\\boxed{\\$18}",
        "\\boxed{18 \\text{ dollars}}",
        "\\boxed{18\\%}",
        "\\boxed{\\text{18}}",
        "\\boxed{x = 18}",
        "\\boxed{18.00}",
        "She earns $18 a day.",
        "The answer is $18$.",
        "#### 18",
        # the GSM8K format marks the final answer: a later sentence with a number does not count
        "9 * 2 = 18\n#### 18\nShe spends 20 minutes on it.",
        "#### 18. That is 2 more than 16.",
    ],
)
def test_one_number_with_units_separators_and_markers_is_right(response):
    task = get_task("gsm8k")
    assert task.verify(response, dict(SAMPLE, answer="18")) is True, response


def test_fractions_and_ratios_are_not_their_last_number():
    task = get_task("gsm8k")
    assert task.grade("The answer is 1/24.", dict(SAMPLE, answer="24"))["correct"] is False
    assert task.grade("The answer is 1/24.", dict(SAMPLE, answer="24"))["extracted"] == "1/24"
    assert task.grade("The ratio is 3:1", dict(SAMPLE, answer="1"))["correct"] is False
    assert task.grade("So she owes -3 dollars", dict(SAMPLE, answer="-3"))["correct"] is True
    assert task.grade("5-3", dict(SAMPLE, answer="-3"))["correct"] is False


def test_gsm8k_span_search_is_bounded():
    # a number before the searched window (the last MAX_SCAN_CHARS characters) is not read
    from ftcli.spans import MAX_SCAN_CHARS

    task = get_task("gsm8k")
    assert task.answer_span("18" + " " * MAX_SCAN_CHARS) is None
    assert task.verify("}" * 10**7 + " 18", dict(SAMPLE, answer="18"))


def test_thousands_separators_of_latex():
    task = get_task("gsm8k")
    sample = dict(SAMPLE, answer="1800")
    for response in ("\\boxed{1{,}800}", "\\boxed{1\\,800}", "\\boxed{1,800}", "#### 1,800"):
        assert task.verify(response, sample), response
    for response in ("\\boxed{1{,}80}", "\\boxed{18,00}", "\\boxed{1\\,8\\,00}"):
        assert not task.verify(response, sample), response
