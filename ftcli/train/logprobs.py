"""Token log-probs and entropies straight from the LM head, in token chunks.

The plain path (`ftcli.grpo.token_logprobs` on the model's logits) materialises the [B, T, V]
logits, an fp32 copy, the copy divided by the temperature and the log-softmax: about 14 bytes
per vocabulary entry per token (2.1 MB per token at Qwen3's 151,936 entries; 10 GB for one
micro-batch of 4 x 1.2K tokens), kept alive for the backward. Here the LM head's forward is
swapped, for one model call, for `ChunkedLogprobs`: it takes the head's input hidden states
[B, T, H] and returns, for each position, the log-prob of the given target token and the
entropy of the distribution (`grpo.token_logprobs` and `grpo.token_entropy`: same formulas),
computing the logits `chunk` positions at a time and recomputing them in the backward (as fused
linear-cross-entropy kernels do). Peak memory of the head: a few [chunk, V] fp32 buffers.

The swap is an instance attribute on the head module, so the model's own forward still calls
`lm_head(...)` through `nn.Module.__call__` and DeepSpeed's ZeRO-3 hooks still gather the
head's weight around it (and, for the backward, around the returned tensor).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ftcli import grpo

# model configs whose forward changes the logits after the head (softcapping, scaling): the
# chunked head would skip that, so those models take the plain path
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class ChunkedLogprobs(torch.autograd.Function):
    """(log pi(y_n), H_n) for N rows of hidden states through a linear head, chunk by chunk.

    z_n = (h_n W^T + b) / T  (fp32);  log pi(y_n) = z_{n, y_n} - logsumexp(z_n);
    H_n = logsumexp(z_n) - sum_v p_{n,v} z_{n,v}.
    Backward, per chunk (recomputing z): d log pi / dz = onehot(y) - p;
    dH / dz_v = -p_v (z_v - logsumexp(z) + H); then d/d(h W^T + b) = (.) / T.

    h: [N, H], weight: [V, H], bias: [V] or None, targets: [N] long -> (logp [N], ent [N]) fp32
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, temperature: float, chunk: int, with_entropy: bool):
        N = h.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=h.device)  # [N]
        lse = torch.empty(N, dtype=torch.float32, device=h.device)  # [N]
        ent = torch.zeros(N, dtype=torch.float32, device=h.device)  # [N]
        for a in range(0, N, chunk):
            sl = slice(a, a + chunk)
            z = _scaled_logits(h[sl], weight, bias, temperature)  # [c, V] fp32
            picked = z.gather(-1, targets[sl, None]).squeeze(-1)  # [c]
            m = z.amax(-1, keepdim=True)  # [c, 1]
            z.sub_(m)  # in place: one [c, V] buffer in all (torch.logsumexp would add two)
            if with_entropy:  # H = log s - sum_v p_v (z_v - m), s = sum_v exp(z_v - m)
                p = z.exp()  # [c, V]
                s_ = p.sum(-1, keepdim=True)  # [c, 1]
                ent[sl] = (s_.log() - p.mul_(z).sum(-1, keepdim=True) / s_).squeeze(-1).clamp_min(0.0)
                del p
            else:
                s_ = z.exp_().sum(-1, keepdim=True)  # [c, 1]
            lse[sl] = (s_.log() + m).squeeze(-1)
            logp[sl] = picked - lse[sl]
            del z
        ctx.save_for_backward(h, weight, bias, targets, lse, ent)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.set_materialize_grads(False)  # an output outside the loss gets None, not zeros
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        h, weight, bias, targets, lse, ent = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        gh = torch.empty_like(h) if need_h else None  # [N, H]
        acc = torch.promote_types(weight.dtype, torch.float32)  # accumulate bf16 weights' gradients in fp32
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None  # [V, H]
        gb = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None  # [V]
        for a in range(0, h.shape[0], chunk):
            hc, sl = h[a : a + chunk], slice(a, a + chunk)  # [c, H]
            lp = _scaled_logits(hc, weight, bias, T).sub_(lse[sl, None])  # [c, V]: log p, in place
            if g_ent is None:
                dz = lp.exp_().mul_(-g_logp[sl, None])  # -g p, in place
            else:  # dH/dz = -p (log p + H); d log pi/dz = onehot - p
                p = lp.exp()  # [c, V]
                coef = lp.add_(ent[sl, None]).mul_(g_ent[sl, None])  # [c, V], in place
                if g_logp is not None:
                    coef.add_(g_logp[sl, None])
                dz = p.mul_(coef).neg_()
                del coef
            if g_logp is not None:
                dz.scatter_add_(-1, targets[sl, None], g_logp[sl, None])
            dz.div_(T)  # [c, V]: gradient w.r.t. the raw logits h W^T + b (fp32)
            if need_h:
                gh[sl] = dz.to(h.dtype) @ weight  # [c, H]
            if need_w:
                if acc == weight.dtype:
                    gw.addmm_(dz.t().to(acc), hc.to(acc))  # [V, H], in place: no [V, H] temporary
                else:  # bf16/fp16 weights: the chunk's product at the weights' (fast) precision, summed in fp32
                    gw += dz.t().to(weight.dtype) @ hc  # [V, H]
            if need_b:
                gb += dz.sum(0).to(acc)
            del dz
        gw = gw.to(weight.dtype) if gw is not None else None
        gb = gb.to(bias.dtype) if gb is not None else None
        return gh, gw, gb, None, None, None, None


