"""`ft train` end to end on a tiny random model with DeepSpeed on CPU (in-process, 1 rank;
the 2-rank ZeRO-2 run is marked slow).

The task is a synthetic one (reward = fraction of digits in the response), so that a random
policy gets reward variance and every step has a gradient.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from ftcli.train.config import PRESETS, resolve_config
from ftcli.train.loop import train

TOY_TASK = textwrap.dedent(
    '''
    class ToyTask:
        """reward = fraction of digit characters; the answer = the last 3 characters."""

        name = "toy"

        def __init__(self, interrupt_at_call=None):
            self.calls, self.interrupt_at_call = 0, interrupt_at_call

        def load(self, split="train"):
            off = 0 if split == "train" else 100
            return [{"id": i, "question": f"{i + off}+{(7 * i) % 10}", "answer": "0"} for i in range(24)]

        def prompt(self, s):
            return [{"role": "user", "content": f"Compute {s['question']}."}]

        def assistant_prefix(self, s):
            return ""

        def answer_span(self, r):
            r2 = r.rstrip()
            return (len(r2) - 3, len(r2)) if len(r2) >= 3 else None

        def grade(self, r, s):
            self.calls += 1
            if self.interrupt_at_call is not None and self.calls >= self.interrupt_at_call:
                raise KeyboardInterrupt
            frac = sum(c.isdigit() for c in r) / max(len(r), 1)
            span = self.answer_span(r)
            return {"extracted": r[span[0]:span[1]] if span else None, "correct": frac > 0.1, "reward": frac}

        def reward(self, r, s):
            return self.grade(r, s)["reward"]

        def verify(self, r, s):
            return self.grade(r, s)["correct"]
    '''
)
_ns: dict = {}
exec(TOY_TASK, _ns)
ToyTask = _ns["ToyTask"]

SMALL = dict(model="tiny-qwen3", prompts=2, group_size=4, micro_batch=4, max_new_tokens=16, val_every=0,
             lr=1e-3, progress=False, log_samples=2)


def _run(tmp_path, name, task=None, resume=False, **kw):
    cfg = resolve_config(**{**SMALL, "out": str(tmp_path / name), **kw})
    train(cfg, task=task or ToyTask(), resume=resume)
    return tmp_path / name


def _metrics(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def _weights(run, ckpt="final"):
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / ckpt / "model.safetensors"))


def _initial_weights():
    from ftcli.fetch.models import load_model

    return {k: v.clone() for k, v in load_model("tiny-qwen3")[0].state_dict().items()}


EXTRA = {  # other objective paths ride along: KL + entropy bonus, PPO mini-batches, ZeRO-1/3
    "entropy": dict(kl_coef=0.05, entropy_coef=0.01),
    "clip-cov": dict(mini_batches=2, zero_stage=1),
    "correlation": dict(zero_stage=3),  # its own forward of the partitioned policy
    "attention": dict(zero_stage=3, weighting="tanh"),
    "random": dict(select="bottom", nonneg_only=True),
    "gradient": dict(gamma=1.0, rest_weight=0.0),  # trained on the set alone
    "fai": dict(bf16=True),  # DeepSpeed bf16 on CPU: bf16 weights, packed rows attended in fp32
    "flow": dict(bf16=True, pack=False),
}


@pytest.mark.parametrize("credit", ["none", "random", "entropy", "gradient", "correlation", "attention", "flow",
                                    "clip-cov", "fai"])
def test_every_rule_runs_a_step_and_changes_the_weights(tmp_path, credit):
    run = _run(tmp_path, credit, credit=credit, steps=1, **EXTRA.get(credit, {}))
    w0, w1 = _initial_weights(), _weights(run)
    changed = [k for k in w1 if k in w0 and not torch.equal(w0[k].to(w1[k].dtype), w1[k])]  # bf16: as loaded
    assert len(changed) > len(w1) // 2
    (m,) = _metrics(run)
    assert m["step"] == 1 and m["grad_norm"] > 0 and math_finite(m["loss"])
    if credit == "none":
        assert m["frac_credited"] == 0
    elif credit == "attention":  # continuous weighting: every above-mean token gets some credit
        assert 0 < m["frac_credited"] < 1
    else:
        assert 0 < m["frac_credited"] <= 0.5
    if credit == "entropy":
        assert m["kl"] >= 0 and m["entropy"] > 0
    if credit == "clip-cov":
        assert m["clip_frac"] > 0  # the second mini-batch is off-policy


def math_finite(x):
    return x == x and abs(x) < float("inf")


def test_all_weights_one_is_plain_grpo(tmp_path):
    a = _weights(_run(tmp_path, "none", credit="none", steps=1))
    b = _weights(_run(tmp_path, "flow_g1", credit="flow", gamma=1.0, steps=1))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flow_weights_equal_trace_flow_and_fused_equals_separate(tmp_path):
    from ftcli.attention import mean_attention
    from ftcli.fetch.models import load_model
    from ftcli.flow import trace_flow
    from ftcli.generation import encode_prompt
    from ftcli.spans import find_question_span, span_to_token_mask

    fused = _run(tmp_path, "fused", credit="flow", steps=1)
    model, tok = load_model("tiny-qwen3")  # the step-1 policy (same seeded init)
    rows = [json.loads(x) for x in (fused / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["step"] == 1 for r in rows)
    task = ToyTask()
    for r in rows:
        p_ids = encode_prompt(tok, r["prompt"])
        ids = torch.tensor([p_ids + r["response_ids"]])
        n_p, T = len(p_ids), ids.shape[1]
        enc = tok(r["prompt"], add_special_tokens=False, return_offsets_mapping=True)
        q = torch.zeros(1, T, dtype=torch.bool)
        q[0, :n_p] = span_to_token_mask(enc["offset_mapping"], find_question_span(r["prompt"], re.search(r"Compute (.*?)\.", r["prompt"]).group(1)))
        a = torch.zeros(1, T, dtype=torch.bool)
        offs = [(i, i + len(t)) for i, t in zip(_starts(r["tokens"]), r["tokens"], strict=True)]
        a[0, n_p:] = span_to_token_mask(offs, task.answer_span(r["response"]))
        resp = torch.zeros(1, T, dtype=torch.bool)
        resp[0, n_p:] = True
        W = mean_attention(model, ids, torch.ones_like(ids))
        ref = trace_flow(W, q, a, resp)
        assert r["weights"] == ref.weights[0, n_p:].tolist()
        assert r["credited"] == ref.mask[0, n_p:].nonzero()[:, 0].tolist()
    sep = _run(tmp_path, "separate", credit="flow", credit_pass="separate", steps=1)
    wf, ws = _weights(fused), _weights(sep)
    assert all(torch.allclose(wf[k], ws[k], atol=1e-6) for k in wf)
    assert [json.loads(x)["weights"] for x in (sep / "samples.jsonl").read_text().splitlines()] == [r["weights"] for r in rows]


def _starts(tokens):
    pos, out = 0, []
    for t in tokens:
        out.append(pos)
        pos += len(t)
    return out


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_split_does_not_change_the_update(tmp_path, agg):
    ra = _run(tmp_path, "m8", micro_batch=8, loss_agg=agg, credit="flow", steps=1)
    rb = _run(tmp_path, "m3", micro_batch=3, loss_agg=agg, credit="flow", steps=1)
    (ma,), (mb,) = _metrics(ra), _metrics(rb)
    assert mb["loss"] == pytest.approx(ma["loss"], rel=1e-5)
    assert mb["grad_norm"] == pytest.approx(ma["grad_norm"], rel=1e-6)  # the same global gradient
    a, b = _weights(ra), _weights(rb)
    # Adam's first step is ~lr * sign(g): float noise in near-zero gradient entries (different
    # padding per micro-batch) moves a handful of single weights by up to ~lr/40 (lr 1e-3)
    d = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float((d > 1e-6).float().mean()) < 1e-4 and float(d.max()) < 1e-4


def test_run_dir_resume_and_ctrl_c(tmp_path):
    """4 steps straight == 2 steps, Ctrl-C during step 3 (saves step 2), --resume to 4; with a
    3-update lr warm-up, whose position the resume must restore."""
    from transformers import AutoModelForCausalLM

    full = _run(tmp_path, "full", credit="flow", steps=4, save_every=2, val_every=2, val_size=4, warmup_steps=3)
    # the run directory
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["credit"] == "flow" and cfg["deepspeed"]["zero_optimization"]["stage"] == 0
    assert cfg["world_size"] == 1 and "versions" in cfg
    m = _metrics(full)
    assert [r["step"] for r in m] == [0, 1, 2, 3, 4]
    assert set(m[0]) == {"step", "val_accuracy"}  # the starting policy, validated before step 1
    for key in ("reward_mean", "reward_std", "accuracy", "response_len", "frac_credited", "no_answer",
                "loss", "grad_norm", "clip_frac"):
        assert key in m[1]
    assert "val_accuracy" in m[2] and "val_accuracy" in m[4] and "val_accuracy" not in m[1]
    assert [r["lr"] for r in m[1:]] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    row = json.loads((full / "metrics.jsonl").read_text().splitlines()[1])
    assert all(f"time_{k}" in row for k in ("gen", "credit", "fwd_bwd", "optim", "step"))
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["final", "step_000002", "step_000004"]
    ck = full / "checkpoints" / "step_000004"
    assert (ck / "model.safetensors").is_file() and (ck / "ds").is_dir() and (ck / "rng_state_rank0.pt").is_file()
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["prompts_consumed"] == 8
    hf = AutoModelForCausalLM.from_pretrained(str(full / "checkpoints" / "final"))
    fw = _weights(full)
    assert all(torch.equal(v, fw[k]) for k, v in hf.state_dict().items() if k in fw)
    # interrupted during step 3 (one grade per rollout: 8 per step, 4 per validation): step 2
    # is saved, then the error surfaces
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "cut", task=ToyTask(interrupt_at_call=4 + 8 * 2 + 4 + 3), credit="flow", steps=4,
             save_every=0, val_every=2, val_size=4, warmup_steps=3)
    cut = tmp_path / "cut"
    assert [p.name for p in (cut / "checkpoints").iterdir() if p.name.startswith("step")] == ["step_000002"]
    assert [r["step"] for r in _metrics(cut)] == [0, 1, 2]
    with pytest.raises(ValueError, match="--resume"):
        _run(tmp_path, "cut", credit="flow", steps=4, save_every=0, val_every=2, val_size=4, warmup_steps=3)
    _run(tmp_path, "cut", resume=True, credit="flow", steps=4, save_every=0, val_every=2, val_size=4, warmup_steps=3)
    assert _metrics(cut) == m
    cw = _weights(cut)
    assert all(torch.equal(cw[k], fw[k]) for k in fw)


def test_ctrl_c_after_the_update_finishes_the_step(tmp_path):
    """A Ctrl-C once the weights have changed is held: the step is logged and saved, then stop."""
    import signal

    from ftcli.train.loop import Trainer

    class Interrupted(Trainer):
        def update(self, seqs, timer):
            out = super().update(seqs, timer)
            if self.completed == 1:  # during step 2, after its optimizer update
                signal.raise_signal(signal.SIGINT)
            return out

    cfg = resolve_config(**{**SMALL, "out": str(tmp_path / "r"), "steps": 4, "save_every": 0})
    t = Interrupted(cfg, task=ToyTask())
    with pytest.raises(KeyboardInterrupt):
        t.run()
    t.close()
    assert [r["step"] for r in _metrics(tmp_path / "r")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["step_000002"]


def test_presets_and_cli_help():
    paper = resolve_config("paper")
    assert (paper.prompts * paper.group_size, paper.micro_batch, paper.lr, paper.temperature,
            paper.top_p, paper.top_k, paper.max_new_tokens, paper.gamma, paper.ratio, paper.layers) == \
        (512, 32, 1e-6, 0.99, 1.0, 100, 1024, 1.5, 0.4, "mid")
    assert resolve_config("paper", lr=2e-6).lr == 2e-6 and set(PRESETS) >= {"cpu", "paper"}
    with pytest.raises(ValueError, match="unknown credit rule"):
        resolve_config(credit="saliency")
    from typer.testing import CliRunner

    from ftcli.cli import app

    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "--credit-pass" in res.output and "--zero-stage" in res.output and "--preset" in res.output


def test_cpu_defaults_train_the_default_policy():
    cfg = resolve_config()
    assert (cfg.model, cfg.task, cfg.credit, cfg.train_size, cfg.val_every) == ("default-policy", "countdown", "flow", 32, 10)
    assert resolve_config("paper").train_size == 0  # the paper trains on the whole split
    with pytest.raises(ValueError, match="train-size"):
        resolve_config(train_size=-1)


@pytest.mark.parametrize("source", ["generated", pytest.param("files", marks=pytest.mark.needs_data)])
def test_cli_train_end_to_end(tmp_path, source):
    """`ft train` through Typer's runner on Countdown (generated by default: no files; or
    TinyZero's files): the starting policy is validated (step 0), the pool of --train-size
    problems is the one trained on, config.json records the data, the summary is printed."""
    from typer.testing import CliRunner

    from ftcli.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "train", "--model", "tiny-qwen3", "--task", "countdown", "--credit", "flow", "--steps", "2",
        "--prompts", "2", "--group-size", "2", "--max-new-tokens", "8", "--train-size", "2",
        "--val-every", "1", "--val-size", "3", "--out", str(out), "--seed", "3",
        *(["--data-source", "files"] if source == "files" else [])], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "done: 2 steps" in res.output and "val accuracy" in res.output
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2] and "val_accuracy" in rows[0] and "val_accuracy" in rows[2]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_size"] == 2 and cfg["model"] == "tiny-qwen3" and cfg["data_source"] == source
    if source == "generated":  # the generator and its seed (--seed), or the files and their sha256
        assert (cfg["data"]["source"], cfg["data"]["seed"]) == ("generated", 3)
    else:
        assert cfg["data"]["source"] == "files"
        assert all(len(f["sha256"]) == 64 for f in cfg["data"]["files"].values())
    # both steps drew their 2 prompts from the first 2 training problems
    from ftcli.tasks import get_task

    pool = {str(s["id"]) for s in get_task("countdown", source=source, seed=3).load("train")[:2]}
    seen = {str(json.loads(x)["id"]) for x in (out / "samples.jsonl").read_text().splitlines()}
    assert seen and seen <= pool, (seen, pool)
    bad = CliRunner().invoke(app, ["train", "--train-size", "-3", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "train-size" in bad.output


WORKER = TOY_TASK + textwrap.dedent(
    '''
    import hashlib, os, sys, torch
    torch.set_num_threads(1)
    from ftcli.train.config import resolve_config
    from ftcli.train.loop import Trainer
    cfg = resolve_config(model="tiny-qwen3", prompts=2, group_size=4, micro_batch=int(sys.argv[3]),
                         max_new_tokens=16, lr=1e-3, progress=False, credit="flow", steps=2, val_every=0,
                         zero_stage=int(sys.argv[2]), out=sys.argv[1])
    t = Trainer(cfg, task=ToyTask())
    t.run()
    h = hashlib.sha256()
    sd = {k: v.detach().float().cpu() for k, v in t.engine.module.state_dict().items()}
    torch.save(sd, os.path.join(sys.argv[1], f"weights_rank{t.rank}.pt"))
    for k in sorted(sd):
        h.update(sd[k].numpy().tobytes())
    open(os.path.join(sys.argv[1], f"digest_rank{t.rank}.txt"), "w").write(h.hexdigest())
    t.close()
    torch.distributed.barrier()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
    '''
)


@pytest.mark.slow
def test_two_process_zero2_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 300), str(script), str(two), "2", "4"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    d0, d1 = two / "digest_rank0.txt", two / "digest_rank1.txt"
    assert d0.is_file() and d1.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    assert d0.read_text() == d1.read_text()
    # the same global batch on one process (micro 4, 2 accumulation steps) gives the same model
    res = subprocess.run([sys.executable, str(script), str(one), "2", "4"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert (one / "weights_rank0.pt").is_file(), res.stderr[-3000:]
    a, b = torch.load(one / "weights_rank0.pt"), torch.load(two / "weights_rank0.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward_mean"] for r in m1] == pytest.approx([r["reward_mean"] for r in m2])
    _ = hashlib  # digest computed in the worker


def test_resume_without_checkpoint_starts_over_cleanly(tmp_path):
    """Interrupted before any checkpoint (in step 1, after the 4 grades of the step-0
    validation): --resume starts from step 0 and the log holds one step-0 validation, not the
    old one plus a new one."""
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "r", task=ToyTask(interrupt_at_call=4 + 3), credit="none", steps=2, save_every=0,
             val_every=2, val_size=4)
    assert [r["step"] for r in _metrics(tmp_path / "r")] == [0]
    _run(tmp_path, "r", resume=True, credit="none", steps=2, save_every=0, val_every=2, val_size=4)
    assert [r["step"] for r in _metrics(tmp_path / "r")] == [0, 1, 2]


def test_short_runs_skip_validation_and_paper_reads_files(tmp_path):
    """A run shorter than --val-every is not validated (a 2-step smoke run with the defaults
    costs no 200-problem validation); the paper preset trains on the files."""
    assert not resolve_config(steps=2).validates and resolve_config(steps=10).validates
    assert not resolve_config(steps=30, val_every=0).validates
    assert (resolve_config().data_source, resolve_config("paper").data_source) == ("generated", "files")
    with pytest.raises(ValueError, match="data-source"):
        resolve_config(data_source="hub")
    run = _run(tmp_path, "short", credit="none", steps=2, val_every=10, val_size=4)
    assert [r["step"] for r in _metrics(run)] == [1, 2] and all("val_accuracy" not in r for r in _metrics(run))


class _NoTrainTask(ToyTask):
    def load(self, split="train"):
        return [] if split == "train" else super().load(split)


def test_a_failure_before_the_first_step_leaves_no_run_folder(tmp_path):
    with pytest.raises(ValueError, match="no training samples"):  # the data is read before --out is made
        _run(tmp_path, "new", task=_NoTrainTask(), steps=2)
    assert not (tmp_path / "new").exists()
    missing = tmp_path / "no-such-model"  # fails after --out was made: the folder is removed again
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises
        _run(tmp_path, "new", model=str(missing), steps=2)
    assert not (tmp_path / "new").exists()
    # a folder that was there before (a resumed run, or the user's) is never removed
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no training samples"):
        _run(tmp_path, "old", task=_NoTrainTask(), steps=2)
    with pytest.raises(ValueError, match="no training samples"):
        _run(tmp_path, "old", task=_NoTrainTask(), steps=2, resume=True)
    assert (old / "notes.txt").read_text() == "mine"


def test_missing_data_file_is_one_line_and_leaves_no_run_folder(tmp_path):
    """`--data-source files` with an empty data root: one line naming the file and the fetch
    command, and no run folder."""
    from typer.testing import CliRunner

    from ftcli.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "train", "--model", "tiny-qwen3", "--steps", "1", "--data-source", "files",
        "--data-root", str(tmp_path / "empty"), "--out", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code != 0
    assert "countdown/uft_train/train.parquet" in res.output and "ft data fetch countdown" in res.output
    assert "Traceback" not in res.output and not out.exists()
