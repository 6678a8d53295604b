"""Credit rules: one registry, one shared selection, the flow rule equals trace_flow."""

import math

import pytest
import torch

from ftcli.credit import (
    RULES,
    WEIGHTINGS,
    CreditInputs,
    CreditOptions,
    compute_credit,
    continuous_units,
    get_rule,
    weights_from_scores,
)
from ftcli.flow import trace_flow

B, T, P = 3, 24, 6  # batch, length, prompt length


def _batch(seed=0, with_W=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(B, T, T, generator=g).triu(1)
    W = W / W.sum(1, keepdim=True).clamp_min(1e-9)  # columns ~ attention of each query
    W = W.triu(1)
    resp = torch.zeros(B, T, dtype=torch.bool)
    resp[:, P:] = True
    resp[2, 20:] = False  # a shorter sequence (right padding)
    am = resp.clone()
    am[:, :P] = True
    q = torch.zeros(B, T, dtype=torch.bool)
    q[:, 1:4] = True
    a = torch.zeros(B, T, dtype=torch.bool)
    a[0, 18:20] = True
    a[2, 17:19] = True  # sequence 1: no answer -> fallback
    W = W * am[:, :, None] * am[:, None, :]
    return CreditInputs(
        input_ids=torch.randint(4, 90, (B, T), generator=g), attention_mask=am, response_mask=resp,
        question_mask=q, answer_mask=a, advantages=torch.tensor([1.0, -0.5, 0.3]),
        seeds=torch.tensor([11, 12, 13]), W=W if with_W else None,
        logp=-torch.rand(B, T, generator=g) * resp, entropy=torch.rand(B, T, generator=g) * resp,
    )


def test_registry_has_the_paper_rules():
    assert {"none", "random", "entropy", "gradient", "correlation", "attention", "flow"} <= set(RULES)
    assert "attention" in get_rule("flow").needs and "attention" in get_rule("attention").needs
    with pytest.raises(ValueError, match="unknown credit rule"):
        get_rule("saliency")


def test_flow_rule_weights_equal_trace_flow():
    inp = _batch()
    ref = trace_flow(inp.W.clone(), inp.question_mask, inp.answer_mask, inp.response_mask, 0.4, 1.5)
    c = compute_credit("flow", inp, CreditOptions(ratio=0.4, gamma=1.5))
    assert torch.equal(c.weights, ref.weights.float())
    assert torch.equal(c.credited, ref.mask)
    assert c.fallback.tolist() == [False, True, False] == ref.fallback.tolist()
    assert torch.equal(c.weights[1], torch.ones(T))  # no answer: uniform
    for g, r in ((2.0, 0.2), (0.5, 0.6)):
        ref = trace_flow(inp.W.clone(), inp.question_mask, inp.answer_mask, inp.response_mask, r, g)
        assert torch.equal(compute_credit("flow", inp, CreditOptions(ratio=r, gamma=g)).weights, ref.weights.float())


@pytest.mark.parametrize("rule", ["random", "entropy", "correlation", "attention", "flow"])
def test_binary_selection_counts_and_gamma_one(rule):
    inp = _batch()
    c = compute_credit(rule, inp, CreditOptions(ratio=0.4, gamma=1.5))
    n = inp.response_mask.sum(1)
    k = torch.ceil(n * 0.4 - 1e-9)
    got = c.credited.sum(1)
    for b in range(B):
        if c.fallback[b]:
            assert got[b] == 0
        else:
            assert got[b] <= k[b] and (rule in ("attention", "correlation") or got[b] == k[b])
    assert set(c.weights[inp.response_mask].unique().tolist()) <= {1.0, 1.5}
    assert torch.equal(c.weights[~inp.response_mask], torch.ones(int((~inp.response_mask).sum())))
    one = compute_credit(rule, inp, CreditOptions(gamma=1.0))
    assert torch.equal(one.weights, torch.ones(B, T)) and not one.credited.any()


def test_none_rule_is_uniform():
    c = compute_credit("none", _batch(), CreditOptions())
    assert torch.equal(c.weights, torch.ones(B, T)) and c.scores is None


def test_top_and_bottom_select_opposite_ends():
    s = torch.arange(1.0, 11.0)[None]  # scores 1..10
    resp = torch.ones(1, 10, dtype=torch.bool)
    w_top, top = weights_from_scores(s, resp, CreditOptions(ratio=0.3))
    _, bottom = weights_from_scores(s, resp, CreditOptions(ratio=0.3, select="bottom"))
    assert top[0].nonzero()[:, 0].tolist() == [7, 8, 9]
    assert bottom[0].nonzero()[:, 0].tolist() == [0, 1, 2]
    assert w_top[0, 9] == 1.5 and w_top[0, 0] == 1.0


def test_nonneg_only_skips_negative_advantages():
    inp = _batch()
    c = compute_credit("random", inp, CreditOptions(nonneg_only=True))
    assert not c.credited[1].any() and c.credited[0].any() and c.credited[2].any()


def test_random_is_seeded_per_sequence():
    a = compute_credit("random", _batch(), CreditOptions())
    inp = _batch()
    sub = CreditInputs(**{**inp.__dict__, **{k: getattr(inp, k)[1:] for k in (
        "input_ids", "attention_mask", "response_mask", "question_mask", "answer_mask",
        "advantages", "seeds")}})
    b = compute_credit("random", sub, CreditOptions())
    assert torch.equal(a.weights[1:], b.weights)  # the split does not change a sequence's draw


def test_correlation_and_attention_by_hand():
    resp = torch.zeros(1, 4, dtype=torch.bool)
    resp[0, 1:] = True
    logp = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    inp = CreditInputs(
        input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.bool),
        response_mask=resp, question_mask=torch.tensor([[True, False, False, False]]),
        answer_mask=torch.zeros(1, 4, dtype=torch.bool), advantages=torch.tensor([2.0]), logp=logp,
    )
    s, _ = get_rule("correlation").score(inp, CreditOptions())
    assert torch.allclose(s, torch.tensor([[0.0, 2.0, 0.0, -2.0]]))  # A * (logp - mean_R logp)
    # FAI with window 1..2 on a 5-token response starting at 0
    W = torch.zeros(1, 5, 5)
    W[0, 0, 1], W[0, 0, 2], W[0, 0, 3] = 0.2, 0.4, 0.9  # key 0 seen by queries 1,2 (in window), 3 (out)
    W[0, 3, 4] = 0.6
    inp = CreditInputs(
        input_ids=torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 5, dtype=torch.bool),
        response_mask=torch.ones(1, 5, dtype=torch.bool), question_mask=torch.zeros(1, 5, dtype=torch.bool),
        answer_mask=torch.zeros(1, 5, dtype=torch.bool), advantages=torch.ones(1), W=W,
    )
    s, _ = get_rule("attention").score(inp, CreditOptions(fai_window=(1, 2)))
    assert torch.allclose(s, torch.tensor([[0.3, 0.0, 0.0, 0.6, 0.0]]))


