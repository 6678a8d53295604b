"""The arms of the training sweeps: `Variant`s (TrainConfig overrides) per table and figure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ftcli.credit import TOKEN_CLASSES


@dataclass
class Variant:
    """One arm of a sweep: TrainConfig overrides on top of the sweep's base options."""

    key: str  # folder name (unique)
    label: str
    train: dict
    group: dict = field(default_factory=dict)  # coordinates for pivot tables, e.g. {"select": "top", "ratio": 0.2}
    baseline: bool = False


def dedupe(variants: list[Variant]) -> list[Variant]:
    seen, out = set(), []
    for v in variants:
        if v.key not in seen:
            seen.add(v.key)
            out.append(v)
    return out


def _fmt_num(x: float) -> str:
    return f"{x:g}"


BASELINE = Variant("grpo", "GRPO (no credit)", {"credit": "none"}, baseline=True)


def layer_variants(ranges: Sequence[str]) -> list[Variant]:
    """Fig. 6: flow credit with W from each layer range (early [0, L/3), mid, late, all, A:B)."""
    return [Variant(f"layers-{r.replace(':', '_')}", f"layers {r}", {"credit": "flow", "layers": r}, {"layers": r})
            for r in ranges]


def ratio_variants(ratios: Sequence[float], selects: Sequence[str] = ("top", "bottom")) -> list[Variant]:
    """Table 5: flow credit on the top / bottom 20/40/60% of response tokens."""
    return [Variant(f"{s}-{_fmt_num(r)}", f"{s.capitalize()}-{round(100 * r)}%",
                    {"credit": "flow", "ratio": r, "select": s}, {"select": s, "ratio": r})
            for s in selects for r in ratios]


def gamma_variants(gammas: Sequence[float]) -> list[Variant]:
    """Table 7 (left): the weight of credited tokens."""
    return [Variant(f"gamma-{_fmt_num(g)}", f"γ = {_fmt_num(g)}", {"credit": "flow", "gamma": g}, {"gamma": g})
            for g in gammas]


WEIGHTING_LABELS = {"binary": "binary top-40% (paper)", "raw": "raw flow", "tanh": "tanh of z-score",
                    "sigmoid": "sigmoid of z-score", "mad": "MAD (robust z)", "log1p": "log1p", "mass": "soft mass"}


def weighting_variants(weightings: Sequence[str], masses: Sequence[float] = (0.2, 0.4, 0.6, 0.8)) -> list[Variant]:
    """Table 7 (right): flow scores -> weights by each map; `mass` expands to one variant per
    mass threshold (the soft 20-80% rows)."""
    out = []
    for w in weightings:
        if w == "mass":
            out += [Variant(f"mass-{_fmt_num(m)}", f"soft mass {round(100 * m)}%",
                            {"credit": "flow", "weighting": "mass", "mass": m}, {"weighting": "mass", "mass": m})
                    for m in masses]
        else:
            out.append(Variant(f"w-{w}", WEIGHTING_LABELS.get(w, w), {"credit": "flow", "weighting": w}, {"weighting": w}))
    return out


RULE_LABELS = {"none": "GRPO", "random": "Random", "entropy": "Entropy", "gradient": "Gradient",
               "correlation": "Correlation", "attention": "Attention", "flow": "FlowTracer",
               "clip-cov": "Clip-Cov", "fai": "FAI"}


def credit_variants(rules: Sequence[str]) -> list[Variant]:
    """Tables 2-4, Figs. 4-5: one variant per credit rule (`none` is the GRPO baseline)."""
    return [Variant(f"credit-{r}", RULE_LABELS.get(r, r), {"credit": r}, {"credit": r}, baseline=r == "none")
            for r in rules]


def set_variants(sets: Sequence[str], ratio: float, rest: float) -> list[Variant]:
    """Issue 28: train on one set of response tokens alone (weight 1 on the set, `rest` on the
    other response tokens, 0 = none of their gradient). RULE-top / RULE-bottom: the rule's
    highest / lowest `ratio` of each response's tokens; a bare RULE is RULE-top (`random`: a
    uniformly drawn `ratio`). Does the set carry the learning signal of GRPO?"""
    out = []
    for spec in sets:
        rule, sel = spec, "top"
        for s in ("top", "bottom"):
            if spec.endswith(f"-{s}"):
                rule, sel = spec[: -len(s) - 1], s
        name = RULE_LABELS.get(rule, rule)
        label = f"{name} {round(100 * ratio)}% only" if rule == "random" else f"{name} {sel}-{round(100 * ratio)}% only"
        out.append(Variant(f"only-{rule}-{sel}-{_fmt_num(ratio)}", label,
                           {"credit": rule, "ratio": ratio, "select": sel, "gamma": 1.0, "rest_weight": rest},
                           {"credit": rule, "select": sel, "ratio": ratio}))
    return out


def token_class_variants() -> list[Variant]:
    """Sec. 5.2: flow credit on all tokens vs restricted to one token class (`--credit-tokens`)."""
    return credit_variants(["flow"]) + [
        Variant(f"credit-flow-{c}", f"Flow on {c} tokens", {"credit": "flow", "credit_tokens": c},
                {"credit": "flow", "credit_tokens": c})
        for c in TOKEN_CLASSES]
