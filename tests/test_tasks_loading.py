"""Bad benchmark data is refused in one line naming the file and the line (issue 12):
missing, null, empty or mistyped fields, unreadable files, physical line numbers."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ftcli.tasks.loading import DataError, read_records
from typer.testing import CliRunner

from ftcli import get_task
from ftcli.cli import app


def _jsonl(root, rel, rows):
    """Write rows (dicts, or raw str/bytes lines) as JSON Lines under root/rel."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    out = b""
    for row in rows:
        if isinstance(row, dict):
            row = json.dumps(row)
        out += (row.encode() if isinstance(row, str) else row) + b"\n"
    path.write_bytes(out)
    return path


def _load_error(name, root, split="test"):
    with pytest.raises(DataError) as e:
        get_task(name, data_root=root).load(split)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


MATH_OK = {"unique_id": "a", "problem": "What is 1+1?", "answer": "2"}
GSM_OK = {"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}


# ---------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------
def test_math_row_without_problem(tmp_path):
    path = _jsonl(tmp_path, "math500/test.jsonl", [MATH_OK, {"unique_id": "b", "answer": "3"}])
    assert _load_error("math500", tmp_path) == (
        f"{path}:2: field problem: missing, expected a non-empty string"
    )


def test_math_answer_list_is_not_a_gold(tmp_path):
    path = _jsonl(tmp_path, "math500/test.jsonl", [MATH_OK, {**MATH_OK, "answer": ["1", "2"]}])
    assert _load_error("math500", tmp_path) == (
        f"{path}:2: field answer: list ['1', '2'], expected a string or a number"
    )


@pytest.mark.parametrize(
    "value, problem",
    [("  ", "empty"), (None, "null"), (True, "bool True"), ({"x": 1}, "dict {'x': 1}")],
)
def test_math_bad_gold_values(tmp_path, value, problem):
    path = _jsonl(tmp_path, "aime24/test.jsonl", [{"id": 1, "problem": "p", "answer": value}])
    assert _load_error("aime24", tmp_path).startswith(f"{path}:1: field answer: {problem}")


def test_math_train_json_array_names_the_record(tmp_path):
    path = tmp_path / "math_train" / "deepscaler" / "math.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"problem": "p", "answer": "1"}, {"problem": 7, "answer": "1"}]))
    assert _load_error("math", tmp_path, "train") == (
        f"{path}:record 2: field problem: int 7, expected a non-empty string"
    )
    path.write_text('[{"problem": "p", "answer": "1"},\n 5]')
    assert _load_error("math", tmp_path, "train") == f"{path}:record 2: not a JSON object"
    path.write_text('[{"problem": "p",\n "answer": }]')
    assert _load_error("math", tmp_path, "train").startswith(f"{path}:2: not valid JSON")


def test_math_train_rows_without_gold_are_still_skipped(tmp_path):
    path = tmp_path / "math_train" / "deepscaler" / "math.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"problem": "p", "answer": "1"}, {"problem": "q", "answer": None}]))
    assert len(get_task("math", data_root=tmp_path, val_size=0).load("train")) == 1


def test_olympiadbench_final_answer_must_be_strings(tmp_path):
    row = {"id": 1, "question": "q", "final_answer": [3]}
    path = _jsonl(tmp_path, "olympiadbench/test.jsonl", [row])
    assert _load_error("olympiadbench", tmp_path) == (
        f"{path}:1: field final_answer: list [3], expected a non-empty string or a non-empty "
        "list of strings"
    )


# ---------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------
def test_gsm8k_question_null(tmp_path):
    path = _jsonl(tmp_path, "gsm8k/test.jsonl", [GSM_OK, GSM_OK, {**GSM_OK, "question": None}])
    assert _load_error("gsm8k", tmp_path) == (
        f"{path}:3: field question: null, expected a non-empty string"
    )


def test_gsm8k_answer_null_or_without_marker_or_not_a_number(tmp_path):
    path = _jsonl(tmp_path, "gsm8k/test.jsonl", [{**GSM_OK, "answer": None}])
    assert _load_error("gsm8k", tmp_path) == f"{path}:1: field answer: null, expected a non-empty string"
    path = _jsonl(tmp_path, "gsm8k/test.jsonl", [{**GSM_OK, "answer": "it is 4"}])
    assert _load_error("gsm8k", tmp_path) == f"{path}:1: field answer: no '####' final-answer marker"
    path = _jsonl(tmp_path, "gsm8k/test.jsonl", [{**GSM_OK, "answer": "so\n#### x36"}])
    assert _load_error("gsm8k", tmp_path) == (
        f"{path}:1: field answer: final answer 'x36' is not a number"
    )


def test_empty_gsm8k_file_and_file_without_records(tmp_path):
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert _load_error("gsm8k", tmp_path) == f"{path}: empty file (0 bytes)"
    path.write_bytes(b"\n  \n")
    assert _load_error("gsm8k", tmp_path) == f"{path}: no records"


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    path = _jsonl(tmp_path, "gsm8k/test.jsonl", [GSM_OK, b'{"question": "caf\xe9", "answer": "#### 1"}'])
    assert _load_error("gsm8k", tmp_path) == (
        f"{path}:2: not valid UTF-8 (byte 0xe9 at column 18)"
    )


def test_carriage_return_does_not_shift_line_numbers(tmp_path):
    bad = '{"question": "q",\r "answer": null}'  # \r is JSON whitespace here
    path = _jsonl(tmp_path, "gsm8k/test.jsonl", [GSM_OK, bad, GSM_OK, GSM_OK])
    assert _load_error("gsm8k", tmp_path) == (
        f"{path}:2: field answer: null, expected a non-empty string"
    )
    records = read_records(_jsonl(tmp_path, "x/a.jsonl", [GSM_OK, '{"a":\r 1}', "{bad\r}", GSM_OK]))
    assert records.lines == (1, 2, 4) and records.corrupt_lines == (3,)


def test_byte_order_mark_and_crlf_line_ends_are_read(tmp_path):
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True)
    line = json.dumps(GSM_OK).encode()
    path.write_bytes(b"\xef\xbb\xbf" + line + b"\r\n" + line + b"\r\n")
    assert len(get_task("gsm8k", data_root=tmp_path).load("test")) == 2


