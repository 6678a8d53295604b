"""Padding-free updates (issue 29): a packed row (one per micro-batch, position ids restarting
per sequence, attention restricted to each sequence, optionally one prompt copy per group)
gives the padded layout's log-probs, entropies, W, flow scores, loss and gradient (float64
tiny model, to float tolerance), and computes fewer slots."""

import pytest
import torch
from test_train_microbatch import _realistic_step, _seqs, _update

from ftcli.attention import capture_attention, mean_attention
from ftcli.credit import CreditInputs, CreditOptions, compute_credit, get_rule
from ftcli.fetch.models import load_model
from ftcli.packing import pack_row, packed_attention, packed_micro_batches, packed_slots
from ftcli.sequences import collate, micro_batches, padded_slots
from ftcli.train.logprobs import policy_logprobs


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-qwen3")
    return model.double().eval(), tok


def test_packed_row_layout():
    seqs = _seqs(101, n_prompts=2, group=3)
    plain, shared = pack_row(seqs), pack_row(seqs, share_prompt=True)
    assert plain.length == sum(len(s.ids) for s in seqs) == packed_slots(seqs)
    assert shared.length == packed_slots(seqs, True) == 6 + 9 + sum(s.n_response for s in seqs)
    for lay in (plain, shared):
        for n, s in enumerate(seqs):  # every sequence's tokens and positions, as it has alone
            idx = lay.positions(n)
            assert lay.input_ids[0, idx].tolist() == s.ids
            assert lay.position_ids[0, idx].tolist() == list(range(len(s.ids)))
        assert [(a.lo, a.hi) for a in lay.segments] == sorted((a.lo, a.hi) for a in lay.segments)
        assert lay.segments[-1].hi == lay.length
    # one copy per prompt: the responses of a group point at the same prompt positions
    assert torch.equal(shared.positions(0)[:6], shared.positions(2)[:6])


def test_segment_kernel_attends_bf16_in_fp32_on_cpu():
    """bf16 inputs on CPU: attended in fp32 (the CPU flash kernel's bf16 backward is slow), the
    output in bf16 and equal to the fp32 kernel's rounded; gradients reach bf16 inputs."""
    from ftcli.packing import segment_attention

    seqs = _seqs(7, n_prompts=2, group=2)
    lay = pack_row(seqs, share_prompt=True)
    L, g = lay.length, torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, L, 8, generator=g) for _ in range(3))
    mod = torch.nn.Module()
    mod.is_causal, mod.training, mod.num_key_value_groups = True, False, 1
    want, _ = segment_attention(mod, q, k, v, lay)  # [1, L, H, d] fp32
    qb, kb, vb = (x.bfloat16().requires_grad_() for x in (q, k, v))
    got, _ = segment_attention(mod, qb, kb, vb, lay)
    assert got.dtype == torch.bfloat16
    ref, _ = segment_attention(mod, qb.detach().float(), kb.detach().float(), vb.detach().float(), lay)
    assert torch.equal(got, ref.bfloat16()) and torch.allclose(got.float(), want, atol=3e-2)
    got.float().sum().backward()
    assert qb.grad.dtype == torch.bfloat16 and qb.grad.abs().sum() > 0


