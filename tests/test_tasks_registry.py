"""Registry, entry points, the task protocol, `ft data`, corrupt rows, split carving."""

import json
import logging
import subprocess
import sys
import textwrap

import pytest
from ftcli.tasks import loading
from ftcli.tasks.base import Task, carve
from typer.testing import CliRunner

from ftcli import get_task, list_tasks
from ftcli.cli import app
from ftcli.spans import find_question_span

needs_data = pytest.mark.needs_data  # conftest: fetched from FT_DATA_MIRROR, else skipped

BUILTIN = [
    "math",
    "math500",
    "aime24",
    "aime25",
    "amc23",
    "olympiadbench",
    "minerva",
    "gsm8k",
    "countdown",
    "crossthinkqa",
]


def test_builtin_names_and_unknown_name():
    assert list_tasks()[: len(BUILTIN)] == BUILTIN
    with pytest.raises(ValueError, match="unknown task 'nope'; known tasks: math, math500"):
        get_task("nope")


def test_get_task_is_lazy_and_never_imports_torch():
    code = (
        "import sys; from ftcli import get_task; t = get_task('countdown'); "
        "t.verify('<answer>1+2</answer>', {'numbers': [1, 2], 'target': 3}); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_entry_point_group(tmp_path, monkeypatch):
    dist = tmp_path / "fttoy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fttoy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ftcli.tasks]\ntoy = fttoy_mod:make\n")
    (tmp_path / "fttoy_mod.py").write_text(
        textwrap.dedent(
            """
            class Toy:
                name = "toy"
                def __init__(self, level=1):
                    self.level = level
            def make(**options):
                return Toy(**options)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy" in list_tasks()
    assert get_task("toy", level=3).level == 3


@needs_data
@pytest.mark.parametrize("name", BUILTIN)
def test_every_task_meets_the_protocol(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    split = "test" if "test" in task.splits else "train"
    sample = task.load(split)[0]
    assert {"id", "question", "answer"} <= set(sample) and isinstance(sample["answer"], str)
    prompt = "\n".join(m["content"] for m in task.prompt(sample))
    assert find_question_span(prompt, sample["question"]) is not None
    assert task.verify("", sample) is False and isinstance(task.reward("", sample), float)
    assert task.answer_span("") is None


def test_carve_is_disjoint_and_reproducible():
    parts = carve(50, {"validation": 5, "test": 10}, seed=0)
    assert parts == carve(50, {"validation": 5, "test": 10}, seed=0)
    assert sorted(sum(parts.values(), [])) == list(range(50))
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [35, 5, 10]
    with pytest.raises(ValueError):
        carve(3, {"validation": 5}, seed=0)


def _write_root(tmp_path, lines):
    folder = tmp_path / "aime24"
    folder.mkdir()
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_corrupt_row_warns_once_with_file_and_line(tmp_path, caplog):
    rows = [
        json.dumps({"id": i, "problem": f"What is {i}+1?", "answer": str(i + 1)}) for i in range(3)
    ]
    root = _write_root(tmp_path, [rows[0], '{"id": 9, "problem": "cut', rows[1], rows[2]])
    with caplog.at_level(logging.WARNING, logger="ftcli.tasks"):
        samples = get_task("aime24", data_root=root).load("test")
        get_task("aime24", data_root=root).load("test")  # cached: no second warning
    assert [s["id"] for s in samples] == ["0", "1", "2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"{root / 'aime24' / 'test.jsonl'}:2:" in warnings[0]


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="FT_DATA"):
        get_task("aime24", data_root=tmp_path).load("test")


@needs_data
def test_ft_data_check_prints_manifest_counts():
    result = CliRunner().invoke(app, ["data", "check"])
    assert result.exit_code == 0, result.output
    out = result.output
    for line in (
        "math500/test.jsonl (500 / 500) ok",
        "gsm8k/train.jsonl (7473 / 7473) ok",
        "countdown/uft_train/train.parquet (10240 / 10240) ok",
        "crossthinkqa/general_CrossThink-QA_deal.jsonl (811 / 811) ok; corrupt line(s) 812",
        "math_train/deepscaler/math.json (7474 / 7474) ok; 4 record(s) without a gold",
    ):
        assert line in out
    assert "all counts match the manifest" in out


@needs_data
def test_ft_data_show():
    result = CliRunner().invoke(app, ["data", "show", "countdown", "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("=== countdown test") == 2
    assert "[assistant, pre-filled]" in result.output and "--> gold: 36" in result.output


def test_ft_data_check_reports_a_mismatch(tmp_path):
    root = _write_root(tmp_path, [json.dumps({"id": 1, "problem": "p", "answer": "1"})])
    result = CliRunner().invoke(app, ["data", "check", "--data-root", str(root)])
    assert result.exit_code == 1
    assert "aime24/test.jsonl (1 / 30) MISMATCH" in result.output
    assert "ERROR" in result.output  # the other files are missing


@pytest.fixture(autouse=True)
def _fresh_loading_cache(monkeypatch):
    monkeypatch.setattr(loading, "_CACHE", dict(loading._CACHE))


@pytest.mark.parametrize("name", ["countdown", "gsm8k", "math500", "crossthinkqa"])
def test_grade_is_the_one_verdict_and_reward(name):
    """The Task protocol's `grade` carries what `verify` and `reward` say (the trainer and
    `ft eval` make one grading call per response)."""
    from ftcli.tasks import get_task

    task = get_task(name)
    samples = {
        "countdown": {"id": 0, "question": "q", "answer": "", "numbers": [3, 4], "target": 7},
        "gsm8k": {"id": 0, "question": "q", "answer": "7"},
        "math500": {"id": 0, "question": "q", "answer": "7"},
        "crossthinkqa": {"id": 0, "question": "q", "answer": "B", "options": ["x", "y"]},
    }
    responses = ["<answer>3 + 4</answer>", "<answer>3 * 4</answer>", "The answer is 7. \\boxed{7}",
                 "\\boxed{B}", "\\boxed{A}", "nothing"]
    for r in responses:
        g = task.grade(r, samples[name])
        assert {"extracted", "correct", "reward"} <= set(g)
        assert g["correct"] == task.verify(r, samples[name]) and g["reward"] == task.reward(r, samples[name])
