"""Credit rules: one registry, one shared selection, the flow rule equals trace_flow."""

import math

import pytest
import torch

from ftcli.credit import (
    RENAMED_RULES,
    RULES,
    WEIGHTINGS,
    CreditInputs,
    CreditOptions,
    CreditRule,
    compute_credit,
    continuous_units,
    get_rule,
    middle_hidden_states,
    mutual_correlation,
    register_rule,
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
    assert {"none", "random", "entropy", "gradient", "correlation", "attention", "flow", "clip-cov", "fai"} <= set(RULES)
    needs = {r: set(get_rule(r).needs) for r in RULES}
    assert needs["flow"] == needs["attention"] == needs["fai"] == {"attention"}  # the captured W
    assert needs["correlation"] == needs["gradient"] == {"model"}  # their own forward
    assert needs["clip-cov"] == {"logp"} and needs["entropy"] == {"entropy"}
    assert RENAMED_RULES == {"correlation": "clip-cov", "attention": "fai"}
    with pytest.raises(ValueError, match="unknown credit rule"):
        get_rule("saliency")
    with pytest.raises(ValueError, match="already registered"):
        register_rule("fai")(lambda inputs, opts: (None, None))


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


@pytest.mark.parametrize("rule", ["random", "entropy", "clip-cov", "attention", "fai", "flow"])
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
            assert got[b] <= k[b] and (rule in ("attention", "fai", "clip-cov") or got[b] == k[b])
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


def test_rest_weight_trains_on_the_set_only():
    """--rest-weight r: the unselected response tokens weigh r (binary and continuous); outside
    the response every weight stays 1; sequences the selection skips keep uniform weights."""
    s = torch.arange(1.0, 11.0)[None].repeat(2, 1)  # [2, 10] scores 1..10
    resp = torch.ones(2, 10, dtype=torch.bool)
    resp[:, :2] = False  # a 2-token prompt
    w, sel = weights_from_scores(s, resp, CreditOptions(ratio=0.25, gamma=1.0, rest_weight=0.0),
                                 eligible=torch.tensor([True, False]))
    assert sel[0].nonzero()[:, 0].tolist() == [8, 9] and not sel[1].any()
    assert w[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1] and w[1].tolist() == [1.0] * 10
    w, sel = weights_from_scores(s, resp, CreditOptions(weighting="raw", gamma=2.0, rest_weight=0.5))
    u = s[0, 2:] / 10  # raw: s / max s over the response
    assert torch.allclose(w[0, 2:], 0.5 + 1.5 * u) and w[0, :2].tolist() == [1, 1] and sel[0, 2:].all()
    with pytest.raises(ValueError, match="rest-weight"):
        CreditOptions(rest_weight=-0.1)


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


def test_clip_cov_and_fai_by_hand():
    resp = torch.zeros(1, 4, dtype=torch.bool)
    resp[0, 1:] = True
    logp = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    inp = CreditInputs(
        input_ids=torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 4, dtype=torch.bool),
        response_mask=resp, question_mask=torch.tensor([[True, False, False, False]]),
        answer_mask=torch.zeros(1, 4, dtype=torch.bool), advantages=torch.tensor([2.0]), logp=logp,
    )
    s, _ = get_rule("clip-cov").score(inp, CreditOptions())
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
    s, _ = get_rule("fai").score(inp, CreditOptions(fai_window=(1, 2)))
    assert torch.allclose(s, torch.tensor([[0.3, 0.0, 0.0, 0.6, 0.0]]))


def test_attention_is_the_maximum_received_from_later_tokens():
    W = torch.zeros(1, 5, 5)  # key x query, position 0 is the prompt
    W[0, 0, 1], W[0, 0, 3] = 0.5, 0.9  # a prompt key: not scored
    W[0, 1, 2], W[0, 1, 3], W[0, 1, 4] = 0.1, 0.3, 0.2  # max 0.3 (the mean would be 0.2)
    W[0, 2, 3] = 0.05
    W[0, 3, 4] = 0.6
    resp = torch.tensor([[False, True, True, True, True]])
    inp = CreditInputs(
        input_ids=torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 5, dtype=torch.bool),
        response_mask=resp, question_mask=~resp, answer_mask=torch.zeros(1, 5, dtype=torch.bool),
        advantages=torch.ones(1), W=W,
    )
    s, fb = get_rule("attention").score(inp, CreditOptions())
    assert fb is None and torch.allclose(s, torch.tensor([[0.0, 0.3, 0.05, 0.6, 0.0]]))  # last: no later token
    c = compute_credit("attention", inp, CreditOptions(ratio=0.5))  # ceil(0.5 * 4) = 2: tokens 3 and 1
    assert c.credited[0].nonzero()[:, 0].tolist() == [1, 3]


