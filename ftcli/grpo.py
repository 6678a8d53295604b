"""GRPO objective pieces: advantages, the token-weighted clipped surrogate, KL, aggregation.

One small function per formula. Notation (paper Sec. 2 and Eq. 5): a prompt q has a group of G
responses o_1..o_G with scalar rewards r_i; token t of response i has the importance ratio
rho_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t}) and a credit weight
gamma_{i,t} (1 = plain GRPO). FlowTracer's objective (Eq. 5) is

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t min(rho_{i,t} gamma_{i,t} A_i,
                                              clip(rho_{i,t}, 1-eps_low, 1+eps_high) gamma_{i,t} A_i) ]

(`seq-mean-token-mean` aggregation, the `paper` preset's; `token-mean`, 1/sum_i |o_i| sum_i
sum_t, is the CPU default and DAPO's)

i.e. the weight multiplies each token's term inside the clipped surrogate; for gamma > 0 this
equals scaling the token's advantage by gamma (min(w a, w b) = w min(a, b)), so the clip
decisions do not depend on the weights.

Aggregation across micro-batches, gradient accumulation and data-parallel ranks (verl's
`agg_loss` with `global_batch_info`; OpenRLHF's `_optimizer_step_loss_norm`): every micro-batch
contributes `sum(its terms) / GLOBAL normaliser`, where the normaliser counts the tokens (or
sequences) of the whole optimizer step over all ranks. Summing the contributions over
micro-batches and ranks then gives exactly the aggregate of the full batch, whatever the split.
DeepSpeed averages gradients over ranks (and, unless told otherwise, divides each backward by
the accumulation steps), so the trainer calls `engine.backward(loss * world_size,
scale_wrt_gas=False)` (see `backward_scale`).
"""

from __future__ import annotations

import torch

from ftcli.options import AGG_MODES  # noqa: F401 - re-exported: the CLI reads it without torch

LOG_RATIO_CLAMP = 20.0  # |log rho| cap before exp (verl's compute_policy_loss_vanilla)


