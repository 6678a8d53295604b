"""FlowTracer credit inside TRL's `GRPOTrainer` (any rule of `ftcli.credit`, paper Eq. 5).

    from trl import GRPOConfig
    from ftcli.credit import CreditOptions
    from ftcli.integrations.trl import FlowTracerGRPOTrainer

    trainer = FlowTracerGRPOTrainer(
        model="Qwen/Qwen3-4B-Base", reward_funcs=reward, args=GRPOConfig(...),
        train_dataset=ds,                      # columns: prompt, question, ... (TRL's format)
        credit="flow",                         # any name of ftcli.credit.RULES
        credit_options=CreditOptions(ratio=0.4, select="top", gamma=1.5, weighting="binary"),
        layers="mid",                          # the layers averaged into W (as `ft train --layers`)
        task="countdown",                      # answer span = task.answer_span(completion)
    )
    trainer.train()

`credit_options` is ftcli's own `CreditOptions` (or a dict of its fields): `ratio`, `select`,
`gamma`, `weighting`, `mass`, `nonneg_only`, `fai_window` mean exactly what the `ft train`
flags of the same names mean; `layers` is `ft train --layers`.

How it sits inside TRL (trl>=1.16,<2; two overridden methods, nothing copied from TRL):

1. `_generate_and_score_completions`: after TRL's own, each prompt and completion is decoded
   and the question tokens (in the prompt) and final-answer tokens (in the completion) are
   marked; they travel in TRL's batch dict as `flowtracer_question_mask` [B, P] and
   `flowtracer_answer_mask` [B, C] (TRL shuffles and splits them with the rest), with one
   seed per sequence (`flowtracer_seed` [B], the `random` rule).
2. `_compute_loss` runs TRL's own loss, whose policy forward (`_get_per_token_logps_and_entropies`)
   is wrapped in `ftcli.attention.capture_attention`: W of Eq. 1 comes from the SAME forward
   that computes the log-probs (no extra pass). Right after that forward the rule's weights
   w [B, C] are computed on its outputs (W, log-probs, entropies) and TRL's advantages become
   A_i * w_{i,t} ([B, C], a shape TRL accepts from subclasses). TRL reads the advantages only
   after that forward, so every token's term of TRL's per-token loss is
   -min(rho w A, clip(rho) w A) = w * (TRL's term) for w >= 0, before TRL aggregates it with its
   `loss_type` (the weight inside the clipped surrogate, as `ft train`: ftcli.grpo). The KL term
   (`beta > 0`) and the entropy bonus are not weighted, as in `ft train`. A batch dict that
   refuses to hand out the advantages before the weights are in guards this ordering against
   a future TRL.

Question span: `question_span(prompt_text, row)` if given; else the row's `question` column
(`question_key`) located in the decoded prompt; else the content of the last user message of a
conversational prompt. Answer span: `answer_span(completion_text)` if given, else the task
plugin's `answer_span` (`task=` a name for `ftcli.get_task` or a task object). Rules that read
the answer span (`flow`, `gradient`) refuse to start without one. Sequences without a question
or answer span get the rule's uniform fallback (weights 1), as in `ft train`.

Metrics (TRL's logs): `flowtracer/credited_frac` (credited / completion tokens) and
`flowtracer/fallback_frac` (sequences with the uniform fallback).

Not supported: vision-language inputs and multi-turn tool calling (spans are computed on the
text completion), PEFT models are untested.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

try:  # TRL is an optional dependency: only this module needs it
    from trl import GRPOTrainer
except ImportError as e:
    raise ImportError('ftcli.integrations.trl needs TRL: pip install "ftcli[trl]"') from e

from ftcli.attention import capture_attention, layer_range, num_layers
from ftcli.credit import CreditInputs, CreditOptions, compute_credit, get_rule
from ftcli.generation import decode_text, token_offsets
from ftcli.seeds import derive_seed
from ftcli.spans import Span, find_question_span, span_to_token_mask

__all__ = ["ANSWER_RULES", "FlowTracerGRPOTrainer", "credit_options_from"]

# Rules that read the final-answer span (see the rule definitions in ftcli.credit).
ANSWER_RULES = ("flow", "gradient")
QUESTION_MASK, ANSWER_MASK, SEED = "flowtracer_question_mask", "flowtracer_answer_mask", "flowtracer_seed"


def credit_options_from(options: CreditOptions | Mapping[str, Any] | None) -> CreditOptions:
    """`CreditOptions` from itself, a dict of its fields (validated by it), or None (defaults)."""
    if options is None:
        return CreditOptions()
    if isinstance(options, CreditOptions):
        return options
    if isinstance(options, Mapping):
        opts = dict(options)
        if "fai_window" in opts:
            opts["fai_window"] = tuple(opts["fai_window"])
        return CreditOptions(**opts)
    raise TypeError(f"credit_options must be CreditOptions or a dict, got {type(options).__name__}")


class _CreditBatch(dict):
    """TRL's batch dict for one loss call; refuses to hand out the advantages before the
    credit weights are in (so a TRL that reads them before the policy forward fails loudly
    instead of silently training plain GRPO)."""

    credit_applied = False

    def __getitem__(self, key):
        if key == "advantages" and not self.credit_applied:
            raise RuntimeError(
                "TRL read the advantages before the policy forward; this TRL version is not "
                "supported by ftcli.integrations.trl (tested: trl>=1.16,<2)"
            )
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


class FlowTracerGRPOTrainer(GRPOTrainer):
    """TRL's `GRPOTrainer` with ftcli token credit in its update (see the module docstring).

    Extra keyword arguments (everything else goes to `GRPOTrainer` unchanged):
        credit: rule name of `ftcli.credit` ("flow", "none", "random", "entropy", ...).
        credit_options: `CreditOptions` or a dict of its fields (ratio, select, gamma, ...).
        layers: layers averaged into W (`mid`, `early`, `late`, `all`, `A:B`, a list).
        task: a task name (`ftcli.get_task`) or object with `answer_span(text)`.
        answer_span: `fn(completion_text) -> (start, end) | None`; overrides the task's.
        question_span: `fn(prompt_text, row) -> (start, end) | None` (prompt_text: the decoded
            prompt, special tokens skipped; row: the dataset row).
        question_key: dataset column holding the question text (default "question").
    """

    def __init__(
        self,
        *args,
        credit: str = "flow",
        credit_options: CreditOptions | Mapping[str, Any] | None = None,
        layers: Any = "mid",
        task: Any = None,
        answer_span: Callable[[str], Span | None] | None = None,
        question_span: Callable[[str, dict], Span | None] | None = None,
        question_key: str = "question",
        **kwargs,
    ):
        self.credit_rule = get_rule(credit)
        self.credit_options = credit_options_from(credit_options)
        if isinstance(task, str):
            from ftcli import get_task

            task = get_task(task)
        if answer_span is None and task is not None:
            answer_span = task.answer_span
        if answer_span is None and self.credit_rule.name in ANSWER_RULES:
            raise ValueError(
                f"credit rule {credit!r} needs the final-answer span: pass task=... or answer_span=..."
            )
        self.answer_span = answer_span
        self.question_span = question_span
        self.question_key = question_key
        self.credit_layers = layers
        self._credit_batch: _CreditBatch | None = None  # set only while TRL computes the loss
        self._credit_calls = 0  # generation batches seen (distinct seeds for several per step)
        super().__init__(*args, **kwargs)
        if "attention" in self.credit_rule.needs:
            layer_range(layers, num_layers(self.model))  # a bad --layers fails here, not at the first update

    # -- spans, once per generation batch -----------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.credit_rule.score is None:
            return out
        q, a = self.credit_spans(
            inputs, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"]
        )
        out[QUESTION_MASK], out[ANSWER_MASK] = q, a
        rank, step, call = self.accelerator.process_index, self.state.global_step, self._credit_calls
        seeds = [derive_seed(self.args.seed, "credit", step, rank, call, i) for i in range(len(inputs))]
        self._credit_calls += 1
        out[SEED] = torch.tensor(seeds, dtype=torch.long, device=q.device)  # [B]
        return out

    def credit_spans(self, rows, prompt_ids, prompt_mask, completion_ids, completion_mask):
        """(question_mask [B, P], answer_mask [B, C]) bool for a TRL batch.

        Prompts are left-padded, completions right-padded (TRL's layout); each is decoded
        without its padding, the spans are found on the text and mapped back to tokens
        (`ftcli.spans.span_to_token_mask`: a token overlapping the span is in it).
        """
        tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        B, P = prompt_ids.shape
        C = completion_ids.shape[1]
        q_mask = torch.zeros(B, P, dtype=torch.bool)  # [B, P]
        a_mask = torch.zeros(B, C, dtype=torch.bool)  # [B, C]
        prompt_cache: dict[tuple, tuple[str, list]] = {}
        for b in range(B):
            ids = prompt_ids[b][prompt_mask[b].bool()].tolist()
            key = tuple(ids)
            if key not in prompt_cache:  # a prompt repeats num_generations times
                text = decode_text(tok, ids)
                prompt_cache[key] = (text, token_offsets(tok, ids, text))
            text, offsets = prompt_cache[key]
            span = self._question_span(text, rows[b])
            q_mask[b, P - len(ids) :] = span_to_token_mask(offsets, span, len(ids))
            if self.answer_span is None:
                continue
            ids = completion_ids[b][completion_mask[b].bool()].tolist()
            text = decode_text(tok, ids)  # at most max_completion_length tokens
            span = self.answer_span(text)
            if span is not None:
                a_mask[b, : len(ids)] = span_to_token_mask(token_offsets(tok, ids, text), span, len(ids))
        return q_mask.to(prompt_ids.device), a_mask.to(prompt_ids.device)

    def _question_span(self, prompt_text: str, row: dict) -> Span | None:
        if self.question_span is not None:
            return self.question_span(prompt_text, row)
        question = row.get(self.question_key)
        if not isinstance(question, str):
            prompt = row.get("prompt")
            users = [m for m in prompt if m.get("role") == "user"] if isinstance(prompt, list) else []
            question = users[-1].get("content") if users else None
        return find_question_span(prompt_text, question) if isinstance(question, str) else None

    # -- the update ---------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        if self.credit_rule.score is None:  # `none`: TRL's own loss
            return super()._compute_loss(model, inputs)
        batch = _CreditBatch(inputs)  # a copy: buffered inputs are reused by later iterations
        self._credit_batch = batch
        try:
            loss = super()._compute_loss(model, batch)
        finally:
            self._credit_batch = None
        if not batch.credit_applied:
            raise RuntimeError(
                "TRL's loss ran no policy forward through _get_per_token_logps_and_entropies; "
                "this TRL version is not supported by ftcli.integrations.trl (tested: trl>=1.16,<2)"
            )
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        batch = self._credit_batch
        if batch is None or batch.credit_applied:  # generation-time / reference forwards
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        policy = self.accelerator.unwrap_model(model)
        W = None
        if "attention" in self.credit_rule.needs:  # W of Eq. 1 from this very forward
            with capture_attention(policy, self.credit_layers, attention_mask) as cap:
                out = super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
                )
            W = cap.checked_W()  # [B, T, T] fp32
        else:
            out = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        logps, entropies = out[0], out[1]
        self._apply_credit(batch, policy, input_ids, attention_mask, logps, entropies, W)
        return out

    def _apply_credit(self, batch, policy, input_ids, attention_mask, logps, entropies, W) -> None:
        """Weights of the rule on this forward's outputs -> batch["advantages"] = A * w [B, C]."""
        rule, needs = self.credit_rule, self.credit_rule.needs
        B, T = input_ids.shape
        C = logps.shape[1]
        P = T - C
        resp = torch.zeros(B, T, dtype=torch.bool, device=input_ids.device)  # [B, T]
        resp[:, P:] = dict.__getitem__(batch, "completion_mask").bool()
        q = torch.zeros_like(resp)  # [B, T]
        q[:, :P] = dict.__getitem__(batch, QUESTION_MASK).bool()
        a = torch.zeros_like(resp)  # [B, T]
        a[:, P:] = dict.__getitem__(batch, ANSWER_MASK).bool()
        a &= resp  # answers of masked (e.g. truncated) completions do not count
        adv = dict.__getitem__(batch, "advantages")  # [B]
        if adv.ndim != 1:
            raise ValueError(f"ftcli credit needs one advantage per sequence ([B]), got {tuple(adv.shape)}")

        def full(x):  # [B, C] completion values -> [B, T], 0 on the prompt
            return None if x is None else torch.nn.functional.pad(x.detach().float(), (P, 0))

        inputs = CreditInputs(
            input_ids=input_ids, attention_mask=attention_mask.bool(), response_mask=resp,
            question_mask=q, answer_mask=a, advantages=adv.float(), seeds=dict.__getitem__(batch, SEED),
            W=W, logp=full(logps) if "logp" in needs else None,
            entropy=full(entropies) if "entropy" in needs else None,
            model=policy if "model" in needs else None, temperature=float(self.temperature),
        )
        credit = compute_credit(rule, inputs, self.credit_options)
        w = credit.weights[:, P:].to(device=adv.device, dtype=adv.dtype)  # [B, C]
        dict.__setitem__(batch, "advantages", adv[:, None] * w)  # [B, C]
        batch.credit_applied = True
        mode = "train" if self.model.training else "eval"
        counts = torch.stack([
            (credit.credited & resp).sum().float(), resp.sum().float(),
            credit.fallback.sum().float(), torch.tensor(float(B), device=resp.device),
        ]).to(adv.device)
        counts = self.accelerator.reduce(counts, reduction="sum")
        self._metrics[mode]["flowtracer/credited_frac"].append((counts[0] / counts[1].clamp(min=1.0)).item())
        self._metrics[mode]["flowtracer/fallback_frac"].append((counts[2] / counts[3].clamp(min=1.0)).item())
