"""What one training step measures: `StepStats` (sums, all-reduced over ranks by name) -> the
metrics.jsonl row; `Timer` (wall seconds per phase); `CtrlC` (the loop's Ctrl-C policy)."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass


@dataclass
class StepStats:
    """Sums over this rank's sequences of one step (the fields are all-reduced by summing)."""

    sequences: float = 0.0
    reward_sum: float = 0.0
    reward_sq: float = 0.0
    correct: float = 0.0
    response_tokens: float = 0.0
    credited: float = 0.0  # response tokens whose credit weight is not 1
    no_answer: float = 0.0  # responses without an answer span
    credit_fallback: float = 0.0  # sequences the credit rule fell back on (uniform weights)
    truncated: float = 0.0  # responses cut at --max-new-tokens
    clipped: float = 0.0  # response tokens whose ratio was clipped
    loss: float = 0.0  # the mean of the mini-batch objectives
    kl: float = 0.0  # sum of the per-token k3 KL over response tokens
    entropy: float = 0.0  # sum of the per-token entropy over response tokens
    flat_groups: float = 0.0  # groups whose rewards are all equal (no learning signal)
    groups: float = 0.0
    rollout_gap: float = 0.0  # sum of |logp_old - logp_rollout| over response tokens (--rollout vllm)
    rollout_kl: float = 0.0  # sum of the k3 KL(pi_rollout || pi_old) over response tokens

    def all_reduce(self, all_sum: Callable[[list[float]], list[float]]) -> StepStats:
        """The field-wise sum over ranks (`all_sum` sums a list of floats over ranks)."""
        return StepStats(*all_sum(list(astuple(self))))

    def row(self, step: int, lr: float, grad_norms: list[float | None], kl: bool, entropy: bool,
            rollout: bool = False) -> dict:
        """The metrics.jsonl row of these (all-reduced) sums."""
        n, toks = self.sequences, self.response_tokens
        mean = self.reward_sum / n
        row = {
            "step": step,
            "reward_mean": mean,
            "reward_std": math.sqrt(max(self.reward_sq / n - mean * mean, 0.0)),
            "accuracy": self.correct / n,
            "response_len": toks / n,
            "truncated": self.truncated / n,
            "frac_credited": self.credited / max(toks, 1.0),
            "no_answer": int(self.no_answer),
            "credit_fallback": int(self.credit_fallback),
            "groups_no_signal": self.flat_groups / self.groups,
            "loss": self.loss,
            "grad_norm": None if any(g is None for g in grad_norms) else sum(grad_norms) / len(grad_norms),
            "clip_frac": self.clipped / max(toks, 1.0),
            "lr": lr,
        }
        if kl:
            row["kl"] = self.kl / max(toks, 1.0)
        if entropy:
            row["entropy"] = self.entropy / max(toks, 1.0)
        if rollout:  # vLLM vs the trainer on the sampled tokens (ftcli.grpo.rollout_mismatch)
            row["rollout_logprob_gap"] = self.rollout_gap / max(toks, 1.0)
            row["rollout_kl"] = self.rollout_kl / max(toks, 1.0)
        return row



class Timer:
    """Wall seconds per named phase: `with timer("gen"): ...`; `timer.t` = {name: seconds}."""

    def __init__(self):
        self.t: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


class CtrlC:
    """Ctrl-C policy of the training loop (main thread only).

    While `defer` is False (sampling, forward/backward before the step's first optimizer
    update) Ctrl-C raises KeyboardInterrupt at once: the weights are still those of the last
    completed step, which the loop then saves. From the first optimizer update of a step until
    that step is logged and checkpointed, a Ctrl-C is held (`pending`) and the loop stops
    cleanly at the end of the step; a second Ctrl-C aborts at once.
    """

    def __init__(self):
        self.defer = False
        self.pending = False
        self._old = None

    def _handle(self, signum, frame):
        if self.defer and not self.pending:
            self.pending = True
            print("\nCtrl-C: stopping after this step (press again to abort now)", file=sys.stderr, flush=True)
            return
        raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False
