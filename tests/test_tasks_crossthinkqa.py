"""CrossThinkQA: gold letters mapped by option text, the cut-off line, letter extraction, rewards."""

import logging

import pytest
from ftcli.tasks import loading
from ftcli.tasks.crossthinkqa import gold_letter, split_prompt

from ftcli import get_task

needs_data = pytest.mark.needs_data  # conftest: fetched from FT_DATA_MIRROR, else skipped

PROMPT = (
    "Answer the following single choice question. Please reason step by step, and put the "
    "letter of the correct option inside \\boxed{}. \nWhich policy answers a trade deficit?\n"
    "A. Raising tariffs\nB. Devaluing the domestic currency\nC. Cutting spending\n"
    "D. Contractionary monetary policy"
)
SAMPLE = {"id": "t", "question": "q", "answer": "B", "options": ["w", "x", "y", "z"]}


def test_split_prompt_and_gold_mapped_by_option_text():
    question, stem, options = split_prompt(PROMPT)
    assert stem == "Which policy answers a trade deficit?"
    assert options[1] == "Devaluing the domestic currency" and len(options) == 4
    assert question in PROMPT and question.startswith(stem)
    assert gold_letter("A. Devaluing the domestic currency", options) == ("B", True)
    assert gold_letter("B: Devaluing the domestic currency", options) == ("B", False)
    assert gold_letter("C. text of no option", options) == ("C", False)


@pytest.mark.parametrize(
    "response,letter,boxed",
    [
        ("so the answer is \\boxed{B}", "B", True),
        ("\\boxed{\\text{B}}", "B", True),
        ("\\boxed{B: Devaluing}", "B", True),
        ("\\boxed{The answer is C}", "C", True),  # standalone letter, not the T of "The"
        ("<think>maybe \\boxed{A}</think> Final: \\boxed{D}", "D", True),
        ("<think>\\boxed{A}</think> I am sure the answer is (C).", "C", False),
        ("Therefore, the answer is Option B.", "B", False),
        ("I cannot decide.", None, False),
    ],
)
def test_choice_extraction(response, letter, boxed):
    task = get_task("crossthinkqa")
    span = task.answer_span(response)
    assert (response[span[0] : span[1]] if span else None) == letter
    assert task.grade(response, SAMPLE)["boxed"] is boxed


def test_reward_schemes():
    cases = {"\\boxed{B}": 0, "answer is B": 1, "\\boxed{A}": 2, "no idea": 3}
    expected = {
        "soft": (1.0, 0.5, -0.5, -1.0),
        "strict": (1.0, -1.0, -1.0, -1.0),
        "loose": (1.0, 1.0, -1.0, -1.0),
        "binary": (1.0, 1.0, 0.0, 0.0),
    }
    for scheme, rewards in expected.items():
        task = get_task("crossthinkqa", reward_scheme=scheme)
        for response, k in cases.items():
            assert task.reward(response, SAMPLE) == rewards[k], (scheme, response)
    assert get_task("crossthinkqa").verify("\\boxed{B}", SAMPLE)
    with pytest.raises(ValueError, match="reward_scheme"):
        get_task("crossthinkqa", reward_scheme="generous")


@needs_data
def test_real_file_gold_remap_truncated_line_and_splits(caplog, monkeypatch):
    monkeypatch.setattr(loading, "_CACHE", {})  # read the file afresh: one warning
    task = get_task("crossthinkqa")
    with caplog.at_level(logging.WARNING, logger="ftcli.tasks"):
        splits = {s: task.load(s) for s in ("train", "validation", "test")}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "general_CrossThink-QA_deal.jsonl:812" in warnings[0]
    assert {s: len(v) for s, v in splits.items()} == {"train": 511, "validation": 100, "test": 200}
    ids = [set(x["id"] for x in v) for v in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    everything = [x for v in splits.values() for x in v]
    assert sum(x["answer"] != x["gold_text"][0] for x in everything) == 117
    assert {len(x["options"]) for x in everything} == {4, 10}
    by_id = {x["id"]: x for x in everything}
    assert by_id["2000142"]["answer"] == "B"  # gold "A. Devaluing..." is option B
    for x in everything:
        assert x["question"] in task.prompt(x)[0]["content"]


@pytest.mark.parametrize(
    "response",
    [
        # issue 12: one answer is one option letter
        "\\boxed{F and A}",
        "\\boxed{F, A}",
        "\\boxed{F/A}",
        "\\boxed{F or A}",
        "\\boxed{F \\text{ and } A}",
        "\\boxed{F A}",
        "The answer is not F, it is A.",
        "The answer is F or A.",
    ],
)
def test_a_span_naming_several_options_is_wrong(response):
    task = get_task("crossthinkqa")
    sample = dict(SAMPLE, answer="F")
    graded = task.grade(response, sample)
    assert graded["correct"] is False and graded["extracted"] is None
    assert task.reward(response, sample) < 0


@pytest.mark.parametrize(
    "response",
    [
        "\\boxed{F}",
        "\\boxed{(F)}",
        "\\boxed{F: Paris}",
        "\\boxed{\\textbf{F}}",
        "\\boxed{Option F}",
        "The answer is **F**.",
        "The answer is F. A is wrong.",
        "the answer is (F) because A fails",
    ],
)
def test_one_option_letter_is_right(response):
    assert get_task("crossthinkqa").verify(response, dict(SAMPLE, answer="F")) is True
