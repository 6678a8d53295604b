"""`ft ablate fidelity` (beyond the paper, issue 28; protocol: `FIDELITY_PROTOCOL`): what each
credit rule's scores find, measured three ways on the same responses.

(a) `arm_names` / `_fidelity_problem`: Table 1's intervention with each rule's top k% of reasoning
    tokens blocked (plus the flow's bottom k% and no block): answer-change rates, and paired
    exact McNemar tests between rules (`summarize_arms`);
(b) `block_effects`: each reasoning token's (and line's) own causal effect, blocked alone: the
    drop of the answer's teacher-forced log-likelihood (`answer_loglik`); Spearman of each
    rule's scores with it (`summarize_effects`);
(c) `grpo_gradients`: on GRPO rollouts, the norm share of GRPO's gradient carried by each rule's
    selected set and its cosine with the whole (`share_cosine`, `summarize_gradient`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import torch
from rich.table import Table

from ftcli import grpo
from ftcli.attention import mean_attention
from ftcli.credit import RULES, Credit, CreditInputs, CreditOptions, compute_credit, get_rule
from ftcli.evaluation.sampling import grade
from ftcli.experiments.blocking import block_keys, blocked_mask
from ftcli.experiments.common import (
    decode,
    fmt_num,
    load_pair,
    open_experiment,
    pad_id_of,
    write_csv,
)
from ftcli.experiments.common import progress as progress_of
from ftcli.experiments.config import FIDELITY_PROTOCOL, FidelityConfig
from ftcli.experiments.intervene import (
    answer_tokens,
    done_and_todo,
    original_responses,
    regenerate,
    regraded,
    unusable,
)
from ftcli.experiments.plots import fidelity_panels
from ftcli.experiments.stats import (
    mcnemar_exact,
    mean_interval,
    proportion,
    select_positions,
    spearman,
)
from ftcli.experiments.text import clean_solution
from ftcli.generation import Rollout, generate, stop_token_ids
from ftcli.io import append_jsonl, atomic_write_json, read_jsonl
from ftcli.progress import stderr_console
from ftcli.seeds import derive_seed
from ftcli.sequences import Prompt, TracedSeq, collate, micro_batches, task_prompt
from ftcli.train.logprobs import policy_logprobs

CONTROL = "none"  # the unblocked arm
BOTTOM = "flow-bottom"  # the flow's bottom k%: the reference arm of Table 1
GRPO = "grpo"  # the uniform weighting of part (c)
LOGPROB_CHUNK = 1024  # positions per LM-head chunk (ft train's default --logprob-chunk)
MIN_POINTS = 3  # tokens or lines a response needs for its own Spearman correlation


# ---------------------------------------------------------------------------------------------
# The analysed responses and the rules' scores
# ---------------------------------------------------------------------------------------------
@dataclass
class Response:
    """An analysed response: its sample and prompt, its ids, text and character offsets, its
    answer tokens, and whether it finished."""

    sample: dict
    prompt: Prompt
    ids: list[int]
    text: str
    offsets: list[tuple[int, int]]
    answer: list[bool]
    finished: bool = True

    def traced(self, **update) -> TracedSeq:
        return self.prompt.traced(self.ids, self.answer, **update)


def measured_rules(rules: Sequence[str] | None) -> list[str]:
    """The rules measured: `rules`, else every registered rule with scores (registry order)."""
    names = list(rules) if rules else [n for n, r in RULES.items() if r.score is not None]
    for n in names:
        if get_rule(n).score is None:
            raise ValueError(f"credit rule {n!r} has no scores to measure")
    return names


def gold_text(sample: dict) -> str | None:
    """The sample's worked solution as a response in the math answer format (the `####` line and
    calculator notes removed, then "The answer is \\boxed{ANSWER}."); None without one."""
    sol = str(sample.get("solution") or "")
    body = clean_solution(sol) if "####" in sol else ""
    return f"{body}\nThe answer is \\boxed{{{sample['answer']}}}." if body else None


def gold_rollout(tok, task, sample: dict, prompt: Prompt, eos: int) -> Rollout:
    """The sample's gold solution (`gold_text`) as a finished response to `prompt`: its ids
    tokenised alone, EOS appended, text and offsets decoded back (`Rollout.from_ids`)."""
    text = gold_text(sample)
    if text is None:
        raise ValueError(f"task {task.name!r} has no worked solutions (a `####` solution per sample); "
                         "use --responses generated, without --gold-in-group")
    ids = list(tok(text, add_special_tokens=False)["input_ids"]) + [eos]
    return Rollout.from_ids(tok, prompt.text, prompt.ids, ids, [eos])


def analysed_responses(mdl, tok, task, samples: Sequence[dict], cfg: FidelityConfig) -> list[Response]:
    """Step 1 of the protocol: the original responses (--responses generated, Table 1's) or the
    gold solutions (--responses gold, EOS appended), with their answer tokens."""
    if cfg.responses == "generated":
        pairs = [(p, ro) for p, ro, _ in original_responses(mdl, tok, task, samples, cfg)]
    else:
        eos = stop_token_ids(mdl, tok)[0]
        prompts = [task_prompt(tok, task, s) for s in samples]
        pairs = [(p, gold_rollout(tok, task, s, p, eos)) for s, p in zip(samples, prompts, strict=True)]
    return [Response(s, p, list(ro.response_ids), ro.response_text, list(ro.response_offsets), answer_tokens(task, ro),
                     ro.finished) for s, (p, ro) in zip(samples, pairs, strict=True)]


def credit_inputs(model, batch: dict, needs: set[str], layers: str, temperature: float = 1.0,
                  logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None) -> CreditInputs:
    """What rules needing `needs` read from a collated batch, as the trainer's update gives it
    (W over `layers` from a separate no-grad pass, its `credit_pass="separate"`; the policy's
    log-probs and entropies, computed here unless given; the model itself)."""
    if logp is None and needs & {"logp", "entropy"}:
        logp, entropy = policy_logprobs(model, batch, temperature, LOGPROB_CHUNK, "entropy" in needs, False)
    W = None
    if "attention" in needs:
        with torch.no_grad():
            W = mean_attention(model, batch["input_ids"], batch["attention_mask"].long(), layers=layers).float()
    return CreditInputs(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], response_mask=batch["response_mask"],
        question_mask=batch["question_mask"], answer_mask=batch["answer_mask"], advantages=batch["advantages"],
        seeds=batch["seeds"], W=W, logp=logp.detach() if "logp" in needs else None,
        entropy=entropy.detach() if "entropy" in needs and entropy is not None else None,
        model=model if "model" in needs else None, temperature=temperature,
    )


def rule_credits(rules: Sequence[str], inputs: CreditInputs, opts: CreditOptions) -> dict[str, Credit]:
    """`compute_credit` of each rule on the same inputs (a rule reading W gets its own copy:
    the flow solves in it)."""
    out = {}
    for name in rules:
        rule = get_rule(name)
        own = replace(inputs, W=inputs.W.clone()) if inputs.W is not None and "attention" in rule.needs else inputs
        out[name] = compute_credit(rule, own, opts)
    return out


def needs_of(rules: Sequence[str]) -> set[str]:
    return set().union(*(get_rule(r).needs for r in rules))


def score_responses(model, resps: Sequence[Response], rules: Sequence[str], cfg: FidelityConfig,
                    pad_id: int) -> list[tuple[dict[str, torch.Tensor], bool]]:
    """Per response: each rule's scores of its response tokens ([n_response] fp32) and whether
    any rule fell back; advantage +1, the random rule seeded by (seed, problem id)."""
    seqs = [r.traced(advantage=1.0, seed=derive_seed(cfg.seed, "random", r.sample["id"])) for r in resps]
    batch = collate(seqs, pad_id, next(model.parameters()).device)
    credits = rule_credits(rules, credit_inputs(model, batch, needs_of(rules), cfg.layers), CreditOptions(ratio=cfg.ratio))
    out = []
    for b, s in enumerate(seqs):
        P, n = s.n_prompt, len(s.ids)
        out.append(({r: c.scores[b, P:n].float().cpu() for r, c in credits.items()},
                    any(bool(c.fallback[b]) for c in credits.values())))
    return out


# ---------------------------------------------------------------------------------------------
# (a) blocking each rule's top k%
# ---------------------------------------------------------------------------------------------
def arm_names(rules: Sequence[str], ks: Sequence[int]) -> list[str]:
    """`RULE@K` for every rule and k, `flow-bottom@K` (when the flow is measured), then `none`."""
    names = [f"{r}@{k}" for k in ks for r in rules]
    if "flow" in rules:
        names += [f"{BOTTOM}@{k}" for k in ks]
    return [*names, CONTROL]


def arm_label(name: str) -> str:
    if name == CONTROL:
        return "No block (control)"
    rule, k = name.rsplit("@", 1)
    return f"Bottom-{k}% flow" if rule == BOTTOM else f"Top-{k}% {rule}"


def arm_positions(reasoning: dict[str, torch.Tensor], name: str) -> list[int]:
    """Reasoning positions an arm blocks (`select_positions`: ties to the earlier token, zero
    scores allowed, so every arm at k blocks ceil(k% n) tokens)."""
    if name == CONTROL:
        return []
    rule, k = name.rsplit("@", 1)
    if rule == BOTTOM:
        return select_positions(reasoning["flow"], int(k) / 100, "bottom", 0).tolist()
    return select_positions(reasoning[rule], int(k) / 100, "top", 0).tolist()


def _block_arms(mdl, tok, task, resp: Response, a0: int, reasoning: dict, names: Sequence[str],
                reference: tuple | None, cfg: FidelityConfig) -> tuple[dict, tuple]:
    """Every arm of one problem regenerated in one batch and graded against the reference answer
    (`reference`; None: the control arm's, for gold responses). Returns (arms, reference)."""
    P = len(resp.prompt.ids)
    prefix = resp.prompt.ids + resp.ids[:a0]
    chosen = {name: arm_positions(reasoning, name) for name in names}
    masks = blocked_mask([[P + p for p in chosen[name]] for name in names], len(prefix))  # [arms, L]
    conts = regenerate(mdl, tok, prefix, masks, len(resp.ids) - a0 + cfg.slack)
    if reference is None:  # gold: the model's own answer after the unblocked gold reasoning
        v = grade(task, decode(tok, resp.ids[:a0] + conts[names.index(CONTROL)]), resp.sample)
        reference = (v["extracted"], v["correct"])
    arms = {name: {"blocked": chosen[name], **regraded(tok, task, resp.sample, resp.ids[:a0], cont, *reference)}
            for name, cont in zip(names, conts, strict=True)}
    return arms, reference


# ---------------------------------------------------------------------------------------------
# (b) one token (or line) blocked alone
# ---------------------------------------------------------------------------------------------
def answer_loglik(model, ids: Sequence[int], answer: Sequence[bool], blocked: torch.Tensor,
                  batch_size: int = 32) -> torch.Tensor:
    """Teacher-forced log-likelihood of the answer tokens of `ids` (positions where `answer`,
    over the whole sequence) with the keys of each row of `blocked` ([V, T] bool) hidden from
    every later position (`block_keys`): [V] float64, `batch_size` rows per forward (the
    logits are kept from the first answer token on only)."""
    pos = [t for t, a in enumerate(answer) if a]
    if not pos or pos[0] < 1:
        raise ValueError("the answer needs at least one token after the first position")
    device = next(model.parameters()).device
    T, first = len(ids), pos[0]
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)  # [1, T]
    amask = torch.tensor(list(answer[first:]), dtype=torch.float64)  # [T - first]
    out = []
    for r0 in range(0, blocked.shape[0], batch_size):
        blk = blocked[r0 : r0 + batch_size].to(device)  # [B, T]
        xb = x.repeat(blk.shape[0], 1)  # [B, T]
        with torch.no_grad(), block_keys(model, blk):
            logits = model(input_ids=xb, attention_mask=torch.ones_like(xb), logits_to_keep=T - first + 1,
                           use_cache=False).logits[:, :-1]  # [B, T - first, V]: predicts tokens first..T-1
        lp = grpo.token_logprobs(logits, xb[:, first:])  # [B, T - first]
        out.append((lp.double().cpu() * amask).sum(-1))
    return torch.cat(out)


def block_effects(model, ids: Sequence[int], answer: Sequence[bool], groups: Sequence[Sequence[int]],
                  batch_size: int = 32) -> tuple[float, list[float]]:
    """(log L, effects): log L = the answer's log-likelihood with nothing blocked, and for each
    group of positions, log L - log L(that group blocked) (`answer_loglik`; positive: the answer
    needed it). The unblocked row runs in the first batch."""
    rows = blocked_mask([[], *[list(g) for g in groups]], len(ids))  # [1 + G, T]
    ll = answer_loglik(model, ids, answer, rows, batch_size)
    return float(ll[0]), (ll[0] - ll[1:]).tolist()


def line_groups(text: str, offsets: Sequence[tuple[int, int]], n: int) -> list[list[int]]:
    """Positions [0, n) grouped by the newline-delimited line of `text` each token starts on (a
    token of newlines only belongs to the line it ends; leading newlines start a new line);
    lines in order, those without a token left out."""
    lines: dict[int, list[int]] = {}
    for t in range(n):
        s, e = offsets[t]
        piece = text[s:e]
        body = piece.lstrip("\n")
        at = s + len(piece) - len(body) if body else s
        lines.setdefault(text.count("\n", 0, at), []).append(t)
    return [lines[k] for k in sorted(lines)]


def sampled_positions(n: int, size: int, seed: int) -> list[int]:
    """All of range(n) (size 0 or >= n), else a seeded draw of `size` of them, sorted."""
    if size <= 0 or size >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:size].tolist())


