"""`ft train`'s options: `TrainConfig` (its field metadata generates the CLI, the presets and
`config.json`), the presets, and `resolve_config`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ftcli import grpo
from ftcli.credit import (
    CREDIT_TOKENS,
    SELECT_MODES,
    WEIGHTINGS,
    CreditOptions,
    describe_rules,
    get_rule,
)
from ftcli.models import DEFAULT_POLICY
from ftcli.options import option

CREDIT_PASSES = ("fused", "separate")


def _opt(default, help: str, panel: str = "Training", cli: bool = True, choices=None):
    return option(default, help, panel, cli, choices)


@dataclass
class TrainConfig:
    """Every option of `ft train` (the CLI is generated from these fields).

    Defaults are the CPU setting (`--preset cpu`): GRPO on the shipped default policy, 16
    prompts x 8 responses per step from a pool of 32 training problems, lr 1e-4, 30 steps
    (about ten minutes on one CPU core), validated on 200 held-out problems before training
    and every 10 steps.
    `PRESETS["paper"]` holds the paper's settings.
    """

    # run
    task: str = _opt("countdown", "Task plugin (ftcli.get_task): countdown, gsm8k, math, ...", "Run")
    model: str = _opt(DEFAULT_POLICY, "Policy: alias (default-policy: the shipped 5.9M Countdown policy; smollm2-135m; qwen2.5-coder-0.5b), local folder or hub id.", "Run")
    out: str = _opt("runs/train", "Run directory (config.json, metrics.jsonl, checkpoints/).", "Run")
    steps: int = _opt(30, "Optimizer steps (rollout batches).", "Run")
    seed: int = _opt(0, "Seed of data order, sampling and the random credit rule.", "Run")
    train_size: int = _opt(32, "Train on the first N problems of the task's train split, revisited in a new seeded order each pass (0 = the whole split). The CPU default, 32, lets 30 steps show the reward rise on them; held-out accuracy is the validation's.", "Run")
    # batch
    prompts: int = _opt(16, "Prompts per step (global, over all ranks).", "Batch")
    group_size: int = _opt(8, "Responses per prompt (G).", "Batch")
    micro_batch: int = _opt(16, "Sequences per forward/backward on each rank.", "Batch")
    mini_batches: int = _opt(1, "Optimizer steps per rollout batch (>1: PPO-style, old log-probs from a no-grad pass).", "Batch")
    # sampling
    max_new_tokens: int = _opt(192, "Maximum response length (tokens).", "Sampling")
    temperature: float = _opt(1.0, "Sampling temperature (also divides the update logits).", "Sampling")
    top_p: float = _opt(1.0, "Nucleus sampling (1 = off).", "Sampling")
    top_k: int = _opt(0, "Top-k sampling (0 = off).", "Sampling")
    gen_batch_size: int = _opt(128, "Rollouts per generate() call.", "Sampling")
    # objective
    lr: float = _opt(1e-4, "AdamW learning rate (constant).", "Objective")
    weight_decay: float = _opt(0.01, "AdamW weight decay.", "Objective")
    eps_low: float = _opt(0.2, "Clip range below 1 for the ratio.", "Objective")
    eps_high: float = _opt(0.2, "Clip range above 1 for the ratio.", "Objective")
    loss_agg: str = _opt("token-mean", "Loss aggregation.", "Objective", choices=grpo.AGG_MODES)
    norm_adv_std: bool = _opt(True, "Divide group-centred rewards by the group std (off: Dr. GRPO).", "Objective")
    kl_coef: float = _opt(0.0, "KL(pi || pi_ref) coefficient, k3 estimator (0 = no reference model).", "Objective")
    entropy_coef: float = _opt(0.0, "Entropy bonus coefficient (0 = none).", "Objective")
    grad_clip: float = _opt(1.0, "Gradient clipping (global norm; 0 = off).", "Objective")
    # credit
    credit: str = _opt("flow", f"Credit rule: {describe_rules()}.", "Credit")
    ratio: float = _opt(0.4, "Fraction of response tokens credited (binary weighting).", "Credit")
    select: str = _opt("top", "Credit the highest- or lowest-scoring tokens.", "Credit", choices=SELECT_MODES)
    gamma: float = _opt(1.5, "Weight of credited tokens (continuous: the maximum weight).", "Credit")
    weighting: str = _opt("binary", "Scores -> weights: binary (paper) or a continuous map (Table 7).", "Credit", choices=WEIGHTINGS)
    mass: float = _opt(0.4, "Mass threshold of --weighting mass (0.2-0.8).", "Credit")
    nonneg_only: bool = _opt(False, "Credit only sequences with advantage >= 0.", "Credit")
    layers: str = _opt("mid", "Layers averaged into W: mid|early|late|all|A:B.", "Credit")
    credit_pass: str = _opt("fused", "fused: capture W in the update forward; separate: extra no-grad pass.", "Credit", choices=CREDIT_PASSES)
    fai_window: str = _opt("10:50", "Query window LO:HI of the attention (FAI) rule.", "Credit")
    credit_tokens: str = _opt("all", "Tokens that may be credited: all, or one class (Sec. 5.2; structural: no letter or digit, semantic: the rest).", "Credit", choices=CREDIT_TOKENS)
    # engine
    zero_stage: int = _opt(0, "DeepSpeed ZeRO stage 0-3.", "Engine")
    bf16: bool | None = _opt(None, "bf16 training (default: on with a GPU, off on CPU).", "Engine")
    deepspeed_config: str | None = _opt(None, "JSON file merged over the generated DeepSpeed config.", "Engine")
    attn_implementation: str = _opt("sdpa", "Attention kernel of the policy (sdpa, eager, flash_attention_2).", "Engine")
    # evaluation, logging, checkpoints
    val_every: int = _opt(10, "Validate before training, every N steps and at the end (0 = never).", "Logging")
    val_size: int = _opt(200, "Validation problems (the first N of the task's validation split).", "Logging")
    val_temperature: float | None = _opt(None, "Validation sampling temperature (default: --temperature, so it measures the policy being trained; 0 = greedy). Seeded: every validation draws the same random numbers.", "Logging")
    save_every: int | None = _opt(None, "Checkpoint every N steps (default: --val-every; the last step always).", "Logging")
    keep_last: int = _opt(2, "Step checkpoints kept (plus the best-validation one).", "Logging")
    log_samples: int = _opt(2, "Responses per step written to samples.jsonl.", "Logging")
    progress: bool = _opt(True, "Rich progress bar and one line per step.", "Logging")
    # provenance (not options)
    preset: str = _opt("cpu", "Preset the defaults came from.", cli=False)

    # -- derived -------------------------------------------------------------------------------
    def validate(self) -> None:
        get_rule(self.credit)
        CreditOptions(**self.credit_options_kwargs())
        if self.loss_agg not in grpo.AGG_MODES:
            raise ValueError(f"--loss-agg must be one of {', '.join(grpo.AGG_MODES)}")
        if self.credit_tokens not in CREDIT_TOKENS:
            raise ValueError(f"--credit-tokens must be one of {', '.join(CREDIT_TOKENS)}")
        if self.credit_pass not in CREDIT_PASSES:
            raise ValueError(f"--credit-pass must be one of {', '.join(CREDIT_PASSES)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"--zero-stage must be 0-3, got {self.zero_stage}")
        if self.val_temperature is not None and self.val_temperature < 0:
            raise ValueError("--val-temperature must be >= 0 (0 = greedy)")
        if self.train_size < 0:
            raise ValueError("--train-size must be >= 0 (0 = the whole train split)")
        for name in ("steps", "prompts", "group_size", "micro_batch", "mini_batches", "max_new_tokens", "gen_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.temperature <= 0:
            raise ValueError("--temperature must be > 0 for GRPO rollouts")

    def credit_options_kwargs(self) -> dict:
        lo, _, hi = self.fai_window.partition(":")
        try:
            window = (int(lo), int(hi))
        except ValueError:
            raise ValueError(f"--fai-window must be LO:HI, got {self.fai_window!r}") from None
        return dict(
            ratio=self.ratio, select=self.select, gamma=self.gamma, weighting=self.weighting,
            mass=self.mass, nonneg_only=self.nonneg_only, fai_window=window,
        )

    @property
    def checkpoint_every(self) -> int:
        return self.val_every if self.save_every is None else self.save_every


PRESETS: dict[str, dict] = {
    # small CPU run: the dataclass defaults
    "cpu": {},
    # the paper (Sec. 4 / App. A of the attention-credit papers, ROLL defaults): global batch
    # 512 sequences (64 prompts x 8) per optimizer step, micro-batch 32, lr 1e-6, T 0.99,
    # top-p 1, top-k 100, 1K responses (use --max-new-tokens 8192 for 8K), gamma 1.5,
    # top 40%, middle layers, no KL, no entropy term; ZeRO-2, bf16 on GPU.
    "paper": dict(
        prompts=64, group_size=8, micro_batch=32, lr=1e-6, temperature=0.99, top_p=1.0, top_k=100,
        max_new_tokens=1024, gamma=1.5, ratio=0.4, layers="mid", steps=500, zero_stage=2,
        kl_coef=0.0, entropy_coef=0.0, grad_clip=1.0, gen_batch_size=64, val_every=25,
        val_size=256, keep_last=2, train_size=0,
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
