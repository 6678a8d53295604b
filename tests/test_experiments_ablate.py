"""`ft ablate` on CPU: the key block really blocks (zero attention on the captured W, the same
logits as an explicit 4D mask, KV-cached generation as expected on constructed cases), the
Wilson interval by hand, and every ablation command end to end on a tiny random model with a
toy task (toy scale: one training step, two eval problems)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ftcli.experiments.stats as ab
from ftcli.attention import capture_attention, mean_attention
from ftcli.cli import app
from ftcli.experiments.blocking import block_keys, blocked_mask
from ftcli.fetch.models import load_model, tiny_causal_lm

runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# statistics and small helpers
# ---------------------------------------------------------------------------------------------
def test_wilson_interval_hand_values():
    lo, hi = ab.wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # textbook value for 5/10
    # by hand: p = 0, n = 10: centre = (z^2/20) / (1 + z^2/10), half = z sqrt(z^2/400) / (1 + z^2/10)
    z = ab.Z95
    den = 1 + z * z / 10
    assert ab.wilson_interval(0, 10) == pytest.approx((0.0, (z * z / 20 + z * z / 20) / den))
    assert ab.wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert ab.wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    # 3 of 4: p = .75, centre = (.75 + z^2/8)/(1 + z^2/4), half = z sqrt(.1875/4 + z^2/64)/(1 + z^2/4)
    d4 = 1 + z * z / 4
    c, h = (0.75 + z * z / 8) / d4, z * (0.1875 / 4 + z * z / 64) ** 0.5 / d4
    assert ab.wilson_interval(3, 4) == pytest.approx((c - h, c + h))
    assert ab.wilson_interval(0, 0) == (0.0, 1.0)
    p = ab.proportion(3, 4)
    assert p["k"] == 3 and p["n"] == 4 and p["rate"] == 0.75 and p["ci"] == pytest.approx([c - h, c + h])
    with pytest.raises(ValueError):
        ab.wilson_interval(5, 4)
    assert ab.mean_std([1.0, 3.0]) == pytest.approx((2.0, 2 ** 0.5))
    assert ab.spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert ab.spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)


def test_same_answer_and_selection():
    assert ab.same_answer("1,000", "1000") and ab.same_answer("72", "72.0") and ab.same_answer(" $5$", "5")
    assert not ab.same_answer("72", "27") and not ab.same_answer("7", None) and ab.same_answer(None, "")
    assert ab.same_answer("(1+2)*3", "(1 + 2) * 3") and not ab.same_answer("x+1", "x+2")
    s = torch.tensor([0.5, 0.0, 0.9, 0.9, 0.1, 0.0, 0.3, 0.2, 0.8, 0.4])
    assert ab.select_positions(s, 0.2, "top", 0).tolist() == [2, 3]  # ceil(0.2 * 10) = 2, ties to the earlier
    assert ab.select_positions(s, 0.2, "bottom", 0).tolist() == [1, 5]  # zeros are allowed at the bottom
    r1, r2 = ab.select_positions(s, 0.3, "random", 7), ab.select_positions(s, 0.3, "random", 7)
    assert r1.tolist() == r2.tolist() and len(r1) == 3 and len(set(r1.tolist())) == 3


# ---------------------------------------------------------------------------------------------
# the intervention really blocks
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-qwen3")


def _ids(B, T, seed=1):
    return torch.randint(5, 90, (B, T), generator=torch.Generator().manual_seed(seed))


def test_blocked_keys_get_exactly_zero_attention(tiny):
    model, _ = tiny
    T, pos = 20, [[3, 7, 8], [0, 10]]
    ids = _ids(2, T)
    blk = blocked_mask(pos, T, 2)
    with block_keys(model, blk):
        assert model.config._attn_implementation == "ftcli_block"
        W = mean_attention(model, ids, layers="all")
        logits = model(ids).logits
    assert model.config._attn_implementation == "sdpa"  # restored
    W0 = mean_attention(model, ids, layers="all")
    for b, ps in enumerate(pos):
        for i in ps:
            assert torch.all(W[b, i, i + 1 :] == 0.0)  # exactly zero from every later query
            assert torch.all(W0[b, i, i + 1 :] > 0.0)  # and not zero without the block
    assert torch.all(W[0, 4, 5:] > 0)  # an unblocked key is still attended to

    # independent reference: eager attention with an explicit 4D additive mask
    kpos, qpos = torch.arange(T), torch.arange(T)[:, None]
    keep = (kpos[None] <= qpos) & ~(blk[:, None, :] & (kpos[None] < qpos))  # [B, Tq, Tk]
    mask4 = torch.where(keep, 0.0, torch.finfo(torch.float32).min)[:, None]
    model.set_attn_implementation("eager")
    try:
        ref = model(ids, attention_mask=mask4, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.allclose(ref.logits, logits, atol=1e-5)
    Wref = torch.stack(ref.attentions).mean(0).mean(1).transpose(1, 2).triu(1)  # [B, key, query]
    assert torch.allclose(Wref, W, atol=1e-6)

    # either order of nesting with a capture gives the same W, and both restore the model
    with capture_attention(model, "all") as cap, block_keys(model, blk):
        model(ids)
    assert torch.equal(cap.W, W) and model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="batch"):
        with block_keys(model, blocked_mask([[1], [2], [3]], T)):
            model(ids)


def test_block_teacher_forcing_changes_only_later_positions(tiny):
    model, _ = tiny
    ids = _ids(1, 16, seed=3)
    base = model(ids).logits
    with block_keys(model, blocked_mask([5], 16)):
        blocked = model(ids).logits
    assert torch.allclose(blocked[:, :6], base[:, :6], atol=1e-6)  # positions <= 5 cannot see the change
    assert (blocked[:, 6:] - base[:, 6:]).abs().amax() > 1e-3  # every later position does


def _sharp_model():
    m = tiny_causal_lm(vocab_size=101, seed=0)
    with torch.no_grad():  # sharper attention: generation depends visibly on what is seen
        for name, p in m.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4)
    return m


def _greedy(model, ids, n, **kw):
    from transformers import GenerationConfig

    g = GenerationConfig(max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None,
                         output_scores=True, return_dict_in_generate=True)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=g, **kw)
    return out.sequences[:, ids.shape[1] :], torch.stack(out.scores, 1)


def test_block_during_kv_cached_generation():
    model = _sharp_model()
    T, n = 16, 8
    ids = _ids(1, T, seed=1)
    blk = torch.zeros(1, T, dtype=torch.bool)
    blk[0, : T - 1] = True  # hide everything but the last prompt token
    with torch.no_grad():
        with block_keys(model, blk):
            toks, scores = _greedy(model, ids, n)
            # the same greedy decoding without a KV cache, re-running the blocked forward each step
            seq = ids
            for _ in range(n):
                seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
            last = model(seq[:, :-1]).logits[:, T - 1 :]
        assert torch.equal(toks, seq[:, T:])
        assert torch.allclose(scores, last, atol=1e-4)
        # constructed expectation: with every earlier key hidden and relative (RoPE) positions,
        # the continuation equals the one from the last prompt token alone
        alone, alone_scores = _greedy(model, ids[:, -1:], n)
        assert torch.equal(toks, alone) and torch.allclose(scores, alone_scores, atol=1e-4)
        free, _ = _greedy(model, ids, n)  # and it differs from the unblocked continuation
        assert not torch.equal(toks, free)
        # an empty block is a no-op
        with block_keys(model, torch.zeros(1, T, dtype=torch.bool)):
            same, _ = _greedy(model, ids, n)
        assert torch.equal(same, free)


# ---------------------------------------------------------------------------------------------
# the commands end to end (toy task, tiny model)
# ---------------------------------------------------------------------------------------------
class ToyTask:
    """Sums; the answer is the last character of a response (so every response has one)."""

    name = "abl-toy"
    splits = ("train", "validation", "test")

    def load(self, split="test"):
        return [{"id": f"{split}-{i}", "question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1),
                 "solution": f"We add {i} and {i + 1}.\n{i} + {i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}\n#### {2 * i + 1}"}
                for i in range(6)]

    def prompt(self, s):
        return [{"role": "user", "content": s["question"]}]

    def assistant_prefix(self, s):
        return ""

    def answer_span(self, r):
        return (len(r) - 1, len(r)) if r else None

    def grade(self, r, s):
        ext = r[-1:] or None
        ok = ext == s["answer"][-1:]
        return {"extracted": ext, "correct": ok, "reward": float(ok)}

    def verify(self, r, s):
        return self.grade(r, s)["correct"]

    def reward(self, r, s):
        return float(self.verify(r, s))


SUITE = """label = "Toy"
task = "abl-toy"
split = "test"
metric = "pass@1"
n = 1
temperature = 0.0
max_new_tokens = 4
seed = 0
grader = "verify"
second_grader = ""
"""


@pytest.fixture(scope="module")
def toy():
    from ftcli.tasks import register_task

    register_task("abl-toy", ToyTask)
    return "abl-toy"


def _ok(res):
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_intervene(toy, tmp_path, monkeypatch):
    out = tmp_path / "int"
    args = ["ablate", "intervene", "--model", "tiny-qwen3", "--task", toy, "--n", "3", "--ratio", "0.25",
            "--max-new-tokens", "12", "--batch-size", "1", "--out", str(out), "-q", "--keep-truncated"]
    # a random model never finishes: by default its truncated responses are skipped, not used
    cut = _ok(runner.invoke(app, [*args[:-4], "--out", str(tmp_path / "cut"), "-q"]))
    res = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert res["used"] == 0 and res["status"] == {"truncated": 3} and "truncated" in cut
    text = _ok(runner.invoke(app, args))
    assert "Table 1" in text and "Top-25% flow" in text and "No block (control)" in text
    res = json.loads((out / "results.json").read_text())
    assert res["used"] == 3 and set(res["arms"]) == {"top", "random", "bottom", "none"}
    assert res["arms"]["none"]["changed"]["k"] == 0  # unblocked regeneration reproduces the answer
    for r in (json.loads(x) for x in (out / "problems.jsonl").read_text().splitlines()):
        k, tau = r["k"], r["tau"]
        assert len(tau) == r["n_reasoning"] and k == -(-r["n_reasoning"] // 4)
        top, bottom = r["arms"]["top"]["blocked"], r["arms"]["bottom"]["blocked"]
        assert len(top) == len(bottom) == len(r["arms"]["random"]["blocked"]) == k
        assert min(tau[p] for p in top) >= max(tau[p] for p in bottom)
        assert r["arms"]["none"]["blocked"] == []
    assert (out / "intervene.png").stat().st_size > 0 and (out / "table.csv").is_file()
    # resumable: a rerun generates nothing new
    import ftcli.experiments.intervene as iv

    monkeypatch.setattr(iv, "generate", lambda *a, **k: pytest.fail("regenerated a finished problem"))
    _ok(runner.invoke(app, args))
    bad = runner.invoke(app, [*args[:-4], "--ratio", "0.5", "--out", str(out), "--keep-truncated"])
    assert bad.exit_code == 1 and "other settings (ratio)" in bad.output


def test_cli_format_and_tokens(toy, tmp_path):
    out = tmp_path / "fmt"
    text = _ok(runner.invoke(app, ["ablate", "format", "--model", "tiny-qwen3", "--task", toy, "--n", "3",
                                   "--out", str(out), "-q"]))
    assert "bare value" in text and "letter choice" in text
    res = json.loads((out / "results.json").read_text())
    assert res["used"] == 3 and res["formats"]["value"]["overlap_mean"] == pytest.approx(1.0)
    assert 0.0 <= res["formats"]["letter"]["overlap_mean"] <= 1.0 and (out / "format_overlap.png").is_file()

    out = tmp_path / "tok"
    text = _ok(runner.invoke(app, ["ablate", "tokens", "--model", "tiny-qwen3", "--task", toy, "--n", "6",
                                   "--min-count", "1", "--out", str(out), "-q"]))
    assert "structural" in text and "semantic" in text
    res = json.loads((out / "results.json").read_text())
    c = res["classes"]
    assert c["structural"]["tokens"] > 0 and c["semantic"]["tokens"] > 0
    assert c["structural"]["share_tokens"] + c["semantic"]["share_tokens"] == pytest.approx(1.0)
    assert res["top_tokens"] and (out / "fig3_tokens.png").is_file()


def test_token_class_filter_restricts_credit(tiny):
    from ftcli.credit import (
        CreditInputs,
        CreditOptions,
        compute_credit,
        structural_lookup,
        token_class_filter,
    )

    model, tok = tiny
    assert token_class_filter(tok, "all") is None
    with pytest.raises(ValueError, match="credit-tokens"):
        token_class_filter(tok, "numbers")
    text = "Q: 1+2? A: 1 + 2 = 3, so 3."
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    T = ids.shape[1]
    q = torch.zeros(1, T, dtype=torch.bool)
    q[0, :7] = True
    r = ~q
    a = torch.zeros(1, T, dtype=torch.bool)
    a[0, T - 2] = True
    W = mean_attention(model, ids)
    inputs = lambda: CreditInputs(ids, torch.ones(1, T, dtype=torch.bool), r, q, a, torch.ones(1), W=W.clone())  # noqa: E731
    lut = structural_lookup(tok)
    for name, cls in zip(("structural", "semantic"), (True, False), strict=True):
        cr = compute_credit("flow", inputs(), CreditOptions(ratio=0.4, token_filter=token_class_filter(tok, name)))
        credited = cr.credited[0].nonzero()[:, 0]
        assert len(credited) > 0 and all(bool(lut[ids[0, t]]) == cls for t in credited)


def _sweep(cmd, tmp_path, suite, *extra):
    out = tmp_path / cmd
    base = ["ablate", cmd, "--model", "tiny-qwen3", "--task", "abl-toy", "--steps", "1", "--prompts", "1",
            "--group-size", "2", "--max-new-tokens", "4", "--eval-suite", str(suite), "--eval-limit", "2",
            "--out", str(out), "-q"]
    text = _ok(runner.invoke(app, [*base, *extra]))
    res = json.loads((out / "results.json").read_text())
    for f in ("results.csv", "curves.png", "bars.png"):
        assert (out / f).stat().st_size > 0
    return text, res, out


def _run_cfg(out, key, seed=0):
    return json.loads((out / "runs" / key / f"seed{seed}" / "config.json").read_text())


def _stub_trainer(monkeypatch):
    """Sweeps on a stub trainer and evaluator (the CLI plumbing: variants, tables, reuse,
    guards; not the training): a run folder with its config, one metrics row per step and a
    final "checkpoint"; an evaluation whose value follows the run's options (seeded, stable)."""
    import dataclasses
    import random

    import ftcli.experiments.sweep as sweep
    from ftcli.rundir import RunDir

    def train(cfg, resume=False, console=None):
        rd = RunDir(cfg.out)
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.write_config(dataclasses.asdict(cfg))
        rng = random.Random(json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str))
        for step in range(1, cfg.steps + 1):
            rd.append_metrics({"step": step, "reward_mean": rng.random(), "accuracy": rng.random()})
        rd.final.mkdir(parents=True, exist_ok=True)
        (rd.final / "config.json").write_text("{}")
        (rd.final / "model.safetensors").write_text(str(rng.random()))
        return rd.path

    def evaluate(suite, *, ckpt, out, **kw):
        run = ckpt.rpartition(":")[0]
        value = random.Random((Path(run) / "checkpoints" / "final" / "model.safetensors").read_text()).random()
        protocol = dict(metric="pass@1", temperature=0.0, top_p=1.0, top_k=0, n=1, seed=0, max_new_tokens=4, grader="verify")
        bench = {"value": value, "metric": "pass@1", "label": "Toy", "stderr": 0.1, "protocol": protocol}
        doc = {"suite": "toy", "benchmarks": {"toy": bench}, "avg": {"value": value}}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(doc))
        return doc, Path(out) / "results.json"

    monkeypatch.setattr(sweep, "train", train)
    monkeypatch.setattr(sweep, "evaluate", evaluate)


