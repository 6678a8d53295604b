"""GRPO objective: advantages, weighted clipped surrogate (Eq. 5), KL, aggregation modes."""

import math

import pytest
import torch

from ftcli import grpo


def test_group_advantages_hand_values():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    a = grpo.group_advantages(r, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, as verl/TRL
    assert torch.allclose(a[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))
    assert torch.equal(a[4:], torch.zeros(4))  # equal rewards: no signal
    dr = grpo.group_advantages(r, 4, norm_std=False)
    assert torch.allclose(dr[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert torch.equal(grpo.group_advantages(torch.tensor([3.0, 1.0]), 1), torch.zeros(2))
    with pytest.raises(ValueError):
        grpo.group_advantages(torch.ones(5), 4)


def test_token_logprobs_and_entropy_match_softmax():
    logits = torch.randn(2, 5, 7)
    tgt = torch.randint(0, 7, (2, 5))
    lp = grpo.token_logprobs(logits, tgt, temperature=0.7)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, tgt[..., None])[..., 0]
    assert torch.allclose(lp, ref, atol=1e-6)
    p = torch.softmax(logits, -1)
    assert torch.allclose(grpo.token_entropy(logits), -(p * p.log()).sum(-1), atol=1e-5)


def test_all_weights_one_is_exactly_plain_grpo():
    z = torch.randn(3, 6, 11, requires_grad=True)
    tgt = torch.randint(0, 11, (3, 6))
    adv = torch.randn(3)
    mask = torch.rand(3, 6) > 0.2

    def run(weights):
        z.grad = None
        lp = grpo.token_logprobs(z, tgt)
        old = lp.detach() + 0.1 * torch.sin(torch.arange(6.0))  # off-policy: clipping active
        lt, c = grpo.clipped_surrogate(lp, old, adv, weights, 0.2, 0.28)
        loss = grpo.aggregate_loss(
            lt, mask, "token-mean", grpo.agg_normaliser("token-mean", mask.sum(), 3)
        )
        loss.backward()
        return loss.detach(), z.grad.clone(), c

    l0, g0, c0 = run(None)
    l1, g1, c1 = run(torch.ones(3, 6))
    assert torch.equal(l0, l1) and torch.equal(g0, g1) and torch.equal(c0, c1)


def test_two_token_weighted_gradient_by_hand():
    # two response tokens, vocab 2, target token 0 each; A = 2, gamma = (1.5, 1.0), token-mean.
    z = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]], requires_grad=True)  # p = .5/.5, .75/.25
    tgt = torch.zeros(1, 2, dtype=torch.long)
    lp = grpo.token_logprobs(z, tgt)
    w = torch.tensor([[1.5, 1.0]])
    lt, clipped = grpo.clipped_surrogate(lp, lp.detach(), torch.tensor([2.0]), w)
    loss = grpo.aggregate_loss(lt, torch.ones(1, 2, dtype=torch.bool), "token-mean", 2.0)
    loss.backward()
    # loss = -(1/2) sum_t w_t A rho_t = -(1.5*2 + 1*2)/2 at rho = 1
    assert loss.item() == pytest.approx(-2.5)
    # d loss / d z_t = -(1/2) w_t A (onehot - p_t)
    expect = torch.tensor([[[-0.75, 0.75], [-0.25, 0.25]]])
    assert torch.allclose(z.grad, expect, atol=1e-6)
    assert not clipped.any()

    # off-policy: token 0 has rho = 1.5 > 1 + eps with A > 0 -> clipped branch, no gradient
    z.grad = None
    lp = grpo.token_logprobs(z, tgt)
    old = lp.detach() - torch.tensor([[math.log(1.5), 0.0]])
    lt, clipped = grpo.clipped_surrogate(lp, old, torch.tensor([2.0]), w, 0.2, 0.2)
    grpo.aggregate_loss(lt, torch.ones(1, 2, dtype=torch.bool), "token-mean", 2.0).backward()
    assert clipped.tolist() == [[True, False]]
    assert lt[0, 0].item() == pytest.approx(-1.5 * 2.0 * 1.2)  # -w A (1 + eps_high)
    assert torch.allclose(z.grad[0, 0], torch.zeros(2))
    assert torch.allclose(z.grad[0, 1], torch.tensor([-0.25, 0.25]), atol=1e-6)


def test_negative_advantage_clips_below():
    lp = torch.zeros(1, 1)
    old = torch.tensor([[math.log(2.0)]])  # rho = 0.5 < 1 - eps
    lt, c = grpo.clipped_surrogate(lp, old, torch.tensor([-1.0]), None, 0.2, 0.2)
    assert c.item() and lt.item() == pytest.approx(0.8)  # -min(-0.5, -0.8) = 0.8


def test_kl_k3():
    a = torch.randn(4, 5)
    assert torch.allclose(grpo.kl_k3(a, a), torch.zeros(4, 5))
    b = a + torch.randn(4, 5)
    d = b - a
    assert torch.allclose(grpo.kl_k3(a, b), d.exp() - d - 1)
    assert (grpo.kl_k3(a, b) >= 0).all()


