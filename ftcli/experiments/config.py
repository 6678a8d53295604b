"""The settings of every experiment (`ft ablate`'s options are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.fetch.models import DEFAULT_MODEL, DEFAULT_POLICY
from ftcli.options import AGG_MODES, LAYERS_HELP, option

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
class FidelityConfig(InterveneConfig):
    """Beyond the paper (issue 28): what each credit rule's scores find. The fields of Table 1's
    intervention (its protocol runs part (a)), with other defaults, and the three parts' own."""

    model: str = option(DEFAULT_POLICY, "Policy (alias, folder or hub id): the shipped policy by default, the model the Countdown tables train.", flags=_M)
    task: str = option("countdown", "Task plugin: its --split gives the analysed responses, its --train-split the GRPO rollouts of part (c).")
    n: int = option(300, "Problems (the first N of the split); at 300 a rate's Wilson 95% interval is at most about ±5.7 points.", min=1)
    ratio: float = option(0.4, "(c) Fraction of each response that a rule selects (the training's --ratio, the paper's 40%).", min=0.0, max=1.0)
    out: str = option("runs/ablate/fidelity", "Output folder.", flags=("-o",))
    responses: str = option("generated", "Analysed responses: generated = the model's own (greedy by default, as Table 1); gold = the task's worked solution ending in its answer format, teacher-forced (tasks whose samples carry a `####` solution, e.g. gsm8k): the same text for every model.", choices=("generated", "gold"))
    rules: tuple[str, ...] | None = option(None, "Comma list of credit rules (default: every registered rule with scores, ftcli.credit.RULES).")
    ks: tuple[int, ...] = option((5, 10, 20), "(a) Percentages of the reasoning tokens blocked per rule (each rule's top k%, the flow's bottom k%); the small ones say which rule finds the few tokens that matter.")
    token_sample: int = option(0, "(b) Reasoning tokens blocked one at a time per response: 0 = every one (one forward row each: cheap for the shipped policy); N = a seeded draw of N (bounds the cost of large models and long responses).", min=0)
    variant_batch: int = option(32, "(b) Blocked variants per forward (rows of one batch; memory).", min=1)
    train_split: str = option("train", "(c) Split the rollout prompts are drawn from (the training data).")
    groups: int = option(8, "(c) Prompts per batch (a seeded draw without replacement).", min=1)
    group_size: int = option(8, "(c) Responses per prompt, sampled at temperature 1 (GRPO's group; advantages are group-normalised).", min=2)
    batches: int = option(3, "(c) Rollout batches; share and cosine are averaged over them (0 = skip part (c)).", min=0)
    gold_in_group: bool = option(False, "(c) Put each prompt's gold solution (as --responses gold writes it) in its group in place of one sampled response: a model that earns no reward on the task (SmolLM2 on GSM8K) still has a GRPO gradient, the gold's positive advantage against its own wrong samples (off-policy guidance, as LUFFY, Yan et al. 2025, mixes in expert solutions).")
    loss_agg: str = option("token-mean", "(c) Aggregation of the GRPO loss (ft train --loss-agg; the paper preset's is seq-mean-token-mean).", choices=AGG_MODES)


FIDELITY_PROTOCOL = """\
1. Rules: every registered credit rule with scores (or --rules), each scoring the SAME
   responses through ftcli.credit.compute_credit, with the inputs the trainer gives it (W over
   --layers from a no-grad pass, the policy's log-probs and entropies, the model itself).
2. Responses: --responses generated: Table 1's step 1 (the task's prompt, one response at
   --temperature, 0 = greedy; truncated responses and responses without an answer span are
   skipped and counted). --responses gold: the sample's worked solution (calculator notes and
   the `####` line removed) followed by "The answer is \\boxed{ANSWER}." and EOS, tokenised
   after the task's prompt and teacher-forced. Problems where a rule falls back (no question
   span) are skipped, so every rule is measured on the same problems. Reasoning tokens: the
   response tokens before the first answer token (n). Scores are taken with advantage +1 (a
   single response has no group): rules reading the advantage sign (clip-cov) score as on a
   correct sample; the random rule is seeded by (seed, problem id).
3. (a) For each rule and k in --ks: block the keys of the rule's top ceil(k% n) reasoning
   tokens (ties to the earlier token, zero scores allowed, so every rule blocks the same
   count) and regenerate the answer greedily as in Table 1 (step 4 of its protocol); also the
   flow's bottom k% and no block (the control); all arms of a problem in one batch. Answer
   change: the new extracted answer differs from the reference answer (generated: the
   original response's; gold: the control's, the model's own answer after the unblocked gold
   reasoning, since a model need not reproduce the gold answer). Rates with Wilson 95%
   intervals; between every two rules at each k, the two-sided exact McNemar test on the
   discordant problems (only the first changed / only the second), not corrected for the
   number of pairs.
4. (b) The causal effect of a reasoning token i: log L(answer) - log L(answer | i blocked), log L
   the teacher-forced log-likelihood of the response's answer tokens with the whole response
   as context, i's key hidden from every later position (the later reasoning and the answer);
   positive: the answer needed i. Every reasoning token, or --token-sample N of them drawn per
   problem (seeded). Lines: the reasoning tokens grouped by the newline-delimited line of the
   response each starts on (a newline token ends its line); a line's effect blocks all its
   tokens at once, its score is the MEAN of its tokens' scores (length-neutral: with the sum,
   random scores correlated 0.59 with the lines' effects, the length alone). Spearman correlation of each
   rule's scores with the effects per response (at least 3 tokens or lines), then the mean
   with a t 95% interval over responses; and pooled over all (score, effect) pairs. Cost: one
   forward row of the whole sequence per blocked token or line, --variant-batch rows a forward.
   Measured on one CPU thread, with part (a): the shipped policy with every one of its ~64
   reasoning tokens, 2.5 s a problem; SmolLM2-135M on gold GSM8K solutions with
   --token-sample 16, 29 s a problem (every token, ~98 a solution, is 5 times the forward rows).
5. (c) --batches batches of --groups prompts from --train-split (a seeded draw) x --group-size
   responses at temperature 1 (top-p 1, no top-k, at most --max-new-tokens), rewards from the
   task's grader, advantages group-normalised (ftcli.grpo.group_advantages). g: the gradient
   over all parameters of the GRPO loss as one update step of ft train computes it
   (ftcli.grpo.clipped_surrogate at pi_old = pi, aggregated by --loss-agg over the batch) with
   weight 1 on every response token; g_S: the same loss with weight 1 on the rule's selected
   tokens (compute_credit's selection with --ratio: the top ceil(ratio n) of each response by
   score, never a zero score; none where the rule falls back) and 0 elsewhere, with the
   rollouts' own advantages (--gold-in-group: each group is --group-size - 1 sampled
   responses and the sample's gold solution, graded like them, at pi_old = pi as well, so its
   ratio is 1). Reported per rule: share = ||g_S|| / ||g|| and cos(g_S, g), per
   batch and their mean over batches (a batch whose groups all have equal rewards has g = 0
   and gives none; its backward passes are skipped). The gradients are held as fp32 copies,
   one per weighting; when they do not fit in half the free memory, one weighting at a time
   is computed against GRPO's (the same numbers, 1 + (rules) times the forwards). Cost: one
   forward and 1 + (rules) backward passes a batch: the shipped policy at 8 x 8, about 30 s; SmolLM2 at 4 x 4 and 256 tokens,
   about 7.5 min (one CPU thread; 10 min with the gold in each group, beside two other jobs)."""


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
