"""The GRPO policy update of one rollout batch (paper Eq. 5 with token credit).

For each mini-batch (one by default): for each micro-batch, the policy forward [capturing W
inside it when the credit rule needs attention, or with `credit_pass="separate"` from an extra
no-grad `ftcli.attention.mean_attention` pass] -> credit weights (`ftcli.credit`) -> weighted
clipped surrogate + optional KL and entropy terms -> aggregated by the step's GLOBAL
token/sequence count -> engine.backward; then one engine.step at the accumulation boundary.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ftcli import grpo
from ftcli.attention import capture_attention, mean_attention
from ftcli.credit import CreditInputs, CreditOptions, compute_credit, get_rule, token_class_filter
from ftcli.packing import pack_row, packed_micro_batches
from ftcli.sequences import TracedSeq, collate, micro_batches
from ftcli.train.config import TrainConfig
from ftcli.train.logprobs import policy_logprobs
from ftcli.train.stats import CtrlC, StepStats, Timer
from ftcli.vllm_engine import rollout_logp_matrix


class NonFiniteError(ValueError):
    """The loss or the gradient norm of an update is NaN or infinite (the run stops before the
    weights are written; the last checkpoint stays the newest)."""


class PolicyUpdate:
    """The update step on a DeepSpeed `engine` (and an optional frozen reference `ref`)."""

    def __init__(self, cfg: TrainConfig, engine, ref, tokenizer, world: int, seqs_per_mini: int, ctrl_c: CtrlC):
        self.cfg, self.engine, self.ref = cfg, engine, ref
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.world, self.seqs_per_mini, self.ctrl_c = world, seqs_per_mini, ctrl_c
        self.device = engine.device
        # sequences per micro-step on this rank: --micro-batch, or --global-micro-batch / world
        self.micro_batch = cfg.micro_batch_per_rank(world)
        self.rule = get_rule(cfg.credit)
        self.credit_opts = CreditOptions(**cfg.credit_options_kwargs(),
                                         token_filter=token_class_filter(tokenizer, cfg.credit_tokens))

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            t = t.to(self.device)
            dist.all_reduce(t)
        return t.cpu().tolist()

    def forward_logp(self, module, batch, need_entropy: bool, need_grad: bool):
        """Policy log-probs [B, T] (0 before `first`) and, optionally, entropies [B, T]
        (`ftcli.train.logprobs.policy_logprobs`; the entropy has a gradient only for a bonus)."""
        return policy_logprobs(module, batch, self.cfg.temperature, self.cfg.logprob_chunk, need_entropy,
                               need_grad, entropy_grad=self.cfg.entropy_coef > 0)

    def _micro_step(self, batch, old_logp, norm, timer: Timer, stats: StepStats, rule, credit_pass: str,
                    real: bool = True) -> object:
        """Forward (with W when the rule needs it), credit, weighted surrogate, backward.
        `real=False`: a filler micro-step (`plan_micro_batches`): the same passes, loss x 0."""
        cfg = self.cfg
        if not real:
            stats = StepStats()  # counted nowhere
        am = batch["attention_mask"].long()
        want_attn, W = "attention" in rule.needs, None
        if want_attn and credit_pass == "separate":
            # under ZeRO-3 the pass runs to the end: a forward stopped after the last captured
            # layer would skip DeepSpeed's post-forward hooks and leave parameters gathered
            with timer("capture"), torch.no_grad():
                W = mean_attention(self.engine.module, batch["input_ids"], am, layers=cfg.layers,
                                   stop_after_last=cfg.zero_stage != 3).float()
        need_entropy = "entropy" in rule.needs or cfg.entropy_coef > 0
        with timer("fwd_bwd"):
            if want_attn and credit_pass == "fused":
                # packed: the capture takes each sequence's block of the row (its padding mask too)
                with capture_attention(self.engine.module, layers=cfg.layers, attention_mask=am) as cap:
                    logp, ent = self.forward_logp(self.engine, batch, need_entropy, True)
                W, cap.W = cap.W, None  # the [B, T, T] buffer is freed once the credit is computed
            else:
                logp, ent = self.forward_logp(self.engine, batch, need_entropy, True)
        with timer("credit"):
            inputs = CreditInputs(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                response_mask=batch["response_mask"], question_mask=batch["question_mask"],
                answer_mask=batch["answer_mask"], advantages=batch["advantages"], seeds=batch["seeds"],
                W=W, logp=logp.detach() if "logp" in rule.needs else None,
                entropy=ent.detach() if ent is not None else None,
                model=self.engine.module if "model" in rule.needs else None, temperature=cfg.temperature,
            )
            credit = compute_credit(rule, inputs, self.credit_opts)
            del W, inputs
        with timer("fwd_bwd"):
            resp = batch["response_mask"]
            old = logp.detach() if old_logp is None else old_logp
            loss_mat, clipped = grpo.clipped_surrogate(
                logp, old, batch["advantages"], credit.weights.to(logp.device), cfg.eps_low, cfg.eps_high,
                clip_ratio_c=cfg.clip_ratio_c,
            )
            rollout_logp = batch.get("rollout_logp")  # [B, T] vLLM's log-probs (--rollout vllm)
            if rollout_logp is not None:
                gap, rkl = grpo.rollout_mismatch(old, rollout_logp)
                stats.rollout_gap += float((gap * resp).sum())
                stats.rollout_kl += float((rkl * resp).sum())
                if cfg.rollout_is == "tis":
                    loss_mat = loss_mat * grpo.tis_weights(old, rollout_logp, cfg.rollout_is_cap)
            if self.ref is not None:
                ref_logp, _ = self.forward_logp(self.ref, batch, False, False)
                kl = grpo.kl_k3(logp, ref_logp)
                loss_mat = loss_mat + cfg.kl_coef * kl
                stats.kl += float((kl.detach() * resp).sum())
            if cfg.entropy_coef > 0:
                loss_mat = loss_mat - cfg.entropy_coef * ent
            share = grpo.aggregate_loss(loss_mat, resp, cfg.loss_agg, norm)
            if not real:
                share = share * 0.0
            self.engine.backward(share * grpo.backward_scale(self.world), scale_wrt_gas=False)
        rf = resp.float()
        stats.loss += float(share.detach())
        stats.clipped += float((clipped.float() * rf).sum())
        stats.credited += float((credit.credited & resp).sum())
        stats.credit_fallback += float(credit.fallback.sum())
        if ent is not None:
            stats.entropy += float((ent.detach() * rf).sum())
        return credit

    def _optimizer_step(self, timer: Timer, loss: float) -> float | None:
        """engine.step() at the accumulation boundary; returns the pre-clip global grad norm.
        A non-finite loss (on any rank) or grad norm raises NonFiniteError: before the step at
        ZeRO 0 (the norm is known then), after it otherwise (the weights are not saved)."""
        if self.all_sum([0.0 if math.isfinite(loss) else 1.0])[0]:  # every rank stops together
            raise NonFiniteError(f"the loss became non-finite ({loss}); stopped before the optimizer step")
        norm = None
        if self.cfg.zero_stage == 0:  # DeepSpeed reports no norm at stage 0: compute it
            sq = sum(float(p.grad.float().pow(2).sum()) for p in self.engine.module.parameters() if p.grad is not None)
            norm = math.sqrt(sq)
            if not math.isfinite(norm):  # the grads are all-reduced: every rank sees the same
                raise NonFiniteError(f"the gradient norm became non-finite ({norm}); stopped before the optimizer step")
        self.ctrl_c.defer = True  # the weights change now: finish the step before stopping
        with timer("optim"):
            self.engine.step()
        if norm is None:
            g = self.engine.get_global_grad_norm()
            norm = None if g is None else float(g)
            if norm is not None and not math.isfinite(norm):
                raise NonFiniteError(f"the gradient norm became non-finite ({norm})")
        return norm

    def plan_micro_batches(self, seqs: list[TracedSeq], order: str) -> list[tuple[list[TracedSeq], bool]]:
        """This rank's micro-batches of `seqs` ((sequences, real) pairs): at most --micro-batch
        sequences and --micro-tokens padded slots each (`sequences.micro_batches`; with --pack:
        packed rows of --micro-tokens slots, `packing.packed_micro_batches`), padded with
        filler micro-batches (the rank's shortest sequence, loss x 0) up to the largest count
        over ranks. Every rank then runs the same number of forward/backward passes, which
        ZeRO's collectives (ZeRO-3 gathers in the forward, ZeRO-2 reduces in the backward) need
        when a token budget gives ranks different counts."""
        if self.cfg.pack:  # one row each, --micro-tokens row slots
            micro = packed_micro_batches(seqs, self.micro_batch, self.cfg.micro_tokens, self.cfg.share_prompt)
        else:
            micro = micro_batches(seqs, self.micro_batch, order, self.cfg.micro_tokens)
        (most,) = self.all_max([len(micro)])
        shortest = min(seqs, key=lambda s: len(s.ids)) if seqs else None
        plan = [(m, True) for m in micro]
        plan += [([shortest], False)] * (int(most) - len(micro))
        return plan

    def collate(self, seqs: list[TracedSeq]) -> dict:
        """The micro-batch's padded [B, T] tensors (`sequences.collate`: what the credit and the
        loss read); with --pack also its packed row (`packing`: what the forward runs)."""
        batch = collate(seqs, self.pad_id, self.device)
        if self.cfg.pack:
            batch["packing"] = pack_row(seqs, self.cfg.share_prompt, self.device)
        return batch

    def all_max(self, values: list[float]) -> list[float]:
        """Element-wise max of `values` over ranks."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu().tolist()

    def _old_logp(self, seqs: list[TracedSeq], timer: Timer, order: str) -> dict[int, torch.Tensor]:
        """log pi_old of every sequence (by id), computed before the step's first update."""
        out = {}
        with timer("old_logp"):
            for m, _ in self.plan_micro_batches(seqs, order):  # fillers too: ZeRO-3 gathers in lockstep
                logp, _ = self.forward_logp(self.engine.module, self.collate(m), False, False)
                for b, s in enumerate(m):
                    out[id(s)] = logp[b, : len(s.ids)].detach().cpu()
        return out

    def update(self, seqs: list[TracedSeq], timer: Timer, credit: str | None = None,
               credit_pass: str | None = None, micro_order: str | None = None) -> tuple[StepStats, list, list]:
        """The policy update on this rank's sequences: `mini_batches` optimizer steps, each
        accumulating its micro-batches. `credit` / `credit_pass` / `micro_order` override the
        configured rule, pass and micro-batch order (Table 6 times several on one engine). Returns (the update's StepStats,
        sample rows (seq, weights, scores) of the first `log_samples` sequences, grad norms)."""
        cfg = self.cfg
        rule = self.rule if credit is None else get_rule(credit)
        credit_pass, order = credit_pass or cfg.credit_pass, micro_order or cfg.micro_order
        old_logp = self._old_logp(seqs, timer, order) if cfg.mini_batches > 1 else None
        self.engine.train()
        stats, sample_rows, grad_norms = StepStats(), [], []
        logged = {id(s) for s in seqs[: cfg.log_samples]}  # the rows samples.jsonl shows
        for mb in range(cfg.mini_batches):
            mini = seqs[mb * self.seqs_per_mini : (mb + 1) * self.seqs_per_mini]
            n_tok, n_seq = self.all_sum([sum(s.n_response for s in mini), len(mini)])
            norm = grpo.agg_normaliser(cfg.loss_agg, n_tok, n_seq, cfg.max_new_tokens)
            plan = self.plan_micro_batches(mini, order)
            for k, (m, real) in enumerate(plan):
                # the boundary is ours: the micro-batch count varies from step to step
                self.engine.set_gradient_accumulation_boundary(k == len(plan) - 1)
                batch = self.collate(m)
                batch["rollout_logp"] = rollout_logp_matrix(m, batch["input_ids"].shape[1], self.device)  # None: HF
                # pi_old: the sampling policy; with one update per batch it is the current one
                old = None
                if old_logp is not None:
                    old = torch.zeros(len(m), batch["input_ids"].shape[1], device=self.device)  # [B, T]
                    for b, s in enumerate(m):
                        old[b, : len(s.ids)] = old_logp[id(s)].to(self.device)
                cr = self._micro_step(batch, old, norm, timer, stats, rule, credit_pass, real)
                for b, s in enumerate(m if real else []):
                    if id(s) in logged:
                        sample_rows.append((s, cr.weights[b].cpu(), None if cr.scores is None else cr.scores[b].cpu()))
                if k < len(plan) - 1:
                    self.engine.step()  # a non-boundary micro-step: only counts
            grad_norms.append(self._optimizer_step(timer, stats.loss))
        self.engine.eval()
        pos = {id(s): i for i, s in enumerate(seqs)}
        sample_rows.sort(key=lambda r: pos[id(r[0])])  # rollout order, whatever the micro-batch order
        stats.loss /= cfg.mini_batches  # the mean of the mini-batch objectives
        return stats, sample_rows, grad_norms
