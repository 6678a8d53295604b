"""Issue 12: options that accept nonsense, non-finite updates, damaged checkpoints and the dual
clip, on the tiny model and the toy task of test_train_loop."""

import json
import shutil

import pytest
import torch
from test_train_loop import _metrics, _run, _weights
from typer.testing import CliRunner

from ftcli import grpo
from ftcli.cli import app
from ftcli.rundir import MANIFEST, RunDir, checkpoint_damage
from ftcli.train.config import TrainConfig, resolve_config


# -- option ranges ------------------------------------------------------------------------------
@pytest.mark.parametrize(("opt", "value", "says"), [
    ("gamma", float("nan"), "--gamma must be > 0, finite (got nan)"),
    ("gamma", -1.0, "--gamma must be > 0, finite (got -1.0)"),
    ("gamma", 0.0, "--gamma must be > 0"),
    ("group_size", 1, "--group-size must be >= 2 (got 1): advantages are rewards centred within a group"),
    ("save_every", -1, "--save-every must be >= 0 (got -1)"),
    ("val_size", -1, "--val-size must be >= 1 (got -1)"),
    ("lr", float("inf"), "--lr must be > 0, finite (got inf)"),
    ("top_p", 1.5, "--top-p must be > 0 and <= 1"),
    ("eps_low", 1.0, "--eps-low must be >= 0 and < 1"),
    ("ratio", 2.0, "--ratio must be in [0, 1]"),
    ("zero_stage", 4, "--zero-stage must be in [0, 3]"),
    ("keep_last", 0, "--keep-last must be >= 1"),
    ("clip_ratio_c", 1.0, "--clip-ratio-c must be > 1"),
    ("val_temperature", float("nan"), "--val-temperature must be >= 0, finite"),
    ("warmup_steps", -1, "--warmup-steps must be >= 0"),
])
def test_numeric_options_are_range_checked(opt, value, says):
    with pytest.raises(ValueError) as e:
        resolve_config(**{opt: value})
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_warmup_and_a_deepspeed_scheduler_are_not_both_taken(tmp_path):
    """The DeepSpeed config's scheduler would silently win over --warmup-steps: refused."""
    import json

    from ftcli.train.engine import build_ds_config

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 5}}}))
    cfg = resolve_config(deepspeed_config=str(user), micro_batch=16)
    assert build_ds_config(cfg, 1, 64, False)["scheduler"]["type"] == "WarmupLR"
    with pytest.raises(ValueError, match="has a scheduler: drop it or --warmup-steps"):
        build_ds_config(resolve_config(deepspeed_config=str(user), micro_batch=16, warmup_steps=5), 1, 64, False)


def test_every_numeric_option_has_a_range():
    """The rule is data: every int/float field of TrainConfig declares its limits."""
    from dataclasses import fields

    for f in fields(TrainConfig):
        if f.type in ("int", "float", "int | None", "float | None") and f.metadata.get("cli", True):
            assert any(f.metadata.get(k) is not None for k in ("min", "max", "gt", "lt")), f.name


@pytest.mark.parametrize("argv", [["--gamma", "nan"], ["--gamma", "-1"], ["--group-size", "1"],
                                  ["--save-every", "-1"], ["--val-size", "-1"]])
def test_cli_rejects_nonsense_before_any_work(tmp_path, argv):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--out", str(out), *argv])
    assert res.exit_code == 1
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {argv[0]} must be"), res.output
    assert not out.exists()  # nothing was started


# -- dtype --------------------------------------------------------------------------------------
def test_dtype_names_map_to_torch_dtypes():
    from ftcli.fetch.models import load_model

    model, _ = load_model("tiny-qwen3", dtype="bf16")  # was: Invalid device string: 'bf16'
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"^--dtype must be one of fp32, bf16, fp16 \(got 'bogus'\)$"):
        load_model("tiny-qwen3", dtype="bogus")
    res = CliRunner().invoke(app, ["eval", "math500", "--dtype", "bogus", "--model", "tiny-qwen3"])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        "Error: --dtype must be one of fp32, bf16, fp16 (got 'bogus')  (FT_DEBUG=1 for the traceback)"]


# -- dual clip ----------------------------------------------------------------------------------
def test_clip_ratio_c_reaches_the_loss(tmp_path, monkeypatch):
    seen = []
    real = grpo.clipped_surrogate

    def spy(*a, **kw):
        seen.append(kw.get("clip_ratio_c"))
        return real(*a, **kw)

    monkeypatch.setattr(grpo, "clipped_surrogate", spy)
    _run(tmp_path, "c", steps=1, clip_ratio_c=3.0, credit="none")
    assert seen and set(seen) == {3.0}
    seen.clear()
    _run(tmp_path, "off", steps=1, credit="none")
    assert seen and set(seen) == {None}
    assert json.loads((tmp_path / "c" / "config.json").read_text())["clip_ratio_c"] == 3.0
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "--clip-ratio-c" in res.output


