"""Rollouts from a real vLLM engine on CPU (`ftcli.vllm_engine`): training with weight sync,
parity with the HF loop, `ft eval --backend vllm`.

Marked `vllm`: run in the venv of `just vllm-setup` with `just test-vllm`; skipped, with the
reason, where vLLM is not installed. One engine serves the whole module (`VLLMEngine.shared`;
building it takes 5-60 s on a loaded 2-core machine), as one serves a whole training run.
"""

import json
import os

import pytest
import torch

from ftcli.vllm_engine import vllm_missing

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(vllm_missing() is not None, reason=str(vllm_missing()))]

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: the weights are reachable

GAP_MAX = 1e-3  # the largest mean |logp_vllm - logp_trainer| a synced step may show


@pytest.fixture(scope="module")
def policy():
    """The shipped default policy (HF model, tokenizer), the countdown task (generated
    problems, no files) and the vLLM engine built from the policy's folder."""
    from ftcli.tasks.loading import task_data_options

    from ftcli import get_task
    from ftcli.fetch.models import load_model, resolve_model
    from ftcli.vllm_engine import EngineOptions, VLLMEngine

    model, tok = load_model("default-policy")
    task = get_task("countdown", **task_data_options("countdown", None, "generated", 0))
    engine = VLLMEngine.shared(EngineOptions(model=str(resolve_model("default-policy"))))
    return model.eval(), tok, task, engine


def _prompts(tok, task, n=16):
    from ftcli.sequences import task_prompt_text

    data = task.load("train")
    return [data[i] for i in range(n)], [task_prompt_text(tok, task, data[i]) for i in range(n)]


def _gaps(rows: list[dict]) -> list[float]:
    return [r["rollout_logprob_gap"] for r in rows if "rollout_logprob_gap" in r]


