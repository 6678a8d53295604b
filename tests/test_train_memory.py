"""Memory at scale, tested on CPU: token-budget micro-batches (with filler micro-steps so ranks
stay in lockstep), chunked log-probs through the LM head, gradient checkpointing with the
fused W capture, world-size-independent row seeds, and the dry run's memory plan (checked
against peaks measured in a subprocess)."""

import json

import pytest
import torch

from ftcli.fetch.models import load_model
from ftcli.generation import generate, prompt_keys
from ftcli.grpo import token_entropy, token_logprobs
from ftcli.sequences import TracedSeq, collate, micro_batches, padded_slots
from ftcli.train.config import resolve_config
from ftcli.train.logprobs import ChunkedLogprobs, policy_logprobs
from ftcli.train.memprobe import measure_growth
from ftcli.train.stats import CtrlC, Timer
from ftcli.train.update import PolicyUpdate
from tests.test_train_microbatch import GradEngine, _realistic_step, _seqs


def _update(model, tok, seqs, **kw):
    """One update of `seqs` on a plain-autograd engine; (stats, grads, engine, updater)."""
    opts = dict(model="tiny-qwen3", micro_batch=5, log_samples=0, progress=False, pack=False)  # padded micro-batches
    opts.update(kw)
    cfg = resolve_config(**opts)
    model.zero_grad(set_to_none=True)
    eng = GradEngine(model)
    up = PolicyUpdate(cfg, eng, None, tok, world=1, seqs_per_mini=len(seqs) // cfg.mini_batches, ctrl_c=CtrlC())
    stats, _, _ = up.update(seqs, Timer())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return stats, grads, eng, up


def _same_grads(ga, gb, rtol=1e-9, atol=1e-12):
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        assert torch.allclose(ga[n], gb[n], rtol=rtol, atol=atol), n


# -- token-budget micro-batches ----------------------------------------------------------------
@pytest.mark.parametrize("budget", [40, 150, 1000])
def test_token_budget_micro_batches_respect_the_budget(budget):
    seqs = _realistic_step(1, prompts=4, group=8, max_new=120)
    micro = micro_batches(seqs, 64, "length", max_tokens=budget)
    assert sorted(id(s) for m in micro for s in m) == sorted(map(id, seqs))
    for m in micro:  # within budget, or one sequence alone that is longer than it
        slots = len(m) * max(len(s.ids) for s in m)
        assert slots <= budget or len(m) == 1
    # greedy: the next micro-batch's first sequence did not fit the previous one
    for a, b in zip(micro[:-1], micro[1:], strict=True):
        assert (len(a) + 1) * max(len(s.ids) for s in a + [b[0]]) > budget or len(a) == 64
    assert padded_slots(micro) <= 1.25 * sum(len(s.ids) for s in seqs) or budget < 100


def test_token_budget_and_filler_steps_leave_the_gradient_unchanged(monkeypatch):
    model, tok = load_model("tiny-qwen3")
    model = model.double()
    seqs = _seqs(len(tok))
    _, g_ref, _, _ = _update(model, tok, seqs, credit="flow")
    _, g_tok, eng, up = _update(model, tok, seqs, credit="flow", micro_batch=64, micro_tokens=60)
    n = len(micro_batches(seqs, 64, "length", 60))
    assert n > 5 and eng.boundaries == [False] * (n - 1) + [True]  # the boundary is the last micro-step
    _same_grads(g_ref, g_tok)
    # another rank had 3 more micro-steps: this one runs 3 fillers (loss x 0), same gradient
    monkeypatch.setattr(PolicyUpdate, "all_max", lambda self, v: [v[0] + 3])
    st, g_fill, eng, _ = _update(model, tok, seqs, credit="flow", micro_batch=64, micro_tokens=60)
    assert len(eng.boundaries) == n + 3 and eng.boundaries[-1] and not any(eng.boundaries[:-1])
    _same_grads(g_ref, g_fill)


def test_global_micro_batch_is_split_over_ranks():
    cfg = resolve_config("paper", model="tiny-qwen3")
    assert cfg.global_micro_batch == 32 and cfg.micro_batch_per_rank(8) == 4 and cfg.micro_batch_per_rank(1) == 32
    assert cfg.loss_agg == "seq-mean-token-mean" and cfg.gradient_checkpointing and cfg.gen_batch_size == "auto"
    assert resolve_config(micro_batch=6).micro_batch_per_rank(4) == 6
    with pytest.raises(ValueError, match="gen-batch-size"):
        resolve_config(gen_batch_size="many")
    assert resolve_config(gen_batch_size="16").gen_batch_rows() == 16


# -- chunked log-probs -------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_the_logits_path_values_and_gradients(temperature):
    g = torch.Generator().manual_seed(0)
    N, H, V = 37, 16, 101
    h = torch.randn(N, H, dtype=torch.float64, generator=g, requires_grad=True)
    W = torch.randn(V, H, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(V, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, V, (N,), generator=g)
    ga, gb = torch.randn(N, dtype=torch.float64, generator=g), torch.randn(N, dtype=torch.float64, generator=g)
    def exact(h, W, b):  # float64 references (the fp32 formulas of grpo.py are checked below)
        lsm = torch.log_softmax(torch.nn.functional.linear(h, W, b) / temperature, -1)  # [N, V]
        return lsm.gather(-1, y[:, None]).squeeze(-1), -(lsm.exp() * lsm).sum(-1)

    lp_ref, ent_ref = exact(h, W, b)
    logits = torch.nn.functional.linear(h, W, b)
    assert torch.allclose(token_logprobs(logits[None], y[None], temperature)[0], lp_ref.float(), atol=1e-4)
    assert torch.allclose(token_entropy(logits[None], temperature)[0], ent_ref.float(), atol=1e-3)
    ref = torch.autograd.grad((lp_ref * ga).sum() + (ent_ref * gb).sum(), (h, W, b))
    lp, ent = ChunkedLogprobs.apply(h, W, b, y, temperature, 8, True)
    assert torch.allclose(lp, lp_ref.float(), atol=1e-5) and torch.allclose(ent, ent_ref.float(), atol=1e-5)
    got = torch.autograd.grad((lp * ga).sum() + (ent * gb).sum(), (h, W, b))
    for a, r in zip(got, ref, strict=True):
        assert torch.allclose(a, r, rtol=1e-3, atol=1e-4)  # fp32 logits of size ~5 / T
    # log-prob alone (no entropy in the loss): its gradient only
    lp, _ = ChunkedLogprobs.apply(h, W, b, y, temperature, 5, False)
    got = torch.autograd.grad((lp * ga).sum(), (h, W, b))
    lp_ref, _ = exact(h, W, b)
    ref = torch.autograd.grad((lp_ref * ga).sum(), (h, W, b))
    for a, r in zip(got, ref, strict=True):
        assert torch.allclose(a, r, rtol=1e-3, atol=1e-4)  # fp32 logits of size ~5 / T


@pytest.mark.parametrize("kw", [
    dict(credit="flow"),
    dict(credit="entropy", entropy_coef=0.01, loss_agg="seq-mean-token-mean"),
    dict(credit="none", mini_batches=2, temperature=0.8),
])
def test_chunked_head_update_equals_the_logits_path(kw):
    """The whole update (every aggregation, entropy bonus, PPO mini-batches): same loss and
    gradients with the LM head chunked as with full logits, to fp32 rounding."""
    model, tok = load_model("tiny-qwen3")
    seqs = _seqs(len(tok))
    sa, ga, _, _ = _update(model, tok, seqs, logprob_chunk=0, **kw)
    sb, gb, _, _ = _update(model, tok, seqs, logprob_chunk=7, **kw)
    assert sb.loss == pytest.approx(sa.loss, rel=1e-5, abs=1e-7)
    assert sb.entropy == pytest.approx(sa.entropy, rel=1e-5)
    _same_grads(ga, gb, rtol=1e-4, atol=1e-6)
    batch = collate(seqs[:6], 0)
    lp0, e0 = policy_logprobs(model, batch, 1.0, 0, True, False)
    lp1, e1 = policy_logprobs(model, batch, 1.0, 3, True, False)
    assert torch.allclose(lp0, lp1, atol=1e-5) and torch.allclose(e0, e1, atol=1e-5)


# -- gradient checkpointing ----------------------------------------------------------------------
def test_gradient_checkpointing_keeps_gradients_and_the_fused_capture():
    from ftcli.attention import capture_attention

    model, tok = load_model("tiny-qwen3")
    model = model.double()
    seqs = _seqs(len(tok))
    _, g_plain, _, _ = _update(model, tok, seqs, credit="flow")
    batch = collate(seqs[:5], 0)
    model.train()
    with capture_attention(model, "mid", batch["attention_mask"].long()) as cap:
        policy_logprobs(model, batch, 1.0, 0, False, True)[0].sum().backward()
    W_plain = cap.W
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model.zero_grad(set_to_none=True)
        with capture_attention(model, "mid", batch["attention_mask"].long()) as cap:
            policy_logprobs(model, batch, 1.0, 0, False, True)[0].sum().backward()  # recompute after the block
        assert torch.equal(cap.W, W_plain)
        _, g_ckpt, _, _ = _update(model, tok, seqs, credit="flow")
    finally:
        model.gradient_checkpointing_disable()
    _same_grads(g_plain, g_ckpt)


# -- seeds ---------------------------------------------------------------------------------------
def test_row_seeds_follow_keys_not_the_call():
    """Rows keyed by their global position: the same samples whether prompts are generated in
    one call or split over 'ranks', and duplicates of a problem on two ranks differ."""
    model, tok = load_model("tiny-qwen3")
    prompts = ["Compute 1+2.", "Compute 3+4.", "Compute 1+2."]
    keys = prompt_keys(prompts)
    assert keys == [0, 0, 1]
    kw = dict(n=2, max_new_tokens=6, temperature=1.0, seed=11)
    whole = generate(model, tok, prompts, keys=keys, **kw)
    split = generate(model, tok, prompts[:1], keys=keys[:1], **kw) + generate(model, tok, prompts[1:], keys=keys[1:], **kw)
    assert [[r.response_ids for r in g] for g in whole] == [[r.response_ids for r in g] for g in split]
    assert [r.response_ids for r in whole[0]] != [r.response_ids for r in whole[2]]
    # without keys the call counts occurrences itself: the same rows as keyed
    assert [[r.response_ids for r in g] for g in generate(model, tok, prompts, **kw)] == \
        [[r.response_ids for r in g] for g in whole]


# -- dry run -------------------------------------------------------------------------------------
QWEN3_4B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936,
            "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000, "tie_word_embeddings": True, "hidden_act": "silu"}


def test_dry_run_plans_the_paper_preset_on_8_gpus(tmp_path):
    from typer.testing import CliRunner

    from ftcli.cli import app

    (tmp_path / "q4b").mkdir()
    (tmp_path / "q4b" / "config.json").write_text(json.dumps(QWEN3_4B))
    env = {"COLUMNS": "200"}
    res = CliRunner().invoke(app, ["train", "--preset", "paper", "--model", str(tmp_path / "q4b"), "--dry-run",
                                   "--gpus", "8", "--out", str(tmp_path / "never")], env=env)
    assert res.exit_code == 0, res.output
    assert "4.02B parameters" in res.output and "fits 8 x 80 GiB" in res.output
    assert "16 micro-steps of 4 sequences" in res.output and not (tmp_path / "never").exists()
    # 8K responses without checkpointing and chunking on one GPU: one warning line for the update
    res = CliRunner().invoke(app, ["train", "--preset", "paper", "--model", str(tmp_path / "q4b"), "--dry-run",
                                   "--gpus", "1", "--max-new-tokens", "8192", "--no-gradient-checkpointing",
                                   "--logprob-chunk", "0"], env=env)
    assert res.exit_code == 0, res.output
    assert "warning: the update needs" in res.output and "--gradient-checkpointing" in res.output


SHAPE = dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_attention_heads=8,
             num_key_value_heads=4, head_dim=64, num_hidden_layers=1)


def _slope(key: str, lo: int, hi: int, ckpt: bool, chunk: int, T: int) -> tuple[float, float]:
    return measure_growth(SHAPE, key, lo, hi, 2, T, ckpt, chunk)


@pytest.mark.parametrize("ckpt", [False, True])
def test_activation_bytes_per_token_per_layer_match_the_measured_peak(ckpt):
    """Activations per token per layer (the dry run's figure, fp32 on CPU) against the growth of
    a measured peak from 1 to 5 layers, within 25%."""
    measured, estimated = _slope("num_hidden_layers", 1, 5, ckpt, 128, 1024)
    assert measured == pytest.approx(estimated, rel=0.25), (measured, estimated)


@pytest.mark.parametrize("chunk", [0, 128])
def test_logprob_bytes_per_vocab_entry_match_the_measured_peak(chunk):
    """The log-prob temporaries (full logits, or chunked) against the growth of a measured peak
    from a 4K to a 36K vocabulary, within 25%."""
    measured, estimated = _slope("vocab_size", 4096, 36864, False, chunk, 256)
    assert measured == pytest.approx(estimated, rel=0.25), (measured, estimated)


def test_trainer_seed_keys_do_not_depend_on_the_world_size():
    """Trainer.seed_keys: rank r of N takes its slice of the one-rank keys (so the same global
    batch samples the same rows), and a problem drawn twice in a step gets two keys."""
    from ftcli.train.loop import Trainer

    model, tok = load_model("tiny-qwen3")

    class Task:
        def prompt(self, s):
            return [{"role": "user", "content": s["question"]}]

    data = [{"question": q} for q in ("a", "b", "a", "c", "b", "a", "d", "e")]  # duplicates

    def keys(world, rank, step):
        t = Trainer.__new__(Trainer)
        t.cfg = resolve_config(prompts=4, seed=1)
        t.world, t.rank, t.prompts_per_rank = world, rank, 4 // world
        t.train_data, t.tokenizer, t.task, t._perm_cache = data, tok, Task(), {}
        return t.seed_keys(step), [data[i]["question"] for i in t.prompts_for_step(step)]

    dup = False
    for step in (1, 2, 3, 4):
        one, texts = keys(1, 0, step)
        dup |= len(set(texts)) < len(texts)
        (k0, t0), (k1, t1) = keys(2, 0, step), keys(2, 1, step)
        assert k0 + k1 == one and t0 + t1 == texts
        pairs = list(zip(texts, one, strict=True))
        assert len(set(pairs)) == len(pairs)  # no two prompts of a step share (text, key)
    assert dup  # some step drew one problem twice


def test_auto_gen_batch_size_fits_the_kv_cache_in_free_memory(monkeypatch):
    from types import SimpleNamespace

    from ftcli.train.memory import auto_gen_batch_size

    cfg = SimpleNamespace(num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_size=2560,
                          num_hidden_layers=36, vocab_size=151936)
    assert auto_gen_batch_size(cfg, 1280, "cpu", torch.bfloat16) == 128  # CPU: the measured default
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (40 * 2**30, 80 * 2**30))
    rows = auto_gen_batch_size(cfg, 1280, "cuda:0", torch.bfloat16)
    per_row = 1280 * 36 * 2 * 1024 * 2 + 151936 * 8  # K and V of every layer, bf16, + a step's logits
    assert rows == int(0.85 * 40 * 2**30 // per_row) and 150 < rows < 250


@pytest.mark.parametrize("micro,group", [(16, 6), (16, 8), (4, 8), (5, 2), (3, 2)])
def test_dry_run_slots_bound_the_packed_micro_batches(micro, group):
    """micro_slots: the largest packed (and prompt-shared) micro-batch of worst-case lengths,
    counted by the packer itself; (16, 6) reaches the bound (a row spans 4 prompts)."""
    from ftcli.packing import packed_micro_batches, packed_slots
    from ftcli.train.memory import micro_slots

    p_len, new = 7, 11
    seqs = [TracedSeq(ids=[10 + q] * p_len + [3] * new, n_prompt=p_len, question=[True] * p_len, answer=[False] * new)
            for q in range(6) for _ in range(group)]
    for pack, share in ((True, True), (True, False), (False, False)):
        cfg = resolve_config("cpu", group_size=group, max_new_tokens=new, pack=pack, share_prompt=share)
        most = max(packed_slots(m, share) for m in packed_micro_batches(seqs, micro, None, share))
        bound = micro_slots(cfg, micro, p_len)
        assert most <= bound and (bound == micro * (p_len + new)) == (not share)
        if (micro, group) == (16, 6) or not share:
            assert most == bound
