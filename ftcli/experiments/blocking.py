"""Blocking the information of chosen tokens (the causal intervention of paper Table 1).

    with block_keys(model, blocked):            # blocked: [B, T0] bool, True = hide that key
        logits = model(ids).logits              # teacher forcing
        out = model.generate(ids, ...)          # KV-cached generation (new tokens never see them)
    with block_keys(model, blocked):
        W = mean_attention(model, ids)          # W[b, i, k] == 0 for blocked i and every k > i

Semantics: the key (and value) of a blocked position i gets exactly zero attention probability
from every later query k > i, in every layer and head; the blocked token's own query still sees
itself and everything before it (so no softmax row is ever empty), and the softmax of every
query is renormalised over the keys it may still see. Positions are indices on the key axis of
the sequence the model is given (padding included); keys beyond `T0` (generated tokens) are
never blocked. Query positions are taken as the last `Tq` key positions, which is what the
default dynamic KV cache gives (teacher forcing, prefill and every decode step).

Mechanism: the same transformers `AttentionInterface` machinery as `ftcli.attention`. A mask
hook is set on every attention module (`ftcli.attention.MASK_HOOK_ATTR`); it rewrites the
attention mask the layer receives (4D bool for the sdpa family, 4D additive float for eager; a
missing mask, the pure causal case, is materialised). Outside a capture the model is switched to
a registered implementation (`ftcli_block` / `ftcli_block_eager`) that applies the hook and then
runs sdpa / the model's eager kernel; inside `capture_attention` / `mean_attention` the capture
applies the hook itself, so the recomputed W and the layer output see the same mask. Either may
be entered first. Flash kernels take no 4D mask: a flash model is run with sdpa under the block.
"""

from __future__ import annotations

import torch

from ftcli.attention import IMPL_FOR_FAMILY, MASK_HOOK_ATTR, eager_kernel, snapshot_impls

__all__ = ["KeyBlock", "block_keys", "blocked_mask"]

_BLOCK_IMPL = {"sdpa": "ftcli_block", "eager": "ftcli_block_eager"}
_registered = False


def blocked_mask(positions, length: int, batch: int = 1) -> torch.Tensor:
    """[batch, length] bool mask from per-row position lists (or one list for every row)."""
    if positions and not isinstance(positions[0], (list, tuple, range, torch.Tensor)):
        positions = [positions] * batch
    m = torch.zeros(len(positions), length, dtype=torch.bool)
    for b, pos in enumerate(positions):
        if len(pos):
            m[b, torch.as_tensor(list(pos), dtype=torch.long)] = True
    return m


class KeyBlock:
    """Context manager: keys at `blocked` positions get zero attention from later queries."""

    def __init__(self, model, blocked: torch.Tensor):
        b = torch.as_tensor(blocked).bool()
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2:
            raise ValueError(f"blocked must be [B, T] or [T], got shape {tuple(b.shape)}")
        self.model, self.blocked = model, b
        self._mods: list = []
        self._saved: list = []

    def __enter__(self) -> KeyBlock:
        _register()
        model = self.model
        cur = model.config._attn_implementation
        if cur == IMPL_FOR_FAMILY["varlen"]:
            raise ValueError("key blocking needs a 4D attention mask: load the model with sdpa or eager, not flash")
        mods = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
        if not mods:
            raise ValueError(f"{type(model).__name__} has no attention modules with a layer_idx")
        if any(getattr(m, MASK_HOOK_ATTR, None) is not None for m in mods):
            raise RuntimeError("a key block is already active on this model")
        try:
            for m in mods:
                setattr(m, MASK_HOOK_ATTR, self._hook)
                self._mods.append(m)
            # Inside a capture the capture applies the hook; otherwise switch to a blocking impl.
            if cur not in IMPL_FOR_FAMILY.values() and cur not in _BLOCK_IMPL.values():
                self._saved = snapshot_impls(model)
                model.set_attn_implementation(_BLOCK_IMPL["eager" if cur == "eager" else "sdpa"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for m in self._mods:
            if getattr(m, MASK_HOOK_ATTR, None) == self._hook:
                delattr(m, MASK_HOOK_ATTR)
        self._mods = []
        if self._saved:
            try:
                top = self._saved[0][1]
                if top is not None and self.model.config._attn_implementation != top:
                    self.model.set_attn_implementation(top)
            finally:
                for cfg, value in self._saved:  # exact restore, sub-configs included
                    cfg._attn_implementation_internal = value
                self._saved = []

    def _hook(self, query: torch.Tensor, key: torch.Tensor, mask):
        """The layer's mask with blocked keys hidden from later queries (same format)."""
        B, Tq, Tk = query.shape[0], query.shape[2], key.shape[2]
        dev = query.device
        blk = self.blocked.to(dev)
        if blk.shape[0] not in (1, B):
            raise ValueError(f"blocked mask has batch {blk.shape[0]}, the forward has {B}")
        if blk.shape[1] >= Tk:
            blk = blk[:, :Tk]
        else:  # generated keys are never blocked
            blk = torch.nn.functional.pad(blk, (0, Tk - blk.shape[1]))
        qpos = torch.arange(Tk - Tq, Tk, device=dev)[:, None]  # [Tq, 1]
        kpos = torch.arange(Tk, device=dev)[None, :]  # [1, Tk]
        hide = blk[:, None, None, :] & (kpos < qpos)[None, None]  # [B|1, 1, Tq, Tk]
        if not bool(hide.any()):
            return mask
        if mask is None:  # the pure causal case (sdpa skips building it)
            return (kpos <= qpos)[None, None] & ~hide
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
            raise ValueError("key blocking needs a 4D attention mask (sdpa or eager attention)")
        m = mask[..., :Tk]
        if m.dtype == torch.bool:
            return m & ~hide
        return torch.where(hide, torch.tensor(torch.finfo(m.dtype).min, dtype=m.dtype, device=dev), m)


def block_keys(model, blocked) -> KeyBlock:
    """Context manager hiding the keys at `blocked` ([B, T0] or [T0] bool) from later queries."""
    return KeyBlock(model, blocked)


def _apply_hook(module, query, key, attention_mask):
    hook = getattr(module, MASK_HOOK_ATTR, None)
    return attention_mask if hook is None else hook(query, key, attention_mask)


def _block_sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import (
        sdpa_attention_forward,  # transformers: only when used
    )

    mask = _apply_hook(module, query, key, attention_mask)
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def _block_eager(module, query, key, value, attention_mask, **kwargs):
    mask = _apply_hook(module, query, key, attention_mask)
    return eager_kernel(module, query, key, value, mask, **kwargs)


def _register() -> None:
    global _registered
    if _registered:
        return
    # imported here, as in ftcli.attention: transformers is needed only when a key is blocked
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(_BLOCK_IMPL["sdpa"], _block_sdpa)
    AttentionMaskInterface.register(_BLOCK_IMPL["sdpa"], sdpa_mask)
    AttentionInterface.register(_BLOCK_IMPL["eager"], _block_eager)
    AttentionMaskInterface.register(_BLOCK_IMPL["eager"], eager_mask)
    _registered = True
