"""Run tracking (`ftcli.train.tracking`: TensorBoard read back with TensorBoard's own reader, W&B
offline) and the model card (`ftcli.train.modelcard`: metadata parsed as YAML and by the hub library)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from dataclasses import asdict

import pytest
import typer
import yaml
from typer.testing import CliRunner

from ftcli.train.config import TrainConfig
from ftcli.train.modelcard import command_line, front_matter, write_model_card
from ftcli.train.tracking import (
    CREDIT_CLOSE,
    CREDIT_OPEN,
    TensorBoardTracker,
    Tracker,
    TrackingError,
    create_tracker,
    flatten_scalars,
    mark_credited,
    parse_report_to,
    report_to_callback,
    samples_markdown,
    wandb_mode,
)

HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None

# rows shaped like metrics.jsonl (StepStats.row + timings) and samples.jsonl (_sample_record)
ROW0 = {"step": 0, "val_accuracy": 0.25, "time_val": 1.5}
ROW1 = {"step": 1, "reward_mean": 0.5, "reward_std": 0.25, "accuracy": 0.375, "response_len": 41.0,
        "frac_credited": 0.4, "no_answer": 2, "loss": -0.03, "grad_norm": None, "clip_frac": 0.0,
        "lr": 1e-4, "time_gen": 3.25, "time_step": 5.5, "note": "not a number", "extra": {"gen": 7.0}}
ROW2 = {**ROW1, "step": 2, "reward_mean": 0.75, "grad_norm": 0.125, "val_accuracy": 0.5}
SAMPLE = {"step": 2, "id": "cd-7", "prompt": "Using 3, 5, 2 make 16", "response": "3*5+2-1 = 16 <answer>3*5+2-1</answer>",
          "reward": 1.0, "correct": True, "advantage": 0.9, "has_answer": True,
          "tokens": ["3", "*", "5", "+", "2", "-", "1", " = ", "16", " <answer>", "3*5+2-1", "</answer>"],
          "weights": [1.5, 1, 1.5, 1, 1, 1, 1, 1, 1.5, 1, 1, 1], "credited": [0, 2, 8], "answer_tokens": [10]}


# -- the option value ----------------------------------------------------------------------------
def test_parse_report_to_names_order_and_errors():
    assert parse_report_to("none") == ()
    assert parse_report_to(None) == ()
    assert parse_report_to("") == ()
    if HAS_TB and HAS_WANDB:
        assert parse_report_to(" TensorBoard, wandb,tensorboard ") == ("tensorboard", "wandb")
        assert parse_report_to(["wandb", "tensorboard"]) == ("wandb", "tensorboard")
    with pytest.raises(TrackingError, match="unknown --report-to backend 'mlflow'") as e:
        parse_report_to("tensorboard,mlflow")
    assert "\n" not in str(e.value) and "tensorboard" in str(e.value)
    with pytest.raises(TrackingError, match="cannot be combined"):
        parse_report_to("none,wandb")


def test_missing_package_is_one_line_with_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(TrackingError) as e:
        parse_report_to("tensorboard")
    assert str(e.value) == '--report-to tensorboard needs the tensorboard package: pip install "ftcli[tracking]"'


def test_report_to_typer_callback():
    app = typer.Typer()

    @app.command()
    def cmd(report_to: str = typer.Option("none", "--report-to", callback=report_to_callback)):
        typer.echo(f"got {report_to}")

    runner = CliRunner()
    ok = runner.invoke(app, ["--report-to", "NONE"])
    assert ok.exit_code == 0 and "got none" in ok.output
    bad = runner.invoke(app, ["--report-to", "tensorbord"])
    assert bad.exit_code == 2
    assert "unknown --report-to backend 'tensorbord'" in bad.output
    if HAS_TB:
        assert "got tensorboard" in runner.invoke(app, ["--report-to", "tensorboard,tensorboard"]).output


# -- what is logged ------------------------------------------------------------------------------
def test_flatten_scalars_keeps_numbers_flattens_dicts():
    s = flatten_scalars({**ROW1, "ok": True, "nested": {"a": {"b": 2}, "c": [1]}})
    assert s["reward_mean"] == 0.5 and s["no_answer"] == 2.0 and s["extra/gen"] == 7.0
    assert s["ok"] == 1.0 and s["nested/a/b"] == 2.0
    for gone in ("step", "grad_norm", "note", "nested/c"):
        assert gone not in s


def test_mark_credited_and_fence():
    assert mark_credited(["a", " b", "c"], [1]) == f"a{CREDIT_OPEN} b{CREDIT_CLOSE}c"
    assert mark_credited(["x"] * 50, [], limit=10) == "x" * 10 + " [...]"
    md = samples_markdown(3, [{**SAMPLE, "tokens": ["```", "ok"], "credited": [1]}])
    assert "````\n```" + f"{CREDIT_OPEN}ok{CREDIT_CLOSE}\n````" in md  # a fence the response cannot close
    assert "**credited** 1/2" in md


# -- backends ------------------------------------------------------------------------------------
def test_none_and_other_ranks_write_nothing(tmp_path):
    for spec, rank in (("none", 0), ("tensorboard" if HAS_TB else "none", 1)):
        with create_tracker(spec, tmp_path, {"task": "countdown"}, rank=rank) as t:
            assert type(t) is Tracker
            t.log(1, ROW1)
            t.log_samples(1, [SAMPLE])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HAS_TB, reason='tensorboard is not installed (pip install "ftcli[tracking]")')
def test_tensorboard_event_file_reads_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    config = tmp_path / "config.json"  # the run's resolved config, passed by path
    config.write_text(json.dumps(asdict(TrainConfig(out=str(tmp_path)))))
    t = create_tracker("tensorboard", tmp_path, config)
    assert isinstance(t, TensorBoardTracker)
    try:
        for row in (ROW0, ROW1):
            t.log(row["step"], row)
        t.log_samples(2, [SAMPLE])
        t.log(2, ROW2)
    finally:
        t.close()
    t.close()  # idempotent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "tb"]

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val_accuracy", "time_val", "reward_mean", "frac_credited", "loss", "clip_frac", "time_step",
            "extra/gen", "grad_norm"} <= tags
    assert "note" not in tags and "step" not in tags
    assert [(e.step, e.value) for e in acc.Scalars("val_accuracy")] == [(0, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in acc.Scalars("reward_mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("grad_norm")] == [(2, 0.125)]  # None is not logged
    assert [e.step for e in acc.Scalars("time_gen")] == [1, 2]

    texts = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors(tag)]
             for tag in acc.Tags()["tensors"]}
    [(step, md)] = texts["samples/text_summary"]
    assert step == 2
    assert f"{CREDIT_OPEN}3{CREDIT_CLOSE}*{CREDIT_OPEN}5{CREDIT_CLOSE}+2-1 = {CREDIT_OPEN}16{CREDIT_CLOSE} <answer>3*5+2-1</answer>" in md
    assert "**id** cd-7" in md and "**credited** 3/12" in md
    [(cfg_step, cfg_md)] = texts["config/text_summary"]
    assert cfg_step == 0
    assert json.loads(cfg_md.strip("`\n"))["credit"] == "flow"


@pytest.mark.skipif(not HAS_TB, reason='tensorboard is not installed (pip install "ftcli[tracking]")')
def test_tensorboard_resume_drops_steps_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with create_tracker("tensorboard", tmp_path) as t:
        for s in (1, 2, 3):
            t.log(s, {"reward_mean": float(s)})
    with create_tracker("tensorboard", tmp_path, resume_step=1) as t:  # resumed from step 1's checkpoint
        for s in (2, 3):
            t.log(s, {"reward_mean": 10.0 * s})
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward_mean")] == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_wandb_mode_from_env(tmp_path):
    nokey = {"NETRC": str(tmp_path / "missing")}
    assert wandb_mode(nokey) == "offline"
    assert wandb_mode({**nokey, "WANDB_API_KEY": "k"}) == "online"
    assert wandb_mode({**nokey, "WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}) == "disabled"
    rc = tmp_path / "netrc"
    rc.write_text("machine api.wandb.ai\n  login user\n  password not-a-real-key\n")
    assert wandb_mode({"NETRC": str(rc)}) == "online"
    assert wandb_mode({"NETRC": str(rc), "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"


@pytest.mark.skipif(not HAS_WANDB, reason='wandb is not installed (pip install "ftcli[tracking]")')
def test_wandb_offline_writes_under_run_dir(tmp_path, monkeypatch):
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_NAME", "WANDB_DIR", "WANDB_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: no network use
    for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(k, str(tmp_path / "wandb-home" / k.lower()))
    run_dir = tmp_path / "run"
    t = create_tracker("wandb", run_dir, {"task": "countdown", "credit": "flow"})
    try:
        assert t.mode == "offline"
        t.log(0, ROW0)
        t.log(1, ROW1)
        t.log_samples(2, [SAMPLE])
        t.log(2, ROW2)
    finally:
        t.close()
    import wandb

    wandb.teardown()  # finish() can return before W&B's service has closed the run file; this waits
    [run] = (run_dir / "wandb").glob("offline-run-*")
    [data] = run.glob("run-*.wandb")
    blob = data.read_bytes()
    for key in (b"reward_mean", b"val_accuracy", b"frac_credited", b"extra/gen"):
        assert key in blob
    [table] = run.glob("files/media/table/samples_*.table.json")
    tab = json.loads(table.read_text())
    assert tab["columns"][:3] == ["step", "id", "reward"]
    assert tab["data"][0][1] == "cd-7" and f"{CREDIT_OPEN}16{CREDIT_CLOSE}" in tab["data"][0][-1]


# -- model card ----------------------------------------------------------------------------------
def _card_config(tmp_path, **kw) -> dict:
    cfg = asdict(TrainConfig(out=str(tmp_path / "runs" / "flow-s0"), **kw))
    cfg.update(model_path="ftcli/assets/default-policy", world_size=1)
    return cfg


def test_model_card_front_matter_and_body(tmp_path):
    final = tmp_path / "runs" / "flow-s0" / "checkpoints" / "final"
    cfg = _card_config(tmp_path, gamma=2.0, layers="late", select="bottom")
    cmd = "ft train --task countdown --credit flow --gamma 2 --layers late --select bottom --out runs/flow-s0"
    path = write_model_card(final, cfg, {**ROW2, "step": 30, "val_accuracy": 0.315}, cmd)
    assert path == final / "README.md" and [p.name for p in final.iterdir()] == ["README.md"]  # no temp file left
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta == front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["tags"] == ["ftcli", "flowtracer", "grpo", "countdown"]
    assert meta["license"] == "apache-2.0" and "base_model" not in meta  # the shipped policy is no hub model
    assert meta["datasets"] == ["Jiayi-Pan/Countdown-Tasks-3to4"]
    [entry] = meta["model-index"]
    assert entry["name"] == "flow-s0"
    [res] = entry["results"]
    assert res["metrics"][0]["type"] == "accuracy" and res["metrics"][0]["value"] == 0.315
    assert res["dataset"]["split"] == "validation" and "200" in res["dataset"]["name"]
    body = text.split("---\n", 2)[2]
    for want in ("| credit rule | `flow`", "| credit gamma | `2.0` |", "| credit layers | `late` |",
                 "| credit select | `bottom` |", "| credit ratio | `0.4` |", "| credit weighting | `binary` |",
                 "| steps | 30 |", "| final validation accuracy | 0.315 |", "| reward_mean | 0.75 |",
                 f"```bash\n{cmd}\n```", "AutoModelForCausalLM.from_pretrained(path)", str(final)):
        assert want in body, want
    assert "| credit mass |" not in body  # only with --weighting mass


def test_model_card_of_generated_problems_names_no_hub_dataset(tmp_path):
    from ftcli.train.modelcard import card_metadata

    cfg = {"task": "countdown", "model": "default-policy", "credit": "flow", "val_size": 200,
           "data": {"source": "generated", "generator": "countdown-sos-v1", "seed": 3}}
    meta = card_metadata(cfg, {"val_accuracy": 0.2}, "run")
    assert "datasets" not in meta
    ds = meta["model-index"][0]["results"][0]["dataset"]
    assert ds["type"] == "countdown" and "generated, seed 3" in ds["name"]
    files = card_metadata({**cfg, "data": {"source": "files"}}, {"val_accuracy": 0.2}, "run")
    assert files["datasets"] == ["Jiayi-Pan/Countdown-Tasks-3to4"]


def test_model_card_reads_in_the_hub_library(tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cfg = _card_config(tmp_path, model="Qwen/Qwen3-4B-Base", task="gsm8k", credit="none")
    path = write_model_card(tmp_path / "final", cfg, {"step": 5, "val_accuracy": 0.5}, "ft train --credit none")
    card = huggingface_hub.ModelCard.load(path)
    assert card.data.base_model == "Qwen/Qwen3-4B-Base"
    assert card.data.library_name == "transformers" and card.data.license is None
    assert card.data.datasets == ["openai/gsm8k"]
    [ev] = card.data.eval_results
    assert (ev.metric_type, ev.metric_value, ev.dataset_type) == ("accuracy", 0.5, "openai/gsm8k")
    assert "credit gamma" not in card.text  # plain GRPO has no credit options


def test_model_card_without_validation_or_credit(tmp_path):
    cfg = {"task": "countdown", "seed": 0, "steps": 10}  # an `ft sft`-like config: no model, no credit
    text = write_model_card(tmp_path, cfg, {"step": 10, "loss": 0.5}, "ft sft --out x").read_text()
    meta = front_matter(text)
    assert meta["tags"] == ["ftcli", "flowtracer", "sft", "countdown"]
    assert "model-index" not in meta and "base_model" not in meta
    assert "| final validation accuracy | not measured |" in text and "credit rule" not in text


def test_command_line():
    assert command_line(["/venv/bin/ft", "train", "--out", "runs/a b"]) == "ft train --out 'runs/a b'"
    assert command_line(["/x/ftcli/train/__main__.py", "--local_rank=1", "--zero-stage", "2"]) == \
        "python -m ftcli.train --zero-stage 2"
    assert command_line(["/x/ftcli/train_entry.py", "--local_rank=1", "--zero-stage", "2"]) == \
        "python -m ftcli.train --zero-stage 2"
    assert command_line(["/x/other/__main__.py", "--zero-stage", "2"]) == "__main__.py --zero-stage 2"


# -- wired into ft train, ft ablate and ft sft ---------------------------------------------------
needs_tb = pytest.mark.skipif(not HAS_TB, reason='tensorboard is not installed (pip install "ftcli[tracking]")')


def _tb_read(log_dir):
    """TensorBoard's own reader on `log_dir`: (accumulator, {tag: [(step, value)]})."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_tb_has_rows(scalars: dict, rows: list[dict]) -> None:
    """Every numeric entry of every metrics row is a scalar of the same name, step and value."""
    want: dict[str, list] = {}
    for r in rows:
        for k, v in flatten_scalars(r).items():
            want.setdefault(k, []).append((r["step"], v))
    assert set(scalars) == set(want)
    for k, pts in want.items():
        assert [s for s, _ in scalars[k]] == [s for s, _ in pts], k
        assert [v for _, v in scalars[k]] == pytest.approx([v for _, v in pts], rel=1e-6, abs=1e-7), k