def _scaled_logits(h: torch.Tensor, weight: torch.Tensor, bias, temperature: float) -> torch.Tensor:
    """(h W^T + b) in the head's dtype, then fp32 and / temperature, as the plain path does.
    h: [c, H] -> [c, V] fp32"""
    z = F.linear(h, weight, bias).float()  # [c, V]
    return z / temperature if temperature != 1.0 else z


def supports_chunked_head(model) -> bool:
    """Whether `model`'s logits are exactly its output-embedding Linear (no softcap or scale)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return False
    cfg = getattr(model, "config", None)
    return not any(getattr(cfg, k, None) not in (None, 1.0) for k in _LOGIT_POSTPROCESSING)


def policy_logprobs(module, batch: dict, temperature: float, chunk: int, need_entropy: bool,
                    need_grad: bool, entropy_grad: bool = False):
    """Log-probs [B, T] of a collated batch's tokens (0 before `batch["first"]`) and, when
    `need_entropy`, entropies [B, T] (with gradient only when `entropy_grad`).

    `module` is the model or its DeepSpeed engine. With `chunk` > 0 and a plain Linear head, the
    head returns them directly, `chunk` positions at a time (`chunked_head`: no [B, T, V]
    logits); otherwise from the logits (`grpo.token_logprobs`, `grpo.token_entropy`)."""
    if batch.get("packing") is not None:
        return packed_logprobs(module, batch, temperature, chunk, need_entropy, need_grad, entropy_grad)
    ids, first = batch["input_ids"], batch["first"]
    T = ids.shape[1]
    kw = dict(input_ids=ids, attention_mask=batch["attention_mask"].long(), logits_to_keep=T - first + 1,
              use_cache=False)
    model = getattr(module, "module", module)  # the HF model inside an engine
    with contextlib.nullcontext() if need_grad else torch.no_grad():
        if chunk and supports_chunked_head(model):
            targets = F.pad(ids[:, first:], (0, 1))  # [B, T - first + 1]; the last one is unused
            with chunked_head(model, targets, temperature, chunk, need_entropy):
                out = module(**kw).logits[:, :-1]  # [B, T - first, 2]
            logp = out[..., 0]  # [B, T - first]
            ent = out[..., 1] if need_entropy else None
            if ent is not None and not (need_grad and entropy_grad):
                ent = ent.detach()
        else:
            logits = module(**kw).logits[:, :-1]  # [B, T - first, V]: predicts tokens first..T-1
            logp = grpo.token_logprobs(logits, ids[:, first:], temperature)  # [B, T - first]
            ent = None
            if need_entropy:
                with contextlib.nullcontext() if need_grad and entropy_grad else torch.no_grad():
                    ent = grpo.token_entropy(logits, temperature)  # [B, T - first]
    logp = F.pad(logp, (first, 0))  # [B, T]
    ent = F.pad(ent, (first, 0)) if ent is not None else None
    return logp, ent


def packed_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a packed row predicts, in the padded path's positions: keep [N, T] bool (token t of
    sequence n with `first` <= t < T_n: the positions `policy_logprobs` fills), src [M] long (the
    row position whose hidden state predicts it: that of token t - 1) and targets [M] long."""
    layout, ids, first = batch["packing"], batch["input_ids"], batch["first"]
    keep = layout.valid.clone()  # [N, T]
    keep[:, :first] = False
    src = layout.index[:, :-1][keep[:, 1:]]  # [M]: row positions of tokens t - 1
    return keep, src, ids[keep]


