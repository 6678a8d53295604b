"""Statistics of the experiments: Wilson intervals, mean/std, Spearman, medians, answer equality,
the arms' token selection, t intervals (a mean, a paired difference), the exact McNemar test and
the differences a design can detect."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from statistics import NormalDist

import torch

from ftcli.evaluation.metrics import normalize_answer
from ftcli.flow import num_selected, select_tokens

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
    spaces ignored), else the strings after `ftcli.evaluation.metrics.normalize_answer`."""
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


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with `df` degrees of freedom (bisection on the CDF
    F(t) = 1 - I_{df / (df + t^2)}(df/2, 1/2) / 2 for t >= 0, through mpmath's incomplete beta)."""
    import mpmath  # a sympy dependency; only the experiments' statistics need it

    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)

    def cdf(t: float) -> float:
        x = df / (df + t * t)
        return float(1 - mpmath.betainc(df / 2, 0.5, 0, x, regularized=True) / 2)

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


def mean_interval(xs: Sequence[float], level: float = 0.95) -> dict:
    """Mean of n values with its t interval: {"n", "mean", "std", "ci": [lo, hi]}, the interval
    mean ± t_{(1+level)/2, n-1} std / sqrt(n); ci is None for fewer than two values."""
    d = [float(x) for x in xs]
    m, sd = mean_std(d)
    n = len(d)
    if n < 2 or sd is None:
        return {"n": n, "mean": m, "std": sd, "ci": None}
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": m, "std": sd, "ci": [m - half, m + half]}


def paired_difference(xs: Sequence[float], ys: Sequence[float], level: float = 0.95) -> dict:
    """Paired difference of two arms run on the same seeds: d_i = x_i - y_i, as `mean_interval`
    (ci None for fewer than two pairs)."""
    return mean_interval([float(x) - float(y) for x, y in zip(xs, ys, strict=True)], level)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test of two paired binary outcomes: the p-value of the b + c
    discordant pairs (b: only the first changed, c: only the second) under Binomial(b + c, 1/2),

        p = min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c)),

    computed exactly in integers; 1.0 when there is no discordant pair."""
    if b < 0 or c < 0:
        raise ValueError(f"need b, c >= 0, got b={b}, c={c}")
    n = b + c
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def minimal_detectable_difference(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true paired difference a two-sided paired t test at level `alpha` detects with
    probability `power` over n seeds: (t_{1-alpha/2, n-1} + t_{power, n-1}) sd_diff / sqrt(n).
    None for fewer than two seeds."""
    if n < 2:
        return None
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd_diff / math.sqrt(n)


def proportion_stderr(p: float, n: int) -> float | None:
    """Standard error of a rate p measured over n independent units: sqrt(p (1 - p) / n).
    None for n = 0."""
    if n <= 0:
        return None
    return math.sqrt(p * (1 - p) / n)


def proportion_mdd(p: float, n: int, arms: int = 2, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true difference in a rate near p that a two-sided z test at level `alpha` detects
    with probability `power`: `mean_mdd` with sd = sqrt(p (1 - p)).

    arms = 2: two rates, each over n units (for two arms measured on the same units, a paired
    test does at least this well when their outcomes correlate positively); arms = 1: one rate
    against a known value. None for n = 0."""
    return mean_mdd(math.sqrt(p * (1 - p)), n, arms, alpha, power)


def mean_mdd(sd: float, n: int, arms: int = 2, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true difference in a mean of n values with standard deviation sd that a two-sided
    z test at level `alpha` detects with probability `power`: (z_{1-alpha/2} + z_power) sd sqrt(arms / n);
    arms = 2 compares two such means, arms = 1 one mean with a known value. None for n = 0."""
    if arms not in (1, 2):
        raise ValueError(f"arms must be 1 or 2, got {arms}")
    if n <= 0:
        return None
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * sd * math.sqrt(arms / n)
