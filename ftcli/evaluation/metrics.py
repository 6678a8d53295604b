"""Eval metrics over per-problem samples: avg@k, unbiased pass@k, maj@k, grader disagreement.

Inputs are per problem: `correct` (list of bools, one per sample, in sample order) and, for
maj@k, `answers` (extracted answer strings, None when nothing was extracted). Every metric is
a fraction in [0, 1], averaged over problems (each problem weighs the same).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence


class MetricError(ValueError):
    """Unknown or impossible metric (one-line message for the CLI)."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem (Chen et al. 2021, "Evaluating LLMs trained on code").

    pass@k = 1 - C(n - c, k) / C(n, k), with n samples of which c are correct. Computed in the
    numerically stable product form 1 - prod_{i = n-c+1}^{n} (1 - k / i); it is 1 when
    n - c < k (every k-subset contains a correct sample).
    """
    if not (0 <= c <= n) or k < 1:
        raise MetricError(f"pass@k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise MetricError(f"pass@{k} needs at least {k} samples per problem (got {n})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems (all samples of each problem are used as n)."""
    if not correct:
        return float("nan")
    return sum(pass_at_k(len(c), sum(map(bool, c)), k) for c in correct) / len(correct)


def avg_at_k(correct: Sequence[Sequence[bool]], k: int | None = None) -> float:
    """avg@k = mean over problems of (1/k) * sum_{j<k} correct_j: pass@1 averaged over the
    first k samples (AIME avg@16). `k=None` uses every sample; avg@1 is single-draw pass@1."""
    if not correct:
        return float("nan")
    tot = 0.0
    for c in correct:
        kk = len(c) if k is None else k
        if kk < 1 or len(c) < kk:
            raise MetricError(f"avg@{kk} needs at least {kk} samples per problem (got {len(c)})")
        tot += sum(map(bool, c[:kk])) / kk
    return tot / len(correct)


def normalize_answer(a: str | None) -> str | None:
    """Voting key of an extracted answer: whitespace removed, `\\left`/`\\right`, `$` and a
    trailing period stripped. None / empty -> None (an abstention)."""
    if a is None:
        return None
    s = re.sub(r"\s+", "", str(a))
    s = s.replace("\\left", "").replace("\\right", "").replace("$", "").rstrip(".")
    return s or None


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> bool:
    """maj@k of one problem: is the most frequent answer among the first k samples correct?

    Answers are compared after `normalize_answer`; samples with no answer do not vote (all
    abstain -> wrong). Tie rule: among answers with the same top count, the one that occurs
    first (lowest sample index) wins; this is `Counter.most_common` order, as in
    lm-evaluation-harness. The winner's correctness is the verdict of its first sample.
    """
    kk = len(answers) if k is None else k
    if len(answers) < kk or len(correct) < kk:
        raise MetricError(f"maj@{kk} needs at least {kk} samples per problem (got {len(answers)})")
    keys = [normalize_answer(a) for a in answers[:kk]]
    votes = Counter(x for x in keys if x is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]  # ties: first inserted = first occurrence
    return bool(correct[keys.index(winner)])


def maj_at_k(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int | None = None) -> float:
    """maj@k averaged over problems (see `majority_correct` for the tie rule)."""
    if not correct:
        return float("nan")
    return sum(majority_correct(a, c, k) for a, c in zip(answers, correct, strict=True)) / len(correct)


def disagreement_rate(first: Sequence[bool | None], second: Sequence[bool | None]) -> float | None:
    """Fraction of samples where the two graders disagree, over samples both graded
    (a None verdict = grader not run / failed). None when no sample has both verdicts."""
    pairs = [(a, b) for a, b in zip(first, second, strict=True) if a is not None and b is not None]
    if not pairs:
        return None
    return sum(bool(a) != bool(b) for a, b in pairs) / len(pairs)


_METRIC = re.compile(r"^(avg|pass|maj)@(\d+)$")


def parse_metric(name: str) -> tuple[str, int]:
    """'avg@16' -> ('avg', 16). Known kinds: avg@k, pass@k, maj@k."""
    m = _METRIC.match(name.strip().lower())
    if not m or int(m.group(2)) < 1:
        raise MetricError(f"unknown metric {name!r} (use avg@k, pass@k or maj@k)")
    return m.group(1), int(m.group(2))


def compute_metric(
    name: str, correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[str | None]] | None = None
) -> float:
    """Compute 'avg@k' | 'pass@k' | 'maj@k' over problems."""
    kind, k = parse_metric(name)
    if kind == "avg":
        return avg_at_k(correct, k)
    if kind == "pass":
        return mean_pass_at_k(correct, k)
    if answers is None:
        raise MetricError("maj@k needs the extracted answers")
    return maj_at_k(answers, correct, k)


def metric_stderr(
    name: str, correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[str | None]] | None = None
) -> float | None:
    """Standard error of `compute_metric(name, ...)` over problems: the sample standard
    deviation of the per-problem values divided by sqrt(#problems).

    The metric is a mean over problems of a per-problem value v_i (avg@k: the fraction of the
    first k samples correct; pass@k: the unbiased estimate; maj@k: 0/1), so
    SE = sd(v_1..v_N) / sqrt(N). The samples of one problem are correlated, which a binomial
    SE over all samples would ignore. None for fewer than two problems.
    """
    n = len(correct)
    if n < 2:
        return None
    vals = [compute_metric(name, [c], None if answers is None else [a])
            for c, a in zip(correct, answers if answers is not None else [None] * n, strict=True)]
    m = sum(vals) / n
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1) / n)


def sampling_stderr(name: str, correct: Sequence[Sequence[bool]]) -> float | None:
    """Noise of an avg@k evaluation from the sampling alone, the problems held fixed: the
    standard error sqrt(sum_i s_i^2 / k) / N, with s_i^2 = p_i (1 - p_i) k / (k - 1) the unbiased
    within-problem variance of problem i's k samples (p_i its fraction correct). This is the
    part of the spread that more samples per problem remove; the difference of two such
    evaluations on the same problems has about sqrt(2) times this standard error from sampling
    alone. None for other metrics or k < 2."""
    if not name.startswith("avg@") or not correct:
        return None
    k = int(name.split("@", 1)[1])
    if k < 2 or min(len(c) for c in correct) < k:
        return None
    var = 0.0
    for c in correct:
        p = sum(bool(x) for x in c[:k]) / k
        var += p * (1 - p) * k / (k - 1) / k
    return math.sqrt(var) / len(correct)


def standard_metrics(
    correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[str | None]] | None = None
) -> dict[str, float]:
    """The usual panel for n samples per problem (n = the smallest group): avg@n, pass@k for
    k in 1, 2, 4, ... up to n (and n itself), and maj@n when answers are given and n > 1."""
    if not correct:
        return {}
    n = min(len(c) for c in correct)
    if n < 1:
        return {}
    out = {f"avg@{n}": avg_at_k(correct, n)}
    ks = sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n})
    for k in ks:
        out[f"pass@{k}"] = mean_pass_at_k([c[:n] for c in correct], k)
    if answers is not None and n > 1:
        out[f"maj@{n}"] = maj_at_k(answers, correct, n)
    return out
