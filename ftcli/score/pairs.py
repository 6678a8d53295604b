"""Token credit for given (prompt, response) pairs: the library behind `ft score`.

One teacher-forced forward pass per batch gives W (`ftcli.attention.mean_attention`), the
question span (the user question inside the chat-formatted prompt) and the answer span (the
last `\\boxed{...}` by default, or a regex) give Q and A, and `ftcli.flow.trace_flow` gives
h, f, tau and the selected tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ftcli.attention import mean_attention
from ftcli.flow import trace_flow
from ftcli.generation import render_prompt
from ftcli.sequences import TracedSeq, collate
from ftcli.spans import find_question_span, last_boxed_span, span_to_token_mask


@dataclass
class ScoredPair:
    """Credit of one (prompt, response) pair, token by token (prompt tokens first)."""

    prompt: str
    response: str
    prompt_text: str  # the chat-formatted prompt the model saw
    tokens: list[str]  # decoded text of each token
    offsets: list[tuple[int, int]]  # char offsets into prompt_text (prompt) or response
    segment: list[str]  # "prompt" | "response" per token
    question: list[bool]
    answer: list[bool]
    h: list[float]
    f: list[float]
    tau: list[float]
    selected: list[bool]
    weights: list[float]
    answer_text: str | None
    fallback: bool
    k_sel: int
    absorbed: float
    edges: list[dict] = field(default_factory=list)  # strongest backbone edges f(i) W'[i,k]

    def to_json(self) -> dict:
        return asdict(self)


def answer_span(response: str, pattern: str | None = None) -> tuple[int, int] | None:
    """Span of the final answer in a response: the last regex match (group 1 if the pattern
    has a group) or, without a pattern, the content of the last `\\boxed{...}`."""
    if pattern is None:
        return last_boxed_span(response)
    try:
        rx = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ValueError(f"--answer-pattern is not a valid regex: {e}") from None
    last = None
    for last in rx.finditer(response):  # noqa: B007 - keep the last match
        pass
    if last is None:
        return None
    grp = 1 if rx.groups else 0
    if last.start(grp) < 0 or last.end(grp) <= last.start(grp):
        return None
    return (last.start(grp), last.end(grp))


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


@dataclass
class _Encoded:
    """One pair, tokenized: the traced sequence and the text it came from."""

    prompt: str
    response: str
    prompt_text: str
    seq: TracedSeq
    offsets: list[tuple[int, int]]  # prompt offsets into prompt_text, then response offsets
    answer_span: tuple[int, int] | None


def _encode_pair(tokenizer, prompt: str, response: str, answer_pattern: str | None, add_eos: bool) -> _Encoded:
    prompt_text = render_prompt(tokenizer, [{"role": "user", "content": prompt}])
    p_ids, p_off = _encode(tokenizer, prompt_text)
    r_ids, r_off = _encode(tokenizer, response)
    if add_eos and tokenizer.eos_token_id is not None:
        r_ids.append(tokenizer.eos_token_id)
        r_off.append((len(response), len(response)))
    q_mask = span_to_token_mask(p_off, find_question_span(prompt_text, prompt))  # [Tp]
    a_span = answer_span(response, answer_pattern)
    a_mask = span_to_token_mask(r_off, a_span)  # [Tr]
    seq = TracedSeq(ids=p_ids + r_ids, n_prompt=len(p_ids), question=q_mask.tolist(), answer=a_mask.tolist())
    return _Encoded(prompt, response, prompt_text, seq, p_off + r_off, a_span)


def token_limit(model, max_tokens: int | None = None) -> int | None:
    """The most tokens a pair may have: `max_tokens`, at most the model's context (None when
    neither is known)."""
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_tokens is not None and ctx is not None and max_tokens > ctx:
        raise ValueError(f"--max-tokens must be <= {ctx}, the model's context (got {max_tokens})")
    return max_tokens if max_tokens is not None else ctx


def check_lengths(lengths: Sequence[int], limit: int | None, names: Sequence[str] | None = None) -> None:
    """One ValueError for the first pair longer than `limit` tokens (prompt template included)."""
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n > limit:
            name = names[i] if names is not None else f"pair {i + 1}"
            raise ValueError(f"{name}: {n} tokens (chat template included), more than the limit of {limit} "
                             "(the model's context, or --max-tokens); shorten it")


def backbone_edges(
    W: torch.Tensor, h: torch.Tensor, f: torch.Tensor, answer: torch.Tensor, top: int
) -> list[tuple[int, int, float]]:
    """The `top` largest edge flows f(i) W'[i,k] = f(i) W[i,k] h(k) / h(i) of one sequence.

    W: [T, T], h, f: [T], answer: [T] bool. Rows of answer tokens and tokens with h = 0 carry
    no flow (Eq. 3).
    """
    live = (h > 0) & ~answer  # [T]
    scale = torch.where(live, f / torch.where(live, h, torch.ones_like(h)), torch.zeros_like(h))
    E = W.triu(1) * scale[:, None] * h[None, :]  # [T, T] edge flows
    k = min(top, int((E > 0).sum()))
    if k == 0:
        return []
    vals, idx = E.flatten().topk(k)
    T = W.shape[-1]
    return [(int(i) // T, int(i) % T, float(v)) for v, i in zip(vals, idx, strict=True)]


def score_pairs(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    layers: str | None = "mid",
    ratio: float = 0.4,
    gamma: float = 1.5,
    answer_pattern: str | None = None,
    top_edges: int = 10,
    add_eos: bool = True,
    batch_size: int = 4,
    on_batch: Callable[[int], None] | None = None,
    max_tokens: int | None = None,
    names: Sequence[str] | None = None,
) -> list[ScoredPair]:
    """Score (prompt, response) pairs; batches are right-padded (the flow is padding-invariant).

    Every pair is tokenized first: one longer than `max_tokens` (default: the model's context,
    `config.max_position_embeddings`) is refused before any forward pass, one ValueError naming
    it (`names[i]`, default 'pair i')."""
    device = next(model.parameters()).device
    encoded = [_encode_pair(tokenizer, prompt, response, answer_pattern, add_eos) for prompt, response in pairs]
    check_lengths([len(e.seq.ids) for e in encoded], token_limit(model, max_tokens), names)
    out: list[ScoredPair] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows = encoded[start : start + batch_size]
        batch = collate([r.seq for r in rows], tokenizer.pad_token_id or 0)
        q, a = batch["question_mask"], batch["answer_mask"]  # [B, T]
        with torch.no_grad():
            W = mean_attention(model, batch["input_ids"].to(device), batch["attention_mask"].long().to(device),
                               layers=layers).float().cpu()  # [B, T, T]
        res = trace_flow(W, q, a, batch["response_mask"], ratio=ratio, gamma=gamma)
        for b, row in enumerate(rows):
            n = len(row.seq.ids)
            toks = [tokenizer.decode([t]) for t in row.seq.ids]
            edges = backbone_edges(W[b, :n, :n], res.h[b, :n], res.f[b, :n], a[b, :n], top_edges)
            a_span = row.answer_span
            out.append(
                ScoredPair(
                    prompt=row.prompt,
                    response=row.response,
                    prompt_text=row.prompt_text,
                    tokens=toks,
                    offsets=[tuple(o) for o in row.offsets],
                    segment=["prompt"] * row.seq.n_prompt + ["response"] * row.seq.n_response,
                    question=q[b, :n].tolist(),
                    answer=a[b, :n].tolist(),
                    h=res.h[b, :n].tolist(),
                    f=res.f[b, :n].tolist(),
                    tau=res.tau[b, :n].tolist(),
                    selected=res.mask[b, :n].tolist(),
                    weights=res.weights[b, :n].tolist(),
                    answer_text=row.response[a_span[0] : a_span[1]] if a_span else None,
                    fallback=bool(res.fallback[b]),
                    k_sel=int(res.k_sel[b]),
                    absorbed=float(res.absorbed[b]),
                    edges=[{"from": i, "to": k, "flow": v} for i, k, v in edges],
                )
            )
        if on_batch is not None:
            on_batch(len(chunk))
    return out
