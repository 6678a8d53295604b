"""`ft ablate fidelity`: the exact McNemar test by hand, a token's causal effect equal to the
log-likelihood difference computed directly under `block_keys`, the gradient share of the
whole response (1, cosine 1) and of nothing (0), and the command end to end on a tiny random
model with the toy task of the other ablation tests (results, CSVs, figure, resume)."""

import json
import subprocess
from fractions import Fraction

import pytest
import torch
from test_experiments_ablate import ToyTask, _ok
from typer.testing import CliRunner

from ftcli.cli import app
from ftcli.experiments import fidelity as fd
from ftcli.experiments.blocking import block_keys, blocked_mask
from ftcli.experiments.stats import mcnemar_exact, mean_interval
from ftcli.fetch.models import tiny_causal_lm
from ftcli.sequences import TracedSeq

runner = CliRunner()


def test_mcnemar_exact_hand_values():
    # p = 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c), capped at 1
    assert mcnemar_exact(0, 6) == 2 / 64  # 2 * 1/64
    assert mcnemar_exact(1, 5) == 2 * (1 + 6) / 64  # 0.21875
    assert mcnemar_exact(5, 1) == mcnemar_exact(1, 5)  # symmetric
    assert mcnemar_exact(2, 10) == float(Fraction(2 * (1 + 12 + 66), 4096))  # 0.0386
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 1) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 20) == pytest.approx(2 / 2**20)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)
    m = mean_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975, 2} = 4.303
    assert m["mean"] == 2.0 and m["ci"] == pytest.approx([2 - 4.302653 / 3**0.5, 2 + 4.302653 / 3**0.5], abs=1e-5)
    assert mean_interval([0.5])["ci"] is None


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm(vocab_size=101, seed=0)


def _direct_loglik(model, ids, answer, blocked=None):
    """sum over answer positions t of log p(ids[t] | ids[:t]) from the full logits."""
    x = torch.tensor([ids])
    with torch.no_grad():
        if blocked is None:
            logits = model(input_ids=x).logits
        else:
            with block_keys(model, blocked):
                logits = model(input_ids=x).logits
    lp = torch.log_softmax(logits[0].double(), dim=-1)  # [T, V]
    return sum(float(lp[t - 1, ids[t]]) for t, a in enumerate(answer) if a)


def test_single_token_effect_is_the_loglik_difference(model):
    ids = torch.randint(5, 95, (24,), generator=torch.Generator().manual_seed(3)).tolist()
    answer = [False] * 20 + [True, True, True, False]  # the answer: positions 20-22, then one more token
    groups = [[4], [11], [19], [7, 8, 9]]
    base, eff = fd.block_effects(model, ids, answer, groups, batch_size=2)  # 5 rows over 3 forwards
    assert base == pytest.approx(_direct_loglik(model, ids, answer), abs=1e-4)
    for g, e in zip(groups, eff, strict=True):
        direct = base - _direct_loglik(model, ids, answer, blocked_mask(g, len(ids)))
        assert e == pytest.approx(direct, abs=1e-4)
    assert all(abs(e) > 1e-6 for e in eff)  # every earlier token reaches the answer
    # a token after the answer cannot change it
    _, (after,) = fd.block_effects(model, ids, answer, [[23]])
    assert after == pytest.approx(0.0, abs=1e-6)


def test_line_groups_and_token_sample():
    text = "ab\ncd\n\nef"
    offs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 7), (7, 8), (8, 9)]  # "\n\n" is one token
    assert fd.line_groups(text, offs, 8) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert fd.line_groups("x\nyz", [(0, 1), (1, 3), (3, 4)], 3) == [[0], [1, 2]]  # "\ny": a new line
    assert fd.sampled_positions(5, 0, 1) == [0, 1, 2, 3, 4] and fd.sampled_positions(5, 9, 1) == [0, 1, 2, 3, 4]
    s = fd.sampled_positions(50, 8, 7)
    assert s == fd.sampled_positions(50, 8, 7) and len(set(s)) == 8 and s == sorted(s)


