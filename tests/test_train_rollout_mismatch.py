"""The rollout/trainer mismatch pieces that need no vLLM: the truncated importance-sampling
weight and the gap / KL estimate (`ftcli.grpo`) on hand-computed values, the rollout log-prob
matrix of a batch, the options' checks, and the one-line error where vLLM is missing."""

import math

import pytest
import torch

from ftcli import grpo
from ftcli.generation import Rollout
from ftcli.sequences import TracedSeq, collate
from ftcli.train.config import resolve_config
from ftcli.vllm_engine import rollout_logp_matrix, vllm_missing


def test_tis_weights_hand_values():
    """w = min(exp(logp_old - logp_rollout), C): ratios 1, e^0.5, e^-1 and e^2 capped at 2."""
    old = torch.tensor([[-1.0, -0.5, -2.0, -0.1]])
    roll = torch.tensor([[-1.0, -1.0, -1.0, -2.1]])
    w = grpo.tis_weights(old, roll, cap=2.0)
    expect = torch.tensor([[1.0, math.exp(0.5), math.exp(-1.0), 2.0]])
    assert torch.allclose(w, expect, atol=1e-6)
    assert not w.requires_grad and grpo.tis_weights(old.requires_grad_(), roll, 2.0).grad_fn is None


def test_rollout_mismatch_hand_values():
    """gap = |d|, kl = e^d - d - 1 with d = logp_old - logp_rollout (k3 of KL(rollout || old));
    a 1e-6 gap gives kl ~ 5e-13 > 0, which fp32 could not resolve."""
    old = torch.tensor([[-1.0, -0.5, -2.0]])
    roll = torch.tensor([[-1.0, -1.0, -1.5]])
    gap, kl = grpo.rollout_mismatch(old, roll)
    assert torch.allclose(gap, torch.tensor([[0.0, 0.5, 0.5]]))
    expect = [0.0, math.exp(0.5) - 0.5 - 1, math.exp(-0.5) + 0.5 - 1]
    assert torch.allclose(kl, torch.tensor([expect], dtype=torch.float64), atol=1e-7)
    _, tiny = grpo.rollout_mismatch(torch.tensor([-1.0]), torch.tensor([-1.0 - 1e-6]))
    assert 0 < float(tiny) < 1e-11


def test_rollout_logp_matrix_places_response_logprobs():
    """The engine's log-probs sit at the response positions of the right-padded batch."""

    class Seq(TracedSeq):
        rollout = None

    def seq(prompt, resp, lps):
        s = Seq(ids=prompt + resp, n_prompt=len(prompt), question=[False] * len(prompt), answer=[False] * len(resp))
        s.rollout = Rollout("p", "r", prompt, resp, True, logprobs=lps)
        return s

    seqs = [seq([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3]), seq([1, 2, 3], [4], [-0.4])]
    T = collate(seqs, pad_id=0)["input_ids"].shape[1]
    m = rollout_logp_matrix(seqs, T)
    assert torch.allclose(m, torch.tensor([[0, 0, -0.1, -0.2, -0.3], [0, 0, 0, -0.4, 0]]))
    plain = [TracedSeq(ids=[1, 2, 3], n_prompt=2, question=[False, False], answer=[False])]
    assert rollout_logp_matrix(plain, 3) is None  # the HF loop: no engine log-probs


def test_rollout_options_are_checked():
    assert resolve_config(rollout="vllm", rollout_is="tis").rollout_is_cap == 2.0
    with pytest.raises(ValueError, match="--rollout-is corrects vLLM's rollouts"):
        resolve_config(rollout_is="tis")
    with pytest.raises(ValueError, match="--rollout must be one of hf, vllm"):
        resolve_config(rollout="sglang")
    with pytest.raises(ValueError, match="--rollout-is-cap must be > 0"):
        resolve_config(rollout="vllm", rollout_is="tis", rollout_is_cap=0.0)


@pytest.mark.skipif(vllm_missing() is None, reason="vLLM is installed here")
def test_vllm_missing_is_one_line():
    """Without vLLM, `--rollout vllm` and `--backend vllm` fail in one line naming the fix."""
    from ftcli.generation import GenerationError, get_backend

    with pytest.raises(GenerationError, match="vLLM is not installed .*vllm-setup"):
        get_backend("vllm")


@pytest.mark.skipif(vllm_missing() is None, reason="vLLM is installed here")
def test_train_rollout_vllm_without_vllm_fails_first(tmp_path):
    from ftcli.generation import GenerationError
    from ftcli.train.loop import train

    out = tmp_path / "run"
    with pytest.raises(GenerationError, match="vLLM is not installed"):
        train(resolve_config(rollout="vllm", out=str(out), progress=False))
    assert not out.exists()