def _effects(mdl, resp: Response, a0: int, reasoning: dict, rules: Sequence[str], cfg: FidelityConfig) -> dict:
    """Part (b) of one problem: the effects of single tokens and of lines, and each rule's
    Spearman correlation with them."""
    P = len(resp.prompt.ids)
    cands = sampled_positions(a0, cfg.token_sample, derive_seed(cfg.seed, "effects", resp.sample["id"]))
    lines = line_groups(resp.text, resp.offsets, a0)
    full = resp.prompt.ids + resp.ids
    answer = [False] * P + list(resp.answer)
    groups = [[P + p] for p in cands] + [[P + p for p in line] for line in lines]
    base, eff = block_effects(mdl, full, answer, groups, cfg.variant_batch)
    tok_eff, line_eff = eff[: len(cands)], eff[len(cands) :]
    e = {"loglik": base, "positions": cands, "token": _rounded(tok_eff), "lines": lines, "line": _rounded(line_eff)}
    e["spearman"] = {r: {u: response_spearman(reasoning[r], e, u) for u in ("token", "line")} for r in rules}
    return e


def unit_scores(sc: torch.Tensor, e: dict, unit: str) -> list[float]:
    """A rule's scores of the units of (b): each sampled token's, or each line's MEAN token
    score (length-neutral: with the sum, a line's score mostly measured its length, and random
    scores correlated 0.59 with the lines' effects on the shipped policy)."""
    if unit == "token":
        return [float(sc[p]) for p in e["positions"]]
    return [float(sc[g].mean()) for g in e["lines"]]


