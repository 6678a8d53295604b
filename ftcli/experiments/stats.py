"""Statistics of the experiments: Wilson intervals, mean/std, Spearman, medians, answer equality,
and the arms' token selection."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

import torch

from ftcli.flow import num_selected, select_tokens
from ftcli.metrics import normalize_answer

Z95 = 1.959963984540054  # two-sided 95% normal quantile
NUMBER = re.compile(r"-?\d+(?:\.\d+)?|-?\.\d+")


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n; (0, 1) when n == 0.

    centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(k: int, n: int) -> dict:
    """{"k", "n", "rate", "ci": [lo, hi]} with the Wilson 95% interval (rate None when n = 0)."""
    lo, hi = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None, "ci": [lo, hi]}


def mean_std(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; 0 for one value; None for none)."""
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def mean_std_dict(xs: Sequence[float]) -> dict:
    """`mean_std` as {"mean", "std"}."""
    m, sd = mean_std(xs)
    return {"mean": m, "std": sd}


def median(xs: Sequence[float]) -> float:
    """The median (nan for no values)."""
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2) if n else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    if a.numel() < 2:
        return None
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else None


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """0-based ranks of a 1-D tensor; tied values share their mean rank."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype)
    for v in torch.unique(x):
        m = x == v
        if int(m.sum()) > 1:
            ranks[m] = ranks[m].mean()
    return ranks


def same_answer(a: str | None, b: str | None) -> bool:
    """Do two extracted answers agree? Exact numbers when both parse as one (commas, `$` and
    spaces ignored), else the strings after `ftcli.metrics.normalize_answer`."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if na is None or nb is None:
        return na == nb
    xa, xb = na.replace(",", ""), nb.replace(",", "")
    if NUMBER.fullmatch(xa) and NUMBER.fullmatch(xb):
        return Fraction(xa) == Fraction(xb)
    return na == nb


def select_positions(scores: torch.Tensor, ratio: float, how: str, seed: int) -> torch.Tensor:
    """Positions (sorted) of ceil(ratio * n - 1e-9) of the n scores: `top` / `bottom` by score
    (ties to the lower position, zeros allowed so every arm blocks the same count) or `random`."""
    n = scores.numel()
    k = int(num_selected(n, ratio))
    if how == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=g)[:k].sort().values
    m = select_tokens(scores[None], torch.ones(1, n, dtype=torch.bool), ratio, largest=how == "top", exclude_zero=False)
    return m[0].nonzero()[:, 0]
