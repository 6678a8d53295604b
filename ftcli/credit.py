"""Token credit rules: ONE registry; each rule scores tokens, ONE shared selection weights them.

    rule = get_rule("flow")
    credit = compute_credit(rule, inputs, CreditOptions(ratio=0.4, gamma=1.5))
    credit.weights        # [B, T] gamma_t of paper Eq. 5 (1.0 outside the response)

A rule maps a batch (`CreditInputs`) to per-token scores `[B, T]` (only response positions
matter) and, optionally, a per-sequence fallback flag `[B]` (the rule cannot score that
sequence: it gets uniform weights). The shared step (`weights_from_scores`) then turns scores
into weights, identically for every rule:

- `binary` (the paper, Eq. 6): the first ceil(ratio * n - 1e-9) response tokens by score
  (`--select top`: descending, never a token with score exactly 0; `bottom`: ascending), ties
  to the lower position (`ftcli.flow.select_tokens`), get gamma; every other token gets 1
  (`rest_weight`, default 1: with rest 0 the update trains on the selected set only).
- continuous weightings (paper Table 7): w_t = 1 + (gamma - 1) * u_t with u_t in [0, 1] a
  per-sequence normalisation of the scores over the response tokens; `--select bottom` uses
  1 - u_t. Definitions (s = score, stats over the sequence's response tokens):
    raw      u = s+ / max s+                                  (linear in the raw score)
    tanh     u = max(tanh(z), 0),  z = (s - mean) / std        (above-mean tokens, saturating)
    sigmoid  u = sigmoid(z)                                    (every token, centred at 0.5)
    mad      u = max(tanh(z_r), 0), z_r = (s - median) / (1.4826 MAD)   (robust z-score)
    log1p    u = log1p(s+ / mean s+) / max log1p(s+ / mean s+)
    mass     soft mass threshold p (`--mass`, 0.2-0.8): tokens in descending score order
             until their cumulative score reaches p * sum(s+); u = 1 inside, the boundary
             token gets the fraction of its score needed to reach p, 0 after.
  (s+ = max(s, 0): magnitude weightings ignore negative scores.)
- `nonneg_only` (the sister paper's "only non-negative advantages"): sequences with A < 0 get
  uniform weights.
- `token_filter` (Sec. 5.2, `--credit-tokens structural|semantic`): only the response tokens of
  one class may be credited, and the selection runs within the class: with n_c of them, the
  first ceil(ratio * n_c) by score (the paper's "Top-40% high-flow tokens within each subset";
  continuous weightings normalise over the class's tokens).

Rules (the definitions this implementation chose; also in the README):
- `none`: plain GRPO, all weights 1.
- `random`: i.i.d. uniform(0, 1) scores, seeded per sequence (reproducible, split-invariant).
- `entropy`: the current policy's entropy H_t of the distribution that produced token t (the
  high-entropy "forking token" baseline of Wang et al. 2025, in the gamma template of the
  attention papers, selection per response), from the update forward's logits, detached.
- `gradient`: answer-gradient saliency s_t = || d/d e_t  sum_{a in A} log pi(y_a | y_<a) ||_2,
  the L2 norm of the gradient of the final answer's log-likelihood with respect to token t's
  input embedding (one extra forward/backward, no parameter gradients). It targets the same
  answer span as the flow, so both baselines answer "which tokens does the answer depend on";
  no answer span -> uniform fallback.
- `correlation` (the paper's "Correlation (Nie et al., 2025), selecting tokens with strong mutual
  dependencies"): Nie et al.'s own definition was not found in any source this project could
  read, so this is our reading of the FlowTracer paper's one-line description, a correlation
  that is mutual (symmetric) between tokens. With h_t the policy's hidden state of token t
  averaged over the middle layers' outputs ([L//3, 2L//3), the layers of W) and rho the Pearson
  correlation over the hidden features,
      s_k = 1/(n - 1) * sum_{j in R, j != k} |rho(h_k, h_j)|      (n = |R|, the response)
  the mean absolute correlation of token k with the other response tokens (one extra no-grad
  forward; a response of one token gets 0).
- `attention` (the paper's "Attention (Li et al., 2025d), using maximum attention scores as a
  proxy for importance"): the maximum attention a token receives from a later token, on the
  same captured W as the flow: s_k = max_{t > k} W[k, t] (0 for the last token). W is already
  the mean over heads and layers (Eq. 1), so the maximum is over the later queries only.
- `clip-cov` (formerly `correlation`): the token-level covariance between log-probability and
  advantage (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", Clip-Cov):
  s_t = A_i * (log pi(y_t) - mean_{t' in R_i} log pi(y_t')), centred within the response so the
  score does not depend on how the batch is split; A = 0 (a group with equal rewards) gives 0.
- `fai` (formerly `attention`): the sister paper's Future Attention Influence (arXiv 2510.13554,
  Def. 4.1) on the same captured W as the flow: s_k = mean of W[k, t] over later response
  tokens t with k + 10 <= t <= k + 50 (`--fai-window`), 0 when no such t. (That paper averages
  "global" heads only; here all heads of the chosen layers, the W the flow uses.)
- `flow`: FlowTracer (`ftcli.flow.trace_flow`) on the middle-layer W with the task's question
  and answer spans: scores = throughput tau; sequences with no answer or question span get the
  uniform fallback. With `binary` weighting the weights equal `trace_flow(...).weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ftcli.attention import layer_range, num_layers
from ftcli.flow import credit_weights, select_tokens, trace_flow
from ftcli.grpo import token_logprobs
from ftcli.options import (  # noqa: F401 - re-exported: the choices live where the CLI reads them
    CREDIT_TOKENS,
    RULE_SUMMARIES,
    SELECT_MODES,
    TOKEN_CLASSES,
    WEIGHTINGS,
    describe_rules,
)

MAD_SCALE = 1.4826  # MAD -> std for a normal distribution


# ---------------------------------------------------------------------------------------------
# Inputs, options, result
# ---------------------------------------------------------------------------------------------
@dataclass
class CreditInputs:
    """What a rule may look at, for one (micro-)batch of right-padded sequences."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] bool
    response_mask: torch.Tensor  # [B, T] bool, generated tokens (EOS included)
    question_mask: torch.Tensor  # [B, T] bool, question tokens in the prompt
    answer_mask: torch.Tensor  # [B, T] bool, final-answer tokens in the response
    advantages: torch.Tensor  # [B] fp32, group-normalised
    seeds: torch.Tensor | None = None  # [B] long, per-sequence seeds (random rule)
    W: torch.Tensor | None = None  # [B, T, T] fp32 mean attention (rules needing "attention")
    logp: torch.Tensor | None = None  # [B, T] detached log pi(y_t) ("logp")
    entropy: torch.Tensor | None = None  # [B, T] policy entropy at each token ("entropy")
    model: object | None = None  # the policy module ("model": the gradient rule)
    temperature: float = 1.0  # logits temperature of the update (gradient rule)