def test_packed_forward_equals_each_sequence_alone(tiny):
    model, tok = tiny
    seqs = _seqs(len(tok), n_prompts=2, group=3)
    for share in (False, True):
        lay = pack_row(seqs, share)
        with torch.no_grad(), packed_attention(model, lay):
            out = model(input_ids=lay.input_ids, position_ids=lay.position_ids, use_cache=False).logits[0]
        assert model.config._attn_implementation == "sdpa"  # restored
        for n, s in enumerate(seqs):
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([s.ids]), use_cache=False).logits[0]
            torch.testing.assert_close(out[lay.positions(n)], alone, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("chunk", [0, 7])
def test_packed_logprobs_and_entropy_equal_padded(tiny, share, chunk):
    model, tok = tiny
    seqs = _seqs(len(tok), n_prompts=3, group=4)
    batch = collate(seqs, 0)
    packed = dict(batch, packing=pack_row(seqs, share))
    lp, ent = policy_logprobs(model, batch, 0.9, chunk, True, False)
    lq, eq = policy_logprobs(model, packed, 0.9, chunk, True, False)
    keep = batch["attention_mask"].clone()
    keep[:, : batch["first"]] = False  # the positions the padded path fills with real tokens
    torch.testing.assert_close(lq[keep], lp[keep], rtol=1e-6, atol=1e-6)  # fp32 head
    torch.testing.assert_close(eq[keep], ent[keep], rtol=1e-6, atol=1e-6)
    assert not lq[~keep].any() and not eq[~keep].any()


def eager_W(model, ids) -> torch.Tensor:
    """Eq. 1 of one sequence alone from eager attention maps (output_attentions), all layers."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation("sdpa")
    A = torch.stack(att).mean(dim=(0, 2))[0]  # [T(query), T(key)], mean over layers and heads
    return A.t().triu(diagonal=1).float()  # [key, query], strictly upper


@pytest.mark.parametrize("share", [False, True])
def test_packed_capture_is_each_sequence_alone(tiny, share):
    """W of each sequence of a packed row equals eager attention of that sequence alone, and the
    flow scores equal the padded path's."""
    model, tok = tiny
    seqs = _seqs(len(tok), n_prompts=2, group=4)
    batch = collate(seqs, 0)
    packed = dict(batch, packing=pack_row(seqs, share))
    with capture_attention(model, "all") as cap:
        policy_logprobs(model, packed, 1.0, 16, False, False)
    W = cap.checked_W()  # [N, T, T]
    assert W.shape == (len(seqs),) + 2 * (batch["input_ids"].shape[1],)
    for n, s in enumerate(seqs):
        T = len(s.ids)
        alone = eager_W(model, s.ids)  # [T, T]
        torch.testing.assert_close(W[n, :T, :T], alone, rtol=1e-6, atol=1e-7)
        assert not W[n, T:].any() and not W[n, :, T:].any()
    W_pad = mean_attention(model, batch["input_ids"], batch["attention_mask"].long(), layers="all")
    rule, opts = get_rule("flow"), CreditOptions()

    def scores(w):
        inp = CreditInputs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           response_mask=batch["response_mask"], question_mask=batch["question_mask"],
                           answer_mask=batch["answer_mask"], advantages=batch["advantages"],
                           seeds=batch["seeds"], W=w)
        return compute_credit(rule, inp, opts)

    a, b = scores(W), scores(W_pad)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("kw", [
    dict(credit="flow", credit_pass="fused"),
    dict(credit="flow", credit_pass="fused", share_prompt=True, loss_agg="seq-mean-token-mean"),
    dict(credit="flow", credit_pass="separate", loss_agg="seq-mean-token-sum-norm", micro_tokens=60),
    dict(credit="none", mini_batches=2, loss_agg="seq-mean-token-sum-norm", share_prompt=True),
    dict(credit="none", mini_batches=2, entropy_coef=0.01, micro_tokens=80),
    dict(credit="entropy", loss_agg="token-mean", share_prompt=True, micro_tokens=200),
])
def test_packed_update_gives_the_padded_gradient(kw):
    model, tok = load_model("tiny-qwen3")
    model = model.double()
    seqs = _seqs(len(tok))
    share = kw.get("share_prompt", False)
    sa, ra, na, ga = _update(model, tok, seqs, "length", **dict(kw, pack=False))  # padded reference
    sb, rb, nb, gb = _update(model, tok, seqs, "length", **dict(kw, pack=True, share_prompt=share))
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        # fp32 rounding: the log-probs are fp32 (grpo.token_logprobs, the chunked head)
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-5, atol=1e-6 * float(ga[n].abs().max()))
    assert any(float(g.abs().max()) > 0 for g in ga.values())
    assert nb == pytest.approx(na, rel=1e-5)
    assert sb.loss == pytest.approx(sa.loss, rel=1e-5, abs=1e-7)
    for field in ("credited", "clipped", "credit_fallback"):
        assert getattr(sb, field) == getattr(sa, field)
    assert sb.entropy == pytest.approx(sa.entropy, rel=1e-6)
    assert [id(r[0]) for r in rb] == [id(r[0]) for r in ra]
    for (_, wa, _), (_, wb, _) in zip(ra, rb, strict=True):
        n = min(wa.shape[0], wb.shape[0])
        assert torch.equal(wa[:n], wb[:n])
    if share:  # one copy per prompt in each row
        assert len(packed_micro_batches(seqs, 24, None, True)) == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_packing_slots_per_response_token(seed):
    """A main-job step (16 x 8, 192 tokens): packed rows compute exactly the real tokens, and one
    prompt copy per group brings the slots to at most 1.15 per response token."""
    seqs = _realistic_step(seed)
    resp = sum(s.n_response for s in seqs)
    real = sum(len(s.ids) for s in seqs)
    padded = padded_slots(micro_batches(seqs, 16, "length"))
    plain = sum(packed_slots(m) for m in packed_micro_batches(seqs, 16))
    shared = sum(packed_slots(m, True) for m in packed_micro_batches(seqs, 16, share_prompt=True))
    assert plain == real < padded
    assert shared / resp <= 1.15 < plain / resp
