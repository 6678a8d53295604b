"""Traced sequences: the one type every teacher-forced pass works on, and its one `collate`.

A traced sequence is a prompt followed by a response, with the question tokens (Q, inside the
prompt) and the answer tokens (A, inside the response) marked: what the flow (Eq. 1-4) and the
credit rules need, and what the GRPO update pads into a micro-batch. Used by the trainer
(rollouts), `ft score`, and the experiments (intervention, answer formats, token classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ftcli.generation import encode_prompt, render_prompt, token_offsets
from ftcli.options import MICRO_ORDERS  # noqa: F401 - re-exported
from ftcli.spans import find_question_span, span_to_token_mask


@dataclass
class TracedSeq:
    """Prompt ids then response ids, with the Q and A masks (plus the update's inputs)."""

    ids: list[int]  # prompt ids then response ids
    n_prompt: int
    question: list[bool]  # [n_prompt]
    answer: list[bool]  # [len(ids) - n_prompt]
    advantage: float = 0.0  # the sequence's GRPO advantage (training only)
    seed: int = 0  # the seed of its random credit draws (training only)

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids[: self.n_prompt]

    @property
    def response_ids(self) -> list[int]:
        return self.ids[self.n_prompt :]

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass
class Prompt:
    """A rendered task prompt: its text, its ids (as `ftcli.generation` encodes them), Q mask."""

    text: str
    ids: list[int]
    question: list[bool]  # [len(ids)]

    def traced(self, response_ids: Sequence[int], answer: Sequence[bool], **update) -> TracedSeq:
        """This prompt followed by a response whose answer tokens are `answer`."""
        return TracedSeq(ids=list(self.ids) + list(response_ids), n_prompt=len(self.ids),
                         question=list(self.question), answer=list(answer), **update)


def prompt_offsets(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Char offsets of the prompt tokens `ids` inside `text` (tokenizer offsets when they
    reproduce `ids`, else incremental decoding of `ids` against `text`)."""
    for add in (False, True):
        try:
            enc = tokenizer(text, add_special_tokens=add, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):  # slow tokenizer
            break
        if list(enc["input_ids"]) == list(ids):
            return [tuple(o) for o in enc["offset_mapping"]]
    return token_offsets(tokenizer, ids, text)


def question_mask(tokenizer, text: str, ids: list[int], question: str) -> list[bool]:
    """[len(ids)] bool: the prompt tokens of `text` that overlap the question's span."""
    offs = prompt_offsets(tokenizer, text, ids)
    return span_to_token_mask(offs, find_question_span(text, question), len(ids)).tolist()


def task_prompt_text(tokenizer, task, sample: dict) -> str:
    """The task's chat prompt for `sample`, with its assistant prefix (if the task has one)."""
    prefix_fn = getattr(task, "assistant_prefix", None)
    prefix = prefix_fn(sample) if callable(prefix_fn) else ""
    return render_prompt(tokenizer, task.prompt(sample), assistant_prefix=prefix or "")


def task_prompt(tokenizer, task, sample: dict, question: str | None = None) -> Prompt:
    """The task's rendered prompt, its ids and Q mask. `question` replaces the sample's
    question in the prompt (Q stays the original question)."""
    s = sample if question is None else dict(sample, question=question)
    text = task_prompt_text(tokenizer, task, s)
    ids = encode_prompt(tokenizer, text)
    return Prompt(text, ids, question_mask(tokenizer, text, ids, str(sample.get("question", ""))))




def micro_batches(seqs: Sequence[TracedSeq], size: int, order: str = "length",
                  max_tokens: int | None = None) -> list[list[TracedSeq]]:
    """`seqs` cut into micro-batches of at most `size` sequences and, when `max_tokens` is
    given, at most `max_tokens` padded token slots each (B x the longest sequence; one
    sequence longer than the budget gets a micro-batch of its own).

    order "group": in the given (rollout) order. order "length": longest first (ties keep
    their order), so each micro-batch pads to a length close to its sequences' own and the
    padded slots (`padded_slots`) stay near the real tokens; with a token budget, the short
    sequences of the tail then share large micro-batches, so one budget serves 1K and 8K
    responses. Without a budget the count is ceil(n / size) either way. With the step's global
    loss normaliser the summed gradient does not depend on the split (up to float rounding).
    """
    if order not in MICRO_ORDERS:
        raise ValueError(f"micro-batch order must be one of {', '.join(MICRO_ORDERS)}, got {order!r}")
    if order == "length":
        seqs = sorted(seqs, key=lambda s: -len(s.ids))  # stable: deterministic for equal lengths
    out: list[list[TracedSeq]] = []
    cur: list[TracedSeq] = []
    longest = 0
    for s in seqs:
        n = len(s.ids)
        grown = max(longest, n) * (len(cur) + 1)  # padded slots with s added
        if cur and (len(cur) >= size or (max_tokens is not None and grown > max_tokens)):
            out.append(cur)
            cur, longest = [], 0
        cur.append(s)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


def padded_slots(batches: Sequence[Sequence[TracedSeq]]) -> int:
    """Token slots the forward passes of `batches` compute: sum of B x T_max (collate pads right)."""
    return sum(len(m) * max(len(s.ids) for s in m) for m in batches if m)


def collate(seqs: Sequence[TracedSeq], pad_id: int, device=None) -> dict:
    """Right-padded tensors of a batch (each sequence starts at position 0).

    input_ids [B, T] (pad_id after the end), attention_mask [B, T] bool, response_mask,
    question_mask, answer_mask [B, T] bool, advantages [B] float32 (on `device`); seeds [B]
    long (CPU) and `first`, the first response position in the batch (an int >= 1).
    """
    B, T = len(seqs), max(len(s.ids) for s in seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    am = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    resp = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    q = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    a = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    for b, s in enumerate(seqs):
        n, p = len(s.ids), s.n_prompt
        ids[b, :n] = torch.tensor(s.ids, dtype=torch.long)
        am[b, :n] = True
        resp[b, p:n] = True
        q[b, :p] = torch.tensor(s.question, dtype=torch.bool)
        a[b, p:n] = torch.tensor(s.answer, dtype=torch.bool)
    adv = torch.tensor([s.advantage for s in seqs], dtype=torch.float32)  # [B]
    seeds = torch.tensor([s.seed for s in seqs], dtype=torch.long)  # [B]
    first = max(1, min(s.n_prompt for s in seqs))
    out = dict(input_ids=ids, attention_mask=am, response_mask=resp, question_mask=q,
               answer_mask=a, advantages=adv)
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    out["seeds"], out["first"] = seeds, first
    return out