def test_correlation_is_the_mean_absolute_correlation_with_the_other_tokens():
    h = torch.tensor([[[9.0, 9.0, 9.0],  # the prompt: not scored, not a partner
                       [1.0, 2.0, 3.0],  # centred (-1, 0, 1)
                       [3.0, 2.0, 1.0],  # centred (1, 0, -1): rho = -1 with token 1
                       [1.0, 0.0, 1.0]]])  # centred (1, -2, 1)/3: rho = 0 with both
    resp = torch.tensor([[False, True, True, True]])
    s = mutual_correlation(h, resp)
    assert torch.allclose(s, torch.tensor([[0.0, 0.5, 0.5, 0.0]]), atol=1e-6)  # (|-1| + 0) / 2
    one = torch.tensor([[False, True, False, False]])
    assert torch.equal(mutual_correlation(h, one), torch.zeros(1, 4))  # no other token


def test_correlation_rule_on_tiny_model():
    from ftcli.attention import layer_range, num_layers
    from ftcli.fetch.models import load_model

    model, _ = load_model("tiny-qwen3")
    inp = _batch(with_W=False)
    inp.model = model
    c = compute_credit("correlation", inp, CreditOptions())
    s = c.scores
    resp = inp.response_mask
    assert (s[resp] > 0).all() and (s[resp] <= 1 + 1e-6).all() and torch.equal(s[~resp], torch.zeros(int((~resp).sum())))
    assert not c.fallback.any()
    n = resp.sum(1)
    assert c.credited.sum(1).tolist() == torch.ceil(n * 0.4 - 1e-9).long().tolist()
    # h: the mean of the middle layers' outputs, as output_hidden_states gives them
    with torch.no_grad():
        hs = model(input_ids=inp.input_ids, attention_mask=inp.attention_mask.long(), output_hidden_states=True).hidden_states
    mid = layer_range("mid", num_layers(model))
    ref = torch.stack([hs[i + 1] for i in mid]).float().mean(0)
    torch.testing.assert_close(middle_hidden_states(model, inp.input_ids, inp.attention_mask), ref)
    assert torch.allclose(s, mutual_correlation(ref, resp), atol=1e-5)


def test_token_class_filter_selects_the_top_ratio_within_the_class():
    """Sec. 5.2: top 40% of the class's tokens, not of the response (a class of 4 tokens in a
    response of 10 gets ceil(0.4 * 4) = 2 credited, not all 4)."""
    scores = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]])  # 2 prompt tokens
    ids = torch.tensor([[0, 0, 1, 2, 1, 2, 1, 2, 2, 1, 2, 2]])  # class = token id 1: positions 2, 4, 6, 9
    resp = torch.zeros(1, 12, dtype=torch.bool)
    resp[0, 2:] = True
    rule = CreditRule("fixed", lambda inputs, opts: (scores.clone(), None))
    inp = CreditInputs(ids, torch.ones(1, 12, dtype=torch.bool), resp, ~resp, torch.zeros(1, 12, dtype=torch.bool),
                       torch.ones(1))
    cls = torch.tensor([False, True, False])  # [V]: only token id 1 may be credited
    c = compute_credit(rule, inp, CreditOptions(ratio=0.4, token_filter=cls))
    assert c.credited[0].nonzero()[:, 0].tolist() == [6, 9]  # the class's scores 1, 3, 5, 8: the top two
    assert c.weights[0, 9] == 1.5 and c.weights[0, 11] == 1.0  # the best token overall is not in the class
    bottom = compute_credit(rule, inp, CreditOptions(ratio=0.4, select="bottom", token_filter=cls))
    assert bottom.credited[0].nonzero()[:, 0].tolist() == [2, 4]
    u = compute_credit(rule, inp, CreditOptions(weighting="raw", gamma=2.0, token_filter=cls))
    assert torch.allclose(u.weights[0, [2, 4, 6, 9]], 1 + torch.tensor([1.0, 3.0, 5.0, 8.0]) / 8.0)  # 1 + s / max_class s
    assert torch.equal(u.weights[0, [3, 5, 7, 8, 10, 11]], torch.ones(6))
    none = compute_credit(rule, inp, CreditOptions(ratio=0.4))  # no filter: 4 of the 10 response tokens
    assert none.credited[0].nonzero()[:, 0].tolist() == [8, 9, 10, 11]


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
    from ftcli.fetch.models import load_model

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
