"""The influence matrix W of FlowTracer (paper Eq. 1; docs/flow.md "The influence matrix W").

    W[b, i, k] = 1/(|L'| H) * sum_{l in L'} sum_{h < H} softmax_i(q_{l,h,k} . k_{l,h,i} * s + mask)
                 for i < k (key i, query k), 0 on and below the diagonal and at padding,

with L' the chosen layers (default: the middle third `[L//3, 2L//3)`) and H the *query* heads
(grouped-query attention: query head h reads KV head h // (H / H_kv)). Columns are not
renormalised. W is always float32.

How it is computed (no per-layer [B, H, T, T] map is ever kept, no `output_attentions`):
a custom attention function is registered with transformers' `AttentionInterface` (plus a
mask builder with `AttentionMaskInterface`) and the model is switched to it with
`model.set_attn_implementation` for the duration of one forward. For every layer the function
lets the model's original kernel (sdpa, eager, or flash on GPU) produce the layer output; for
the chosen layers it also recomputes the probabilities in fp32 from the post-RoPE query/key it
receives, one query chunk at a time, and adds their head-sum into one [B, T, T] fp32 buffer
(query-major; transposed once at the end). The original implementation is restored afterwards,
also on error.

Public API:
    layer_range(spec, num_layers) -> list[int]
    mean_attention(model, input_ids, attention_mask=None, layers=None, ...) -> W [B, T, T]
    capture_attention(model, layers=None, attention_mask=None, ...)  (context manager; `.W`,
        `.checked_W()`: W once every chosen layer was captured)
    num_layers(model) -> int
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence

import torch

from ftcli.options import LAYERS_HELP  # noqa: F401 - re-exported
from ftcli.packing import PACKED_IMPL, PACKING_ATTR, segment_attention

__all__ = [
    "LAYERS_HELP",
    "PAPER_RANGES",
    "AttentionCapture",
    "capture_attention",
    "layer_range",
    "mean_attention",
    "num_layers",
    "paper_layer_bounds",
]

# Queries per recompute chunk: the fastest at T = 1K-4K on CPU (bench/bench_capture_kernel.py).
DEFAULT_CHUNK = 64

# One registered implementation name per mask family the wrapped kernel expects. Names must not
# contain "flash" (transformers would try to import a flash kernel of that name) or "sdpa".
IMPL_FOR_FAMILY = {
    "sdpa": "ftcli_flow",  # 4D bool mask (True = attend) or None for the pure causal case
    "eager": "ftcli_flow_eager",  # 4D additive float mask (0 / dtype min), always materialised
    "varlen": "ftcli_flow_varlen",  # flash family: 2D padding mask [B, T] or None
}
_STATE_ATTR = "_ftcli_attention_capture"
# Set on attention modules by ftcli.experiments.blocking.block_keys: (query, key, mask) -> mask.
MASK_HOOK_ATTR = "_ftcli_mask_hook"
_registered = False


# ---------------------------------------------------------------------------------------------
# Layer selection
# ---------------------------------------------------------------------------------------------
_NAMED = ("mid", "early", "late", "all", "paper-early", "paper-mid", "paper-late")

# Fig. 6's ranges of Qwen3-4B's 36 layers, "0-15 / 15-25 / 25-35", read as half-open [A, B) like
# the "A:B" form (so paper-mid is `15:25`; the figure does not say whether layer 35 is in).
PAPER_DEPTH = 36
PAPER_RANGES = {"paper-early": (0, 15), "paper-mid": (15, 25), "paper-late": (25, 35)}


def paper_layer_bounds(name: str, num_layers: int) -> tuple[int, int]:
    """Fig. 6's range `name` (paper-early|paper-mid|paper-late) scaled to a model of `num_layers`
    layers: [round(A L / 36), round(B L / 36)) with halves rounded up, widened to one layer when
    rounding empties it. At L = 36 these are exactly the paper's 0:15, 15:25 and 25:35."""
    a, b = PAPER_RANGES[name]
    L = int(num_layers)
    lo = min(math.floor(a * L / PAPER_DEPTH + 0.5), L - 1)
    hi = min(max(math.floor(b * L / PAPER_DEPTH + 0.5), lo + 1), L)
    return lo, hi


