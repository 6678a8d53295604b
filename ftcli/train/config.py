"""`ft train`'s options: `TrainConfig` (its field metadata generates the CLI, the presets and
`config.json`), the presets, and `resolve_config`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ftcli.fetch.models import DEFAULT_POLICY
from ftcli.options import (
    AGG_MODES,
    CREDIT_TOKENS,
    LAYERS_HELP,
    MICRO_ORDERS,
    SELECT_MODES,
    WEIGHTINGS,
    check_limits,
    describe_rules,
    option,
)
from ftcli.train.tracking import REPORT_TO_HELP, parse_report_to

CREDIT_PASSES = ("fused", "separate")
DATA_SOURCES = ("generated", "files")
ROLLOUTS = ("hf", "vllm")
ROLLOUT_IS = ("none", "tis")


def _opt(default, help: str, panel: str = "Training", cli: bool = True, choices=None, **limits):
    """A TrainConfig field; `limits` (min, max, gt, lt, why) are checked by `validate`."""
    return option(default, help, panel, cli, choices, **limits)


@dataclass
class TrainConfig:
    """Every option of `ft train` (the CLI is generated from these fields).

    Defaults are the CPU setting (`--preset cpu`): GRPO on the shipped default policy, 16
    prompts x 8 responses per step from a pool of 32 generated Countdown problems (no files
    needed), lr 1e-4, 30 steps (about ten minutes on one CPU core), validated on 200 held-out
    generated problems before training and every 10 steps (runs shorter than 10 steps skip
    the validation).
    `PRESETS["paper"]` holds the paper's settings.
    """

    # run
    task: str = _opt("countdown", "Task plugin (ftcli.get_task): countdown, gsm8k, math, ...", "Run")
    model: str = _opt(DEFAULT_POLICY, "Policy: alias (default-policy: the shipped 5.9M Countdown policy; smollm2-135m; qwen2.5-coder-0.5b), local folder or hub id.", "Run")
    out: str = _opt("runs/train", "Run directory (config.json, metrics.jsonl, checkpoints/).", "Run")
    steps: int = _opt(30, "Optimizer steps (rollout batches).", "Run", min=1)
    seed: int = _opt(0, "Seed of data order, sampling and the random credit rule.", "Run", min=0)
    data_source: str = _opt("generated", "Where Countdown's problems come from: generated (the seeded generator, no files; seeded by --seed) or files (TinyZero's parquet files from the data root, fetched on first use). Tasks without a generator always read files.", "Run", choices=DATA_SOURCES)
    data_root: str | None = _opt(None, "Folder with the benchmark files (default: $FT_DATA, else the data cache $FT_CACHE/data, filled by `ft data fetch`).", "Run")
    train_size: int = _opt(32, "Train on the first N problems of the task's train split, revisited in a new seeded order each pass (0 = the whole split). The CPU default, 32, lets 30 steps show the reward rise on them; held-out accuracy is the validation's.", "Run", min=0)
    # batch
    prompts: int = _opt(16, "Prompts per step (global, over all ranks).", "Batch", min=1)
    group_size: int = _opt(8, "Responses per prompt (G >= 2).", "Batch", min=2,
                           why="advantages are rewards centred within a group, so with one response per prompt every advantage is 0")
    micro_batch: int = _opt(16, "Sequences per forward/backward on each rank.", "Batch", min=1)
    global_micro_batch: int | None = _opt(None, "Sequences per forward/backward summed over all ranks (the paper's 'micro-batch size of 32' at 512 sequences a step): each rank takes this / world size; replaces --micro-batch when given.", "Batch", min=1)
    micro_tokens: int | None = _opt(None, "Token budget of a micro-batch on each rank: sequences are packed longest first until B x the longest length would pass it (one longer sequence goes alone), so one setting serves 1K and 8K responses; ranks pad to the same count of micro-steps. Off when not given (--micro-batch alone).", "Batch", min=1)
    pack: bool = _opt(True, "Padding-free micro-batches (ftcli.packing): the sequences of a micro-batch laid end to end in one row (--micro-tokens bounds its length) with position ids restarting per sequence and attention restricted to each (the segment kernel on CPU, flash varlen with --attn-implementation flash_attention_2). Log-probs, loss, gradient and W equal the padded layout's.", "Batch")
    share_prompt: bool = _opt(True, "With --pack (ignored without): one prompt copy per group in a row; the G responses of a prompt attend to it (same forward per sequence, same gradient), so the update computes each prompt once instead of G times. Runs the segment kernel (flash varlen cannot express it). On CPU (bench/bench_vs_trl.py, default policy, 8 x 8): padded 1.89 slots per response token, packed 1.55, packed and shared 1.07; update 1.27x / 1.75x faster than padded.", "Batch")
    mini_batches: int = _opt(1, "Optimizer steps per rollout batch (>1: PPO-style, old log-probs from a no-grad pass).", "Batch", min=1)
    micro_order: str = _opt("length", "Sequences into micro-batches: length (longest first: least padding) or group (rollout order). The gradient is the same.", "Batch", choices=MICRO_ORDERS)
    # sampling
    max_new_tokens: int = _opt(192, "Maximum response length (tokens).", "Sampling", min=1)
    temperature: float = _opt(1.0, "Sampling temperature (also divides the update logits).", "Sampling", gt=0)
    top_p: float = _opt(1.0, "Nucleus sampling (1 = off).", "Sampling", gt=0, max=1)
    top_k: int = _opt(0, "Top-k sampling (0 = off).", "Sampling", min=0)
    gen_batch_size: str = _opt("128", "Rollouts per generate() call: a number, or auto (on a GPU: as many rows as the KV cache fits in 85% of the memory left after the weights; on CPU: 128).", "Sampling")
    # objective
    lr: float = _opt(1e-4, "AdamW learning rate (constant after --warmup-steps).", "Objective", gt=0)
    warmup_steps: int = _opt(0, "Linear learning-rate warm-up: optimizer update k of the first N uses lr * k / N, then lr (verl's lr_warmup_steps); 0 = off.", "Objective", min=0)
    weight_decay: float = _opt(0.01, "AdamW weight decay.", "Objective", min=0)
    eps_low: float = _opt(0.2, "Clip range below 1 for the ratio.", "Objective", min=0, lt=1)
    eps_high: float = _opt(0.2, "Clip range above 1 for the ratio.", "Objective", min=0)
    loss_agg: str = _opt("token-mean", "Loss aggregation.", "Objective", choices=AGG_MODES)
    norm_adv_std: bool = _opt(True, "Divide group-centred rewards by the group std (off: Dr. GRPO).", "Objective")
    kl_coef: float = _opt(0.0, "KL(pi || pi_ref) coefficient, k3 estimator (0 = no reference model).", "Objective", min=0)
    entropy_coef: float = _opt(0.0, "Entropy bonus coefficient (0 = none).", "Objective", min=0)
    grad_clip: float = _opt(1.0, "Gradient clipping (global norm; 0 = off).", "Objective", min=0)
    clip_ratio_c: float | None = _opt(None, "Dual clip (Ye et al. 2020; verl's clip_ratio_c): a token with a negative advantage loses at most c * |gamma_t A|, however large its ratio. c > 1; off when not given.", "Objective", gt=1)
    # credit
    credit: str = _opt("flow", f"Credit rule: {describe_rules()}.", "Credit")
    ratio: float = _opt(0.4, "Fraction of response tokens credited (binary weighting).", "Credit", min=0, max=1)
    select: str = _opt("top", "Credit the highest- or lowest-scoring tokens.", "Credit", choices=SELECT_MODES)
    gamma: float = _opt(1.5, "Weight of credited tokens (continuous: the maximum weight); > 0, so that gamma_t A keeps the sign of A and the clipped surrogate stays gamma_t times the GRPO one.", "Credit",
                        gt=0, why="a weight <= 0 flips or removes the credited tokens' advantage")
    weighting: str = _opt("binary", "Scores -> weights: binary (paper) or a continuous map (Table 7).", "Credit", choices=WEIGHTINGS)
    mass: float = _opt(0.4, "Mass threshold of --weighting mass (0.2-0.8).", "Credit", gt=0, max=1)
    rest_weight: float = _opt(1.0, "Weight of the response tokens outside the credited set: 1 in the paper; 0 trains on the set only (issue 28's train-only runs: does the set carry the learning signal?). Sequences the rule cannot score, and --nonneg-only's negative ones, keep uniform weights 1.", "Credit", min=0)
    nonneg_only: bool = _opt(False, "Credit only sequences with advantage >= 0.", "Credit")
    layers: str = _opt("mid", LAYERS_HELP, "Credit")
    credit_pass: str = _opt("fused", "fused: capture W in the update forward; separate: extra no-grad pass.", "Credit", choices=CREDIT_PASSES)
    fai_window: str = _opt("10:50", "Query window LO:HI of the fai rule (future attention influence).", "Credit")
    credit_tokens: str = _opt("all", "Tokens that may be credited: all, or one class (Sec. 5.2; structural: no letter or digit, semantic: the rest).", "Credit", choices=CREDIT_TOKENS)
    # engine
    zero_stage: int = _opt(0, "DeepSpeed ZeRO stage 0-3.", "Engine", min=0, max=3)
    bf16: bool | None = _opt(None, "bf16 training: DeepSpeed's bf16 (bf16 weights and activations, fp32 master weights in the optimizer). Default: on with a GPU, off on CPU, where fp32 keeps the committed results exact; on a CPU with bf16 matrix units (AVX512-BF16, AMX) it makes a step of the main job about 1.7x faster (bench/bench_vs_trl.py).", "Engine")
    deepspeed_config: str | None = _opt(None, "JSON file merged over the generated DeepSpeed config.", "Engine")
    attn_implementation: str = _opt("sdpa", "Attention kernel of the policy (sdpa, eager, flash_attention_2).", "Engine")
    gradient_checkpointing: bool = _opt(False, "Recompute each decoder layer's activations in the backward (transformers, non-reentrant): activation memory from ~L x (all of a layer's tensors) to L x (one hidden state) + one layer, for about 1/3 more update compute. W capture stays exact.", "Engine")
    logprob_chunk: int = _opt(1024, "Positions per chunk of the LM head when computing log-probs and entropies (recomputed in the backward; no [B, T, V] logits are kept). 0 = off: from the full logits.", "Engine", min=0)
    # rollout engine (ftcli.vllm_engine)
    rollout: str = _opt("hf", "Rollout engine: hf (the own KV-cached decode loop on the training model) or vllm (one colocated in-process vLLM engine per rank, built once; the trainer's weights are copied into it after every update, and validation samples through it too). vLLM: the package's gpu extra; on CPU the venv of `just vllm-setup`.", "Rollout", choices=ROLLOUTS)
    vllm_gpu_memory_utilization: float = _opt(0.4, "Fraction of each GPU's memory the vLLM engine takes (weights + KV cache); the trainer needs the rest. The engine sleeps during the update (weights offloaded, KV cache freed).", "Rollout", gt=0, max=1)
    vllm_tensor_parallel_size: int = _opt(1, "GPUs per vLLM engine (tensor parallel over blocks of consecutive ranks; the ranks of a block generate their prompts together). Must divide the world size.", "Rollout", min=1)
    rollout_is: str = _opt("none", "Correction of the rollout/trainer mismatch (--rollout vllm): none, or tis (truncated importance sampling, as verl and TRL: each token's loss x min(exp(logp_old - logp_rollout), --rollout-is-cap)).", "Rollout", choices=ROLLOUT_IS)
    rollout_is_cap: float = _opt(2.0, "C of --rollout-is tis: the largest importance weight (bounds the variance the correction adds).", "Rollout", gt=0)
    # evaluation, logging, checkpoints
    val_every: int = _opt(10, "Validate before training, every N steps and at the end (0 = never). A run shorter than N steps (--steps < --val-every, e.g. a 2-step smoke run) is not validated.", "Logging", min=0)
    val_size: int = _opt(200, "Validation problems (the first N of the task's validation split).", "Logging", min=1)
    val_temperature: float | None = _opt(None, "Validation sampling temperature (default: --temperature, so it measures the policy being trained; 0 = greedy). Seeded: every validation draws the same random numbers.", "Logging", min=0)
    save_every: int | None = _opt(None, "Checkpoint every N steps (default: --val-every; 0 = the last step only; the last step always).", "Logging", min=0)
    keep_last: int = _opt(2, "Step checkpoints kept (plus the best-validation one).", "Logging", min=1)
    log_samples: int = _opt(2, "Responses per step written to samples.jsonl.", "Logging", min=0)
    progress: bool = _opt(True, "Rich progress bar and one line per step.", "Logging")
    report_to: str = _opt("none", REPORT_TO_HELP, "Logging")
    # provenance (not options)
    preset: str = _opt("cpu", "Preset the defaults came from.", cli=False)

    # -- derived -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every option's choices and range (the `choices`, `min` / `max` / `gt` / `lt` of its
        field; floats finite: `check_limits`), then the rule and what spans several options;
        one-line ValueErrors naming the option."""
        from ftcli.credit import CreditOptions, get_rule  # torch: not for building the CLI

        check_limits(self)
        get_rule(self.credit)
        parse_report_to(self.report_to)
        CreditOptions(**self.credit_options_kwargs())
        self.gen_batch_rows()
        self._check_rollout()

    def _check_rollout(self) -> None:
        """--rollout-is corrects vLLM's rollouts: it needs vLLM's log-probs."""
        if self.rollout_is != "none" and self.rollout != "vllm":
            raise ValueError("--rollout-is corrects vLLM's rollouts; it needs --rollout vllm")

    def gen_batch_rows(self) -> int | None:
        """--gen-batch-size as a number of rows; None for auto (sized by the trainer)."""
        v = str(self.gen_batch_size).strip().lower()
        if v == "auto":
            return None
        try:
            n = int(v)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"--gen-batch-size must be auto or an integer >= 1 (got {self.gen_batch_size!r})")
        return n

    def micro_batch_per_rank(self, world: int) -> int:
        """Sequences per micro-step on each rank: --global-micro-batch / world size when given
        (at least 1), else --micro-batch."""
        if self.global_micro_batch is None:
            return self.micro_batch
        return max(1, self.global_micro_batch // max(world, 1))

    def credit_options_kwargs(self) -> dict:
        lo, _, hi = self.fai_window.partition(":")
        try:
            window = (int(lo), int(hi))
        except ValueError:
            raise ValueError(f"--fai-window must be LO:HI, got {self.fai_window!r}") from None
        return dict(
            ratio=self.ratio, select=self.select, gamma=self.gamma, weighting=self.weighting,
            mass=self.mass, rest_weight=self.rest_weight, nonneg_only=self.nonneg_only, fai_window=window,
        )

    @property
    def validates(self) -> bool:
        """Whether the run is validated: --val-every > 0 and at least --val-every steps (a
        shorter run, such as a 2-step smoke run, skips the validation)."""
        return self.val_every > 0 and self.steps >= self.val_every

    @property
    def checkpoint_every(self) -> int:
        return self.val_every if self.save_every is None else self.save_every


PRESETS: dict[str, dict] = {
    # small CPU run: the dataclass defaults
    "cpu": {},
    # the paper (Sec. 4 / App. A of the attention-credit papers, ROLL defaults): global batch
    # 512 sequences (64 prompts x 8) per optimizer step, "micro-batch size of 32, with 16
    # gradient accumulation steps": 32 sequences per micro-step over ALL ranks (4 per GPU on 8),
    # lr 1e-6, T 0.99, top-p 1, top-k 100, 1K responses (use --max-new-tokens 8192 for 8K),
    # gamma 1.5, top 40%, middle layers, no KL, no entropy term, Eq. 5's seq-mean-token-mean
    # aggregation; ZeRO-2, bf16 on GPU. Memory (`ft train --dry-run`): gradient checkpointing
    # and chunked log-probs on; generation batches sized from the KV-cache budget.
    "paper": dict(
        prompts=64, group_size=8, micro_batch=32, global_micro_batch=32, lr=1e-6, temperature=0.99, top_p=1.0, top_k=100,
        max_new_tokens=1024, gamma=1.5, ratio=0.4, layers="mid", steps=500, zero_stage=2,
        kl_coef=0.0, entropy_coef=0.0, grad_clip=1.0, val_every=25,
        val_size=256, keep_last=2, train_size=0, data_source="files", loss_agg="seq-mean-token-mean",
        gradient_checkpointing=True, logprob_chunk=1024, gen_batch_size="auto",
        # padded micro-batches until the packed path (flash varlen) is measured on GPUs
        pack=False, share_prompt=False,
    ),
}


def resolve_config(preset: str = "cpu", **overrides) -> TrainConfig:
    """TrainConfig from a preset plus explicit overrides (None = not given)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown train options: {', '.join(sorted(unknown))}")
    kw = dict(PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**kw, preset=preset) if "preset" not in kw else TrainConfig(**kw)
    cfg.validate()
    return cfg