def _train(tmp_path, name: str, steps: int, **kw) -> list[dict]:
    from ftcli.train.config import resolve_config
    from ftcli.train.loop import train

    cfg = resolve_config(rollout="vllm", steps=steps, lr=1e-3, out=str(tmp_path / name), progress=False, **kw)
    run = train(cfg)
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_with_vllm_rollouts_stays_in_sync(tmp_path, policy):
    """`ft train --rollout vllm --steps 3 --lr 1e-3` (the default job's shape): every step
    logs a log-prob gap below 1e-3 and `time_sync`, while the weights change; validation
    (steps 0 and 3) samples through the same engine."""
    from safetensors.torch import load_file

    rows = _train(tmp_path, "sync", 3, val_every=3, val_size=16)
    steps = [r for r in rows if r["step"] > 0 and "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert r["rollout_logprob_gap"] < GAP_MAX, r
        assert 0 <= r["time_sync"] < 5 and r["rollout_kl"] < GAP_MAX and r["grad_norm"] > 0
    assert {r["step"] for r in rows if "val_accuracy" in r} == {0, 3}
    model, *_ = policy
    final = load_file(str(tmp_path / "sync" / "checkpoints" / "final" / "model.safetensors"))
    moved = max(float((final[n] - p.detach()).abs().max()) for n, p in model.named_parameters() if n in final)
    assert moved > 1e-3  # lr 1e-3: the policy the engine follows really changed


def test_resume_and_zero3_sync(tmp_path, policy):
    """A resumed run gives the engine the checkpoint's weights before its first rollout (the
    engine is put back to the files' weights in between), and under ZeRO-3 the sync gathers
    one parameter at a time: both keep the gap below 1e-3."""
    from ftcli.train.config import resolve_config
    from ftcli.train.loop import train

    *_, engine = policy
    small = dict(prompts=4, group_size=4, max_new_tokens=64, val_every=0)
    _train(tmp_path, "res", 1, **small)
    engine.reset_weights()  # what a fresh process would have: the policy's files, not step 1
    cfg = resolve_config(rollout="vllm", steps=2, lr=1e-3, out=str(tmp_path / "res"), progress=False, **small)
    rows = [json.loads(x) for x in (train(cfg, resume=True) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and _gaps(rows)[-1] < GAP_MAX
    z3 = _train(tmp_path, "z3", 2, zero_stage=3, **small)
    assert len(_gaps(z3)) == 2 and max(_gaps(z3)) < GAP_MAX, _gaps(z3)


def test_train_without_sync_fails_the_gap_check(tmp_path, monkeypatch):
    """The test hook: with the weight sync skipped the engine keeps sampling from old
    weights, and the gap check above fails from the second step on."""
    from ftcli.train.loop import Trainer

    monkeypatch.setattr(Trainer, "_sync_rollout_weights", lambda self: None)
    rows = _train(tmp_path, "nosync", 2, prompts=8, val_every=0)
    gaps = _gaps(rows)
    assert len(gaps) == 2 and max(gaps) > 10 * GAP_MAX, gaps
    with pytest.raises(AssertionError):
        for g in gaps:
            assert g < GAP_MAX


def test_vllm_and_hf_give_the_same_rollouts_and_rewards(policy):
    """Greedy: both paths give the same tokens, texts, offsets, `finished` flags and rewards
    for the same prompts. Sampled: vLLM's rows follow the HF path's conventions (stop token
    last iff finished, cut at max_new_tokens otherwise), are reproducible from (seed, key, j)
    and change with the key; vLLM's log-probs equal the trainer's (fp32)."""
    from ftcli.generation import generate, stop_token_ids
    from ftcli.vllm_engine import stream_parameters

    model, tok, task, engine = policy
    engine.load_weights(stream_parameters(model))  # a training test before may have moved its weights
    samples, prompts = _prompts(tok, task)
    stops = stop_token_ids(model, tok)
    hf = generate(model, tok, prompts, n=1, max_new_tokens=192, temperature=0)
    vl = engine.generate(tok, prompts, stops=stops, n=1, max_new_tokens=192, temperature=0)
    for s, (a,), (b,) in zip(samples, hf, vl, strict=True):
        assert (a.prompt_ids, a.response_ids, a.response_text) == (b.prompt_ids, b.response_ids, b.response_text)
        assert (a.finished, a.response_offsets) == (b.finished, b.response_offsets)
        assert task.reward(a.response_text, s) == task.reward(b.response_text, s)

    keys = list(range(100, 116))
    g1 = engine.generate(tok, prompts, stops=stops, n=4, max_new_tokens=24, seed=3, keys=keys)
    g2 = engine.generate(tok, prompts, stops=stops, n=4, max_new_tokens=24, seed=3, keys=keys)
    g3 = engine.generate(tok, prompts, stops=stops, n=4, max_new_tokens=24, seed=3, keys=[k + 1 for k in keys])
    ids = lambda g: [r.response_ids for grp in g for r in grp]  # noqa: E731
    assert ids(g1) == ids(g2) and ids(g1) != ids(g3)
    rows = [r for grp in g1 for r in grp]
    assert len({tuple(r.response_ids) for r in rows}) > len(prompts)  # rows of a group differ
    for r in rows:
        assert r.finished == (r.response_ids[-1] in stops)
        assert r.finished or len(r.response_ids) == 24
        assert len(r.logprobs) == len(r.response_ids) and max(r.logprobs) <= 0
    gap = []
    for r in rows[:8]:
        x = torch.tensor([r.prompt_ids + r.response_ids])
        with torch.no_grad():
            logits = model(x).logits[0, len(r.prompt_ids) - 1 : -1].float()  # [T, V]
        lp = logits.log_softmax(-1).gather(-1, torch.tensor(r.response_ids)[:, None])[:, 0]  # [T]
        gap.append((lp - torch.tensor(r.logprobs)).abs().max())
    assert max(gap) < GAP_MAX


@pytest.mark.needs_data
def test_eval_countdown_with_vllm(tmp_path, policy):
    """`ft eval countdown --backend vllm --limit 16` writes its results (one engine call)."""
    from typer.testing import CliRunner

    from ftcli.cli import app

    out = tmp_path / "ev"
    res = CliRunner().invoke(app, ["eval", "countdown", "--backend", "vllm", "--model", "default-policy",
                                   "--limit", "16", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    e = doc["benchmarks"]["countdown"]
    assert e["n_problems"] == 16 and e["protocol"]["backend"] == "vllm"
    assert len((out / "samples.jsonl").read_text().splitlines()) == 16
