"""Generated Countdown: seeded, 3 and 4 numbers, solvable by construction, disjoint streams,
TinyZero's ranges and shape, a task source a run can record; no data files needed."""

import json
import statistics
from fractions import Fraction

import pytest
from ftcli.tasks.countdown import (
    GENERATOR,
    ProblemStream,
    evaluate,
    generate_problems,
    integer_solution,
    parse_expression,
    stream_of,
)

from ftcli import get_task


def _key(s):
    return (tuple(sorted(s["numbers"])), s["target"])


def test_same_seed_same_problems_other_seed_other_problems():
    a = get_task("countdown", source="generated", seed=3).load("train")[:20]
    b = get_task("countdown", source="generated", seed=3).load("train")[:20]
    c = get_task("countdown", source="generated", seed=4).load("train")[:20]
    assert a == b and [_key(s) for s in a] != [_key(s) for s in c]


def test_every_problem_is_solvable_by_its_solution(tmp_path):
    task = get_task("countdown", source="generated", data_root=tmp_path)  # no files needed
    for split in ("train", "validation", "test"):
        for s in task.load(split)[:40]:
            assert len(s["numbers"]) in (3, 4)
            assert 10 <= s["target"] <= 100 and all(1 <= n <= 99 for n in s["numbers"])
            assert task.verify(f"<answer>{s['solution']}</answer>", s), s
            assert task.reward(f"<answer>{s['solution']}</answer>", s) == 1.0
            assert s["question"] in task.prompt(s)[1]["content"]


def test_integer_search_finds_and_refuses():
    expr = integer_solution([79, 17, 60], 36)
    assert expr is not None and evaluate(parse_expression(expr)) == Fraction(36)
    assert integer_solution([1, 1, 1], 97) is None
    assert integer_solution([7, 2, 2], 7) is not None  # exact quotient: 7 * (2 / 2)
    assert integer_solution([7, 2], 3) is None  # 7 / 2 is not an integer step
    assert integer_solution([3, 2], 1) == "3 - 2"


def test_splits_are_disjoint_streams():
    task = get_task("countdown", source="generated", seed=0, val_size=300, test_size=300)
    parts = {s: {_key(x) for x in task.load(s)[:300]} for s in ("train", "validation", "test")}
    assert parts["train"].isdisjoint(parts["validation"])
    assert parts["train"].isdisjoint(parts["test"])
    assert parts["validation"].isdisjoint(parts["test"])
    for split, keys in parts.items():
        assert all(stream_of(list(k[0]), k[1]) == split for k in keys)
    assert len(task.load("validation")) == 300 and len(task.load("train")) == 10240


def test_num_numbers_and_lazy_generation():
    task = get_task("countdown", source="generated", num_numbers=(4,), train_size=50)
    train = task.load("train")
    first = train[:5]
    assert len(train.items) == 5  # nothing beyond what was taken
    assert all(len(s["numbers"]) == 4 for s in first) and len(train) == 50
    assert train[-1] == train[49] and len(train.items) == 50
    with pytest.raises(IndexError):
        train[50]
    with pytest.raises(ValueError, match="no 'dev' split"):
        task.load("dev")
    with pytest.raises(ValueError, match="unknown countdown source 'hub'"):
        get_task("countdown", source="hub")


def test_distribution_has_tinyzero_shape():
    """TinyZero's data (UFT's 10,240 rows): about half 3-number problems, target uniform in
    10..100 (mean 55), numbers skewed small (mean 45: the rejection of unsolvable draws)."""
    probs = generate_problems(600, seed=11)
    three = sum(len(p["numbers"]) == 3 for p in probs) / len(probs)
    nums = [n for p in probs for n in p["numbers"]]
    targets = [p["target"] for p in probs]
    assert 0.4 < three < 0.6
    assert 50 < statistics.mean(targets) < 60
    assert 40 < statistics.mean(nums) < 49  # uniform 1..99 would give 50
    low = sum(n < 10 for n in nums) / len(nums)
    high = sum(n >= 90 for n in nums) / len(nums)
    assert low > high


def test_data_source_is_recorded_as_json():
    gen = get_task("countdown", source="generated", seed=5).data_source()
    assert gen == {
        "source": "generated",
        "generator": GENERATOR,
        "seed": 5,
        "num_numbers": [3, 4],
        "sizes": {"train": 10240, "validation": 500, "test": 1024},
    }
    files = get_task("countdown", data_root="/nonexistent").data_source()
    assert files["source"] == "files" and files["files"]["test"] == {
        "path": "countdown/tinyzero_test/test.parquet",
        "sha256": None,
    }
    json.dumps(gen), json.dumps(files)


def test_task_data_options_carry_the_data_settings(tmp_path):
    from ftcli.tasks.loading import describe_data, task_data_options

    assert task_data_options("aime24") == {}
    assert task_data_options("aime24", tmp_path) == {"data_root": tmp_path}
    assert task_data_options("countdown", None, "files") == {}
    opts = task_data_options("countdown", None, "generated", seed=7)
    assert opts == {"source": "generated", "seed": 7}
    assert describe_data(get_task("countdown", **opts))["seed"] == 7
    assert describe_data(get_task("aime24", data_root=tmp_path)) == {
        "source": "files",
        "root": str(tmp_path),
        "files": {"test": {"path": "aime24/test.jsonl", "sha256": None}},
    }
    with pytest.raises(ValueError, match="task 'gsm8k' has no 'generated' data source"):
        task_data_options("gsm8k", None, "generated")


def test_stream_validates_its_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        ProblemStream(0, (3, 4), "dev")
    with pytest.raises(ValueError, match="num_numbers"):
        ProblemStream(0, (1,))