@dataclass
class CreditOptions:
    """The shared selection: how scores become weights (CLI: --ratio --select --gamma ...)."""

    ratio: float = 0.4
    select: str = "top"
    gamma: float = 1.5
    weighting: str = "binary"
    mass: float = 0.4
    rest_weight: float = 1.0  # weight of the response tokens outside the set (1: the paper; 0: train on the set only)
    nonneg_only: bool = False
    fai_window: tuple[int, int] = (10, 50)
    token_filter: torch.Tensor | None = None  # [V] bool: token ids that may be credited (None: all)

    def __post_init__(self):
        if self.select not in SELECT_MODES:
            raise ValueError(f"--select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"--ratio must be in [0, 1], got {self.ratio}")
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"--mass must be in (0, 1], got {self.mass}")
        if self.rest_weight < 0.0:
            raise ValueError(f"--rest-weight must be >= 0, got {self.rest_weight}")
        lo, hi = self.fai_window
        if not 1 <= lo <= hi:
            raise ValueError(f"--fai-window must be LO:HI with 1 <= LO <= HI, got {lo}:{hi}")


@dataclass
class Credit:
    """Result of `compute_credit`."""

    weights: torch.Tensor  # [B, T] fp32, 1.0 outside the response
    credited: torch.Tensor  # [B, T] bool, the selected response tokens (weight gamma, not the rest weight)
    scores: torch.Tensor | None  # [B, T] the rule's scores (None for `none`)
    fallback: torch.Tensor  # [B] bool, uniform weights because the rule could not score


