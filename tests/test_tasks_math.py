"""Math family: golden verdicts of both graders, benchmark quirks, answer spans, splits."""

import pytest
from ftcli.tasks.base import last_boxed_span
from ftcli.tasks.grading import grade_answer
from ftcli.tasks.math import clean_gold

from ftcli import get_task

needs_data = pytest.mark.needs_data  # conftest: fetched from FT_DATA_MIRROR, else skipped

# (prediction, gold, math-verify verdict, sympy-grader verdict)
GOLDEN = [
    ("\\frac12", "0.5", True, True),
    ("0.5", "\\dfrac{1}{2}", True, True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True, True),
    ("3\\sqrt2", "\\sqrt{18}", True, True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True, True),
    ("[1,3)", "[1, 3)", True, True),
    ("(1,3]", "[1,3)", False, False),
    ("(-\\infty, 0) \\cup \\{1\\}", "(-\\infty,0)\\cup\\{1\\}", True, True),
    ("30^\\circ", "30", True, True),
    ("30", "30^{\\circ}", True, True),
    ("5 \\text{ cm}", "5", True, True),
    ("\\{1,2\\}", "\\{2,1\\}", True, True),
    ("x=3", "3", True, True),
    ("3", "x = 3", True, True),
    ("25", clean_gold("025"), True, True),
    ("27", clean_gold(27.0), True, True),
    ("5, 3", "3, 5", True, True),
    ("(2,7,13),(1,8,19),(4,5,7)", "(1,8,19), (2,7,13), (4,5,7)", True, True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True, True),
    ("4.5e33", "4.5 \\times 10^{33}", True, True),
    ("18.90", "\\$18.90", True, True),
    ("32348", "\\$32,\\!348", True, True),
    ("x^2+2x", "x(x+2)", True, True),
    ("2", "3", False, False),
    ("2x", "2", False, False),
    ("\\frac{1}{3}", "0.33", False, False),
    # issue 12: a period inside the box, repeating decimals
    ("\\text{Evelyn}.", "\\text{Evelyn}", True, True),
    ("284.", "284", True, True),
    ("0.\\overline{3}", "\\frac{1}{3}", True, True),
    ("0.\\overline{5}", "\\frac59", True, True),
    ("0.1\\overline{6}", "\\frac{1}{6}", True, True),
    ("1.\\overline{142857}", "\\frac{8}{7}", True, True),
    ("0.\\overline{3}", "0.3", False, False),
    ("0.\\overline{3}", "\\frac{1}{4}", False, False),
]


@pytest.mark.parametrize("pred,gold,mv,sp", GOLDEN)
def test_golden_verdicts_of_both_graders(pred, gold, mv, sp):
    assert grade_answer(pred, gold) == {"math_verify": mv, "sympy": sp}


def test_grade_uses_last_boxed_and_reports_both_graders():
    task = get_task("math500")
    sample = {"id": "t", "question": "q", "answer": "\\frac{1}{2}"}
    response = "First \\boxed{3}, then, on reflection, \\boxed{\\dfrac{1}{2}}."
    graded = task.grade(response, sample)
    assert graded == {
        "extracted": "\\dfrac{1}{2}",
        "math_verify": True,
        "sympy": True,
        "correct": True,
        "reward": 1.0,
        "timeouts": {},
    }
    assert task.verify(response, sample) and task.reward(response, sample) == 1.0
    assert not task.verify("The answer is 1/2.", sample)  # no box, no verdict
    assert task.grade("no box", sample)["extracted"] is None


def test_boxed_x_equals_answer_and_grader_option():
    sample = {"id": "t", "question": "q", "answer": "3"}
    assert get_task("aime24").verify("so \\boxed{x=3}", sample)
    assert get_task("aime24", grader="sympy").verify("so \\boxed{x = 3}", sample)
    with pytest.raises(ValueError, match="unknown grader"):
        get_task("aime24", grader="nope")


