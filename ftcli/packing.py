"""Padding-free micro-batches: the sequences of a micro-batch laid end to end in one row.

A micro-batch of N traced sequences becomes ONE row of L = sum of their lengths tokens (no
padding), with position ids restarting at 0 for every sequence, so RoPE sees each sequence as
it would alone. Attention is restricted to each sequence:

- on CPU (and any non-flash kernel) by `packed_attention`: a registered attention function runs
  the model's sdpa once per segment of the row (causal within the segment), so attention costs
  sum(T_n^2), not L^2, and no [L, L] mask is built;
- with a flash-attention implementation, by transformers' own packed-sequence support: the
  restarting position ids make its flash kernel run varlen (`cu_seq_lens` from the position
  ids), with no 4D mask and no repeated K/V.

With `share_prompt` (one prompt copy per group) the G responses of a prompt in the row attend
to a single copy of its prompt: the row holds [prompt, response_1, ..., response_G], response g
has positions P .. P + R_g - 1 and attends to the prompt and to itself (causally). The forward of
every sequence is then the one it has alone (same inputs, positions and visible keys), so
log-probs, the loss and the gradient equal the unshared layout's; the prompt's hidden states
are computed once instead of G times. Flash varlen cannot express "prompt + own response", so
this layout always runs the segment kernel.

Everything downstream of the forward (credit, loss, aggregation, rollout log-probs) keeps the
padded [N, T] layout of `ftcli.sequences.collate`: `PackedLayout.index` maps token t of
sequence n to its position in the row, so per-token results are gathered back exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

PACKING_ATTR = "_ftcli_packing"  # set on attention modules inside `packed_attention`
PACKED_IMPL = "ftcli_packed"  # the registered attention implementation of the segment kernel
_registered = False


@dataclass(frozen=True)
class Segment:
    """Queries [lo, hi) of the row attend causally to keys [lo, hi) and, when `prefix` is given,
    to every key of the shared prompt copy [prefix[0], prefix[1]) before them."""

    lo: int
    hi: int
    prefix: tuple[int, int] | None = None


@dataclass
class PackedLayout:
    """One packed row of a micro-batch of N sequences (see the module docstring).

    input_ids [1, L] long, position_ids [1, L] long (restarting per sequence; after P for a
    response that shares its prompt), segments in row order covering [0, L), index [N, T] long:
    the row position of token t of sequence n (0 where t >= T_n), valid [N, T] bool.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: list[Segment]
    index: torch.Tensor
    valid: torch.Tensor

    @property
    def length(self) -> int:
        """L: token slots of the row (what the forward computes)."""
        return int(self.input_ids.shape[1])

    @property
    def shares_prompts(self) -> bool:
        return any(s.prefix is not None for s in self.segments)

    def positions(self, n: int) -> torch.Tensor:
        """[T_n] row positions of sequence n's tokens, in order."""
        return self.index[n][self.valid[n]]

    def to(self, device) -> PackedLayout:
        return PackedLayout(self.input_ids.to(device), self.position_ids.to(device), self.segments,
                            self.index.to(device), self.valid.to(device))


def prompt_key(s) -> tuple[int, ...]:
    """What makes two sequences share a prompt copy: identical prompt ids."""
    return tuple(s.ids[: s.n_prompt])


def pack_row(seqs: Sequence, share_prompt: bool = False, device=None) -> PackedLayout:
    """The packed row of `seqs` (TracedSeq: `ids`, `n_prompt`). With `share_prompt`, sequences
    with the same prompt ids (`prompt_key`) use the copy laid down by the first of them."""
    ids: list[int] = []
    pos: list[int] = []
    segments: list[Segment] = []
    rows: list[list[int]] = []  # per sequence: its tokens' row positions
    copies: dict[tuple[int, ...], tuple[int, int]] = {}
    for s in seqs:
        P = s.n_prompt if share_prompt else 0
        prefix = None
        if P > 0:
            key = prompt_key(s)
            if key not in copies:
                copies[key] = _append(ids, pos, segments, s.ids[:P], 0, None)
            prefix = copies[key]
        lo, hi = _append(ids, pos, segments, s.ids[P:], P, prefix)
        rows.append((list(range(*prefix)) if prefix else []) + list(range(lo, hi)))
    N, T = len(seqs), max(len(r) for r in rows)
    index = torch.zeros(N, T, dtype=torch.long)  # [N, T]
    valid = torch.zeros(N, T, dtype=torch.bool)  # [N, T]
    for n, r in enumerate(rows):
        index[n, : len(r)] = torch.tensor(r, dtype=torch.long)
        valid[n, : len(r)] = True
    layout = PackedLayout(torch.tensor([ids], dtype=torch.long), torch.tensor([pos], dtype=torch.long),
                          segments, index, valid)
    return layout if device is None else layout.to(device)


def _append(ids: list[int], pos: list[int], segments: list[Segment], tokens: Sequence[int], start: int,
            prefix: tuple[int, int] | None) -> tuple[int, int]:
    """Append one segment (`tokens` at positions start, start + 1, ...) to the row; its [lo, hi)."""
    lo = len(ids)
    ids.extend(tokens)
    pos.extend(range(start, start + len(tokens)))
    if tokens:
        segments.append(Segment(lo, len(ids), prefix))
    return lo, len(ids)


def packed_slots(seqs: Sequence, share_prompt: bool = False) -> int:
    """Token slots of the packed row of `seqs` (its length L): the real tokens, with one copy
    per distinct prompt under `share_prompt`."""
    if not share_prompt:
        return sum(len(s.ids) for s in seqs)
    prompts = {prompt_key(s): s.n_prompt for s in seqs}
    return sum(prompts.values()) + sum(s.n_response for s in seqs)