def response_spearman(sc: torch.Tensor, e: dict, unit: str) -> float | None:
    """Spearman correlation of one response's unit scores with the units' effects (None with
    fewer than MIN_POINTS units)."""
    xs = unit_scores(sc, e, unit)
    return spearman(torch.tensor(xs), torch.tensor(e[unit])) if len(xs) >= MIN_POINTS else None


def _rounded(xs) -> list[float]:
    return [float(f"{float(x):.6g}") for x in xs]


def _fidelity_problem(mdl, tok, task, resp: Response, scores: dict[str, torch.Tensor], fallback: bool,
                      rules: Sequence[str], cfg: FidelityConfig) -> dict:
    """Parts (a) and (b) of one problem: its row of problems.jsonl."""
    v0 = grade(task, resp.text, resp.sample)
    rec: dict = {"id": str(resp.sample["id"]), "status": "ok",
                 "original": {"response": resp.text, "answer": v0["extracted"], "correct": v0["correct"],
                              "tokens": len(resp.ids), "finished": resp.finished}}
    skip = unusable(resp.finished, v0["extracted"], resp.answer, fallback, cfg.keep_truncated)
    if skip:
        return {**rec, "status": "fallback" if skip == "no_question" else skip}
    a0 = resp.answer.index(True)  # first answer token (response position) = number of reasoning tokens
    if a0 == 0:
        return {**rec, "status": "no_reasoning"}
    reasoning = {r: sc[:a0] for r, sc in scores.items()}  # [n] each
    names = arm_names(rules, cfg.ks)
    given = (v0["extracted"], v0["correct"]) if cfg.responses == "generated" else None
    arms, ref = _block_arms(mdl, tok, task, resp, a0, reasoning, names, given, cfg)
    if ref[0] is None:  # gold: no answer after the unblocked gold reasoning
        return {**rec, "status": "no_answer"}
    rec.update(n_reasoning=a0, reference={"answer": ref[0], "correct": ref[1]},
               scores={r: _rounded(x.tolist()) for r, x in reasoning.items()}, arms=arms,
               effects=_effects(mdl, resp, a0, reasoning, rules, cfg))
    return rec