def group_advantages(
    rewards: torch.Tensor, group_size: int, norm_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-normalised outcome advantage (GRPO; Shao et al. 2024, Eq. 3 of DeepSeekMath):

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)     if norm_std
        A_i =  r_i - mean(r_group)                              otherwise (Dr. GRPO)

    `std` is the unbiased sample std (torch default, as verl and TRL); a group of one response
    gets A = 0. Rewards are laid out group after group: `rewards[g * G + j]`.

    A group whose rewards are all equal carries no signal and gets A = 0 exactly: in fp32 the
    1-ulp remainder of `r - mean` divided by `std + eps` (std = 0) would otherwise give
    |A| up to ~0.06, with a value that depends on the other groups of the batch (verl has
    that defect). The statistics are taken in fp64 per group, so a group's advantages do not
    depend on what else shares the batch.

    rewards: [N] with N = num_groups * group_size  ->  advantages [N] (fp32)
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [num_groups * {group_size}], got {tuple(rewards.shape)}")
    r = rewards.double().view(-1, group_size)  # [N/G, G]
    no_signal = (r == r[:, :1]).all(dim=1, keepdim=True)  # [N/G, 1]
    centred = r - r.mean(dim=1, keepdim=True)  # [N/G, G]
    if norm_std and group_size > 1:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    centred = torch.where(no_signal, torch.zeros_like(centred), centred)  # [N/G, G]
    return centred.float().reshape(-1)  # [N]


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log pi(y_t | y_<t) = z_{t, y_t}/T - logsumexp_v(z_{t, v}/T) for each position.

    `logits[b, t]` must already be the distribution that predicts `targets[b, t]` (shifted by
    the caller). Computed in fp32; the temperature is the sampling temperature (verl and TRL
    divide the update logits by it so that pi_old matches the sampler).

    logits: [B, T, V], targets: [B, T] long  ->  [B, T] fp32
    """
    z = logits.float()  # [B, T, V]
    if temperature != 1.0:
        z = z / temperature
    picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return picked - torch.logsumexp(z, dim=-1)  # [B, T]


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Policy entropy H_t = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v of each
    next-token distribution (differentiable; call under no_grad when only reading it).

    logits: [B, T, V]  ->  [B, T] fp32
    """
    z = logits.float()  # [B, T, V]
    if temperature != 1.0:
        z = z / temperature
    logz = torch.logsumexp(z, dim=-1, keepdim=True)  # [B, T, 1]
    p = torch.exp(z - logz)  # [B, T, V]
    return (logz.squeeze(-1) - (p * z).sum(-1)).clamp_min(0.0)  # [B, T]


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss of the weighted clipped surrogate (paper Eq. 5, negated for descent):

        l_t = - min(rho_t gamma_t A, clip(rho_t, 1-eps_low, 1+eps_high) gamma_t A)

    with rho_t = exp(logp_t - old_logp_t) (log-ratio clamped to +-20). `weights=None` means
    gamma = 1 (plain GRPO). Returns the loss terms and a bool mask of the tokens whose clipped
    branch was taken (the clip fraction's numerator; it does not depend on gamma > 0).

    Dual clip (`clip_ratio_c = c > 1`, off when None; Ye et al. 2020, verl's
    `compute_policy_loss_vanilla`): for tokens with a negative (weighted) advantage the loss
    is capped at `-c gamma_t A`, i.e. l_t = min(l_t, -c gamma_t A), so a huge ratio on a bad
    token cannot blow up the update. Positive advantages are unchanged.

    logp, old_logp: [B, T]; advantages: [B] or [B, T]; weights: [B, T] or None
    ->  (loss [B, T], clipped [B, T] bool)
    """
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual clip), got {clip_ratio_c}")
    if advantages.ndim == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1]
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    adv = advantages if weights is None else advantages * weights  # [B, T]
    unclipped = ratio * adv  # [B, T]
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv  # [B, T]
    took_clip = (clipped < unclipped).detach()  # [B, T]
    loss = -torch.minimum(unclipped, clipped)  # [B, T]
    if clip_ratio_c is not None:
        capped = torch.minimum(loss, -clip_ratio_c * adv)  # [B, T]
        loss = torch.where(adv < 0, capped, loss)  # [B, T]
    return loss, took_clip


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) with Schulman's k3 estimator (unbiased, >= 0):

        k3_t = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1

    (log-ratio clamped to +-20 before exp).

    logp, ref_logp: [B, T]  ->  [B, T]
    """
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    return torch.exp(d) - d - 1.0


def rollout_mismatch(old_logp: torch.Tensor, rollout_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token gap between the rollout engine (vLLM) and the trainer on the sampled tokens:

        gap_t = |logp_old_t - logp_rollout_t|
        kl_t  = k3 with the trainer as reference = exp(d_t) - d_t - 1,  d_t = logp_old_t - logp_rollout_t

    The tokens were drawn from the rollout engine's distribution, so the mean of kl_t over
    them estimates KL(pi_rollout || pi_old) (Schulman's k3, >= 0). With the weights in sync
    the gap is float noise (~1e-6 in fp32) and kl_t ~ gap^2 / 2, so kl_t is taken in float64
    (`expm1`): in fp32 its rounding error would exceed it. d is clamped to +-20 before exp.

    old_logp, rollout_logp: [B, T]  ->  (gap [B, T], kl [B, T] float64)
    """
    d = (old_logp.double() - rollout_logp.double()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    return (old_logp - rollout_logp).abs(), torch.expm1(d) - d


def tis_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling weight of each sampled token (verl's `rollout_is`, TRL's
    `vllm_importance_sampling_correction`; Yao et al. 2025):

        w_t = min(exp(logp_old_t - logp_rollout_t), C)

    The tokens come from the rollout engine (pi_rollout) while the surrogate's ratio is taken
    against the trainer's pi_old; multiplying each token's loss by w_t reweights the samples
    to pi_old, and the cap C bounds the variance. A constant (no gradient); log-ratio clamped
    to +-20 before exp.

    old_logp, rollout_logp: [B, T]  ->  [B, T]
    """
    d = (old_logp - rollout_logp).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    return torch.exp(d).clamp(max=cap)


def agg_normaliser(
    mode: str, n_tokens: float, n_seqs: float, norm_len: float | None = None
) -> float:
    """The denominator of an aggregation mode for ONE optimizer step (global counts):

        token-mean               N_tok                    (sum over all response tokens)
        seq-mean-token-mean      N_seq                    (non-empty sequences; each one's
                                                           token mean is taken first)
        seq-mean-token-sum-norm  N_seq * L_norm           (Dr. GRPO: L_norm = max length)

    Counts are over all micro-batches and all data-parallel ranks of the step.
    """
    if mode == "token-mean":
        return max(float(n_tokens), 1.0)
    if mode == "seq-mean-token-mean":
        return max(float(n_seqs), 1.0)
    if mode == "seq-mean-token-sum-norm":
        if not norm_len:
            raise ValueError("seq-mean-token-sum-norm needs norm_len (the max response length)")
        return max(float(n_seqs), 1.0) * float(norm_len)
    raise ValueError(f"unknown loss aggregation {mode!r} (choose from {', '.join(AGG_MODES)})")


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    normaliser: float,
) -> torch.Tensor:
    """This micro-batch's share of the step's aggregated loss (sum of shares = the aggregate).

        token-mean / seq-mean-token-sum-norm:  sum_{b,t} m_bt l_bt / normaliser
        seq-mean-token-mean:                   sum_b [ sum_t m_bt l_bt / sum_t m_bt ] / normaliser

    (sequences with no response token contribute 0). `normaliser` comes from `agg_normaliser`
    with the GLOBAL counts of the optimizer step.

    loss_mat: [B, T], mask: [B, T] bool/0-1  ->  scalar
    """
    m = mask.to(loss_mat.dtype)  # [B, T]
    if mode == "seq-mean-token-mean":
        per_seq = (loss_mat * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # [B]
        return per_seq.sum() / normaliser
    if mode in ("token-mean", "seq-mean-token-sum-norm"):
        return (loss_mat * m).sum() / normaliser
    raise ValueError(f"unknown loss aggregation {mode!r} (choose from {', '.join(AGG_MODES)})")


def backward_scale(world_size: int) -> float:
    """Factor for `engine.backward(share * factor, scale_wrt_gas=False)`.

    DeepSpeed averages gradients over the data-parallel ranks (divides the summed gradient by
    world_size); since each share is already normalised by the GLOBAL count, multiplying by
    world_size makes the reduced gradient the gradient of the global aggregate.
    """
    return float(world_size)