def packed_logprobs(module, batch: dict, temperature: float, chunk: int, need_entropy: bool,
                    need_grad: bool, entropy_grad: bool = False):
    """`policy_logprobs` of a batch with a packed row (`batch["packing"]`,
    `ftcli.packing.PackedLayout`): one forward of the [1, L] row with restarting position ids
    and per-sequence attention (`ftcli.packing.packed_attention`); the head runs on the M
    predicting positions only (`logits_to_keep` = their row positions; a shared prompt's last
    position is gathered once per response) and the results are laid back into the padded
    [N, T] layout (0 elsewhere), so everything downstream is the padded path's."""
    from ftcli.packing import packed_attention

    layout = batch["packing"]
    keep, src, targets = packed_targets(batch)
    kw = dict(input_ids=layout.input_ids, position_ids=layout.position_ids, attention_mask=None,
              logits_to_keep=src, use_cache=False)
    model = getattr(module, "module", module)
    with contextlib.nullcontext() if need_grad else torch.no_grad(), packed_attention(model, layout):
        if chunk and supports_chunked_head(model):
            with chunked_head(model, targets[None], temperature, chunk, need_entropy):
                out = module(**kw).logits[0]  # [M, 2]
            logp, ent = out[:, 0], (out[:, 1] if need_entropy else None)  # [M]
            if ent is not None and not (need_grad and entropy_grad):
                ent = ent.detach()
        else:
            logits = module(**kw).logits  # [1, M, V]
            logp = grpo.token_logprobs(logits, targets[None], temperature)[0]  # [M]
            ent = None
            if need_entropy:
                with contextlib.nullcontext() if need_grad and entropy_grad else torch.no_grad():
                    ent = grpo.token_entropy(logits, temperature)[0]  # [M]
    return unpack_tokens(logp, keep), (unpack_tokens(ent, keep) if ent is not None else None)


def unpack_tokens(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[M] per-token values -> [N, T] at the True positions of `keep` (0 elsewhere; differentiable)."""
    return torch.zeros(keep.shape, dtype=values.dtype, device=values.device).masked_scatter(keep, values)


@contextlib.contextmanager
def chunked_head(model, targets: torch.Tensor, temperature: float, chunk: int, with_entropy: bool):
    """Within the block, `model`'s LM head returns [B, T', 2] = (log-prob of `targets`,
    entropy) instead of [B, T', V] logits, computed `chunk` positions at a time.

    `targets` [B, T'] must line up with the positions the head sees (the model's
    `logits_to_keep` slice); a target at a position whose log-prob is not used may be any id.
    """
    head = model.get_output_embeddings()

    def forward(hidden):  # hidden [B, T', H]
        B, Tk, H = hidden.shape
        if targets.shape != (B, Tk):
            raise RuntimeError(f"chunked head: targets {tuple(targets.shape)} for hidden states {tuple(hidden.shape)}")
        logp, ent = ChunkedLogprobs.apply(hidden.reshape(B * Tk, H), head.weight, head.bias,
                                          targets.reshape(-1), float(temperature), int(chunk), bool(with_entropy))
        return torch.stack([logp.view(B, Tk), ent.view(B, Tk)], dim=-1)  # [B, T', 2]

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to the class's forward