def packed_micro_batches(seqs: Sequence, size: int, max_tokens: int | None = None,
                         share_prompt: bool = False) -> list[list]:
    """`seqs` cut into packed micro-batches (one row each) of at most `size` sequences and, when
    `max_tokens` is given, at most `max_tokens` row slots (`packed_slots`; one sequence longer
    than the budget gets a row of its own). Sequences keep their order; with `share_prompt` the
    sequences of a prompt are brought together first (stable, by the prompt's first appearance)
    so that one row holds one copy of it. No padding, so no length sorting is needed."""
    if share_prompt:
        first: dict[tuple[int, ...], int] = {}
        for i, s in enumerate(seqs):
            first.setdefault(prompt_key(s), i)
        seqs = sorted(seqs, key=lambda s: first[prompt_key(s)])
    out: list[list] = []
    cur: list = []
    for s in seqs:
        if cur and (len(cur) >= size or (max_tokens is not None and packed_slots(cur + [s], share_prompt) > max_tokens)):
            out.append(cur)
            cur = []
        cur.append(s)
    if cur:
        out.append(cur)
    return out


# ---------------------------------------------------------------------------------------------
# Attention over a packed row
# ---------------------------------------------------------------------------------------------
def segment_attention(module, query, key, value, layout: PackedLayout, **kwargs):
    """Attention of a packed row, one sdpa call per segment: query [1, H, L, d], key/value
    [1, H_kv, L, d] (post-RoPE) -> ([1, L, H, d], None), the layout of transformers' kernels."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    for name in ("softcap", "s_aux", "sliding_window"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"packed sequences: attention with {name} is not supported")
    kw = {k: v for k, v in kwargs.items() if k in ("dropout", "scaling")}
    # bf16/fp16 on CPU are attended in fp32: PyTorch's CPU flash kernel runs its bf16 backward
    # 2.3x slower than fp32 at these lengths (forward + backward, 150 tokens, one thread)
    dtype = query.dtype
    if query.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        query, key, value = query.float(), key.float(), value.float()
    outs = []
    for seg in layout.segments:
        q = query[:, :, seg.lo : seg.hi]  # [1, H, Tq, d]
        k, v, mask = key[:, :, seg.lo : seg.hi], value[:, :, seg.lo : seg.hi], None
        if seg.prefix is not None:
            a, b = seg.prefix
            k = torch.cat((key[:, :, a:b], k), dim=2)  # [1, H_kv, P + Tq, d]
            v = torch.cat((value[:, :, a:b], v), dim=2)
            mask = prefix_causal_mask(b - a, seg.hi - seg.lo, query.device)  # [1, 1, Tq, P + Tq]
        out, _ = sdpa_attention_forward(module, q, k, v, mask, is_causal=True, **kw)  # [1, Tq, H, d]
        outs.append(out)
    L = query.shape[2]
    if layout.segments[-1].hi != L:
        raise RuntimeError(f"packed layout covers {layout.segments[-1].hi} of {L} row positions")
    return torch.cat(outs, dim=1).to(dtype), None  # [1, L, H, d]


def prefix_causal_mask(P: int, Tq: int, device=None) -> torch.Tensor:
    """[1, 1, Tq, P + Tq] bool (True = attend): every prefix key, then causal over the queries."""
    mask = torch.ones(Tq, P + Tq, dtype=torch.bool, device=device)
    mask[:, P:] = torch.ones(Tq, Tq, dtype=torch.bool, device=device).tril()
    return mask[None, None]


def _packed_fn(module, query, key, value, attention_mask, **kwargs):
    """The function registered as PACKED_IMPL: the segment kernel of the module's layout (plain
    sdpa outside `packed_attention`)."""
    layout = getattr(module, PACKING_ATTR, None)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return segment_attention(module, query, key, value, layout, **kwargs)


def _no_mask(*args, **kwargs):
    """Mask builder of PACKED_IMPL: none (the segment kernel knows the layout)."""
    return None


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_IMPL, _packed_fn)
    AttentionMaskInterface.register(PACKED_IMPL, _no_mask)
    _registered = True


def uses_flash_varlen(model, layout: PackedLayout) -> bool:
    """Whether transformers' flash kernel runs the row (varlen from the position ids): a flash
    implementation and no shared prompt copies."""
    impl = str(getattr(model.config, "_attn_implementation", "") or "")
    return "flash" in impl and not layout.shares_prompts


@contextlib.contextmanager
def packed_attention(model, layout: PackedLayout):
    """Within the block, `model`'s attention layers see `layout` (PACKING_ATTR) and, unless
    transformers' flash varlen runs the row (`uses_flash_varlen`), the model runs the segment
    kernel (PACKED_IMPL). An active W capture (`ftcli.attention`) keeps its implementation: its
    attention function reads the layout from the module and runs the same segment kernel."""
    from ftcli.attention import IMPL_FOR_FAMILY, snapshot_impls

    _register()
    mods = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    for m in mods:
        setattr(m, PACKING_ATTR, layout)
    saved = None
    impl = model.config._attn_implementation
    switch = not uses_flash_varlen(model, layout) and impl not in IMPL_FOR_FAMILY.values() and impl != PACKED_IMPL
    try:
        if switch:
            saved = snapshot_impls(model)
            model.set_attn_implementation(PACKED_IMPL)
        yield
    finally:
        for m in mods:
            if getattr(m, PACKING_ATTR, None) is layout:
                delattr(m, PACKING_ATTR)
        if saved:
            top = saved[0][1]
            if top is not None and model.config._attn_implementation != top:
                model.set_attn_implementation(top)
            for cfg, value in saved:
                cfg._attn_implementation_internal = value