@pytest.mark.parametrize("weighting", [w for w in WEIGHTINGS if w != "binary"])
def test_continuous_weightings(weighting):
    g = torch.Generator().manual_seed(3)
    s = torch.rand(2, 12, generator=g) ** 2
    resp = torch.ones(2, 12, dtype=torch.bool)
    resp[1, 9:] = False
    w, credited = weights_from_scores(s, resp, CreditOptions(weighting=weighting, gamma=2.0, mass=0.5))
    assert (w >= 1.0).all() and (w <= 2.0 + 1e-6).all()
    assert torch.equal(w[1, 9:], torch.ones(3))
    u = continuous_units(s, resp, weighting, mass=0.5)
    for b in range(2):  # monotone in the score
        idx = resp[b].nonzero()[:, 0]
        order = torch.argsort(s[b, idx])
        assert (u[b, idx][order].diff() >= -1e-6).all()
    if weighting == "mass":  # credited mass equals the threshold
        assert torch.allclose((u * s).sum(1), 0.5 * (s * resp).sum(1), atol=1e-5)
    wb, _ = weights_from_scores(s, resp, CreditOptions(weighting=weighting, gamma=2.0, select="bottom", mass=0.5))
    assert torch.allclose((wb - 1) + (w - 1), torch.ones_like(w) * resp, atol=1e-6)


def test_bad_options():
    with pytest.raises(ValueError, match="--select"):
        CreditOptions(select="middle")
    with pytest.raises(ValueError, match="--weighting"):
        CreditOptions(weighting="softmax")


def test_gradient_rule_on_tiny_model():
    from ftcli.models import load_model

    model, _ = load_model("tiny-qwen3")
    inp = _batch(with_W=False)
    inp.model = model
    c = compute_credit("gradient", inp, CreditOptions())
    s = c.scores
    assert c.fallback.tolist() == [False, True, False]
    assert (s[0, :19] > 0).all()  # every token before the last answer token influences it
    assert torch.equal(s[0, 20:], torch.zeros(T - 20))  # causal: later tokens cannot
    assert torch.equal(c.weights[1], torch.ones(T))
    assert not any(p.grad is not None for p in model.parameters())  # parameter grads untouched
    k = math.ceil(0.4 * int(inp.response_mask[0].sum()) - 1e-9)
    assert int(c.credited[0].sum()) == k