@needs_tb
def test_ft_train_report_to_tensorboard_resume_and_model_card(tmp_path, monkeypatch):
    """`ft train --report-to tensorboard` on a tiny model: every metrics.jsonl scalar (step rows
    and validation rows) and the logged samples (credited tokens marked) read back with
    TensorBoard's reader; a resumed run does not duplicate steps; checkpoints/final/README.md
    is a model card whose metadata parses."""
    from tensorboard.util import tensor_util

    from ftcli.cli import app

    out = tmp_path / "entropy-run"
    args = ["train", "--model", "tiny-qwen3", "--task", "countdown", "--credit", "entropy", "--steps", "2",
            "--prompts", "2", "--group-size", "2", "--max-new-tokens", "8", "--train-size", "2",
            "--val-every", "1", "--val-size", "3", "--log-samples", "1", "--report-to", "tensorboard",
            "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ft", *args])  # what the card records as the command
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    acc, scalars = _tb_read(out / "tb")
    _assert_tb_has_rows(scalars, rows)
    assert {"reward_mean", "accuracy", "response_len", "frac_credited", "loss", "grad_norm", "clip_frac",
            "time_gen", "time_step", "val_accuracy", "time_val"} <= set(scalars)
    assert [s for s, _ in scalars["val_accuracy"]] == [0, 1, 2]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    texts = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in acc.Tensors("samples/text_summary")]
    assert [s["step"] for s in samples] == [st for st, _ in texts] == [1, 2]
    assert all(s["credited"] for s in samples)  # entropy credit marks 40% of the tokens
    for (_, md), s in zip(texts, samples, strict=True):
        assert mark_credited(s["tokens"], s["credited"]) in md and CREDIT_OPEN in md
    assert json.loads(next(iter(acc.Tensors("config/text_summary"))).tensor_proto.string_val[0].decode().strip("`\n"))["report_to"] == "tensorboard"

    card = (out / "checkpoints" / "final" / "README.md").read_text(encoding="utf-8")
    meta = front_matter(card)
    assert card.startswith("---\n") and yaml.safe_load(card.split("---\n")[1]) == meta
    assert meta["library_name"] == "transformers" and meta["tags"] == ["ftcli", "flowtracer", "grpo", "countdown"]
    [entry] = meta["model-index"]
    assert entry["name"] == "entropy-run"
    assert entry["results"][0]["metrics"][0]["value"] == pytest.approx(rows[-1]["val_accuracy"])
    for want in ("| base model | `tiny-qwen3` |", "| task | `countdown` |", "| credit rule | `entropy`",
                 "| credit gamma | `1.5` |", "| steps | 2 |", f"| final validation accuracy | {rows[-1]['val_accuracy']:.4g} |",
                 f"```bash\n{shlex.join(['ft', *args])}\n```"):
        assert want in card, want
    assert not (out / "checkpoints" / "step_000002" / "README.md").exists()  # the final checkpoint's only
    from ftcli.rundir import checkpoint_damage, read_manifest

    final = out / "checkpoints" / "final"
    assert "README.md" in read_manifest(final) and checkpoint_damage(final) is None  # the card is in its digests

    # resumed for one more step: step 3 is added once, the card now says 3 steps
    args3 = [*args[: args.index("--steps") + 1], "3", *args[args.index("--steps") + 2 :], "--resume"]
    res = CliRunner().invoke(app, args3, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    _, scalars = _tb_read(out / "tb")
    _assert_tb_has_rows(scalars, rows)
    assert "| steps | 3 |" in (out / "checkpoints" / "final" / "README.md").read_text(encoding="utf-8")

    bad = CliRunner().invoke(app, ["train", "--report-to", "tensorbord", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "unknown --report-to backend 'tensorbord'" in bad.output
    assert not (tmp_path / "bad").exists()


def test_report_to_is_a_train_option_so_sweeps_take_it():
    from ftcli.commands.ablate import _parse_set
    from ftcli.train.config import resolve_config

    assert _parse_set(["report_to=tensorboard"]) == {"report_to": "tensorboard"}  # ft ablate --set report_to=...
    assert resolve_config().report_to == "none"
    with pytest.raises(TrackingError, match="unknown --report-to backend 'mlflow'"):
        resolve_config(report_to="mlflow")


@needs_tb
def test_ft_sft_report_to_tensorboard(tmp_path):
    """`ft sft --report-to tensorboard` logs every loss row and the evaluation accuracy in
    <out>-logs/tb (not inside the checkpoint folder)."""
    from ftcli.cli import app

    out = tmp_path / "sft"
    args = ["sft", "--out", str(out), "--size", "micro", "--steps", "3", "--batch-size", "4", "--problems", "12",
            "--eval-split", "validation", "--eval-problems", "2", "--engine", "torch", "--eval-temperatures", "0",
            "--quiet", "--report-to", "tensorboard"]
    for extra in ([], ["--force", "--seed", "1"]):  # a rebuild replaces the earlier curves
        res = CliRunner().invoke(app, args + extra)
        assert res.exit_code == 0, res.output
        report = json.loads((out / "sft_report.json").read_text())
        acc, scalars = _tb_read(tmp_path / "sft-logs" / "tb")
        hist = report["loss_history"]
        assert [s for s, _ in scalars["loss"]] == [h["step"] for h in hist] == [3]
        assert [v for _, v in scalars["loss"]] == pytest.approx([h["loss"] for h in hist], rel=1e-6)
        assert {"lr", "tokens", "elapsed_s"} <= set(scalars)
        assert scalars["validation_accuracy/greedy"] == [(3, pytest.approx(report["eval"]["greedy"]["accuracy"]))]
        assert "config/text_summary" in acc.Tags()["tensors"]
        assert not (out / "tb").exists()