# -- non-finite update --------------------------------------------------------------------------
def test_nonfinite_loss_stops_before_the_weights_are_written(tmp_path, monkeypatch):
    """A NaN loss in step 3 stops the run: step 2 stays the newest checkpoint, intact."""
    real, calls = grpo.aggregate_loss, []

    def poisoned(*a, **kw):
        calls.append(1)
        out = real(*a, **kw)
        return out * float("nan") if len(calls) == 5 else out  # 2 micro-batches per step: step 3

    monkeypatch.setattr(grpo, "aggregate_loss", poisoned)
    with pytest.raises(ValueError) as e:
        _run(tmp_path, "nan", steps=4, save_every=2, credit="flow")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("step 3: the loss became non-finite (nan)")
    assert "checkpoint step 2 is the newest" in msg
    run = tmp_path / "nan"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002"]
    assert checkpoint_damage(run / "checkpoints" / "step_000002") is None
    assert [r["step"] for r in _metrics(run)] == [1, 2]
    w = _weights(run, "step_000002")
    assert all(torch.isfinite(v).all() for v in w.values())


def test_nonfinite_grad_norm_stops_before_the_step(tmp_path, monkeypatch):
    from ftcli.train.update import NonFiniteError, PolicyUpdate

    real = PolicyUpdate._micro_step

    def poisoned(self, *a, **kw):
        out = real(self, *a, **kw)
        p = next(q for q in self.engine.module.parameters() if q.grad is not None)
        p.grad.view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(PolicyUpdate, "_micro_step", poisoned)
    with pytest.raises(NonFiniteError, match=r"^step 1: the gradient norm became non-finite \(inf\); stopped before"):
        _run(tmp_path, "inf", steps=2, credit="none")
    assert not (tmp_path / "inf" / "checkpoints").exists() or not any((tmp_path / "inf" / "checkpoints").iterdir())


# -- damaged checkpoints ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """4 steps, checkpoints at 2 and 4 (the reference for every resume below)."""
    tmp = tmp_path_factory.mktemp("straight")
    return _run(tmp, "full", steps=4, save_every=2, credit="flow")


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _ds_state(ck):
    return sorted((ck / "ds").rglob("*model_states.pt"))[0]


DAMAGE = {
    "truncated DeepSpeed state": (lambda ck: _truncate(_ds_state(ck)), "model_states.pt: "),
    "deleted DeepSpeed state": (lambda ck: _ds_state(ck).unlink(), "model_states.pt: missing"),
    "truncated rng_state": (lambda ck: _truncate(ck / "rng_state_rank0.pt"), "rng_state_rank0.pt: "),
    "garbage trainer_state.json": (lambda ck: (ck / "trainer_state.json").write_text('{"step": 4,\x01 garbage'),
                                   "trainer_state.json: "),
    "truncated model.safetensors": (lambda ck: _truncate(ck / "model.safetensors"), "model.safetensors: "),
}


def test_checkpoints_carry_a_manifest(straight):
    for name in ("step_000002", "step_000004", "final"):
        ck = straight / "checkpoints" / name
        files = json.loads((ck / MANIFEST).read_text())["files"]
        assert "model.safetensors" in files and "trainer_state.json" in files
        assert (name == "final") != any(k.startswith("ds/") for k in files)
        assert checkpoint_damage(ck) is None


@pytest.mark.parametrize("case", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, straight, capsys, case):
    damage, says = DAMAGE[case]
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    shutil.rmtree(run / "checkpoints" / "final")
    ck = run / "checkpoints" / "step_000004"
    damage(ck)
    assert says in checkpoint_damage(ck)
    _run(tmp_path, "run", resume=True, steps=4, save_every=2, credit="flow")
    err = capsys.readouterr().err
    assert "checkpoint step_000004 is damaged" in err and says in err
    assert (run / "checkpoints" / "step_000004.damaged").is_dir()  # set aside, kept
    assert sorted(RunDir(run).step_checkpoints()) == [2, 4]
    # from step 2, the same steps 3 and 4 as the uninterrupted run
    assert _metrics(run) == _metrics(straight)
    fw, rw = _weights(straight), _weights(run)
    assert all(torch.equal(fw[k], rw[k]) for k in fw)


def test_eval_of_a_damaged_checkpoint_is_one_line(tmp_path, straight):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    _truncate(run / "checkpoints" / "step_000004" / "model.safetensors")
    res = CliRunner().invoke(app, ["eval", "math500", "--ckpt", f"{run}:4", "--limit", "1"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "step_000004 is damaged: model.safetensors: " in lines[0] and "truncated" in lines[0]
    # the DeepSpeed state is not needed to evaluate: damage there does not stop an eval
    from ftcli.evaluation.benchmarks import checked_checkpoint

    _ds_state(run / "checkpoints" / "step_000002").unlink()
    assert checked_checkpoint(f"{run}:2").name == "step_000002"
