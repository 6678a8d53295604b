"""Answer-targeted information flow over the attention DAG (FlowTracer, Sec. 3.1 and 3.3).

This module implements the algorithm stated in `docs/flow.md` exactly. Positions are 0-based; one
row of a batch is one teacher-forced sequence (prompt, then response; padding is not a token).

    W[i, k]   (i < k)  attention that query k pays key i, mean over middle layers and heads (Eq. 1)
    h                  potential: answer tokens absorbing, h(a) = 1, h(i) = sum_k W[i,k] h(k) (Eq. 2)
    W'[i, k]           Doob transform W[i,k] h(k) / h(i) (Eq. 3), rows sum to 1
    f                  forward flow: unit flow injected uniformly at the question tokens (Eq. 4)
    tau                throughput tau(k) = f(k) + sum_j f(k) W'[k, j]
    mask, weights      top ceil(0.4 n) response tokens by tau get weight gamma = 1.5 (Eq. 6)

The fast path (`trace_flow`) never forms W': with U = W restricted to the strict upper
triangle and the answer rows zeroed,

    (I - U) h = 1_A                   one upper-triangular solve            (Eq. 2)
    g^T (I - U) = (inj / h)^T         a second solve with the same buffer    (Eq. 4)
    f = h * g  on {h > 0},  f = inj  on {h = 0}

Both solves run on the caller's `[T, T]` buffer in place: the diagonal is set to -1 and the
answer rows to 0 (so that `(U - I) x = -b` gives `x = b + U x` exactly, with no negation pass
over T^2), and both are restored before returning, so `W` is unchanged on exit (saved: the
diagonal and the answer rows, O(|A| T)). Pass `overwrite=True` to skip the restore when `W` is
a scratch buffer. Extra memory is O(T) per sequence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "FlowResult",
    "trace_flow",
    "trace_flow_reference",
    "potential",
    "doob_transform",
    "forward_flow",
    "throughput",
    "num_selected",
    "select_tokens",
    "credit_weights",
]

SELECTION_EPS = 1e-9  # k_sel = ceil(ratio * n - 1e-9): n = 15, ratio 0.4 gives 6, not 7


class FlowResult(NamedTuple):
    """Output of `trace_flow`; every field is `[B, T]` except the per-sequence ones `[B]`.

    Fields are reachable by attribute (`r.tau`), by unpacking, and by name (`r["tau"]`).
    """

    h: torch.Tensor  # [B, T] potential (Eq. 2)
    f: torch.Tensor  # [B, T] forward flow (Eq. 4)
    tau: torch.Tensor  # [B, T] throughput
    mask: torch.Tensor  # [B, T] bool, selected response tokens (Eq. 6)
    weights: torch.Tensor  # [B, T] gamma on selected tokens, 1 elsewhere (Eq. 6)
    fallback: torch.Tensor  # [B] bool, uniform fallback (empty answer or question span)
    k_sel: torch.Tensor  # [B] long, ceil(ratio * |R| - 1e-9)
    absorbed: torch.Tensor  # [B] flow absorbed at the answer tokens, sum_{a in A} f(a)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return getattr(self, key)
        return tuple.__getitem__(self, key)


# ---------------------------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------------------------
def _as_mask(m, name: str, shape: tuple[int, int]) -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        m = torch.as_tensor(m)
    if m.dtype.is_floating_point or m.dtype.is_complex:
        raise ValueError(f"{name} must be a bool (or integer 0/1) tensor, got {m.dtype}")
    if tuple(m.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(m.shape)}, expected {shape} (= W.shape[:2])")
    return m.bool()


def _check_inputs(W, question_mask, answer_mask, response_mask, ratio):
    if not isinstance(W, torch.Tensor):
        raise ValueError("W must be a torch.Tensor of shape [B, T, T]")
    if W.dim() != 3 or W.shape[1] != W.shape[2]:
        raise ValueError(f"W must have shape [B, T, T], got {tuple(W.shape)}")
    if not W.dtype.is_floating_point:
        raise ValueError(f"W must be a floating tensor, got {W.dtype}")
    try:
        ok = 0.0 <= float(ratio) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
    shape = (W.shape[0], W.shape[1])
    q = _as_mask(question_mask, "question_mask", shape).to(W.device)
    a = _as_mask(answer_mask, "answer_mask", shape).to(W.device)
    r = _as_mask(response_mask, "response_mask", shape).to(W.device)
    T = shape[1]
    pos = torch.arange(T, device=W.device)  # [T]
    has_r = r.any(dim=1)  # [B]
    r_start = torch.where(has_r, torch.where(r, pos, T).amin(dim=1), T)  # [B]
    r_end = torch.where(has_r, torch.where(r, pos, -1).amax(dim=1) + 1, T)  # [B]
    for b in range(shape[0]):
        if has_r[b] and int(r[b].sum()) != int(r_end[b] - r_start[b]):
            raise ValueError(f"response_mask of sequence {b} is not one contiguous span")
    outside_prompt = q & (pos[None, :] >= r_start[:, None])  # [B, T]
    if outside_prompt.any():
        b = int(outside_prompt.any(dim=1).nonzero()[0])
        raise ValueError(
            f"question_mask of sequence {b} marks positions outside the prompt "
            f"(the question must lie before the response, which starts at {int(r_start[b])})"
        )
    outside_resp = a & ~r
    if outside_resp.any():
        b = int(outside_resp.any(dim=1).nonzero()[0])
        raise ValueError(f"answer_mask of sequence {b} marks positions outside the response")
    return q, a, r


def _compute_dtype(W: torch.Tensor) -> torch.dtype:
    """float64 in -> float64 out; everything else is computed in float32 (docs/flow.md: Numerics)."""
    return torch.float64 if W.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# The formulas, one function each (explicit; used by the reference and by analysis code)
# ---------------------------------------------------------------------------------------------
def potential(W: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 2: h(a) = 1 on A, h(i) = sum_{k>i} W[i,k] h(k) elsewhere; solves (I - W_A) h = 1_A.

    W: [B, T, T] (strict upper triangle used), answer_mask: [B, T] bool -> h: [B, T].
    Does not modify W (works on a copy; `trace_flow` is the in-place fast path).
    """
    dt = _compute_dtype(W)
    U = W.to(dt).triu(1)  # [B, T, T]
    U = U.masked_fill(answer_mask.bool()[:, :, None], 0.0)  # answer rows: absorbing
    eye = torch.eye(W.shape[-1], dtype=dt, device=W.device)
    rhs = answer_mask.to(dt)[:, :, None]  # [B, T, 1]
    return torch.linalg.solve_triangular(eye - U, rhs, upper=True)[..., 0]  # [B, T]