# ---------------------------------------------------------------------------------------------
# (c) gradient share of each rule's selected set
# ---------------------------------------------------------------------------------------------
def rollout_batch(mdl, tok, task, samples: Sequence[dict], cfg: FidelityConfig, b: int) -> tuple[list[TracedSeq], list[float]]:
    """GRPO rollouts of batch `b`: --group-size responses per sample at temperature 1 (with
    --gold-in-group, one fewer and the sample's gold solution last), graded once each
    (`grade`), advantages group-normalised (`grpo.group_advantages`). Returns the traced
    sequences (advantage and credit seed set) and the rewards."""
    prompts = [task_prompt(tok, task, s) for s in samples]
    sampled = cfg.group_size - int(cfg.gold_in_group)
    groups = generate(mdl, tok, [p.text for p in prompts], n=sampled, max_new_tokens=cfg.max_new_tokens,
                      temperature=1.0, seed=derive_seed(cfg.seed, "gen", b), batch_size=cfg.batch_size)
    if cfg.gold_in_group:
        eos = stop_token_ids(mdl, tok)[0]
        groups = [[*g, gold_rollout(tok, task, s, p, eos)] for s, p, g in zip(samples, prompts, groups, strict=True)]
    rewards = [float(grade(task, ro.response_text, s)["reward"]) for s, g in zip(samples, groups, strict=True) for ro in g]
    adv = grpo.group_advantages(torch.tensor(rewards), cfg.group_size).tolist()
    seqs = [p.traced(ro.response_ids, answer_tokens(task, ro)) for p, g in zip(prompts, groups, strict=True) for ro in g]
    for k, s in enumerate(seqs):
        s.advantage, s.seed = adv[k], derive_seed(cfg.seed, "credit", b, k)
    return seqs, rewards


Weigh = Callable[[dict, torch.Tensor, "torch.Tensor | None"], "dict[str, torch.Tensor]"]


