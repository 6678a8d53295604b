"""The pieces the trainer is built from, on their own: the run directory, step statistics,
traced sequences and their collate, the lenient JSONL reader, seed derivation, and the
credit registry's guards."""

import json

import pytest
import torch

from ftcli.credit import RULES, describe_rules, register_rule
from ftcli.io import append_jsonl, read_jsonl
from ftcli.rundir import RunDir
from ftcli.seeds import derive_seed
from ftcli.sequences import Prompt, TracedSeq, collate
from ftcli.train.stats import StepStats


def test_read_jsonl_skips_torn_lines_and_non_objects(tmp_path):
    p = tmp_path / "m.jsonl"
    assert read_jsonl(p) == []  # missing file
    append_jsonl(p, {"step": 1})
    with open(p, "a", encoding="utf-8") as fh:
        fh.write("[1, 2]\n\n{\"step\": 2")  # a list, a blank line, a torn last line
    assert read_jsonl(p) == [{"step": 1}]


def test_derive_seed_is_stable_and_keyed():
    # the values the trainer has always used (a changed seed would change every run)
    assert derive_seed(3, "gen", 1) == 4319698320405420701
    assert derive_seed(0, "val") == 3907112724859870929
    assert derive_seed(0, "gen", 1) != derive_seed(0, "gen", 2) and 0 <= derive_seed("x") < 2**62


def _ckpt(run: RunDir, step: int, final: bool = False):
    tmp = run.checkpoint_tmp(step)
    (tmp / "config.json").write_text("{}")
    (tmp / "rng_state_rank0.pt").write_bytes(b"r")
    return run.commit_checkpoint(tmp, step, {"step": step}, final)


def test_run_dir_layout_prune_truncate_and_finished(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.has_run() and run.step_checkpoints() == {} and not run.is_finished(1)
    for s in (1, 2, 3):
        run.append_metrics({"step": s, "reward_mean": s / 10})
        d = _ckpt(run, s, final=s == 3)
        assert d.name == f"step_{s:06d}" and json.loads((d / "trainer_state.json").read_text()) == {"step": s}
    assert list(run.step_checkpoints()) == [1, 2, 3]
    assert not any(p.name.startswith(".") for p in run.checkpoints.iterdir())  # no temp folders left
    # final: the weights and the state, not the RNG files; each checkpoint with its manifest
    assert sorted(p.name for p in run.final.iterdir()) == ["config.json", "manifest.json", "trainer_state.json"]
    assert sorted(json.loads((run.final / "manifest.json").read_text())["files"]) == ["config.json", "trainer_state.json"]
    assert "rng_state_rank0.pt" in json.loads((d / "manifest.json").read_text())["files"]
    assert run.is_finished(3) and not run.is_finished(4)
    run.prune(keep_last=1, also_keep=1)  # the newest plus the best-validation step
    assert list(run.step_checkpoints()) == [1, 3]
    with open(run.metrics_file, "a", encoding="utf-8") as fh:
        fh.write('{"step": 4')  # torn
    run.truncate_logs(2)
    assert [r["step"] for r in run.metrics()] == [1, 2]
    run.truncate_logs(-1)
    assert run.metrics() == [] and run.metrics_file.read_text() == ""


def test_step_stats_all_reduce_by_name_and_row():
    a = StepStats(sequences=4, reward_sum=2, reward_sq=2, correct=1, response_tokens=40, credited=10,
                  no_answer=1, credit_fallback=0, truncated=2, clipped=4, loss=0.5, kl=0, entropy=8,
                  flat_groups=1, groups=2)
    two = a.all_reduce(lambda xs: [2 * x for x in xs])  # two identical ranks
    assert two.sequences == 8 and two.groups == 4 and two.loss == 1.0
    row = two.row(step=3, lr=1e-4, grad_norms=[1.0, 3.0], kl=False, entropy=True)
    assert row["step"] == 3 and row["reward_mean"] == 0.5 and row["reward_std"] == pytest.approx(0.5)
    assert (row["accuracy"], row["response_len"], row["truncated"], row["frac_credited"]) == (0.25, 10.0, 0.5, 0.25)
    assert (row["no_answer"], row["groups_no_signal"], row["clip_frac"], row["grad_norm"]) == (2, 0.5, 0.1, 2.0)
    assert "kl" not in row and row["entropy"] == 0.2
    assert two.row(1, 0.1, [None], kl=True, entropy=False)["grad_norm"] is None


def test_collate_pads_right_and_marks_q_a_r():
    p = Prompt("text", [5, 6, 7], [False, True, False])
    s1 = p.traced([8, 9], [False, True], advantage=1.5, seed=11)
    s2 = TracedSeq(ids=[1, 2, 3, 4], n_prompt=2, question=[True, True], answer=[False, True])
    assert s1.prompt_ids == [5, 6, 7] and s1.response_ids == [8, 9] and s1.n_response == 2
    b = collate([s1, s2], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 0]]
    assert b["attention_mask"].tolist() == [[True] * 5, [True] * 4 + [False]]
    assert b["response_mask"].tolist() == [[False] * 3 + [True] * 2, [False, False, True, True, False]]
    assert b["question_mask"].tolist() == [[False, True, False, False, False], [True, True, False, False, False]]
    assert b["answer_mask"].tolist() == [[False, False, False, False, True], [False, False, False, True, False]]
    assert b["advantages"].tolist() == [1.5, 0.0] and b["seeds"].tolist() == [11, 0] and b["first"] == 2
    assert b["advantages"].dtype == torch.float32


def test_credit_registry_refuses_duplicates_and_lists_rules():
    with pytest.raises(ValueError, match="already registered"):
        register_rule("flow")(lambda inputs, opts: None)
    assert describe_rules().split(", ") == list(RULES)
    assert "flow: FlowTracer" in describe_rules(summaries=True)