@pytest.mark.parametrize("trainer", ["stub", pytest.param("real", marks=pytest.mark.slow)])
def test_cli_training_sweeps(toy, tmp_path, monkeypatch, trainer):
    """Every training sweep from the CLI: the variants of its options, their tables, a rerun
    that reuses runs and evaluations, a bad option in one line. On the stub trainer in the
    default suite; the real training (tiny model, one step) with `just test-slow`."""
    if trainer == "stub":
        _stub_trainer(monkeypatch)
    suite = tmp_path / "toy.toml"
    suite.write_text(SUITE)
    text, res, out = _sweep("layers", tmp_path, suite, "--range", "early", "--range", "late,all", "--no-baseline")
    assert [v["key"] for v in res["variants"]] == ["layers-early", "layers-late", "layers-all"]
    assert _run_cfg(out, "layers-late")["layers"] == "late" and _run_cfg(out, "layers-all")["credit"] == "flow"
    assert "Toy" in text and "layers early" in text
    # a rerun reuses the trained runs and the evaluations
    again = _ok(runner.invoke(app, ["ablate", "layers", "--model", "tiny-qwen3", "--task", "abl-toy", "--steps", "1",
                                    "--prompts", "1", "--group-size", "2", "--max-new-tokens", "4", "--eval-suite",
                                    str(suite), "--eval-limit", "2", "--range", "early", "--no-baseline",
                                    "--out", str(out), "-q"]))
    assert "trained (reused)" in again and "evaluated (reused)" in again

    text, res, out = _sweep("ratio", tmp_path, suite, "--ratios", "0.5", "--select", "top,bottom")
    assert [v["key"] for v in res["variants"]] == ["grpo", "top-0.5", "bottom-0.5"]
    assert _run_cfg(out, "bottom-0.5")["select"] == "bottom" and _run_cfg(out, "grpo")["credit"] == "none"
    assert "Table 5 layout" in text

    _, res, out = _sweep("gamma", tmp_path, suite, "--gammas", "2.5", "--no-baseline", "--seeds", "0,1")
    v = res["variants"][0]
    assert v["key"] == "gamma-2.5" and [s["seed"] for s in v["seeds"]] == [0, 1]
    assert _run_cfg(out, "gamma-2.5", 1)["gamma"] == 2.5 and _run_cfg(out, "gamma-2.5", 1)["seed"] == 1

    _, res, out = _sweep("weighting", tmp_path, suite, "--weightings", "tanh,mass", "--masses", "0.6", "--no-baseline")
    assert [v["key"] for v in res["variants"]] == ["w-tanh", "mass-0.6"]
    assert _run_cfg(out, "mass-0.6")["weighting"] == "mass" and _run_cfg(out, "mass-0.6")["mass"] == 0.6

    _, res, out = _sweep("credit", tmp_path, suite, "--rules", "none,flow", "--set", "lr=0.001")
    assert [v["key"] for v in res["variants"]] == ["credit-none", "credit-flow"]
    assert res["variants"][1]["delta_vs_baseline"] is not None and _run_cfg(out, "credit-flow")["lr"] == 0.001

    _, res, out = _sweep("sets", tmp_path, suite, "--sets", "flow-bottom,random", "--set-ratio", "0.5")
    assert [v["key"] for v in res["variants"]] == ["grpo", "only-flow-bottom-0.5", "only-random-top-0.5"]
    c = _run_cfg(out, "only-flow-bottom-0.5")
    assert (c["credit"], c["select"], c["ratio"], c["gamma"], c["rest_weight"]) == ("flow", "bottom", 0.5, 1.0, 0.0)

    bad = runner.invoke(app, ["ablate", "weighting", "--weightings", "cubic", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "cubic" in bad.output


def test_reference_rows_come_from_an_earlier_sweep(toy, tmp_path):
    """--reference: a table pairs its new rows with GRPO and FlowTracer from an earlier sweep's
    results.json (only the file: the runs themselves may be gone) instead of training them."""
    suite = tmp_path / "toy.toml"
    suite.write_text(SUITE)
    text, first, first_out = _sweep("credit", tmp_path, suite, "--rules", "none,flow", "--seeds", "0,1")
    # trained seed by seed, so that a sweep cut short leaves whole paired seeds
    heads = [line.split(":")[0] for line in text.splitlines() if line.startswith("[") and ": training" in line]
    assert heads == ["[1/4] credit · GRPO · seed 0", "[2/4] credit · FlowTracer · seed 0",
                     "[3/4] credit · GRPO · seed 1", "[4/4] credit · FlowTracer · seed 1"], heads
    ref = tmp_path / "committed.json"
    ref.write_text((first_out / "results.json").read_text())
    shutil.rmtree(first_out)  # another machine: only the committed file is left
    # an option set to the preset's own value (--set eps_low=0.2) is the same setting
    text, res, out = _sweep("ratio", tmp_path, suite, "--ratios", "0.4,0.5", "--select", "top",
                            "--seeds", "0,1", "--variant-seeds", "0", "--reference", str(ref), "--set", "eps_low=0.2")
    assert "4 runs taken from" in text
    by = {v["key"]: v for v in res["variants"]}
    assert list(by) == ["grpo", "top-0.4", "top-0.5"]
    old = {v["key"]: v for v in first["variants"]}
    # GRPO and the default FlowTracer (top 40%) are the earlier runs, seed by seed; nothing trained
    for key, was in (("grpo", "credit-none"), ("top-0.4", "credit-flow")):
        assert [(r["seed"], r["avg"]) for r in by[key]["seeds"]] == [(r["seed"], r["avg"]) for r in old[was]["seeds"]]
        assert all(r["reference"] == str(ref) for r in by[key]["seeds"])
        assert not (out / "runs" / key).exists()
    assert [r["seed"] for r in by["top-0.5"]["seeds"]] == [0] and (out / "runs" / "top-0.5" / "seed0").is_dir()
    assert by["top-0.5"]["paired_vs_baseline"]["seeds"] == [0]
    # and the folder takes a rerun without it (nothing trained again)
    text, res2, _ = _sweep("ratio", tmp_path, suite, "--ratios", "0.4,0.5", "--select", "top",
                           "--seeds", "0,1", "--variant-seeds", "0", "--reference", str(ref))
    assert "training" not in text and res2["variants"][2]["seeds"] == by["top-0.5"]["seeds"]
    # any row of a committed results.json is reused, not only GRPO and FlowTracer: a long sweep
    # goes on where it stopped on another machine
    ref2 = tmp_path / "partial.json"
    ref2.write_text((out / "results.json").read_text())
    shutil.rmtree(out)
    text, res3, out3 = _sweep("ratio", tmp_path, suite, "--ratios", "0.4,0.5", "--select", "top", "--seeds", "0,1",
                              "--variant-seeds", "0,1", "--reference", str(ref2))
    assert "5 runs taken from" in text and [r["seed"] for r in res3["variants"][2]["seeds"]] == [0, 1]
    assert not (out3 / "runs" / "top-0.5" / "seed0").exists() and (out3 / "runs" / "top-0.5" / "seed1").is_dir()
    # a file from before `attention` and `correlation` were renamed: its rows of those names
    # ran other rules (Clip-Cov, FAI) and are never taken for the new ones
    old_doc = json.loads(ref.read_text())
    old_doc.pop("credit_rules", None)
    flow = next(v for v in old_doc["variants"] if v["key"] == "credit-flow")
    old_doc["variants"].append({**flow, "key": "credit-attention", "train_options": {"credit": "attention"}})
    ref3 = tmp_path / "old.json"
    ref3.write_text(json.dumps(old_doc))
    text, res4, _ = _sweep("credit", tmp_path, suite, "--rules", "none,attention", "--seeds", "0", "--reference", str(ref3))
    assert "1 runs taken from" in text and "FAI" not in text
    assert [r.get("reference") for v in res4["variants"] for r in v["seeds"]] == [str(ref3), None]
    # other settings than the reference's: one line, before any training
    bad = runner.invoke(app, ["ablate", "ratio", "--model", "tiny-qwen3", "--task", "abl-toy", "--steps", "2",
                              "--prompts", "1", "--group-size", "2", "--max-new-tokens", "4", "--eval-suite",
                              str(suite), "--eval-limit", "2", "--ratios", "0.5", "--reference", str(ref),
                              "--out", str(tmp_path / "bad"), "-q"])
    assert bad.exit_code != 0 and "other settings (base, steps)" in bad.output
    assert not (tmp_path / "bad" / "runs").exists()


def test_a_sweep_stopped_early_keeps_the_table_so_far(toy, tmp_path, monkeypatch, results_md):
    """After each finished run the sweep writes results.json marked partial (results_md.py says
    so and names the seeds each row has); a rerun trains only what is missing."""
    import ftcli.experiments.sweep as sweep

    suite = tmp_path / "toy.toml"
    suite.write_text(SUITE)
    real, calls = sweep._sweep_job, []

    def stop_at_the_third(job, **kw):
        calls.append(job["head"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or a crash) while the third run trains
        return real(job, **kw)

    monkeypatch.setattr(sweep, "_sweep_job", stop_at_the_third)
    out = tmp_path / "cut"
    argv = ["ablate", "credit", "--model", "tiny-qwen3", "--task", "abl-toy", "--steps", "1", "--prompts", "1",
            "--group-size", "2", "--max-new-tokens", "4", "--eval-suite", str(suite), "--eval-limit", "2",
            "--rules", "none,flow", "--seeds", "0,1", "--out", str(out), "-q"]
    assert runner.invoke(app, argv).exit_code != 0
    res = json.loads((out / "results.json").read_text())
    assert res["partial"] == {"finished": 2, "runs": 4}
    assert [[r["seed"] for r in v["seeds"]] for v in res["variants"]] == [[0], [0]]  # seed 0 of both rows
    assert res["variants"][1]["paired_vs_baseline"]["seeds"] == [0]
    assert len((out / "results.csv").read_text().splitlines()) == 3
    md = results_md
    text = md.sweep_md(res, {})
    assert "partial: 2 of 4 runs finished" in text and "(seed 0)" in text

    monkeypatch.setattr(sweep, "_sweep_job", real)
    # rerun with a checkpoint every step: saving does not change what a run computes, so the
    # folder takes it as the same sweep and the finished runs as its runs
    text = _ok(runner.invoke(app, [*argv, "--set", "save_every=1"]))
    assert text.count("trained (reused)") == 2 and text.count(": training 1 steps") == 2
    res = json.loads((out / "results.json").read_text())
    assert "partial" not in res and [[r["seed"] for r in v["seeds"]] for v in res["variants"]] == [[0, 1], [0, 1]]
    assert "partial" not in md.sweep_md(res, {}) and "(seed" not in md.sweep_md(res, {})
    assert res["runs_trained"] == 2 and "for the 2 runs trained by the last invocation" in md.sweep_md(res, {})
    _ok(runner.invoke(app, argv))  # a third time: nothing to train, and the header says so
    res = json.loads((out / "results.json").read_text())
    assert res["runs_trained"] == 0 and "every run trained by an earlier invocation" in md.sweep_md(res, {})


def test_a_sweep_cut_short_keeps_every_run_finished_before(toy, tmp_path, monkeypatch):
    """Runs that an earlier invocation trained and evaluated are read first, so a sweep that
    stops at its first new training still writes them all (not only those of seed 0)."""
    import ftcli.experiments.sweep as sweep

    suite = tmp_path / "toy.toml"
    suite.write_text(SUITE)
    out = tmp_path / "grow"
    argv = ["ablate", "credit", "--model", "tiny-qwen3", "--task", "abl-toy", "--steps", "1", "--prompts", "1",
            "--group-size", "2", "--max-new-tokens", "4", "--eval-suite", str(suite), "--eval-limit", "2",
            "--seeds", "0,1", "--out", str(out), "-q"]
    _ok(runner.invoke(app, [*argv, "--rules", "none"]))  # GRPO on seeds 0 and 1
    real, heads = sweep._sweep_job, []

    def stop_at_new_training(job, **kw):
        heads.append(job["head"])
        if not sweep._is_trained(job):
            raise KeyboardInterrupt  # stopped before the first run this invocation trains
        return real(job, **kw)

    monkeypatch.setattr(sweep, "_sweep_job", stop_at_new_training)
    assert runner.invoke(app, [*argv, "--rules", "none,flow"]).exit_code != 0
    res = json.loads((out / "results.json").read_text())
    assert res["partial"] == {"finished": 2, "runs": 4}
    assert [[r["seed"] for r in v["seeds"]] for v in res["variants"]] == [[0, 1], []]
    assert heads[0].startswith("[1/4]") and "GRPO" in heads[1] and "seed 1" in heads[1]


def test_a_reused_run_trained_with_other_options_is_refused(toy, tmp_path):
    """A finished run shared into another sweep (scripts' `share`) is reused only when it was
    trained with the options this sweep asks for: another group size or clip is an error."""
    suite = tmp_path / "toy.toml"
    suite.write_text(SUITE)
    _, _, first = _sweep("credit", tmp_path, suite, "--rules", "none")
    other = tmp_path / "other"
    (other / "runs").mkdir(parents=True)
    (other / "runs" / "credit-none").symlink_to(first / "runs" / "credit-none")
    argv = ["ablate", "credit", "--model", "tiny-qwen3", "--task", "abl-toy", "--steps", "1", "--prompts", "1",
            "--group-size", "2", "--max-new-tokens", "4", "--eval-suite", str(suite), "--eval-limit", "2",
            "--rules", "none", "--out", str(other), "-q"]
    res = runner.invoke(app, [*argv, "--set", "eps_low=0.1"])
    assert res.exit_code != 0 and "was trained with other options (eps_low)" in res.output
    assert "training" not in res.output
    (other / "settings.json").unlink()  # the refused sweep's settings: start the folder afresh
    text = _ok(runner.invoke(app, argv))  # the same options: reused, not trained again
    assert "trained (reused)" in text and "training" not in text


def test_cli_tokens_train_and_overhead(toy, tmp_path):
    suite = tmp_path / "toy.toml"
    suite.write_text(SUITE)
    out = tmp_path / "tok"
    _ok(runner.invoke(app, ["ablate", "tokens", "--model", "tiny-qwen3", "--task", "abl-toy", "--n", "2", "--train",
                            "--train-task", "abl-toy", "--steps", "1", "--set", "prompts=1", "--set", "group_size=2",
                            "--set", "max_new_tokens=4", "--eval-suite", str(suite), "--eval-limit", "2",
                            "--out", str(out), "-q"]))
    res = json.loads((out / "train" / "results.json").read_text())
    assert [v["key"] for v in res["variants"]] == ["grpo", "credit-flow", "credit-flow-structural", "credit-flow-semantic"]

    out = tmp_path / "oh"
    text = _ok(runner.invoke(app, ["ablate", "overhead", "--model", "tiny-qwen3", "--task", "abl-toy",
                                   "--lengths", "48,64", "--repeats", "1", "--warmup", "0", "--out", str(out), "-q"]))
    assert "Table 6" in text
    res = json.loads((out / "results.json").read_text())
    arms = {(r["length"], r["arm"]) for r in res["rows"]}
    assert arms == {(T, a) for T in (48, 64) for a in ("none-fused", "flow-fused", "flow-separate")}
    by = {(r["length"], r["arm"]): r for r in res["rows"]}
    for T in (48, 64):
        assert by[(T, "none-fused")]["ratio"] == 1.0 and by[(T, "flow-fused")]["step_s"] > 0
        # the separate pass (a whole extra forward) is timed as credit; plain GRPO's credit is ~0
        assert by[(T, "flow-separate")]["credit_s"] > by[(T, "none-fused")]["credit_s"]


@pytest.mark.parametrize("source", ["generated", pytest.param("files", marks=pytest.mark.needs_data)])
def test_sweep_jobs_match_in_process_runs(tmp_path, source):
    """--jobs 2 trains and evaluates in spawned processes; every number equals the in-process
    sweep's (each run is seeded by itself). Generated Countdown (no files) or TinyZero's files
    (--data-source files, passed on to every run; the suite reads the test file)."""
    suite = tmp_path / "cd.toml"
    suite.write_text('label = "CD"\ntask = "countdown"\nsplit = "test"\nmetric = "pass@1"\nn = 1\n'
                     'temperature = 1.0\nmax_new_tokens = 6\nseed = 0\ngrader = "verify"\nsecond_grader = ""\n'
                     + ('task_options = { source = "generated" }\n' if source == "generated" else ""))
    docs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}"
        _ok(runner.invoke(app, ["ablate", "credit", "--rules", "none,flow", "--model", "tiny-qwen3", "--task", "countdown",
                                "--steps", "1", "--prompts", "1", "--group-size", "2", "--max-new-tokens", "6",
                                "--data-source", source, "--set", "val_every=1", "--set", "val_size=8",
                                "--eval-suite", str(suite), "--eval-limit", "3", "--out", str(out), "-q", "--jobs", jobs]))
        docs.append(json.loads((out / "results.json").read_text()))
        cfg = _run_cfg(out, "credit-flow")
        assert cfg["data_source"] == source and cfg["data"]["source"] == source
    for a, b in zip(docs[0]["variants"], docs[1]["variants"], strict=True):
        assert a["key"] == b["key"] and a["avg"] == b["avg"]
        assert [s["train"]["reward_last"] for s in a["seeds"]] == [s["train"]["reward_last"] for s in b["seeds"]]
    w = [[json.loads(x) for x in (tmp_path / j / "runs" / "credit-flow" / "seed0" / "metrics.jsonl").read_text().splitlines()]
         for j in ("j1", "j2")]
    assert [r["step"] for r in w[0]] == [0, 1]  # validation of the starting policy, then the step
    w = [rows[1] for rows in w]
    assert w[0]["loss"] == w[1]["loss"] and w[0]["grad_norm"] == w[1]["grad_norm"]


def test_cli_ablate_data_root_missing_file_is_one_line(tmp_path):
    """--data-root reaches the analyses' tasks: an empty one names the file and the fetch command."""
    res = runner.invoke(app, ["ablate", "intervene", "--model", "tiny-qwen3", "--task", "gsm8k", "--n", "1",
                              "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "gsm8k/test.jsonl" in res.output and "ft data fetch gsm8k" in res.output