def test_corrupt_json_line_with_carriage_return_is_one_warning(tmp_path, caplog):
    path = _jsonl(tmp_path, "gsm8k/test.jsonl", [GSM_OK, '{"question": "a\rb", "ans', GSM_OK, GSM_OK])
    with caplog.at_level(logging.WARNING, logger="ftcli.tasks"):
        assert len(get_task("gsm8k", data_root=tmp_path).load("test")) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:2: skipped a corrupt row")


# ---------------------------------------------------------------------------------------------
# CrossThinkQA
# ---------------------------------------------------------------------------------------------
CTQ_PROMPT = "Answer the following single choice question.\nWhat is red?\nA: a colour\nB: a fruit"


def test_crossthinkqa_missing_ground_truth_and_bad_labels(tmp_path):
    rel = "crossthinkqa/general_CrossThink-QA_deal.jsonl"
    ok = {"id": 1, "prompt": CTQ_PROMPT, "ground_truth": "A: a colour"}
    path = _jsonl(tmp_path, rel, [ok, {"id": 2, "prompt": CTQ_PROMPT}])
    assert _load_error("crossthinkqa", tmp_path, "train") == (
        f"{path}:2: field ground_truth: missing, expected a non-empty string"
    )
    path = _jsonl(tmp_path, rel, [{**ok, "ground_truth": "F: nothing"}])
    assert _load_error("crossthinkqa", tmp_path, "train") == (
        f"{path}:1: field ground_truth: letter F is not one of 2 options"
    )
    path = _jsonl(tmp_path, rel, [{**ok, "ground_truth": "a colour"}])
    assert "field ground_truth: 'a colour' is not 'X: text'" in _load_error(
        "crossthinkqa", tmp_path, "train"
    )
    path = _jsonl(tmp_path, rel, [{**ok, "prompt": "Answer.\nno options here"}])
    assert _load_error("crossthinkqa", tmp_path, "train") == (
        f"{path}:1: field prompt: no lettered options (A: ..., B: ...)"
    )


# ---------------------------------------------------------------------------------------------
# Countdown (parquet)
# ---------------------------------------------------------------------------------------------
def _parquet(root, rows, rel="countdown/tinyzero_test/test.parquet"):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_countdown_missing_nums_and_bad_target(tmp_path):
    path = _parquet(tmp_path, [{"nums": [1, 2, 3], "target": 6}, {"target": 5}])
    assert _load_error("countdown", tmp_path) == (
        f"{path}:row 2: field nums: null, expected a non-empty list of integers"
    )
    path = _parquet(tmp_path, [{"nums": [1, 2, 3], "target": "x36"}])
    assert _load_error("countdown", tmp_path) == (
        f"{path}:row 1: field target: str 'x36', expected an integer"
    )
    path = _parquet(tmp_path, [{"nums": [7], "target": 7}])
    assert _load_error("countdown", tmp_path) == f"{path}:row 1: field nums: [7] has fewer than 2 numbers"


def test_unreadable_parquet_files_are_one_line(tmp_path):
    path = tmp_path / "countdown" / "tinyzero_test" / "test.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert _load_error("countdown", tmp_path) == f"{path}: empty file (0 bytes)"
    path.write_bytes(b"PAR1 this is not parquet at all")
    msg = _load_error("countdown", tmp_path)
    assert msg.startswith(f"{path}: not a readable parquet file (")
    empty = pa.Table.from_pylist([{"nums": [1, 2], "target": 3}]).slice(0, 0)
    pq.write_table(empty, path)
    assert _load_error("countdown", tmp_path) == f"{path}: no records"


# ---------------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------------
def test_ft_data_check_fails_on_a_bad_row(tmp_path):
    path = _jsonl(tmp_path, "math500/test.jsonl", [MATH_OK, {"unique_id": "b", "answer": "3"}])
    res = CliRunner().invoke(app, ["data", "check", "--data-root", str(tmp_path)])
    assert res.exit_code == 1
    assert f"math500       ERROR: {path}:2: field problem: missing" in res.output


def test_ft_data_show_on_an_empty_file_is_one_error_line(tmp_path):
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    res = CliRunner().invoke(app, ["data", "show", "gsm8k", "--data-root", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"Error: {path}: empty file (0 bytes)  (FT_DEBUG=1 for the traceback)"
    ]