def test_gradient_share_of_all_and_of_none(model):
    g = torch.Generator().manual_seed(5)
    seqs = []
    for i, (n_prompt, n_resp, adv) in enumerate([(6, 9, 1.0), (5, 12, -0.5), (7, 4, 0.8)]):
        ids = torch.randint(5, 95, (n_prompt + n_resp,), generator=g).tolist()
        seqs.append(TracedSeq(ids=ids, n_prompt=n_prompt, question=[True] * n_prompt, answer=[False] * n_resp,
                              advantage=adv, seed=i))
    first = {}

    def weigh(batch, logp, ent):
        resp = batch["response_mask"]
        firsts = resp & (resp.float().cumsum(-1) <= 2)  # the first two response tokens
        first["n"] = int(firsts.sum())
        return {"all": resp.float(), "none": torch.zeros_like(resp, dtype=torch.float32),
                "first": firsts.float(), "rest": (resp & ~firsts).float()}

    for agg in ("token-mean", "seq-mean-token-mean"):
        gr = fd.grpo_gradients(model, seqs, weigh, loss_agg=agg, batch_size=2)
        grpo = gr["grpo"]
        assert grpo.numel() == sum(p.numel() for p in model.parameters()) and float(grpo.norm()) > 0
        whole = fd.share_cosine(gr["all"], grpo)
        assert whole["share"] == pytest.approx(1.0, abs=1e-6) and whole["cos"] == pytest.approx(1.0, abs=1e-6)
        assert fd.share_cosine(gr["none"], grpo) == {"share": 0.0, "cos": None}
        torch.testing.assert_close(gr["first"] + gr["rest"], grpo, atol=1e-6, rtol=1e-4)  # linear in the weights
        part = fd.share_cosine(gr["first"], grpo)
        assert 0 < part["share"] and -1 <= part["cos"] <= 1
    assert first["n"] > 0
    assert all(p.grad is None for p in model.parameters())  # gradients returned, never accumulated