ScoreFn = Callable[[CreditInputs, CreditOptions], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class CreditRule:
    """A named scoring rule and what it needs from the trainer."""

    name: str
    score: ScoreFn | None  # None: plain GRPO
    needs: frozenset = field(default_factory=frozenset)  # {"attention","entropy","logp","model"}
    summary: str = ""


RULES: dict[str, CreditRule] = {}


def register_rule(name: str, needs: tuple[str, ...] = (), summary: str = ""):
    """Decorator adding a score function to the registry under `name` (a built-in rule's
    summary is `ftcli.options.RULE_SUMMARIES[name]`, which `ft --help` reads without torch)."""

    def deco(fn: ScoreFn) -> ScoreFn:
        if name in RULES:
            raise ValueError(f"credit rule {name!r} is already registered")
        RULE_SUMMARIES[name] = summary or RULE_SUMMARIES.get(name) or ""
        RULES[name] = CreditRule(name, fn, frozenset(needs), RULE_SUMMARIES[name])
        return fn

    return deco


RULES["none"] = CreditRule("none", None, frozenset(), RULE_SUMMARIES["none"])


def get_rule(name: str) -> CreditRule:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown credit rule {name!r} (choose from {', '.join(RULES)})") from None


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------
def _require(inputs: CreditInputs, what: str, rule: str):
    v = getattr(inputs, what)
    if v is None:
        raise ValueError(f"credit rule {rule!r} needs `{what}` in its inputs")
    return v


@register_rule("random")
def score_random(inputs: CreditInputs, opts: CreditOptions):
    B, T = inputs.response_mask.shape
    seeds = inputs.seeds if inputs.seeds is not None else torch.arange(B)
    out = torch.empty(B, T)  # [B, T]
    for b in range(B):
        g = torch.Generator().manual_seed(int(seeds[b]))
        out[b] = torch.rand(T, generator=g)
    return out.to(inputs.response_mask.device), None


@register_rule("entropy", needs=("entropy",))
def score_entropy(inputs: CreditInputs, opts: CreditOptions):
    return _require(inputs, "entropy", "entropy").float(), None


@register_rule("correlation", needs=("model",))
def score_correlation(inputs: CreditInputs, opts: CreditOptions):
    model = _require(inputs, "model", "correlation")
    h = middle_hidden_states(model, inputs.input_ids, inputs.attention_mask)  # [B, T, d]
    return mutual_correlation(h, inputs.response_mask), None


@register_rule("attention", needs=("attention",))
def score_attention(inputs: CreditInputs, opts: CreditOptions):
    W = _require(inputs, "W", "attention")  # [B, T, T]
    return max_received_attention(W, inputs.response_mask), None


@register_rule("flow", needs=("attention",))
def score_flow(inputs: CreditInputs, opts: CreditOptions):
    W = _require(inputs, "W", "flow")
    res = trace_flow(
        W,
        inputs.question_mask,
        inputs.answer_mask,
        inputs.response_mask,
        ratio=opts.ratio,
        gamma=opts.gamma,
        overwrite=True,  # W is the trainer's scratch buffer
    )
    return res.tau.float(), res.fallback


@register_rule("gradient", needs=("model",))
def score_gradient(inputs: CreditInputs, opts: CreditOptions):
    model = _require(inputs, "model", "gradient")
    ans = inputs.answer_mask  # [B, T]
    fallback = ~ans.any(dim=1)  # [B]
    scores = answer_gradient_saliency(
        model, inputs.input_ids, inputs.attention_mask, ans, inputs.response_mask, inputs.temperature
    )
    return scores, fallback


@register_rule("clip-cov", needs=("logp",))
def score_clip_cov(inputs: CreditInputs, opts: CreditOptions):
    logp = _require(inputs, "logp", "clip-cov").float()  # [B, T]
    return clip_cov_scores(logp, inputs.advantages, inputs.response_mask), None


@register_rule("fai", needs=("attention",))
def score_fai(inputs: CreditInputs, opts: CreditOptions):
    W = _require(inputs, "W", "fai")  # [B, T, T]
    return future_attention_influence(W, inputs.response_mask, opts.fai_window), None


# Rules renamed when `correlation` and `attention` became the FlowTracer paper's baselines:
# old name -> the rule that computes what the old name did (results written before then).
RENAMED_RULES = {"correlation": "clip-cov", "attention": "fai"}


# ---------------------------------------------------------------------------------------------
# Scores (one function per formula)
# ---------------------------------------------------------------------------------------------
def max_received_attention(W: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The `attention` rule (FlowTracer paper's baseline, "Attention (Li et al., 2025d), using
    maximum attention scores as a proxy for importance"): s_k = max_{t > k} W[k, t], the largest
    attention token k receives from any later token (W: key x query, zero on and below the
    diagonal and at padding, so the last token gets 0).

    W: [B, T, T], response_mask: [B, T] bool  ->  [B, T] fp32 (0 outside the response)
    """
    return W.amax(dim=2).float() * response_mask.float()  # [B, T]


def future_attention_influence(W: torch.Tensor, response_mask: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """The `fai` rule (arXiv 2510.13554, Def. 4.1): s_k = mean of W[k, t] over response tokens
    t with lo <= t - k <= hi (`window` = (lo, hi)); 0 when there is none.

    W: [B, T, T], response_mask: [B, T] bool  ->  [B, T] fp32
    """
    lo, hi = window
    B, T = response_mask.shape
    out = torch.zeros(B, T, dtype=torch.float32, device=W.device)  # [B, T]
    for b in range(B):
        idx = response_mask[b].nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        r0, n = int(idx[0]), idx.numel()
        Wr = W[b, r0 : r0 + n, r0 : r0 + n]  # [n, n] keys x queries (view, no copy)
        total = torch.zeros(n, dtype=torch.float32, device=W.device)  # [n]
        count = torch.zeros(n, dtype=torch.float32, device=W.device)  # [n]
        for d in range(lo, min(hi, n - 1) + 1):  # query t = k + d
            diag = torch.diagonal(Wr, offset=d).float()  # [n - d]
            total[: n - d] += diag
            count[: n - d] += 1.0
        out[b, r0 : r0 + n] = total / count.clamp_min(1.0)
    return out


def clip_cov_scores(logp: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The `clip-cov` rule (Cui et al. 2025, Clip-Cov): s_t = A_i (log pi(y_t) - mean_{R_i} log pi).

    logp: [B, T], advantages: [B], response_mask: [B, T] bool  ->  [B, T] fp32
    """
    r = response_mask.float()  # [B, T]
    mean = (logp * r).sum(-1, keepdim=True) / r.sum(-1, keepdim=True).clamp_min(1.0)  # [B, 1]
    return advantages.float()[:, None] * (logp - mean) * r


def mutual_correlation(h: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The `correlation` rule (our reading of "selecting tokens with strong mutual dependencies",
    Nie et al. 2025, as the FlowTracer paper describes it): with rho the Pearson correlation of two
    tokens' hidden vectors over the features,
        s_k = 1/(n - 1) sum_{j in R, j != k} |rho(h_k, h_j)|,   n = |R|;
    0 when n < 2 (and a constant vector correlates with nothing).

    h: [B, T, d], response_mask: [B, T] bool  ->  [B, T] fp32 (0 outside the response)
    """
    B, T = response_mask.shape
    out = torch.zeros(B, T, dtype=torch.float32, device=h.device)  # [B, T]
    for b in range(B):
        idx = response_mask[b].nonzero()[:, 0]
        n = idx.numel()
        if n < 2:
            continue
        z = h[b, idx].float()  # [n, d]
        z = z - z.mean(dim=-1, keepdim=True)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # rows: centred, unit norm
        c = (z @ z.T).abs()  # [n, n] |rho|
        out[b, idx] = (c.sum(dim=1) - c.diagonal()) / (n - 1)
    return out


def middle_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """h_t: the hidden states after each of the middle layers [L//3, 2L//3) (the layers of W,
    paper Sec. 3.3), averaged; one no-grad forward keeping the logits of the last position only.

    input_ids, attention_mask: [B, T]  ->  [B, T, d] fp32
    """
    layers = layer_range("mid", num_layers(model))
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask.long(), output_hidden_states=True,
                    logits_to_keep=1, use_cache=False)
    hs = out.hidden_states  # (L + 1) x [B, T, d]: embeddings, then each layer's output
    return torch.stack([hs[layer + 1].float() for layer in layers]).mean(dim=0)  # [B, T, d]


def answer_gradient_saliency(
    model, input_ids, attention_mask, answer_mask, response_mask, temperature: float = 1.0
) -> torch.Tensor:
    """s_t = || d/d e_t sum_{a in A} log pi(y_a | y_<a) ||_2 for every position t.

    One forward on input embeddings that require grad and one `torch.autograd.grad` with
    respect to them only (parameter .grad buffers are not touched). Logits are kept only
    from the first response position on (`logits_to_keep`). Each sequence's answer
    log-likelihood depends on its own row only, so one backward of the batch sum gives every
    row's gradient.

    input_ids, attention_mask, answer_mask, response_mask: [B, T]  ->  [B, T] fp32
    """
    B, T = input_ids.shape
    first = int(response_mask.float().argmax(dim=1).min()) if response_mask.any() else 1
    first = max(first, 1)
    with torch.enable_grad():
        emb = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)  # [B, T, d]
        out = model(inputs_embeds=emb, attention_mask=attention_mask.long(), logits_to_keep=T - first + 1)
        logits = out.logits[:, :-1]  # [B, T - first, V]: predicts tokens first..T-1
        logp = token_logprobs(logits, input_ids[:, first:], temperature)  # [B, T - first]
        target = (logp * answer_mask[:, first:].to(logp.dtype)).sum()
        if not target.requires_grad:  # no answer anywhere in the batch
            return torch.zeros(B, T, dtype=torch.float32, device=input_ids.device)
        (g,) = torch.autograd.grad(target, emb)  # [B, T, d]
    return g.float().norm(dim=-1) * attention_mask.float()  # [B, T]


# ---------------------------------------------------------------------------------------------
# The shared selection
# ---------------------------------------------------------------------------------------------
def _row_stats(s: torch.Tensor, m: torch.Tensor):
    """Per-row mean and std (population) of s over mask m. s, m: [B, T] -> [B, 1] each."""
    mf = m.float()
    n = mf.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (s * mf).sum(-1, keepdim=True) / n
    var = (((s - mean) ** 2) * mf).sum(-1, keepdim=True) / n
    return mean, var.sqrt()


def _row_median(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-row (lower) median of x over mask m. [B, T] -> [B, 1]."""
    return x.masked_fill(~m, float("nan")).nanmedian(dim=-1, keepdim=True).values.nan_to_num(0.0)


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


def continuous_units(
    scores: torch.Tensor, response_mask: torch.Tensor, weighting: str, mass: float = 0.4
) -> torch.Tensor:
    """u_t in [0, 1] for the continuous weightings (definitions in the module docstring).

    scores: [B, T], response_mask: [B, T] bool  ->  u [B, T] (0 outside the response)
    """
    m = response_mask.bool()
    s = scores.float().masked_fill(~m, 0.0)  # [B, T]
    sp = s.clamp_min(0.0)  # [B, T] s+
    if weighting == "raw":
        u = _safe_div(sp, sp.amax(-1, keepdim=True))
    elif weighting in ("tanh", "sigmoid"):
        mean, std = _row_stats(s, m)
        z = _safe_div(s - mean, std.expand_as(s))  # [B, T]
        u = torch.sigmoid(z) if weighting == "sigmoid" else torch.tanh(z).clamp_min(0.0)
    elif weighting == "mad":
        med = _row_median(s, m)  # [B, 1]
        mad = _row_median((s - med).abs(), m) * MAD_SCALE  # [B, 1]
        u = torch.tanh(_safe_div(s - med, mad.expand_as(s))).clamp_min(0.0)
    elif weighting == "log1p":
        n = m.float().sum(-1, keepdim=True).clamp_min(1.0)
        mean = sp.sum(-1, keepdim=True) / n  # [B, 1]
        v = torch.log1p(_safe_div(sp, mean.expand_as(sp)))
        u = _safe_div(v, v.amax(-1, keepdim=True))
    elif weighting == "mass":
        order = torch.argsort(sp, dim=-1, descending=True, stable=True)  # [B, T]
        sorted_s = sp.gather(-1, order)  # [B, T]
        before = sorted_s.cumsum(-1) - sorted_s  # [B, T] mass ranked above each token
        budget = mass * sp.sum(-1, keepdim=True)  # [B, 1]
        u_sorted = _safe_div((budget - before).clamp_min(0.0), sorted_s).clamp(0.0, 1.0)
        u = torch.empty_like(u_sorted).scatter_(-1, order, u_sorted)
    else:
        raise ValueError(f"unknown weighting {weighting!r} (choose from {', '.join(WEIGHTINGS)})")
    return u.masked_fill(~m, 0.0)


def weights_from_scores(
    scores: torch.Tensor,
    response_mask: torch.Tensor,
    opts: CreditOptions,
    eligible: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores -> (weights [B, T], credited [B, T] bool): the ONE selection of every rule.

    `eligible` [B] bool: sequences that may receive credit (others get all-1 weights).
    Binary: `ftcli.flow.select_tokens` + `ftcli.flow.credit_weights` (Eq. 6); the unselected
    response tokens get `opts.rest_weight` (1 in the paper). Continuous: w = r + (gamma - r) u with
    r = `opts.rest_weight` (see `continuous_units`). Outside the response every weight is 1.
    """
    resp = response_mask.bool()
    if eligible is not None:
        resp = resp & eligible.bool()[:, None]
    rest = float(opts.rest_weight)
    if opts.weighting == "binary":
        top = opts.select == "top"
        sel = select_tokens(scores, resp, opts.ratio, largest=top, exclude_zero=top)  # [B, T]
        w = credit_weights(sel, opts.gamma)  # [B, T]
        if rest != 1.0:
            w = w.masked_fill(resp & ~sel, rest)
        return w, sel & (opts.gamma != rest)
    u = continuous_units(scores, resp, opts.weighting, opts.mass)  # [B, T]
    if opts.select == "bottom":
        u = (1.0 - u).masked_fill(~resp, 0.0)
    w = torch.where(resp, rest + (opts.gamma - rest) * u, torch.ones_like(u))  # [B, T]
    return w, resp & (w != rest)


def compute_credit(rule: CreditRule | str, inputs: CreditInputs, opts: CreditOptions) -> Credit:
    """Scores of `rule` on `inputs`, then the shared selection over the response tokens (with
    `opts.token_filter`: over the response tokens of that class only). Weights are detached fp32."""
    if isinstance(rule, str):
        rule = get_rule(rule)
    resp = inputs.response_mask.bool()
    B = resp.shape[0]
    if rule.score is None:
        ones = torch.ones(resp.shape, dtype=torch.float32, device=resp.device)
        return Credit(ones, torch.zeros_like(resp), None, torch.zeros(B, dtype=torch.bool))
    with torch.no_grad():
        scores, fallback = rule.score(inputs, opts)
    scores = scores.detach().float()
    fallback = (
        torch.zeros(B, dtype=torch.bool, device=resp.device) if fallback is None else fallback.bool()
    )
    eligible = ~fallback
    if opts.nonneg_only:
        eligible = eligible & (inputs.advantages.to(resp.device) >= 0)
    pool = resp  # [B, T] the tokens the selection ranks (and counts: ceil(ratio * n))
    if opts.token_filter is not None:  # Sec. 5.2: the top ratio WITHIN the class
        pool = resp & token_filter_mask(opts.token_filter, inputs.input_ids).to(resp.device)
    weights, credited = weights_from_scores(scores, pool, opts, eligible)
    if opts.rest_weight != 1.0 and opts.token_filter is not None:  # the other class is outside the set too
        weights = weights.masked_fill(resp & eligible[:, None] & ~pool, float(opts.rest_weight))
    return Credit(weights.detach(), credited, scores, fallback)


# ---------------------------------------------------------------------------------------------
# Token classes (paper Sec. 5.2): a token filter of the shared selection
# ---------------------------------------------------------------------------------------------


def token_class(text: str) -> str:
    """`structural`: no letter or digit (whitespace, newlines, punctuation, operators, brackets,
    delimiters); `semantic`: anything with a letter or a digit (words, numbers, names)."""
    return "semantic" if any(ch.isalnum() for ch in text) else "structural"


def structural_lookup(tokenizer) -> torch.Tensor:
    """[V] bool: token id -> is structural (by its decoded text; special tokens structural)."""
    V = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(V)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    lut = torch.tensor([token_class(t) == "structural" for t in texts], dtype=torch.bool)  # [V]
    for i in getattr(tokenizer, "all_special_ids", []) or []:
        if 0 <= i < V:
            lut[i] = True
    return lut


def token_class_filter(tokenizer, tokens: str) -> torch.Tensor | None:
    """`CreditOptions.token_filter` crediting only one token class (`tokens`: all, structural,
    semantic; all -> None)."""
    if tokens not in CREDIT_TOKENS:
        raise ValueError(f"--credit-tokens must be one of {', '.join(CREDIT_TOKENS)}, got {tokens!r}")
    if tokens == "all":
        return None
    lut = structural_lookup(tokenizer)
    return lut if tokens == "structural" else ~lut


def token_filter_mask(token_filter: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the tokens of `input_ids` that `token_filter` ([V] bool) lets be credited."""
    ids = input_ids.clamp(0, token_filter.numel() - 1)
    return token_filter.to(ids.device)[ids]


__all__ = [
    "RENAMED_RULES",
    "RULES",
    "SELECT_MODES",
    "WEIGHTINGS",
    "Credit",
    "CreditInputs",
    "CreditOptions",
    "CreditRule",
    "CREDIT_TOKENS",
    "TOKEN_CLASSES",
    "answer_gradient_saliency",
    "compute_credit",
    "continuous_units",
    "clip_cov_scores",
    "describe_rules",
    "future_attention_influence",
    "get_rule",
    "max_received_attention",
    "middle_hidden_states",
    "mutual_correlation",
    "register_rule",
    "structural_lookup",
    "token_class",
    "token_class_filter",
    "token_filter_mask",
    "weights_from_scores",
]