def doob_transform(W: torch.Tensor, h: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: W'[i,k] = W[i,k] h(k) / h(i) for i not in A with h(i) > 0; other rows are 0.

    W: [B, T, T], h: [B, T], answer_mask: [B, T] -> W': [B, T, T]. Invariant to the scale of h.
    Rows of W' sum to 1 for non-answer tokens with h > 0 (Theorem 3.1).
    """
    dt = h.dtype
    U = W.to(dt).triu(1)  # [B, T, T]
    live = (h > 0) & ~answer_mask.bool()  # [B, T] rows that carry flow
    inv_h = torch.where(live, 1.0 / torch.where(live, h, torch.ones_like(h)), torch.zeros_like(h))
    return U * inv_h[:, :, None] * h[:, None, :]  # [B, T, T]


def forward_flow(Wp: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4: f(k) = [k in Q] / |Q| + sum_{i<k} f(i) W'[i,k] (unit flow injected at Q).

    Wp: [B, T, T] (Doob-transformed, strict upper triangle), question_mask: [B, T] -> f [B, T].
    Flow injected at a question token with h = 0 stays there (its W' row is zero).
    """
    q = question_mask.to(Wp.dtype)  # [B, T]
    inj = q / q.sum(dim=1, keepdim=True).clamp_min(1.0)  # [B, T]
    eye = torch.eye(Wp.shape[-1], dtype=Wp.dtype, device=Wp.device)
    # f^T (I - W') = inj^T  <=>  (I - W'^T) f = inj
    return torch.linalg.solve_triangular(
        eye - Wp.triu(1), inj[:, None, :], upper=True, left=False
    )[:, 0, :]


def throughput(f: torch.Tensor, h: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """tau(k) = f(k) + sum_{j>k} f(k) W'[k,j]: 2 f for non-answer tokens with h > 0, else f."""
    passes = (h > 0) & ~answer_mask.bool()  # [B, T] rows of W' that sum to 1
    return torch.where(passes, 2.0 * f, f)


def num_selected(n: torch.Tensor | int, ratio: float) -> torch.Tensor:
    """k_sel = ceil(ratio * n - 1e-9) (Eq. 6 with the spec's rounding); n: [B] -> [B] long."""
    n = torch.as_tensor(n)
    return torch.ceil(n.to(torch.float64) * float(ratio) - SELECTION_EPS).clamp_min(0).long()


def select_tokens(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    ratio: float,
    largest: bool = True,
    exclude_zero: bool = True,
) -> torch.Tensor:
    """Eq. 6 selection: the first ceil(ratio*n - 1e-9) response tokens ordered by score.

    scores: [B, T], response_mask: [B, T] bool -> mask [B, T] bool. Order is by score
    descending (`largest=True`) or ascending, ties to the lower position; with
    `exclude_zero`, tokens whose score is exactly 0 are never taken (for the flow: a token
    with tau = 0 carries no question-to-answer flow). n counts all response tokens.
    """
    resp = response_mask.bool()  # [B, T]
    k = num_selected(resp.sum(dim=1), ratio).to(scores.device)  # [B]
    cand = resp & (scores != 0) if exclude_zero else resp  # [B, T]
    fill = float("-inf") if largest else float("inf")
    key = scores.masked_fill(~cand, fill)  # [B, T]
    order = torch.argsort(key, dim=1, descending=largest, stable=True)  # [B, T]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return cand & (rank < k[:, None])


def credit_weights(mask: torch.Tensor, gamma: float, dtype=torch.float32) -> torch.Tensor:
    """Eq. 6: weight gamma on selected tokens, 1.0 everywhere else (no renormalisation)."""
    one = torch.ones(mask.shape, dtype=dtype, device=mask.device)
    return torch.where(mask, torch.full_like(one, float(gamma)), one)


# ---------------------------------------------------------------------------------------------
# Fast path
# ---------------------------------------------------------------------------------------------
def _solve_sequence_(
    M: torch.Tensor, ans: torch.Tensor, inj: torch.Tensor, overwrite: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """h and f for one sequence, solving in place on M [T, T] (restored unless `overwrite`).

    ans: [T] bool, inj: [T] injection (1/|Q| on Q). Returns h [T], f [T] in M's dtype.
    """
    a_idx = ans.nonzero()[:, 0]  # [|A|]
    diag = M.diagonal()  # [T] view
    saved_diag = None if overwrite else diag.clone()  # [T]
    saved_rows = None if overwrite else M.index_select(0, a_idx)  # [|A|, T]
    try:
        M.index_fill_(0, a_idx, 0.0)  # answer tokens absorbing: W_A
        diag.fill_(-1.0)  # (U - I) x = -b  <=>  x = b + U x, exactly
        neg_b = -ans.to(M.dtype)  # [T]
        h = torch.linalg.solve_triangular(M, neg_b[:, None], upper=True)[:, 0]  # [T]  Eq. 2
        live = h > 0  # [T]
        rhs = torch.where(live, inj / torch.where(live, h, torch.ones_like(h)), 0.0)  # [T]
        g = torch.linalg.solve_triangular(M, -rhs[None, :], upper=True, left=False)[0]  # [T]
        f = torch.where(live, h * g, inj)  # [T]  Eq. 4, f = h g on {h > 0}
    finally:
        if not overwrite:
            M.index_copy_(0, a_idx, saved_rows)
            diag.copy_(saved_diag)
    return h, f


def trace_flow(
    W: torch.Tensor,
    question_mask: torch.Tensor,
    answer_mask: torch.Tensor,
    response_mask: torch.Tensor,
    ratio: float = 0.4,
    gamma: float = 1.5,
    overwrite: bool = False,
) -> FlowResult:
    """FlowTracer credit for a batch (docs/flow.md; paper Eq. 2-4 and 6).

    Args:
        W: `[B, T, T]` mean attention, W[b, i, k] = attention of query k to key i (i < k);
            only the strict upper triangle is read. float32 (bf16/fp16 are upcast; float64 in
            gives float64 out). Left unchanged on return unless `overwrite=True`.
        question_mask: `[B, T]` bool, question tokens (inside the prompt, before the response).
        answer_mask: `[B, T]` bool, final-answer tokens (inside the response).
        response_mask: `[B, T]` bool, the contiguous response span (EOS included).
        ratio: fraction of response tokens selected (0.4 in the paper).
        gamma: weight of selected tokens (1.5 in the paper).
        overwrite: W is a scratch buffer: skip restoring its diagonal and answer rows.

    Returns a `FlowResult` (h, f, tau, mask, weights `[B, T]`; fallback, k_sel, absorbed `[B]`).
    A sequence with an empty answer or question span gets the uniform fallback: h = 0,
    f = injection, nothing selected, all weights 1.0, `fallback=True`.

    Raises ValueError for bad shapes, question tokens outside the prompt, answer tokens
    outside the response, or a non-contiguous response.
    """
    q, a, r = _check_inputs(W, question_mask, answer_mask, response_mask, ratio)
    ratio = float(ratio)
    W = W.detach()  # the flow is not differentiated; in-place work needs a non-autograd view
    dt = _compute_dtype(W)
    if W.dtype != dt:
        W, overwrite = W.to(dt), True  # an owned copy (bf16/fp16 input)
    B, T, _ = W.shape
    qf = q.to(dt)  # [B, T]
    inj = qf / qf.sum(dim=1, keepdim=True).clamp_min(1.0)  # [B, T] 1/|Q| on Q
    fallback = ~a.any(dim=1) | ~q.any(dim=1)  # [B]
    h = torch.zeros(B, T, dtype=dt, device=W.device)  # [B, T]
    f = inj.clone()  # [B, T] fallback: injection only
    for b in range(B):  # a loop over sequences beats one batched solve on CPU
        if not fallback[b]:
            h[b], f[b] = _solve_sequence_(W[b], a[b], inj[b], overwrite)
    tau = throughput(f, h, a)  # [B, T]
    mask = select_tokens(tau, r, ratio) & ~fallback[:, None]  # [B, T]
    weights = credit_weights(mask, gamma, dtype=dt)  # [B, T]
    absorbed = (f * a.to(dt)).sum(dim=1)  # [B]
    k_sel = num_selected(r.sum(dim=1), ratio).to(W.device)  # [B]
    return FlowResult(h, f, tau, mask, weights, fallback, k_sel, absorbed)


# ---------------------------------------------------------------------------------------------
# Literal float64 reference (tests, benchmarks)
# ---------------------------------------------------------------------------------------------
def trace_flow_reference(
    W: Sequence[Sequence[float]] | torch.Tensor,
    Q: Sequence[int],
    A: Sequence[int],
    response: tuple[int, int],
    ratio: float = 0.4,
    gamma: float = 1.5,
) -> dict:
    """One sequence, float64, Python loops over positions: the spec's equations read literally.

    W: `[T, T]`; Q, A: position lists; response: `[r0, r1)`. Returns a dict with h, Wp, f,
    tau, mask, weights, k_sel, absorbed, selected_positions (the fields of the test vectors).
    Slow (O(T^2) Python-level work); it exists to check `trace_flow`.
    """
    Wt = torch.as_tensor(W, dtype=torch.float64)
    T = Wt.shape[0]
    Qs, As = set(int(i) for i in Q), set(int(i) for i in A)
    r0, r1 = response
    h = [0.0] * T
    Wp = torch.zeros(T, T, dtype=torch.float64)
    f = [0.0] * T
    if As and Qs:
        for i in range(T - 1, -1, -1):  # Eq. 2, backwards
            h[i] = 1.0 if i in As else float(Wt[i, i + 1 :] @ torch.tensor(h[i + 1 :], dtype=torch.float64))
        ht = torch.tensor(h, dtype=torch.float64)
        for i in range(T):  # Eq. 3
            if i not in As and h[i] > 0:
                Wp[i, i + 1 :] = Wt[i, i + 1 :] * ht[i + 1 :] / h[i]
    for k in range(T):  # Eq. 4, forwards
        inj = (1.0 / len(Qs)) if k in Qs else 0.0
        f[k] = inj + float(torch.tensor(f[:k], dtype=torch.float64) @ Wp[:k, k]) if k else inj
    tau = [f[k] + f[k] * float(Wp[k, k + 1 :].sum()) for k in range(T)]
    n = r1 - r0
    k_sel = max(0, math.ceil(ratio * n - SELECTION_EPS))
    order = sorted((p for p in range(r0, r1) if tau[p] != 0.0), key=lambda p: (-tau[p], p))
    chosen = sorted(order[:k_sel]) if (As and Qs) else []
    mask = [1 if p in chosen else 0 for p in range(T)]
    return {
        "h": h,
        "Wp": Wp.tolist(),
        "f": f,
        "tau": tau,
        "mask": mask,
        "weights": [gamma if m else 1.0 for m in mask],
        "k_sel": k_sel,
        "absorbed": sum(f[a] for a in As),
        "selected_positions": chosen,
    }