def test_cli_fidelity_end_to_end_and_resume(tmp_path, monkeypatch):
    from ftcli.tasks import register_task

    register_task("abl-toy", ToyTask)
    out = tmp_path / "fid"
    args = ["ablate", "fidelity", "--model", "tiny-qwen3", "--task", "abl-toy", "--n", "3", "--ks", "10,50",
            "--max-new-tokens", "10", "--batch-size", "2", "--keep-truncated", "--token-sample", "4",
            "--batches", "1", "--groups", "2", "--group-size", "2", "--out", str(out), "-q"]
    text = _ok(runner.invoke(app, args))
    assert "(a) answer change" in text and "(b) Spearman" in text and "(c) GRPO gradient" in text
    res = json.loads((out / "results.json").read_text())
    rules = res["rules"]
    assert set(rules) == {"random", "entropy", "correlation", "attention", "flow", "gradient", "clip-cov", "fai"}
    assert res["used"] == 3 and len(res["per_problem"]) == 3
    assert set(res["arms"]) == {f"{r}@{k}" for r in [*rules, "flow-bottom"] for k in (10, 50)} | {"none"}
    assert res["arms"]["none"]["changed"]["k"] == 0  # the unblocked regeneration reproduces the answer
    assert len(res["mcnemar"]) == 2 * len(rules) * (len(rules) - 1) // 2
    assert all(0 <= t["p"] <= 1 for t in res["mcnemar"])
    rows = [json.loads(x) for x in (out / "problems.jsonl").read_text().splitlines()]
    for r in rows:
        n = r["n_reasoning"]
        for rule in rules:
            assert len(r["scores"][rule]) == n
            top = r["arms"][f"{rule}@50"]["blocked"]
            assert len(top) == -(-n // 2)  # ceil(50% n)
            assert min(r["scores"][rule][p] for p in top) >= max(
                (r["scores"][rule][p] for p in range(n) if p not in top), default=-1e9)
        e = r["effects"]
        assert len(e["positions"]) == len(e["token"]) == min(4, n) and len(e["line"]) == len(e["lines"])
    (g,) = res["gradient_batches"]
    assert g["sequences"] == 4 and set(g["rules"]) == set(rules)
    assert set(res["gradient"]) == set(rules) and set(res["effects"]) == set(rules)
    for f in ("arms.csv", "mcnemar.csv", "effects.csv", "gradient.csv"):
        assert len((out / f).read_text().splitlines()) > 1
    assert (out / "fidelity.png").stat().st_size > 0
    md = fd.fidelity_markdown(res)  # what scripts/results_md.py prints
    assert md.count("**(") == 3 and "| flow (bottom k%) |" in md and "| No block (control) |" in md
    # resumable: a rerun generates nothing and scores nothing again
    monkeypatch.setattr(fd, "analysed_responses", lambda *a, **k: pytest.fail("redid a finished problem"))
    monkeypatch.setattr(fd, "_gradient_batch", lambda *a, **k: pytest.fail("redid a finished batch"))
    again = json.loads(json.dumps(res))
    _ok(runner.invoke(app, args))
    assert json.loads((out / "results.json").read_text())["arms"] == again["arms"]
    bad = runner.invoke(app, [*args[:-3], "--ks", "5", "--out", str(out), "-q"])
    assert bad.exit_code == 1 and "other settings (ks)" in bad.output


def test_cli_fidelity_gold_responses(tmp_path):
    from ftcli.tasks import register_task

    register_task("abl-toy", ToyTask)
    out = tmp_path / "gold"
    args = ["ablate", "fidelity", "--model", "tiny-qwen3", "--task", "abl-toy", "--n", "2", "--responses", "gold",
            "--rules", "random,flow", "--ks", "20", "--batches", "0", "--out", str(out), "-q"]
    _ok(runner.invoke(app, args))
    res = json.loads((out / "results.json").read_text())
    assert res["used"] == 2 and res["rules"] == ["random", "flow"] and res["gradient_batches"] == []
    row = json.loads((out / "problems.jsonl").read_text().splitlines()[0])
    assert row["original"]["response"].startswith("We add 0 and 1.\n0 + 1 = 1\nThe answer is \\boxed{1}.")
    assert "<<" not in row["original"]["response"] and "####" not in row["original"]["response"]
    assert res["arms"]["none"]["changed"]["k"] == 0  # gold: the reference is the control's answer
    assert len(row["effects"]["lines"]) == 3 and len(row["effects"]["positions"]) == row["n_reasoning"]
    # (c) with the gold solution in each group, the only response that earns reward
    class GoldToy(ToyTask):
        name = "abl-toy-gold"

        def grade(self, r, s):
            return {**super().grade(r, s), "reward": float("boxed" in r)}

    register_task("abl-toy-gold", GoldToy)
    g_args = [*[("abl-toy-gold" if a == "abl-toy" else a) for a in args[:-5]], "--batches", "1", "--groups", "2", "--group-size", "2", "--gold-in-group",
              "--max-new-tokens", "6", "--out", str(tmp_path / "gold-c"), "-q"]
    text = _ok(runner.invoke(app, g_args))
    assert "2 x (1 sampled + the gold solution)" in " ".join(text.split())
    (g,) = json.loads((tmp_path / "gold-c" / "results.json").read_text())["gradient_batches"]
    assert g["sequences"] == 4 and g["sampled_reward_mean"] == 0.0 and g["reward_mean"] == 0.5
    assert g["signal_groups"] == 2 and g["grad_norm"] > 0 and g["rules"]["flow"]["share"] > 0
    import matplotlib.image

    width = {d: matplotlib.image.imread(tmp_path / d / "fidelity.png").shape[1] for d in ("gold", "gold-c")}
    assert width["gold-c"] == pytest.approx(1.5 * width["gold"], rel=0.02)  # a third panel: (c)


def test_fidelity_script_runs_both_models(tmp_path):
    from test_scripts import _calls, _opt

    default, smol = _calls(tmp_path, "fidelity.sh")
    assert default[:2] == smol[:2] == ["ablate", "fidelity"]
    assert (_opt(default, "--model"), _opt(default, "--task"), _opt(default, "--n")) == ("default-policy", "countdown", "300")
    assert _opt(default, "--token-sample") is None and _opt(default, "--batches") == "3"
    assert (_opt(smol, "--model"), _opt(smol, "--task"), _opt(smol, "--responses")) == ("smollm2-135m", "gsm8k", "gold")
    assert _opt(smol, "--n") == "50" and _opt(smol, "--token-sample") == "16"
    assert (_opt(smol, "--batches"), _opt(smol, "--group-size")) == ("3", "4") and "--gold-in-group" in smol
    assert "--gold-in-group" not in default
    _, smol = _calls(tmp_path, "fidelity.sh", N_SMOLLM2="60", TOKEN_SAMPLE="0")
    assert _opt(smol, "--n") == "60" and _opt(smol, "--token-sample") == "0"
    (qwen,) = _calls(tmp_path, "fidelity.sh", argv=["qwen-coder"])  # not part of "all": an optional model
    assert (_opt(qwen, "--model"), _opt(qwen, "--responses"), _opt(qwen, "--n")) == ("qwen2.5-coder-0.5b", "gold", "50")
    assert "--gold-in-group" in qwen and _opt(qwen, "--out").endswith("fidelity-qwen-coder")
    assert _opt(qwen, "--batches") == "0"  # (c) of a 0.5B model: opt in with BATCHES_QWEN
    with pytest.raises(subprocess.CalledProcessError):
        _calls(tmp_path, "fidelity.sh", argv=["smollm"])


def test_gold_in_group_rollouts():
    """--gold-in-group: each group is group_size - 1 samples and the gold solution last, graded
    like them, advantages normalised over the whole group; the CLI's (c) table names it."""
    from test_experiments_ablate import ToyTask

    from ftcli.experiments.common import load_pair
    from ftcli.experiments.config import FidelityConfig
    from ftcli.generation import stop_token_ids

    mdl, tok = load_pair("tiny-qwen3")
    task = ToyTask()
    samples = task.load("train")[:2]
    cfg = FidelityConfig(model="tiny-qwen3", task="abl-toy", group_size=3, max_new_tokens=6, gold_in_group=True)
    seqs, rewards = fd.rollout_batch(mdl, tok, task, samples, cfg, 0)
    assert len(seqs) == len(rewards) == 6
    eos = stop_token_ids(mdl, tok)[0]
    for g, s in enumerate(samples):
        gold = seqs[3 * g + 2]
        text = fd.gold_text(s)
        assert gold.ids[gold.n_prompt :] == list(tok(text, add_special_tokens=False)["input_ids"]) + [eos]
        assert rewards[3 * g + 2] == task.grade(text, s)["reward"]
        adv = torch.tensor([x.advantage for x in seqs[3 * g : 3 * g + 3]])
        assert adv.sum().abs() < 1e-5  # group-normalised over the samples and the gold together
    plain = fd.rollout_batch(mdl, tok, task, samples, FidelityConfig(model="tiny-qwen3", task="abl-toy", group_size=3,
                                                                     max_new_tokens=6), 0)[0]
    assert [x.ids for x in plain[:2]] == [x.ids for x in seqs[:2]]  # the same seeded samples before the gold
    with pytest.raises(ValueError, match="no worked solutions"):
        fd.rollout_batch(mdl, tok, task, [{**samples[0], "solution": "no marker"}], cfg, 0)


def test_streamed_gradient_shares_equal_the_one_pass(model, monkeypatch):
    """When the gradients do not fit in memory, part (c) computes one weighting at a time: the
    same norm, shares and cosines, and `weigh` still runs once per micro-batch."""
    g = torch.Generator().manual_seed(9)
    seqs = [TracedSeq(ids=torch.randint(5, 95, (6 + n,), generator=g).tolist(), n_prompt=6, question=[True] * 6,
                      answer=[False] * n, advantage=a, seed=i) for i, (n, a) in enumerate([(9, 1.0), (5, -1.0), (7, 0.5)])]
    calls = []

    def weigh(batch, logp, ent):
        calls.append(batch["input_ids"].shape)
        resp = batch["response_mask"]
        first = resp & (resp.float().cumsum(-1) <= 3)
        return {"first": first.float(), "rest": (resp & ~first).float()}

    kw = dict(batch_size=2)
    monkeypatch.setattr(fd, "streamed", lambda n, k: False)
    norm, one = fd.gradient_shares(model, seqs, weigh, ["first", "rest"], **kw)
    assert len(calls) == 2  # two micro-batches
    monkeypatch.setattr(fd, "streamed", lambda n, k: True)
    calls.clear()
    norm_s, two = fd.gradient_shares(model, seqs, weigh, ["first", "rest"], **kw)
    assert len(calls) == 2 and norm_s == pytest.approx(norm, rel=1e-5) and norm > 0
    for r in ("first", "rest"):
        assert two[r]["share"] == pytest.approx(one[r]["share"], rel=1e-4) and 0 < one[r]["share"] < 1
        assert two[r]["cos"] == pytest.approx(one[r]["cos"], abs=1e-4)
    monkeypatch.undo()
    assert not fd.streamed(10**6, 9) and fd.streamed(10**13, 9)  # 36 MB fit, 360 TB do not
