"""Answer and question spans -> token positions with the default model's tokenizer."""

import pytest

from ftcli import get_task
from ftcli.spans import find_question_span, span_to_token_mask


@pytest.fixture(scope="module")
def tok():
    from ftcli.fetch.models import ModelError, load_tokenizer

    try:
        return load_tokenizer("smollm2-135m")
    except ModelError as e:
        pytest.skip(f"default model unavailable: {e}")


def _tokens_of(tok, text, span):
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    mask = span_to_token_mask(enc["offset_mapping"], span)
    ids = [i for i, m in zip(enc["input_ids"], mask.tolist(), strict=True) if m]
    return enc, mask, ids


def test_math_answer_span_starts_and_ends_inside_tokens(tok):
    task = get_task("math500")
    response = "The answer is \\boxed{\\frac{12}{5}} done"
    span = task.answer_span(response)
    assert response[span[0] : span[1]] == "\\frac{12}{5}"
    enc, mask, ids = _tokens_of(tok, response, span)
    offsets = enc["offset_mapping"]
    first, last = mask.nonzero().flatten()[[0, -1]].tolist()
    # the span begins inside the token "{\" and ends inside the token "}}"
    assert offsets[first][0] < span[0] < offsets[first][1]
    assert offsets[last][0] < span[1] < offsets[last][1]
    assert tok.decode(ids) == "{\\frac{12}{5}}"
    # tokens outside the span are not selected
    assert all(
        b <= span[0] or a >= span[1] for (a, b), m in zip(offsets, mask, strict=True) if not m
    )


def test_countdown_answer_span_tokens(tok):
    task = get_task("countdown")
    response = "19 + 17 = 36 </think>\n<answer> (79 - 60) + 17 </answer>"
    span = task.answer_span(response)
    _, _, ids = _tokens_of(tok, response, span)
    assert tok.decode(ids).strip() == "(79 - 60) + 17"


def test_choice_letter_span_tokens(tok):
    task = get_task("crossthinkqa")
    response = "Thus the answer is \\boxed{B}."
    span = task.answer_span(response)
    _, mask, ids = _tokens_of(tok, response, span)
    assert int(mask.sum()) >= 1 and "B" in tok.decode(ids)


def test_question_span_found_in_the_rendered_prompt(tok):
    task = get_task("countdown")
    sample = task.generate(1, seed=3)[0]
    text = tok.apply_chat_template(task.prompt(sample), tokenize=False, add_generation_prompt=True)
    text += task.assistant_prefix(sample)
    span = find_question_span(text, sample["question"])
    assert span is not None and text[span[0] : span[1]] == sample["question"]
    _, _, ids = _tokens_of(tok, text, span)
    assert sample["question"] in tok.decode(ids)


def test_boxed_span_search_is_bounded():
    # issue 12: last_boxed_span('}' * 10**7) took 6.3 s (the cap applied after extraction)
    from ftcli.spans import MAX_SCAN_CHARS, last_boxed_span

    assert last_boxed_span("}" * 10**7) is None
    text = "}" * 10**7 + "\\boxed{42}"
    assert text[slice(*last_boxed_span(text))] == "42"
    # only the last MAX_SCAN_CHARS characters are searched: an earlier box is not seen
    assert last_boxed_span("\\boxed{1}" + "x" * MAX_SCAN_CHARS) is None
    assert last_boxed_span("\\boxed{" + "}" * 10**7) is None
    nested = "\\boxed{" + "{" * 10**6 + "1" + "}" * 10**6 + "}"
    assert last_boxed_span(nested) is None  # opened before the window
    # the usual cases still hold
    assert last_boxed_span("a \\boxed{\\frac{1}{2}} b \\boxed{3} c") == (31, 32)
    assert last_boxed_span("\\boxed{\\boxed{1} + 2}") == (7, 20)  # outermost
