"""Micro-batches by length (issue 14): the update's gradient is that of today's rollout-order
micro-batching (float64 tiny model, to float tolerance), and sorting by length keeps the padded
slots within 10% of the real tokens on a realistic length distribution."""

import random

import pytest
import torch

from ftcli.fetch.models import load_model
from ftcli.sequences import TracedSeq, micro_batches, padded_slots
from ftcli.train.config import resolve_config
from ftcli.train.stats import CtrlC, Timer
from ftcli.train.update import PolicyUpdate


class GradEngine:
    """The surface of a DeepSpeed engine that `PolicyUpdate` uses, without DeepSpeed:
    `backward` accumulates plain autograd gradients and `step` leaves them in place, so the
    step's summed gradient can be read off the parameters."""

    def __init__(self, model):
        self.module, self.device = model, torch.device("cpu")
        self.boundaries: list[bool] = []  # set_gradient_accumulation_boundary calls, in order

    def set_gradient_accumulation_boundary(self, is_boundary):
        self.boundaries.append(bool(is_boundary))

    def __call__(self, **kw):
        return self.module(**kw)

    def backward(self, loss, scale_wrt_gas=False):
        loss.backward()

    def step(self):
        pass

    def train(self):
        self.module.train()

    def eval(self):
        self.module.eval()

    def get_global_grad_norm(self):
        return None


def _seqs(V: int, n_prompts: int = 3, group: int = 8, seed: int = 0) -> list[TracedSeq]:
    """Rollout-ordered sequences: prompts of different lengths, responses of 1-24 tokens."""
    g = random.Random(seed)
    out = []
    for p in range(n_prompts):
        prompt = [g.randrange(4, V) for _ in range(6 + 3 * p)]
        question = [2 <= i < len(prompt) - 1 for i in range(len(prompt))]
        for j in range(group):
            n = g.randint(1, 24)
            out.append(TracedSeq(ids=prompt + [g.randrange(4, V) for _ in range(n)], n_prompt=len(prompt),
                                 question=question, answer=[i >= n - 3 for i in range(n)],
                                 advantage=g.uniform(-1.5, 1.5), seed=100 * p + j))
    return out


def _update(model, tok, seqs, order: str, **kw):
    kw.setdefault("pack", False)  # the padded micro-batches (tests/test_train_packing.py: packed)
    cfg = resolve_config(model="tiny-qwen3", micro_batch=5, micro_order=order, log_samples=4, progress=False, **kw)
    model.zero_grad(set_to_none=True)
    up = PolicyUpdate(cfg, GradEngine(model), None, tok, world=1, seqs_per_mini=len(seqs) // cfg.mini_batches,
                      ctrl_c=CtrlC())
    stats, rows, norms = up.update(seqs, Timer())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return stats, rows, norms, grads


@pytest.mark.parametrize("kw", [
    dict(credit="flow", credit_pass="fused"),
    dict(credit="flow", credit_pass="separate", loss_agg="seq-mean-token-mean"),
    dict(credit="none", mini_batches=2, loss_agg="seq-mean-token-sum-norm"),
])
def test_length_order_gives_the_group_order_gradient(kw):
    model, tok = load_model("tiny-qwen3")
    model = model.double()
    seqs = _seqs(len(tok))
    # the two orders really cut different micro-batches, and by length pads less
    by_group, by_len = micro_batches(seqs, 5, "group"), micro_batches(seqs, 5, "length")
    assert len(by_group) == len(by_len) == 5
    assert [id(s) for m in by_group for s in m] != [id(s) for m in by_len for s in m]
    assert padded_slots(by_len) < padded_slots(by_group)
    sa, ra, na, ga = _update(model, tok, seqs, "group", **kw)
    sb, rb, nb, gb = _update(model, tok, seqs, "length", **kw)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        assert torch.allclose(ga[n], gb[n], rtol=1e-9, atol=1e-12), n
    assert any(float(g.abs().max()) > 0 for g in ga.values())
    assert nb == pytest.approx(na, rel=1e-9)
    # the reported loss is summed in fp32 (grpo.token_logprobs works in fp32): fp32 tolerance
    assert sb.loss == pytest.approx(sa.loss, rel=1e-6)
    for field in ("credited", "clipped", "credit_fallback"):
        assert getattr(sb, field) == getattr(sa, field)
    # the logged samples are the first rollouts, in rollout order, with the same weights
    assert [id(r[0]) for r in rb] == [id(r[0]) for r in ra] == [id(s) for s in seqs[:4]]
    for (_, wa, _), (_, wb, _) in zip(ra, rb, strict=True):
        assert torch.equal(wa[: wb.shape[0]], wb[: wa.shape[0]])


def _realistic_step(seed: int = 0, prompts: int = 16, group: int = 8, max_new: int = 192) -> list[TracedSeq]:
    """A main-job step's lengths: Countdown prompts of 60-80 tokens; responses mostly short
    (log-normal around 60 tokens, as the default policy's) with some truncated at `max_new`."""
    g = random.Random(seed)
    out = []
    for _ in range(prompts):
        p = g.randint(60, 80)
        for _ in range(group):
            n = max_new if g.random() < 0.08 else min(max_new, max(3, int(g.lognormvariate(4.0, 0.5))))
            out.append(TracedSeq(ids=[5] * (p + n), n_prompt=p, question=[False] * p, answer=[False] * n))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_order_pads_within_ten_percent(seed):
    seqs = _realistic_step(seed)
    real = sum(len(s.ids) for s in seqs)
    group, length = padded_slots(micro_batches(seqs, 16, "group")), padded_slots(micro_batches(seqs, 16, "length"))
    assert length <= 1.1 * real < group  # rollout order pads far more than 10%
    # every sequence once, longest first; equal lengths keep their rollout order
    flat = [s for m in micro_batches(seqs, 16, "length") for s in m]
    assert sorted(map(id, flat)) == sorted(map(id, seqs))
    assert all(len(a.ids) >= len(b.ids) for a, b in zip(flat[:-1], flat[1:], strict=True))
    with pytest.raises(ValueError, match="micro-batch order"):
        micro_batches(seqs, 16, "random")