@pytest.mark.parametrize("mode", grpo.AGG_MODES)
def test_aggregation_invariant_to_micro_batch_split_and_ranks(mode):
    torch.manual_seed(1)
    B, T = 8, 9
    theta = torch.randn(B, T, requires_grad=True)
    mask = torch.rand(B, T) > 0.3
    mask[:, 0] = True
    n_tok, n_seq = float(mask.sum()), float(B)
    norm = grpo.agg_normaliser(mode, n_tok, n_seq, norm_len=T)

    def loss_of(rows):
        return grpo.aggregate_loss(theta[rows] ** 2, mask[rows], mode, norm)

    full = loss_of(slice(0, B))
    (g_full,) = torch.autograd.grad(full, theta)
    # the definition of each mode on the whole batch
    m = mask.float()
    if mode == "token-mean":
        ref = (theta**2 * m).sum() / m.sum()
    elif mode == "seq-mean-token-mean":
        ref = ((theta**2 * m).sum(1) / m.sum(1)).mean()
    else:
        ref = (theta**2 * m).sum() / (B * T)
    assert torch.allclose(full, ref)
    for split in (
        [slice(0, 3), slice(3, 8)],
        [slice(i, i + 1) for i in range(B)],
        [slice(0, 4), slice(4, 8)],
    ):
        total = sum(loss_of(s) for s in split)
        (g,) = torch.autograd.grad(total, theta)
        assert torch.allclose(total, full, atol=1e-6) and torch.allclose(g, g_full, atol=1e-7)
    # data parallel: each rank backprops share * world; the engine averages over ranks
    world = 2
    grads = []
    for r in range(world):
        rows = slice(r * B // world, (r + 1) * B // world)
        (g,) = torch.autograd.grad(loss_of(rows) * grpo.backward_scale(world), theta)
        grads.append(g)
    assert torch.allclose(sum(grads) / world, g_full, atol=1e-7)


def test_agg_errors():
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        grpo.agg_normaliser("seq-mean", 1, 1)
    with pytest.raises(ValueError, match="norm_len"):
        grpo.agg_normaliser("seq-mean-token-sum-norm", 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_equal_rewards_give_exactly_zero_advantage_whatever_the_batch(dtype):
    # issue 12: fp32 gave |A| up to 0.06 for [0.7]*8 (0.056034 alone, 0.059605 with a neighbour)
    alone = torch.tensor([0.7] * 8, dtype=dtype)
    with_other = torch.tensor([0.7] * 8 + [1.0, 0.0] * 4, dtype=dtype)
    before_other = torch.tensor([0.0, 1.0] * 4 + [0.7] * 8, dtype=dtype)
    assert torch.equal(grpo.group_advantages(alone, 8), torch.zeros(8))
    assert torch.equal(grpo.group_advantages(with_other, 8)[:8], torch.zeros(8))
    assert torch.equal(grpo.group_advantages(before_other, 8)[8:], torch.zeros(8))
    for g in (2, 3, 16, 64):
        r = torch.full((3 * g,), 0.1, dtype=dtype)
        r[g : 2 * g] = torch.rand(g).to(dtype)  # a group with signal in the middle
        a = grpo.group_advantages(r, g)
        assert torch.equal(a[:g], torch.zeros(g)) and torch.equal(a[2 * g :], torch.zeros(g))
        assert torch.equal(grpo.group_advantages(r, g, norm_std=False)[:g], torch.zeros(g))


def test_group_advantages_do_not_depend_on_the_other_groups():
    torch.manual_seed(0)
    g = torch.rand(8)
    a_alone = grpo.group_advantages(g, 8)
    a_batch = grpo.group_advantages(torch.cat([torch.rand(8), g, torch.rand(16)]), 8)[8:16]
    assert torch.equal(a_alone, a_batch)


def test_dual_clip_caps_the_loss_of_negative_advantages_by_hand():
    # log-ratios: rho = 5 (far above 1 + eps), 0.5, 1.1, 5 ; c = 3, eps = 0.2
    lp = torch.log(torch.tensor([[5.0, 0.5, 1.1, 5.0]]))
    old = torch.zeros(1, 4)
    adv = torch.tensor([[-1.0, -1.0, -1.0, 2.0]])
    loss, _ = grpo.clipped_surrogate(lp, old, adv, None, 0.2, 0.2, clip_ratio_c=3.0)
    # A<0: l = min(max(-A rho, -A clip(rho)), -A c)
    #   rho=5:   max(5, 1.2) = 5 -> capped at 3
    #   rho=0.5: max(0.5, 0.8) = 0.8 (< 3, unchanged)
    #   rho=1.1: max(1.1, 1.1) = 1.1
    # A>0 (rho=5): -min(10, 2.4) = -2.4, dual clip does not apply
    expected = torch.tensor([[3.0, 0.8, 1.1, -2.4]])
    assert torch.allclose(loss, expected, atol=1e-5)
    plain, _ = grpo.clipped_surrogate(lp, old, adv, None, 0.2, 0.2)
    assert torch.allclose(plain, torch.tensor([[5.0, 0.8, 1.1, -2.4]]), atol=1e-5)
    # with credit weights the cap is -c * gamma * A
    w = torch.tensor([[0.5, 1.0, 1.0, 1.0]])
    lw, _ = grpo.clipped_surrogate(lp, old, adv, w, 0.2, 0.2, clip_ratio_c=3.0)
    assert torch.allclose(lw[0, 0], torch.tensor(1.5))
    # gradient through a capped token is zero (constant), like verl
    lp2 = lp.clone().requires_grad_(True)
    grpo.clipped_surrogate(lp2, old, adv, None, 0.2, 0.2, clip_ratio_c=3.0)[0].sum().backward()
    assert lp2.grad[0, 0] == 0


@pytest.mark.parametrize("c", [1.0, 0.5, -2.0, float("nan")])
def test_dual_clip_ratio_must_exceed_one(c):
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        grpo.clipped_surrogate(x, x, torch.ones(1), clip_ratio_c=c)