def layer_range(spec, num_layers: int) -> list[int]:
    """Resolve a layer spec into a sorted list of layer indices (the set L' of Eq. 1).

    Accepted specs (L = `num_layers`):
      - None or "mid": the middle third `[L//3, 2L//3)` (paper Sec. 3.3; the docs/flow.md default);
      - "early" `[0, L//3)`, "late" `[2L//3, L)`, "all" `[0, L)`;
      - "paper-early", "paper-mid", "paper-late": Fig. 6's `0:15`, `15:25`, `25:35` of Qwen3-4B's
        36 layers, scaled to L (`paper_layer_bounds`);
      - "A:B" (half-open, Python-style negatives allowed, either side may be empty);
      - a tuple `(start, stop)` (half-open, same rules as "A:B");
      - a list of ints (any order, duplicates removed, each in `[0, L)`).
    Anything else, or a selection with no layer, raises ValueError.
    """
    L = int(num_layers)
    if L < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
    hint = (
        "use mid|early|late|all, paper-early|paper-mid|paper-late, 'A:B', a (start, stop) tuple "
        "or a list of layer indices"
    )

    def _bounds(a, b, shown) -> list[int]:
        lo, hi = (0 if a is None else a), (L if b is None else b)
        lo, hi = (lo + L if lo < 0 else lo), (hi + L if hi < 0 else hi)
        if not (0 <= lo < hi <= L):
            raise ValueError(
                f"layer range {shown} selects no valid layers of a {L}-layer model ({hint})"
            )
        return list(range(lo, hi))

    if spec is None:
        spec = "mid"
    if isinstance(spec, str):
        s = spec.strip().lower()
        named = {
            "mid": (L // 3, 2 * L // 3),
            "early": (0, L // 3),
            "late": (2 * L // 3, L),
            "all": (0, L),
            **{name: paper_layer_bounds(name, L) for name in PAPER_RANGES},
        }
        if s in named:
            lo, hi = named[s]
            if lo >= hi:
                raise ValueError(f"layer range {spec!r} is empty for a {L}-layer model ({hint})")
            return list(range(lo, hi))
        if s.count(":") == 1:
            a, b = (p.strip() for p in s.split(":"))
            try:
                ia = int(a) if a else None
                ib = int(b) if b else None
            except ValueError:
                raise ValueError(
                    f"bad layer range {spec!r}: 'A:B' needs integers ({hint})"
                ) from None
            return _bounds(ia, ib, repr(spec))
        raise ValueError(f"bad layer spec {spec!r} ({hint})")
    if isinstance(spec, tuple):
        if len(spec) != 2 or not all(_is_int(x) for x in spec):
            raise ValueError(
                f"bad layer range {spec!r}: a tuple must be (start, stop) ints ({hint})"
            )
        return _bounds(int(spec[0]), int(spec[1]), repr(spec))
    if isinstance(spec, (list, range)) or (
        isinstance(spec, Sequence) and not isinstance(spec, bytes)
    ):
        items = list(spec)
        if not items or not all(_is_int(x) for x in items):
            raise ValueError(f"bad layer list {spec!r}: needs one or more ints ({hint})")
        bad = [int(x) for x in items if not 0 <= int(x) < L]
        if bad:
            raise ValueError(f"layer indices {bad} out of range for a {L}-layer model (0..{L - 1})")
        return sorted({int(x) for x in items})
    raise ValueError(f"bad layer spec {spec!r} of type {type(spec).__name__} ({hint})")


def _is_int(x) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or (
        isinstance(x, torch.Tensor)
        and x.ndim == 0
        and not x.is_floating_point()
        and x.dtype != torch.bool
    )


def num_layers(model) -> int:
    """Decoder layers of `model` (its text config's `num_hidden_layers`, else the largest
    `layer_idx` of its modules + 1); ValueError when neither tells."""
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    n = getattr(cfg, "num_hidden_layers", None)
    if n is None:
        idx = {
            m.layer_idx for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)
        }
        if not idx:
            raise ValueError(f"cannot tell the number of layers of {type(model).__name__}")
        n = max(idx) + 1
    return int(n)


# ---------------------------------------------------------------------------------------------
# The recompute (Eq. 1 for one layer, one query chunk at a time)
# ---------------------------------------------------------------------------------------------
def _accumulate_layer(
    buf: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    pad: torch.Tensor | None,
    scaling: float,
    chunk: int,
    softcap: float | None = None,
    sliding_window: int | None = None,
    sinks: torch.Tensor | None = None,
) -> None:
    """Add one layer's head-mean of attention probabilities into `buf` (Eq. 1, query-major).

    buf[b, k, i] += 1/H * sum_h P[b, h, k, i] with P = softmax(Q K^T * scaling + mask) computed in
    float32 exactly as transformers' eager attention does (scale, optional tanh softcap, mask,
    optional attention sinks), `chunk` queries at a time so that only a [B, H, chunk, T] slice
    exists at once. A query row with every key masked gives 0 (not NaN).

    Shapes: buf [B, Tq, Tk] fp32 (query-major: `_finalize` transposes once); query [B, H, Tq, d];
    key [B, H_kv, Tk, d] (post-RoPE, any dtype); mask None (pure causal), 4D bool
    [B|1, 1|H, Tq, >=Tk] (True = attend), 4D additive float of the same shape, or 2D bool padding
    [B, Tk] (flash family); pad [B, Tk] bool or None, used only when the causal mask is built here
    (mask None or 2D).

    Speed (CPU, one thread; bench/bench_capture_kernel.py): the scores of a chunk go into one
    reused workspace through a plain batched matmul ([B, H_kv, g*c, d] @ [B, H_kv, d, kend],
    scaling folded into q), the mask is applied only to the key columns it can change, and the
    softmax is torch's fused row kernel, in place.
    """
    B, H, Tq, d = query.shape
    Hkv, Tk = key.shape[1], key.shape[2]
    if H % Hkv:
        raise ValueError(f"query heads ({H}) not a multiple of key/value heads ({Hkv})")
    g = H // Hkv
    kT = key.detach().to(torch.float32).transpose(-1, -2)  # [B, H_kv, d, Tk]
    off = Tk - Tq  # queries are the last Tq positions (0 without a cache)
    build = mask is None or mask.ndim == 2
    if mask is not None and mask.ndim == 2:
        pad = mask if pad is None else pad
    if pad is not None:
        pad = pad[:, -Tk:].to(device=key.device, dtype=torch.bool)  # [B, Tk]
    padcol = None if pad is None else ~pad.all(0)  # [Tk] True where some row is padding
    kpos = torch.arange(Tk, device=key.device)
    sink = None
    if sinks is not None:  # per-head learnable sink logits (gpt-oss): [H] -> [1, H_kv, g, 1, 1]
        sink = sinks.detach().to(torch.float32).reshape(1, Hkv, g, 1, 1)
    chunk = max(1, min(chunk, Tq))
    work = torch.empty(B * H * chunk * Tk, dtype=torch.float32, device=key.device)
    for q0 in range(0, Tq, chunk):
        q1 = min(q0 + chunk, Tq)
        c = q1 - q0
        # Keys a causal chunk can see end at position off + q1; skip the rest when provably masked.
        kend = Tk
        if build:
            kend = min(Tk, off + q1)
        elif (
            mask.dtype == torch.bool and off + q1 < Tk and not mask[..., q0:q1, off + q1 : Tk].any()
        ):
            kend = off + q1
        qc = query[:, :, q0:q1].detach().to(torch.float32) * scaling  # [B, H, c, d]
        qc = qc.reshape(B, Hkv, g * c, d)  # query head h = kv head h // g
        s = work[: B * H * c * kend].view(B, Hkv, g * c, kend)
        torch.matmul(qc, kT[..., :kend], out=s)  # scores [B, H_kv, g*c, kend]
        if softcap is not None:
            s.div_(softcap).tanh_().mul_(softcap)
        s5 = s.view(B, Hkv, g, c, kend)
        if build:
            qpos = torch.arange(off + q0, off + q1, device=key.device)[:, None]  # [c, 1]
            bad = kpos[:kend] > off + q0  # [kend] columns some query of the chunk may not see
            if sliding_window is not None:
                bad |= kpos[:kend] <= off + q1 - 1 - sliding_window
            if padcol is not None:
                bad |= padcol[:kend]
            for lo, hi in _column_spans(bad):
                keep = kpos[None, lo:hi] <= qpos  # [c, hi-lo] causal
                if sliding_window is not None:
                    keep = keep & (kpos[None, lo:hi] > qpos - sliding_window)
                keep = keep[None, None, None]  # [1, 1, 1, c, hi-lo]
                if pad is not None:
                    keep = keep & pad[:, None, None, None, lo:hi]  # [B, 1, 1, c, hi-lo]
                s5[..., lo:hi].masked_fill_(~keep, float("-inf"))
        else:
            m = mask[..., q0:q1, :kend]  # [B|1, 1|H, c, kend]
            m = m.unsqueeze(2) if m.shape[1] == 1 else m.reshape(m.shape[0], Hkv, g, c, kend)
            flat = m.reshape(-1, kend)
            bad = ~flat.all(0) if m.dtype == torch.bool else (flat != 0).any(0)  # [kend]
            for lo, hi in _column_spans(bad):
                if m.dtype == torch.bool:
                    s5[..., lo:hi].masked_fill_(~m[..., lo:hi], float("-inf"))
                else:
                    s5[..., lo:hi].add_(m[..., lo:hi].to(torch.float32))
        if sink is None:
            p = torch.softmax(s5, -1, out=s5)  # [B, H_kv, g, c, kend], in place
            dead = p[..., :1].isnan()  # rows with every key masked: -inf - (-inf) is NaN
            if bool(dead.any()):
                p.masked_fill_(dead, 0.0)
        else:  # the sink logit joins the normaliser, not the output
            full = torch.cat((s5, sink.expand(B, Hkv, g, c, 1)), dim=-1)
            p = torch.softmax(full, -1, out=full)[..., :kend]
        ph = p.sum(dim=(1, 2))  # [B, c, kend]
        buf[:, q0:q1, :kend].add_(ph, alpha=1.0 / H)  # contiguous rows, no transposed add


def _column_spans(bad: torch.Tensor, most: int = 4) -> list[tuple[int, int]]:
    """Half-open runs [lo, hi) of True in the 1-D bool `bad` (the key columns a mask changes);
    more than `most` runs are merged into one span from the first to the last."""
    zero = bad.new_zeros(1, dtype=torch.int8)
    edges = torch.diff(bad.to(torch.int8), prepend=zero, append=zero)  # [n + 1]
    cuts = edges.nonzero().flatten().tolist()  # alternating run starts and ends
    runs = list(zip(cuts[0::2], cuts[1::2], strict=True))
    if len(runs) > most:
        runs = [(runs[0][0], runs[-1][1])]
    return runs


# ---------------------------------------------------------------------------------------------
# Capture state and the registered attention function
# ---------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised after the last chosen layer (stop_after_last) to skip the rest of the forward."""

    def __init__(self, owner):
        super().__init__("ftcli attention capture: forward stopped after the last chosen layer")
        self.owner = owner


class _KernelView:
    """The attention module as seen by a flash kernel: same attributes, but a copy of its config
    whose `_attn_implementation` is the original flash name (flash kernels look it up there)."""

    def __init__(self, module, configs: dict, orig: str):
        cfg = configs.get(id(module.config))
        if cfg is None:
            cfg = copy.copy(module.config)
            cfg._attn_implementation_internal = orig
            configs[id(module.config)] = cfg
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "config", cfg)

    def __getattr__(self, name):
        return getattr(self._module, name)


class AttentionCapture:
    """Context manager accumulating W (Eq. 1) during one forward of `model`; see capture_attention.

    After a successful block, `W` is the [B, T, T] float32 mean over the chosen layers and query
    heads (transposed: W[b, key, query]), with diagonal, lower triangle and padded rows/columns
    zero. `layers` lists the chosen layer indices; `seen` those actually captured.
    """

    def __init__(
        self,
        model,
        layers=None,
        attention_mask=None,
        chunk_size=DEFAULT_CHUNK,
        stop_after_last=False,
    ):
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        self.model = model
        self.layers = layer_range(layers, num_layers(model))
        self.chunk_size = int(chunk_size)
        self.stop_after_last = bool(stop_after_last)
        # explicit 2D mask [B, T]; else the one the forward gets
        self.attention_mask = attention_mask
        self.W: torch.Tensor | None = None
        self.seen: list[int] = []
        self._chosen = set(self.layers)
        self._buf: torch.Tensor | None = None  # [B, T, T] fp32 sum over layers of head means
        self._pad: torch.Tensor | None = None  # [B, T] bool, True = real token
        self._fwd_mask = None
        self._hook = None
        self._marked: list = []
        self._saved: list = []
        self._kernel: Callable | None = None
        self._view_configs: dict | None = None  # flash family: config copies for _KernelView
        self._family = "sdpa"
        self._active = False

    # -- setup / teardown ----------------------------------------------------------------------
    def __enter__(self) -> AttentionCapture:
        _register()
        model = self.model
        orig = model.config._attn_implementation
        if orig in IMPL_FOR_FAMILY.values():
            raise RuntimeError("an ftcli attention capture is already active on this model")
        self._orig = orig
        self._family, self._kernel = _kernel_for(orig)
        self._view_configs = {} if self._family == "varlen" else None
        self._saved = snapshot_impls(model)
        mods = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
        if not mods:
            raise ValueError(f"{type(model).__name__} has no attention modules with a layer_idx")
        try:
            for m in mods:
                setattr(m, _STATE_ATTR, self)
                self._marked.append(m)
            self._hook = model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
            model.set_attn_implementation(IMPL_FOR_FAMILY[self._family])
            if model.config._attn_implementation != IMPL_FOR_FAMILY[self._family]:
                raise RuntimeError(
                    f"{type(model).__name__} refused attention implementation switching "
                    "(it does not use transformers' AttentionInterface)"
                )
        except BaseException:
            self._teardown()
            raise
        self._active = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._teardown()
        stopped = isinstance(exc, _StopForward) and exc.owner is self
        if exc_type is None or stopped:
            self._finalize()
        return stopped

    def _teardown(self) -> None:
        self._active = False
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for m in self._marked:
            if getattr(m, _STATE_ATTR, None) is self:
                delattr(m, _STATE_ATTR)
        self._marked = []
        try:
            if self._saved:
                top = self._saved[0][1]
                if self.model.config._attn_implementation != top and top is not None:
                    self.model.set_attn_implementation(top)
        finally:
            for cfg, value in self._saved:  # exact restore, sub-configs included
                cfg._attn_implementation_internal = value
            self._saved = []

    def _pre_hook(self, module, args, kwargs):
        am = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._fwd_mask = am if isinstance(am, torch.Tensor) and am.ndim == 2 else None
        return None

    # -- per-layer work --------------------------------------------------------------------------
    def _attend(self, module, query, key, value, attention_mask, **kwargs):
        """Layer output from the original kernel; for chosen layers also accumulate Eq. 1."""
        hook = getattr(module, MASK_HOOK_ATTR, None)
        if hook is not None:  # a key block is active: the output and W both see it
            attention_mask = hook(query, key, attention_mask)
        idx = getattr(module, "layer_idx", None)
        packing = getattr(module, PACKING_ATTR, None)  # a packed row (ftcli.packing.packed_attention)
        if self._active and idx in self._chosen and idx not in self.seen:
            if packing is not None:
                self._accumulate_packed(module, query, key, packing, kwargs)
            else:
                self._accumulate(module, query, key, attention_mask, kwargs)
            if self.stop_after_last and len(self.seen) == len(self.layers):
                raise _StopForward(self)  # later layers and the LM head are not needed
        if packing is not None and not (self._family == "varlen" and not packing.shares_prompts):
            return segment_attention(module, query, key, value, packing, **kwargs)
        kmod = module
        if self._view_configs is not None:
            kmod = _KernelView(module, self._view_configs, self._orig)
        return self._kernel(kmod, query, key, value, attention_mask, **kwargs)

    def _accumulate(self, module, query, key, attention_mask, kwargs) -> None:
        B, _, Tq, _ = query.shape
        Tk = key.shape[2]
        if self._buf is None:
            pad = self.attention_mask if self.attention_mask is not None else self._fwd_mask
            if pad is not None:
                if pad.ndim != 2 or pad.shape[0] != B or pad.shape[1] < Tk:
                    raise ValueError(
                        f"attention_mask of shape {tuple(pad.shape)} does not fit a batch of [{B}, {Tk}]"
                    )
                pad = pad[:, -Tk:].to(device=query.device, dtype=torch.bool)
            self._pad = pad
            # [B, T, T]: sum over layers of head means, stored [query, key] (see _finalize)
            self._buf = torch.zeros(B, Tq, Tk, dtype=torch.float32, device=query.device)
        elif self._buf.shape != (B, Tq, Tk):
            raise RuntimeError(
                f"one capture covers one forward: got [{B}, {Tq}, {Tk}] after {tuple(self._buf.shape)}"
            )
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", None) or 1.0 / math.sqrt(query.shape[-1])
        with torch.no_grad():
            _accumulate_layer(
                self._buf,
                query,
                key,
                attention_mask if isinstance(attention_mask, torch.Tensor) else None,
                self._pad,
                float(scaling),
                self.chunk_size,
                softcap=kwargs.get("softcap"),
                sliding_window=kwargs.get("sliding_window"),
                sinks=kwargs.get("s_aux"),
            )
        self.seen.append(module.layer_idx)

    def _accumulate_packed(self, module, query, key, packing, kwargs) -> None:
        """Eq. 1 of each sequence of a packed row, from its own queries and keys alone: the
        [T_n, T_n] block of sequence n (its `packing.positions(n)`, the shared prompt copy
        included) goes into W[n] of the padded [N, T, T] buffer, as if it were run alone.
        query [1, H, L, d], key [1, H_kv, L, d]."""
        N, T = packing.index.shape
        if self._buf is None:
            self._pad = packing.valid.to(query.device)  # [N, T]
            self._buf = torch.zeros(N, T, T, dtype=torch.float32, device=query.device)  # [N, T, T]
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", None) or 1.0 / math.sqrt(query.shape[-1])
        with torch.no_grad():
            for n in range(N):
                idx = packing.positions(n).to(query.device)  # [T_n]
                Tn = int(idx.shape[0])
                _accumulate_layer(self._buf[n : n + 1, :Tn, :Tn], query[:, :, idx], key[:, :, idx], None, None,
                                  float(scaling), self.chunk_size, softcap=kwargs.get("softcap"),
                                  sliding_window=kwargs.get("sliding_window"), sinks=kwargs.get("s_aux"))
        self.seen.append(module.layer_idx)

    def _finalize(self) -> None:
        """W = buffer transposed / |L'|; diagonal, lower triangle and padding zero (Eq. 1)."""
        if self._buf is None:
            self.W = None
            return
        W = _transpose_strict_upper(self._buf)  # [B, key, query], in place when square
        self._buf = None
        W.mul_(1.0 / max(len(self.seen), 1))
        if self._pad is not None and not bool(self._pad.all()):
            nopad = ~self._pad  # [B, T]
            W.masked_fill_(nopad[:, :, None], 0.0)  # padded keys (rows)
            W.masked_fill_(nopad[:, None, :], 0.0)  # padded queries (columns)
        self.W = W

    def checked_W(self) -> torch.Tensor:
        """`W` [B, T, T] after the block, once every chosen layer was captured; RuntimeError
        otherwise (the model does not route attention through transformers' AttentionInterface)."""
        missing = sorted(set(self.layers) - set(self.seen))
        if missing or self.W is None:
            raise RuntimeError(
                f"layers {missing or self.layers} never reached the attention interface; "
                f"{type(self.model).__name__} may not route attention through transformers' AttentionInterface"
            )
        return self.W


def _transpose_strict_upper(A: torch.Tensor, tile: int = 256) -> torch.Tensor:
    """W[b, i, k] = A[b, k, i] for i < k, else 0: the query-major sums [B, Tq, Tk] turned into
    W's [key, query] layout with the diagonal and lower triangle dropped (keys at or after the
    query). Square A is rewritten in place tile by tile (no second [B, T, T] buffer)."""
    B, Tq, Tk = A.shape
    if Tq != Tk:
        return A.transpose(1, 2).triu(diagonal=1)  # [B, Tk, Tq]
    for i0 in range(0, Tk, tile):
        i1 = min(i0 + tile, Tk)
        diag = A[:, i0:i1, i0:i1]
        diag.copy_(diag.transpose(1, 2).triu(diagonal=1))
        for j0 in range(i1, Tk, tile):
            j1 = min(j0 + tile, Tk)
            A[:, i0:i1, j0:j1].copy_(A[:, j0:j1, i0:i1].transpose(1, 2))  # keys i < queries j
            A[:, j0:j1, i0:i1].zero_()
    return A


def _attention_fn(module, query, key, value, attention_mask, **kwargs):
    """The function registered with `AttentionInterface` (signature of transformers' kernels).

    query [B, H, T, d], key/value [B, H_kv, T, d] (post-RoPE), attention_mask as built by the
    mask builder registered for the same name. Outside a capture (no state on the module) it
    just runs sdpa.
    """
    state = getattr(module, _STATE_ATTR, None)
    if state is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return state._attend(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    """Register `_attention_fn` under the three family names, each with the mask builder its
    wrapped kernel expects (sdpa_mask / eager_mask / flash_attention_mask)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        AttentionMaskInterface,
        eager_mask,
        flash_attention_mask,
        sdpa_mask,
    )

    builders = {"sdpa": sdpa_mask, "eager": eager_mask, "varlen": flash_attention_mask}
    for family, name in IMPL_FOR_FAMILY.items():
        AttentionInterface.register(name, _attention_fn)
        AttentionMaskInterface.register(name, builders[family])
    _registered = True


def _kernel_for(orig: str | None) -> tuple[str, Callable]:
    """(mask family, kernel) computing the layer output as the model's original implementation."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if orig is not None and "flash" in orig and orig in ALL_ATTENTION_FUNCTIONS:
        return "varlen", ALL_ATTENTION_FUNCTIONS[orig]
    if orig == "eager":
        return "eager", eager_kernel
    if orig == PACKED_IMPL:  # inside ftcli.packing.packed_attention: the packed row is handled in _attend
        return "sdpa", ALL_ATTENTION_FUNCTIONS["sdpa"]
    return "sdpa", ALL_ATTENTION_FUNCTIONS["sdpa"]


def eager_kernel(module, query, key, value, attention_mask, **kwargs):
    """The model's own `eager_attention_forward` (from its modeling module)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn
    return fn(module, query, key, value, attention_mask, **kwargs)


def snapshot_impls(model) -> list:
    """[(config, _attn_implementation_internal)] for the model config, its sub-configs and every
    sub-model's config; the first entry is the top-level config."""
    out, seen = [], set()

    def add(cfg):
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation_internal"):
            return
        seen.add(id(cfg))
        out.append((cfg, cfg._attn_implementation_internal))
        for key in getattr(cfg, "sub_configs", {}) or {}:
            add(getattr(cfg, key, None))

    add(model.config)
    for m in model.modules():
        add(getattr(m, "config", None) if hasattr(m, "config") else None)
    return out


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------
def capture_attention(
    model,
    layers=None,
    attention_mask: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    stop_after_last: bool = False,
) -> AttentionCapture:
    """Context manager: capture W (Eq. 1) during the forward run inside the block (fused path).

    The forward keeps autograd and its outputs/gradients unchanged (the kernel that computes the
    layer output is the model's original one); the chosen layers' probabilities are recomputed
    under `torch.no_grad()` from detached q/k and summed into one [B, T, T] fp32 buffer. The
    padding mask is `attention_mask` if given, else the 2D `attention_mask` the forward gets.
    One forward per block; a layer seen twice (gradient-checkpoint recomputation) counts once.
    With `stop_after_last=True` the forward is aborted after the last chosen layer and the
    abort is swallowed by the context manager (statements after the forward are skipped).

        with capture_attention(model, "mid", attention_mask) as cap:
            logits = model(input_ids, attention_mask=attention_mask).logits
            loss = ...; loss.backward()
        W = cap.W  # [B, T, T] float32
    """
    return AttentionCapture(model, layers, attention_mask, chunk_size, stop_after_last)


def mean_attention(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    layers=None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    stop_after_last: bool = True,
) -> torch.Tensor:
    """W of paper Eq. 1 for a batch: [B, T, T] float32, W[b, i, k] = attention query k pays key i.

    Averaged over the chosen layers (`layers`, see `layer_range`; default the middle third) and
    all query heads; diagonal and lower triangle 0; rows/columns of padded positions
    (attention_mask == 0) 0; columns not renormalised. Equals eager `output_attentions=True`
    maps averaged over those layers and heads, transposed, diagonal zeroed. Runs under
    `torch.no_grad()`; bf16/fp16 models are recomputed in fp32. input_ids [B, T],
    attention_mask [B, T] (1 = token, 0 = padding) or None.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    kw = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if not stop_after_last and "logits_to_keep" in _forward_params(model):
        kw["logits_to_keep"] = 1  # the [B, T, V] logits are not needed
    cap = capture_attention(
        model, layers, attention_mask, chunk_size=chunk_size, stop_after_last=stop_after_last
    )
    with torch.no_grad(), cap:
        model(**kw)
    return cap.checked_W()


def _forward_params(model) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()
