"""The default policy: a small Qwen3 trained from scratch on Countdown solver traces.

    from ftcli.policy.recipe import build_default_policy
    build_default_policy("ftcli/assets/default-policy", seed=0)   # the shipped checkpoint

Three pieces, all deterministic for a given seed:

1. Traces (`traces.countdown_trace`). A response in the TinyZero format that continues the task's
   pre-filled assistant turn (`task.assistant_prefix`, which ends with `<think>`): a few tried
   combinations, one per line, each a chain of binary steps `a op b = v`, ending with the
   working one, then `</think>` and `<answer>expr</answer>`:

       <think>                                              <- prompt (assistant prefix)
       79 + 60 = 139 [17, 139]; 139 - 17 = 122              <- a failed try (0-3, distinct)
       79 - 60 = 19 [17, 19]; 19 + 17 = 36                  <- the solution's steps
       </think>
       <answer>(79 - 60) + 17</answer><|im_end|>

   After every step but the last, `[...]` lists the values still to be used (the problem's
   numbers in prompt order, the new value last): the model copies operands from right there
   instead of tracking by itself which numbers are used, which halves its copy errors (on
   300 validation problems at T=1: 269 -> 141).

   The trace records a random search: failed tries are random `+`/`-` combinations, each the
   one nearest the target among a few draws; the solution is the first random combination
   (non-negative integer steps, `+ -` more often than `* /`) that hits the target, else the
   task's exhaustive `solve` if its steps are non-negative integers (else the problem is
   skipped, about 1% of them). `+` and `*` always put the larger operand first. So the model
   learns "copy numbers, compute, compare with the target, try again", on easy arithmetic.
   Responses are 20-200 tokens (mean about 80).

2. A byte-level BPE tokenizer (`model.train_tokenizer`) trained with `tokenizers` on those
   prompts and traces. Digits are always single tokens (arithmetic is learnt digit by digit),
   and BPE merges run across spaces, so the fixed instruction text of the Countdown prompt
   collapses into a handful of tokens: a prompt is about 45 tokens.
   ChatML specials (`<|pad|>`, `<|im_start|>`, `<|im_end|>`) are special tokens; the tags
   `<think>`, `</think>`, `<answer>`, `</answer>` are atomic added tokens that are *not*
   special, so decoding with `skip_special_tokens=True` keeps them (the verifier needs them).

3. `Qwen3ForCausalLM` from scratch (`model.new_policy_model`, sizes in `MODEL_SIZES`), trained by
   `ftcli.policy.sft.sft_train` with the loss on response tokens only (`recipe.build_policy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.options import option

PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Model sizes (Qwen3, tied embeddings, GQA). Parameter counts are for a ~600-token vocab.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512),
    "small": dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, intermediate_size=768),
    "base": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024),
}


class PolicyError(ValueError):
    """Bad policy-building input (one-line message for the CLI)."""


@dataclass
class PolicyRecipe:
    """Everything `build_policy` needs; `DEFAULT_RECIPE` made the shipped checkpoint."""

    seed: int = option(0, "Seed of traces, initialisation and batch order.")
    size: str = option("base", "Model size.", choices=tuple(MODEL_SIZES))
    vocab_size: int = option(1024, "BPE vocabulary size (upper bound).", min=300)
    max_positions: int = option(512, "Context length of the model.", cli=False)
    problems: int | None = option(None, "Training problems from the task's train split (default: all).", min=1)
    traces_per_problem: int = option(2, "Traces per problem (different failed tries).", min=1)
    fail_probs: tuple[float, ...] = option((0.35, 0.3, 0.2, 0.15), "Probabilities of 0, 1, 2, 3 failed tries before the solution.", cli=False)
    near_miss_draws: int = option(3, "Random combinations drawn per failed try (the one nearest the target is kept).", cli=False)
    show_remaining: bool = option(True, "Traces list the values still to be used after each step.", cli=False)
    steps: int = option(1700, "Optimizer steps.", min=1)
    batch_size: int = option(16, "Sequences per step.", min=1)
    lr: float = option(2e-3, "Peak learning rate (linear warm-up, cosine decay).", gt=0)
    warmup_steps: int = option(100, "Warm-up steps.", min=0)
    min_lr_ratio: float = option(0.05, "Final learning rate as a fraction of the peak.", cli=False)
    weight_decay: float = option(0.01, "AdamW weight decay (matrices only).", min=0.0)
    engine: str = option("deepspeed", "torch (AdamW) | deepspeed (ZeRO-0 engine, same update).", choices=("torch", "deepspeed"))
    eval_split: str = option("test", "Split the accuracy is measured on: validation | test.")
    eval_problems: int | None = option(None, "Evaluate on the first N problems of the split (default: all).", min=1)
    eval_max_new_tokens: int = option(192, "Response budget of the evaluation.", cli=False)
    eval_temperatures: tuple[float, ...] = option((0.0, 0.7, 1.0), "Comma-separated sampling temperatures to measure (0 = greedy).")
    store_fp16: bool = option(True, "Weights rounded to float16 after SFT and stored so (half the size).", cli=False)
    task: str = option("countdown", "Task of the traces.", cli=False)
    data_source: str = option("generated", "generated: the seeded Countdown generator (no files; seeded by --seed) | files: TinyZero's parquet files from the data root (fetched on first use).", choices=("generated", "files"))
    # the data root of data_source="files" (default: $FT_DATA, else the data cache); the CLI's is `--data-root`
    data_root: str | None = option(None, "Folder with the benchmark files.", cli=False)


DEFAULT_RECIPE = PolicyRecipe()