@pytest.mark.parametrize(
    "text,content",
    [
        ("a \\boxed{1} b \\boxed{\\frac{1}{2}} c", "\\frac{1}{2}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not count
        ("\\boxed{ 7 } and a truncated \\boxed{\\frac{1", "7"),  # unclosed box ignored
        ("\\boxed{\\boxed{4}}", "\\boxed{4}"),  # nested: the outer box
        ("\\fbox{9}", "9"),
        ("no box here", None),
        ("\\boxed{}", None),
    ],
)
def test_last_boxed_span(text, content):
    span = last_boxed_span(text)
    assert (text[span[0] : span[1]] if span else None) == content


@needs_data
def test_aime24_leading_zero_gold_is_a_number():
    samples = get_task("aime24").load("test")
    raw = [s for s in samples if s["answer"] == "25"]
    assert raw, "AIME24's '025' is loaded as 25"
    assert get_task("aime24").verify("\\boxed{025}", raw[0])
    assert get_task("aime24").verify("\\boxed{25}", raw[0])


@needs_data
def test_aime25_broken_escapes_are_fixed():
    samples = {s["id"]: s for s in get_task("aime25").load("test")}
    assert len(samples) == 30
    for sid in ("18", "27"):
        assert "\x0c" not in samples[sid]["question"] and "\\frac" in samples[sid]["question"]
    assert "\t" not in samples["19"]["question"] and "\\triangle DEF" in samples["19"]["question"]
    assert all("\x0c" not in s["question"] and "\t" not in s["question"] for s in samples.values())


@needs_data
def test_minerva_gold_is_the_last_box_of_the_solution():
    samples = {s["id"]: s for s in get_task("minerva").load("test")}
    assert len(samples) == 272
    assert samples["0"]["answer"] == "1.6"
    assert samples["1"]["answer"] == "4.5e33"
    assert get_task("minerva").verify("L \\approx \\boxed{4.5 \\times 10^{33}}", samples["1"])


@needs_data
def test_olympiadbench_list_answers():
    task = get_task("olympiadbench")
    samples = {s["id"]: s for s in task.load("test")}
    assert len(samples) == 675
    assert samples["1664"]["answer"] == "69,84"  # "$69$,$84$"
    assert task.verify("\\boxed{84, 69}", samples["1664"])
    assert samples["1618"]["answer"] == "(1,8,19), (2,7,13), (4,5,7)"
    assert task.verify("\\boxed{(4,5,7),(1,8,19),(2,7,13)}", samples["1618"])
    assert not task.verify("\\boxed{(1,8,19)}", samples["1618"])


@needs_data
def test_math_train_split_validation_and_benchmarks_without_train():
    task = get_task("math")
    train, val = task.load("train"), task.load("validation")
    assert len(train) + len(val) == 7470  # 7474 records, 4 without a gold answer
    assert len(val) == 500
    assert not {s["id"] for s in train} & {s["id"] for s in val}
    assert [s["id"] for s in get_task("math").load("validation")] == [s["id"] for s in val]
    other = get_task("math", val_seed=1).load("validation")
    assert [s["id"] for s in other] != [s["id"] for s in val]
    with pytest.raises(ValueError, match="no 'train' split"):
        get_task("math500").load("train")
    with pytest.raises(ValueError, match="no 'test' split"):
        task.load("test")


def test_prompt_styles_carry_the_question_verbatim():
    sample = {"id": "t", "question": "What is $1+1$?", "answer": "2"}
    for style in ("qwen25-math-cot", "qwen-boxed"):
        messages = get_task("math500", prompt_style=style).prompt(sample)
        user = [m for m in messages if m["role"] == "user"][0]["content"]
        assert sample["question"] in user
        assert any("\\boxed{}" in m["content"] for m in messages)
    assert get_task("math500").assistant_prefix(sample) == ""


def test_without_a_box_the_fallback_is_an_option():
    # issue 12: "The answer is $x = 2$" is right under math-verify's fallback, wrong under
    # the paper's boxed protocol (the default)
    sample = {"id": "t", "question": "q", "answer": "2"}
    boxed, fallback = get_task("math500"), get_task("math500", extraction="boxed-or-last-math")
    for response in ("The answer is $x = 2$.", "So $y=5$ and hence $x = 2$", "The answer is 2."):
        assert boxed.verify(response, sample) is False
        assert fallback.verify(response, sample) is True, response
    assert fallback.grade("The answer is $x = 3$.", sample)["correct"] is False
    assert fallback.grade("\\boxed{3} The answer is $2$.", sample)["extracted"] == "3"
    assert fallback.answer_span("no math here") is None
    with pytest.raises(ValueError, match="extraction"):
        get_task("math500", extraction="anything")
