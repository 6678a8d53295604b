"""The settings of every experiment (`ft ablate`'s options are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.fetch.models import DEFAULT_MODEL, DEFAULT_POLICY
from ftcli.options import LAYERS_HELP, option

_M = ("-m",)


@dataclass
class InterveneConfig:
    """Table 1: the causal intervention."""

    model: str = option(DEFAULT_MODEL, "Alias, folder or hub id.", flags=_M)
    task: str = option("gsm8k", "Task plugin (its test split by default).")
    split: str = option("test", "Split of the task.")
    n: int = option(50, "Problems (the first N of the split).", min=1)
    ratio: float = option(0.2, "Fraction of reasoning tokens blocked per arm.", min=0.0, max=1.0)
    layers: str = option("mid", LAYERS_HELP)
    max_new_tokens: int = option(256, "Budget of the original response.", min=1)
    temperature: float = option(0.0, "Original response: 0 = greedy, else seeded sampling.", min=0.0)
    seed: int = option(0, "Seed of sampling and of the random arm.")
    slack: int = option(16, "Regeneration budget beyond the original answer tail (tokens).", min=0)
    keep_truncated: bool = option(False, "Also use problems whose original response hit --max-new-tokens (its answer is only its last number; for smoke runs with random models).")
    batch_size: int = option(8, "Problems per batch.", flags=("-b",), min=1)
    out: str = option("runs/ablate/intervene", "Output folder.", flags=("-o",))
    data_root: str | None = option(None, "Folder with the benchmark files (default: $FT_DATA, else the data cache $FT_CACHE/data, filled by `ft data fetch`).")


INTERVENE_PROTOCOL = """\
1. Original: the prompt is the task's chat prompt; the response is generated once with
   --temperature (0 = greedy; else seeded sampling) and at most --max-new-tokens tokens.
   Problems whose response has no answer span (task.answer_span), or did not finish within
   --max-new-tokens (a truncated response has no final answer, only its last number), are
   skipped and counted.
2. Flow: one teacher-forced forward over prompt + original response gives W (--layers);
   trace_flow with Q = the question, A = the answer-span tokens, R = the response gives tau.
3. Candidates: the reasoning tokens, i.e. response tokens before the first answer token (n).
   Each arm blocks k = ceil(ratio * n) of them: top = highest tau, bottom = lowest tau (ties
   to the earlier token), random = a uniform draw seeded by (seed, problem id), none = nothing.
4. Kept fixed: the prompt and the reasoning tokens (teacher-forced, token for token, the same
   ids as the original); blocked: the keys of the k chosen tokens get zero attention from every
   later position in every layer and head (the reasoning after them, and all new tokens);
   regenerated: everything from the first answer token on, greedily with the KV cache, for at
   most (original tail length + slack) tokens. All arms of a problem run in one batch.
5. Measured against the original: answer change = the new extracted answer differs (numbers
   compared exactly, else normalised strings; no answer counts as a change); correctness
   reversal = the task's verdict flips (either way; both directions are also counted). Rates
   over the problems with an answer, with counts and Wilson 95% intervals. The unblocked arm
   is the control: it reproduces the original up to float differences of batched decoding."""


@dataclass
class TextConfig:
    """Sec. 5.2: shared settings of `answer_format` and `token_classes`."""

    model: str = option(DEFAULT_MODEL, "Alias, folder or hub id.", flags=_M)
    task: str = option("gsm8k", "Task of the analysed responses.")
    split: str = option("test", "Split of the task.")
    n: int = option(50, "Problems (the first N).", min=1)
    ratio: float = option(0.4, "Top fraction of reasoning tokens by flow.", min=0.0, max=1.0)
    layers: str = option("mid", LAYERS_HELP)
    source: str = option("gold", "gold: the sample's worked solution; model: the model's own greedy response.", choices=("gold", "model"))
    max_new_tokens: int = option(256, "Response budget of --source model.", min=1)
    seed: int = option(0, "Seed (the letter-choice option order; sampling).")
    batch_size: int = option(8, "Sequences per forward.", flags=("-b",), min=1)
    out: str = option("runs/ablate/format", "Output folder.", flags=("-o",))
    data_root: str | None = option(None, "Folder with the benchmark files (default: $FT_DATA, else the data cache $FT_CACHE/data, filled by `ft data fetch`).")


@dataclass
class OverheadConfig:
    """Table 6: the cost of the credit in an update step."""

    model: str = option(DEFAULT_POLICY, "Policy (alias, folder or hub id).", flags=_M)
    task: str = option("countdown", "Task whose first training prompt is used.")
    lengths: tuple[int, ...] = option((512, 2048), "Context lengths (prompt + response tokens), comma list.")
    micro_batch: int = option(1, "Sequences per step.", min=1)
    repeats: int = option(3, "Timed rounds (median).", min=1)
    warmup: int = option(1, "Untimed rounds first.", min=0)
    layers: str = option("mid", LAYERS_HELP)
    seed: int = option(0, "Seed of the synthetic responses.")
    out: str = option("runs/ablate/overhead", "Output folder.", flags=("-o",))
    data_root: str | None = option(None, "Folder with the benchmark files (default: $FT_DATA, else the data cache $FT_CACHE/data, filled by `ft data fetch`).")


@dataclass
class SweepConfig:
    """A training sweep: every variant x seed trained with `ft train` and evaluated with `ft eval`."""

    name: str = option("sweep", "Experiment name.", cli=False)
    out: str = option("runs/ablate/sweep", "Output folder (default runs/ablate/<name>).", flags=("-o",))
    base: dict = option(None, "TrainConfig overrides shared by every variant.", cli=False, default_factory=dict)
    preset: str = option("cpu", "ft train preset (cpu, paper).", "Training (same for every variant)")
    seeds: tuple[int, ...] = option((0,), "Comma list of seeds; every variant runs each.", "Training (same for every variant)")
    variant_seeds: tuple[int, ...] | None = option(None, "Seeds of the variants other than the reference rows (GRPO and FlowTracer with the default credit options), when CPU time allows fewer; default: --seeds.", "Training (same for every variant)")
    reference: str | None = option(None, "results.json of an earlier sweep with the same settings (e.g. results/table3/results.json): its GRPO and default FlowTracer runs are taken from it (seeds it has) instead of being trained again.", "Training (same for every variant)")
    eval_suite: str | None = option(None, "Suite for ft eval (default: the task's).", "Evaluation")
    eval_limit: int | None = option(64, "First N problems of each benchmark.", "Evaluation", min=1)
    eval_overrides: dict = option(None, "n, temperature, top_p, top_k, max_new_tokens, seed of the suite.", cli=False, default_factory=dict)
    eval_batch_size: int = option(16, "Sequences per generate call.", "Evaluation", min=1)
    progress: bool = option(True, "Progress bars.", cli=False)