def grpo_gradients(model, seqs: Sequence[TracedSeq], weigh: Weigh, *, loss_agg: str = "token-mean",
                   temperature: float = 1.0, batch_size: int = 8, pad_id: int = 0, need_entropy: bool = False,
                   norm_len: int | None = None, only: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Flattened gradients (fp32, over every parameter that requires grad) of the GRPO loss of
    `seqs` as one update step of ft train computes it (`grpo.clipped_surrogate` at pi_old = pi,
    `grpo.aggregate_loss` with the batch's `agg_normaliser`): `grpo` with weight 1 on every
    token, and one per entry of `weigh(batch, logp, entropy) -> {name: weights [B, T]}` of
    each micro-batch (logp detached); with `only`, just those names. One forward per
    micro-batch, one backward per weighting."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = grpo.agg_normaliser(loss_agg, sum(s.n_response for s in seqs), len(seqs), norm_len)
    device = next(model.parameters()).device
    acc: dict[str, torch.Tensor] = {}
    for m in micro_batches(seqs, batch_size, "group"):
        batch = collate(m, pad_id, device)
        logp, ent = policy_logprobs(model, batch, temperature, LOGPROB_CHUNK, need_entropy, True)
        weights = {GRPO: None, **weigh(batch, logp.detach(), ent)}
        for name, w in weights.items():
            if only is not None and name not in only:
                continue
            loss_mat, _ = grpo.clipped_surrogate(logp, logp.detach(), batch["advantages"], w)
            share = grpo.aggregate_loss(loss_mat, batch["response_mask"], loss_agg, norm)
            grads = torch.autograd.grad(share, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                              for g, p in zip(grads, params, strict=True)])
            acc[name] = flat if name not in acc else acc[name].add_(flat)
        del logp, ent
    return acc


# Part (c) keeps every weighting's flattened gradient when they fit in this fraction of the free
# memory (one forward per micro-batch); otherwise one weighting at a time against GRPO's (two
# buffers, one forward per micro-batch and weighting): Qwen2.5-Coder-0.5B's 9 fp32 copies are
# 18 GB, which a 24 GB machine does not hold beside the model.
GRAD_MEMORY_FRACTION = 0.5


def streamed(n_params: int, n_weightings: int) -> bool:
    """Whether `n_weightings` fp32 gradients of `n_params` do not fit GRAD_MEMORY_FRACTION of
    the memory available now (then `gradient_shares` computes one weighting at a time)."""
    import psutil

    return 4 * n_params * n_weightings > GRAD_MEMORY_FRACTION * psutil.virtual_memory().available


def gradient_shares(model, seqs: Sequence[TracedSeq], weigh: Weigh, names: Sequence[str], **kw) -> tuple[float, dict]:
    """||g|| of GRPO's gradient and `share_cosine` of each named weighting's gradient with it
    (`grpo_gradients` with `kw`). All weightings in one pass when their gradients fit in
    memory (`streamed`); else GRPO's first and then one weighting at a time, `weigh` called
    once per micro-batch all the same (its weights are kept by the micro-batch's ids and
    credit seeds)."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not streamed(n_params, len(names) + 1):
        grads = grpo_gradients(model, seqs, weigh, **kw)
        g = grads.pop(GRPO)
        return float(g.double().norm()), {r: share_cosine(grads[r], g) for r in names}
    kept: dict[bytes, dict] = {}

    def weigh_once(batch, logp, ent):
        key = batch["input_ids"].cpu().numpy().tobytes() + repr(batch.get("seeds")).encode()
        if key not in kept:
            kept[key] = weigh(batch, logp, ent)
        return kept[key]

    g = grpo_gradients(model, seqs, weigh_once, only=(GRPO,), **kw)[GRPO]
    out = {r: share_cosine(grpo_gradients(model, seqs, weigh_once, only=(r,), **kw)[r], g) for r in names}
    return float(g.double().norm()), out


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def share_cosine(g_s: torch.Tensor, g: torch.Tensor) -> dict:
    """{"share": ||g_s|| / ||g||, "cos": cos(g_s, g)} (None where a norm is 0), in float64."""
    a, b = g_s.double(), g.double()
    na, nb = float(a.norm()), float(b.norm())
    return {"share": na / nb if nb > 0 else None, "cos": float(a @ b) / (na * nb) if na > 0 and nb > 0 else None}


def _gradient_batch(mdl, tok, task, samples, rules: Sequence[str], cfg: FidelityConfig, b: int, pad: int) -> dict:
    """Part (c) of one batch: its row of gradient.jsonl."""
    seqs, rewards = rollout_batch(mdl, tok, task, samples, cfg, b)
    G, n_tok = cfg.group_size, sum(s.n_response for s in seqs)
    row = {"batch": b, "prompts": [str(s["id"]) for s in samples], "reward_mean": sum(rewards) / len(rewards),
           "signal_groups": sum(len(set(rewards[i : i + G])) > 1 for i in range(0, len(rewards), G)),
           "sampled_reward_mean": _mean([r for k, r in enumerate(rewards) if not (cfg.gold_in_group and k % G == G - 1)]),
           "sequences": len(seqs), "tokens": n_tok}
    if not row["signal_groups"]:  # every advantage is 0: g = g_S = 0, nothing to measure
        none = {"share": None, "cos": None, "selected": None, "fallback": None}
        return {**row, "grad_norm": 0.0, "rules": {r: dict(none) for r in rules}}
    needs = needs_of(rules)
    counts = {r: {"selected": 0, "fallback": 0} for r in rules}

    def weigh(batch, logp, ent):
        inputs = credit_inputs(mdl, batch, needs, cfg.layers, 1.0, logp=logp, entropy=ent)
        resp = batch["response_mask"]
        out = {}
        for r, c in rule_credits(rules, inputs, CreditOptions(ratio=cfg.ratio)).items():
            sel = c.credited & resp
            counts[r]["selected"] += int(sel.sum())
            counts[r]["fallback"] += int(c.fallback.sum())
            out[r] = sel.float()
        return out

    g_norm, shares = gradient_shares(mdl, seqs, weigh, rules, loss_agg=cfg.loss_agg, batch_size=cfg.batch_size,
                                     pad_id=pad, need_entropy="entropy" in needs, norm_len=cfg.max_new_tokens)
    return {**row, "grad_norm": g_norm,
            "rules": {r: {**shares[r], "selected": counts[r]["selected"] / max(n_tok, 1),
                          "fallback": counts[r]["fallback"] / len(seqs)} for r in rules}}


# ---------------------------------------------------------------------------------------------
# Summaries, tables, files
# ---------------------------------------------------------------------------------------------
def summarize_arms(records: Sequence[dict], rules: Sequence[str], ks: Sequence[int]) -> dict:
    """(a): per arm, answer-change and correctness-reversal rates with Wilson intervals; per k
    and pair of rules, the exact McNemar test (only_a: problems only a's arm changed)."""
    ok = [r for r in records if r["status"] == "ok"]
    arms = {}
    for name in arm_names(rules, ks):
        rows = [r["arms"][name] for r in ok]
        arms[name] = {"label": arm_label(name), "changed": proportion(sum(x["changed"] for x in rows), len(rows)),
                      "reversed": proportion(sum(x["reversed"] for x in rows), len(rows)),
                      "mean_blocked": sum(len(x["blocked"]) for x in rows) / len(rows) if rows else 0.0}
    tests = []
    for k in ks:
        for a, b in itertools.combinations(rules, 2):
            pairs = [(r["arms"][f"{a}@{k}"]["changed"], r["arms"][f"{b}@{k}"]["changed"]) for r in ok]
            only_a, only_b = sum(x and not y for x, y in pairs), sum(y and not x for x, y in pairs)
            tests.append({"k": k, "a": a, "b": b, "rate_a": arms[f"{a}@{k}"]["changed"]["rate"],
                          "rate_b": arms[f"{b}@{k}"]["changed"]["rate"], "only_a": only_a, "only_b": only_b,
                          "p": mcnemar_exact(only_a, only_b)})
    return {"arms": arms, "mcnemar": tests}


def summarize_effects(records: Sequence[dict], rules: Sequence[str]) -> dict:
    """(b): per rule and unit (token, line), the per-response Spearman correlations' mean with
    its t 95% interval, and the Spearman correlation of all (score, effect) pairs pooled."""
    ok = [r for r in records if r["status"] == "ok"]
    out = {}
    for rule in rules:
        out[rule] = {}
        for unit in ("token", "line"):
            per, xs, ys = [], [], []
            for r in ok:  # recomputed from the stored scores and effects (definitions may change)
                e, sc = r["effects"], torch.tensor(r["scores"][rule])
                per.append(response_spearman(sc, e, unit))
                xs += unit_scores(sc, e, unit)
                ys += e[unit]
            out[rule][unit] = {"per_response": mean_interval([x for x in per if x is not None]),
                               "pooled": {"n": len(xs), "rho": spearman(torch.tensor(xs), torch.tensor(ys)) if xs else None}}
    return out


def _spread(xs: Sequence[float | None]) -> dict:
    v = [x for x in xs if x is not None]
    return {"n": len(v), "mean": sum(v) / len(v) if v else None, "min": min(v, default=None),
            "max": max(v, default=None), "values": v}


def summarize_gradient(rows: Sequence[dict], rules: Sequence[str]) -> dict:
    """(c): per rule, share and cosine over the batches (mean, min, max; batches whose GRPO
    gradient is zero, every group without signal, give none), tokens selected, fallbacks."""
    return {r: {"share": _spread([x["rules"][r]["share"] for x in rows]),
                "cos": _spread([x["rules"][r]["cos"] for x in rows]),
                "selected": _spread([x["rules"][r]["selected"] for x in rows])["mean"],
                "fallback": _spread([x["rules"][r]["fallback"] for x in rows])["mean"]} for r in rules}


def _status_counts(records: Sequence[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def _compact(r: dict) -> dict:
    """A problem's row of results.json: what the tables count (problems.jsonl has the rest)."""
    row = {"id": r["id"], "status": r["status"], "answer": r["original"]["answer"], "correct": r["original"]["correct"]}
    if r["status"] == "ok":
        row.update(n_reasoning=r["n_reasoning"], reference=r["reference"]["answer"],
                   changed={a: x["changed"] for a, x in r["arms"].items()}, spearman=r["effects"]["spearman"])
    return row


def fidelity(cfg: FidelityConfig, *, console=None, progress: bool = True, model=None, task=None) -> dict:
    """The three parts (protocol: FIDELITY_PROTOCOL). Resumable: finished problems are kept in
    problems.jsonl and finished gradient batches in gradient.jsonl, and skipped. Writes
    results.json, arms.csv, mcnemar.csv, effects.csv, gradient.csv and fidelity.png."""
    # the settings as settings.json reads back (comma lists as lists), so that a rerun compares equal
    out, settings, task_obj = open_experiment(cfg, task, ignore=("n", "batches", "batch_size", "variant_batch"))
    rules = measured_rules(cfg.rules)
    samples = list(task_obj.load(cfg.split))[: cfg.n]
    pfile, gfile = out / "problems.jsonl", out / "gradient.jsonl"
    done, todo = done_and_todo(pfile, samples)
    gdone = {r["batch"]: r for r in read_jsonl(gfile)}
    gtodo = [b for b in range(cfg.batches) if b not in gdone]
    console = stderr_console(console)
    if todo or gtodo:
        mdl, tok = load_pair(model if model is not None else cfg.model)
        pad = pad_id_of(tok)
        with progress_of(console, progress) as prog:
            bar = prog.add_task("fidelity (a, b)", total=len(samples), completed=len(samples) - len(todo))
            for c0 in range(0, len(todo), cfg.batch_size):
                chunk = todo[c0 : c0 + cfg.batch_size]
                resps = analysed_responses(mdl, tok, task_obj, chunk, cfg)
                for resp, (scores, fb) in zip(resps, score_responses(mdl, resps, rules, cfg, pad), strict=True):
                    rec = _fidelity_problem(mdl, tok, task_obj, resp, scores, fb, rules, cfg)
                    append_jsonl(pfile, rec)
                    done[rec["id"]] = rec
                    prog.advance(bar)
            if gtodo:
                train = list(task_obj.load(cfg.train_split))
                order = torch.randperm(len(train), generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "prompts"))).tolist()
                gbar = prog.add_task("fidelity (c)", total=cfg.batches, completed=cfg.batches - len(gtodo))
                for b in gtodo:
                    picked = [train[order[(b * cfg.groups + i) % len(train)]] for i in range(cfg.groups)]
                    row = _gradient_batch(mdl, tok, task_obj, picked, rules, cfg, b, pad)
                    append_jsonl(gfile, row)
                    gdone[b] = row
                    prog.advance(gbar)
    records = [done[str(s["id"])] for s in samples if str(s["id"]) in done]
    grows = [gdone[b] for b in range(cfg.batches) if b in gdone]
    ok = [r for r in records if r["status"] == "ok"]
    results = {"experiment": "fidelity", "settings": settings, "protocol": FIDELITY_PROTOCOL, "rules": rules,
               "ks": list(cfg.ks), "problems": len(records), "used": len(ok), "status": _status_counts(records),
               "original_accuracy": proportion(sum(bool(r["original"]["correct"]) for r in ok), len(ok)),
               "reference_accuracy": proportion(sum(bool(r["reference"]["correct"]) for r in ok), len(ok)),
               **summarize_arms(records, rules, cfg.ks), "effects": summarize_effects(records, rules),
               "gradient": summarize_gradient(grows, rules), "gradient_batches": grows,
               "per_problem": [_compact(r) for r in records]}
    atomic_write_json(out / "results.json", results)
    _write_tables(out, results)
    if ok:
        _figure(out, results)
    return results


def _ci(p: dict | None) -> list:
    return list(p["ci"]) if p and p.get("ci") else [None, None]


def _write_tables(out, res: dict) -> None:
    rows = [["arm", "rule", "k", "mean_blocked", "n", "changed", "changed_rate", "changed_lo", "changed_hi",
             "reversed", "reversed_rate"]]
    for name, a in res["arms"].items():
        rule, _, k = name.partition("@")
        rows.append([name, rule, k, f"{a['mean_blocked']:.2f}", a["changed"]["n"], a["changed"]["k"], a["changed"]["rate"],
                     *a["changed"]["ci"], a["reversed"]["k"], a["reversed"]["rate"]])
    write_csv(out / "arms.csv", rows)
    write_csv(out / "mcnemar.csv", [["k", "rule_a", "rule_b", "rate_a", "rate_b", "only_a", "only_b", "p"]]
              + [[t["k"], t["a"], t["b"], t["rate_a"], t["rate_b"], t["only_a"], t["only_b"], t["p"]] for t in res["mcnemar"]])
    rows = [["rule", "unit", "responses", "mean_rho", "lo", "hi", "pooled_pairs", "pooled_rho"]]
    for rule, units in res["effects"].items():
        for unit, e in units.items():
            pr = e["per_response"]
            rows.append([rule, unit, pr["n"], pr["mean"], *_ci(pr), e["pooled"]["n"], e["pooled"]["rho"]])
    write_csv(out / "effects.csv", rows)
    rows = [["rule", "batches", "share_mean", "share_min", "share_max", "cos_mean", "cos_min", "cos_max", "selected", "fallback"]]
    for rule, g in res["gradient"].items():
        s, c = g["share"], g["cos"]
        rows.append([rule, s["n"], s["mean"], s["min"], s["max"], c["mean"], c["min"], c["max"], g["selected"], g["fallback"]])
    write_csv(out / "gradient.csv", rows)


def _figure(out, res: dict) -> None:
    curves = {}
    for name, a in res["arms"].items():
        if name == CONTROL:
            continue
        rule, k = name.rsplit("@", 1)
        c = curves.setdefault("flow bottom" if rule == BOTTOM else rule, {"k": [], "rate": [], "ci": []})
        c["k"].append(int(k))
        c["rate"].append(a["changed"]["rate"])
        c["ci"].append(a["changed"]["ci"])
    bars = {rule: [(e[u]["per_response"]["mean"], *_ci(e[u]["per_response"])) for u in ("token", "line")]
            for rule, e in res["effects"].items()}
    points = {rule: (g["share"]["mean"], g["cos"]["mean"]) for rule, g in res["gradient"].items()
              if g["share"]["mean"] is not None and g["cos"]["mean"] is not None}
    s = res["settings"]
    fidelity_panels(curves, bars, ("tokens", "lines"), out / "fidelity.png", points=points or None,
                    title=f"{s['model']} on {s['task']} ({s['responses']} responses, {res['used']} problems)")


def _fmt_rate(p: dict) -> str:
    """A `proportion` as "rate [lo, hi]" in percent (its n is the table's)."""
    return "—" if p["rate"] is None else f"{100 * p['rate']:.1f} [{100 * p['ci'][0]:.1f}, {100 * p['ci'][1]:.1f}]"


def _fmt_interval(st: dict) -> str:
    if st.get("mean") is None:
        return "—"
    ci = st.get("ci")
    return f"{st['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + f" ({st['n']})"


def _fmt_spread(st: dict) -> str:
    if st["mean"] is None:
        return "—"
    return f"{st['mean']:.3f} ({st['min']:.3f}–{st['max']:.3f})"


def table_cells(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the three parts: (a) answer change per rule and k with the
    McNemar test against the flow, (b) Spearman with the causal effects, (c) gradient share and
    cosine. `fidelity_tables` and `fidelity_markdown` lay them out."""
    s = res["settings"]
    head = f"{s['model']} · {s['task']} ({s['responses']}) · {res['used']} problems ({res['problems']} run)"
    ks, rules = res["ks"], res["rules"]
    vs = {(t["k"], t["a"] if t["b"] == "flow" else t["b"]): t for t in res["mcnemar"] if "flow" in (t["a"], t["b"])}
    a_head = ["blocked tokens"] + [c for k in ks for c in (f"{k}%: change % [95% CI]", f"{k}%: only rule/only flow, McNemar p")]
    a_rows = []
    for rule in [*rules, BOTTOM, CONTROL]:
        if rule == CONTROL:
            a = res["arms"][CONTROL]
            a_rows.append([a["label"], *[x for _ in ks for x in (_fmt_rate(a["changed"]), "")]])
            continue
        if f"{rule}@{ks[0]}" not in res["arms"]:
            continue
        cells = []
        for k in ks:
            t = vs.get((k, rule))
            test = "—" if t is None else (f"{t['only_a']}/{t['only_b']} p={t['p']:.2g}" if t["a"] == rule
                                          else f"{t['only_b']}/{t['only_a']} p={t['p']:.2g}")
            cells += [_fmt_rate(res["arms"][f"{rule}@{k}"]["changed"]), test]
        a_rows.append(["flow (bottom k%)" if rule == BOTTOM else rule, *cells])
    b_head = ["rule", "tokens: per response, mean [95% CI] (n)", "tokens: pooled (pairs)",
              "lines: per response, mean [95% CI] (n)", "lines: pooled (pairs)"]
    b_rows = [[rule, _fmt_interval(e["token"]["per_response"]),
               f"{fmt_num(e['token']['pooled']['rho'])} ({e['token']['pooled']['n']})",
               _fmt_interval(e["line"]["per_response"]), f"{fmt_num(e['line']['pooled']['rho'])} ({e['line']['pooled']['n']})"]
              for rule, e in res["effects"].items()]
    c_head = ["rule", "share ‖g_S‖ / ‖g‖: mean (min–max)", "cos(g_S, g): mean (min–max)", "tokens selected %", "fallback %"]
    c_rows = [[rule, _fmt_spread(g["share"]), _fmt_spread(g["cos"]),
               "—" if g["selected"] is None else f"{100 * g['selected']:.1f}",
               "—" if g["fallback"] is None else f"{100 * g['fallback']:.1f}"] for rule, g in res["gradient"].items()]
    tables = [
        (f"(a) answer change when each rule's top k% of reasoning tokens is blocked · {head} (n = {res['used']} each)",
         a_head, a_rows),
        (f"(b) Spearman of each rule's scores with the causal effect of blocking one token / one line · {head}",
         b_head, b_rows),
    ]
    if res["gradient_batches"]:  # --batches 0: part (c) not run
        gb = res["gradient_batches"]
        group = (f"{s['groups']} x ({s['group_size'] - 1} sampled + the gold solution)" if s.get("gold_in_group")
                 else f"{s['groups']} x {s['group_size']}")
        sampled = [x["sampled_reward_mean"] for x in gb if x.get("sampled_reward_mean") is not None]
        reward = f", sampled reward {sum(sampled) / len(sampled):.3f}" if sampled else ""
        tables.append((f"(c) GRPO gradient carried by each rule's selected {round(100 * s['ratio'])}% · "
                       f"{len(gb)} batches of {group} on {s['task']} {s['train_split']}{reward}", c_head, c_rows))
    return tables


def fidelity_tables(res: dict) -> list[Table]:
    """The three parts as rich tables (`table_cells`)."""
    out = []
    for title, header, rows in table_cells(res):
        t = Table(title=title)
        for j, c in enumerate(header):
            t.add_column(c, justify="left" if j == 0 else "right")
        for row in rows:
            t.add_row(*row)
        out.append(t)
    return out


def fidelity_markdown(res: dict) -> str:
    """The three parts as markdown tables (`table_cells`; scripts/results_md.py prints them)."""
    parts = []
    for title, header, rows in table_cells(res):
        parts += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(parts).rstrip()
