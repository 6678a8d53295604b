"""The GRPO training loop on a DeepSpeed engine, with pluggable token credit.

One step (= one optimizer step per mini-batch, one mini-batch by default):

    prompts (seeded order, sharded over ranks) -> G responses each (ftcli.generation)
    -> rewards (task verifier) -> group-normalised advantages (ftcli.grpo)
    -> for each micro-batch: policy forward [capturing W inside it when the rule needs
       attention; or `credit_pass="separate"`: a no-grad ftcli.attention.mean_attention pass]
       -> credit weights (ftcli.credit) -> weighted clipped surrogate + optional KL
       -> aggregate by the step's GLOBAL token/sequence count -> engine.backward / engine.step

The run directory (`--out`):

    config.json        every option, resolved (plus world size, DeepSpeed config, versions)
    metrics.jsonl      one row per step (rewards, accuracy, lengths, credit, loss, grad norm,
                       clip fraction, timings; `val_accuracy` on validation steps), and with
                       --val-every a row {"step": 0, "val_accuracy": ...} for the starting policy
    samples.jsonl      a few responses per step with their tokens and credit weights
    checkpoints/step_XXXXXX/   HF safetensors (`from_pretrained`-loadable) + tokenizer,
                       trainer_state.json, rng_state_rank*.pt, ds/ (DeepSpeed optimizer state)
    checkpoints/final/ HF weights + tokenizer + trainer_state.json of the last step

Every file is written atomically (temp + rename; jsonl rows are appended whole and fsynced).
`resume=True` continues from the newest complete checkpoint; on CPU the metrics (timings
aside) equal those of an uninterrupted run because every random draw is derived from
(seed, step, sequence) and DeepSpeed restores fp32 weights and optimizer state exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ftcli import grpo
from ftcli.config import cache_dir
from ftcli.credit import (
    SELECT_MODES,
    WEIGHTINGS,
    CreditInputs,
    CreditOptions,
    compute_credit,
    get_rule,
)
from ftcli.io import append_jsonl, atomic_write_json, atomic_write_text
from ftcli.models import DEFAULT_POLICY

CREDIT_PASSES = ("fused", "separate")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
def _opt(default, help: str, panel: str = "Training", cli: bool = True, choices=None):
    return field(default=default, metadata={"help": help, "panel": panel, "cli": cli, "choices": choices})


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
    credit: str = _opt("flow", "Credit rule: none, random, entropy, gradient, correlation, attention, flow.", "Credit")
    ratio: float = _opt(0.4, "Fraction of response tokens credited (binary weighting).", "Credit")
    select: str = _opt("top", "Credit the highest- or lowest-scoring tokens.", "Credit", choices=SELECT_MODES)
    gamma: float = _opt(1.5, "Weight of credited tokens (continuous: the maximum weight).", "Credit")
    weighting: str = _opt("binary", "Scores -> weights: binary (paper) or a continuous map (Table 7).", "Credit", choices=WEIGHTINGS)
    mass: float = _opt(0.4, "Mass threshold of --weighting mass (0.2-0.8).", "Credit")
    nonneg_only: bool = _opt(False, "Credit only sequences with advantage >= 0.", "Credit")
    layers: str = _opt("mid", "Layers averaged into W: mid|early|late|all|A:B.", "Credit")
    credit_pass: str = _opt("fused", "fused: capture W in the update forward; separate: extra no-grad pass.", "Credit", choices=CREDIT_PASSES)
    fai_window: str = _opt("10:50", "Query window LO:HI of the attention (FAI) rule.", "Credit")
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


# ---------------------------------------------------------------------------------------------
# Distributed environment
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed_env() -> None:
    """Environment DeepSpeed needs, set before it is imported.

    - Not started by a launcher (no RANK/WORLD_SIZE): single-process torch.distributed vars
      (RANK=0, WORLD_SIZE=1, LOCAL_RANK=0, MASTER_ADDR=127.0.0.1, a free MASTER_PORT);
      without them DeepSpeed tries MPI discovery and fails.
    - `TORCH_EXTENSIONS_DIR` defaults to `<ftcli cache>/torch_extensions`, so the ~1 min JIT
      build of DeepSpeed's shm_comm op happens once per machine (ops are built with
      -march=native; do not share the cache between CPU models).
    - `DS_ACCELERATOR=cpu` when no CUDA device is visible.
    """
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _import_deepspeed():
    setup_distributed_env()
    import logging

    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def build_ds_config(cfg: TrainConfig, world_size: int, seqs_per_rank: int, use_bf16: bool) -> dict:
    """The DeepSpeed config from the options (user JSON merged on top, recursively)."""
    gas = math.ceil(seqs_per_rank / cfg.micro_batch)
    ds = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": gas,
        "train_batch_size": cfg.micro_batch * gas * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bool(use_bf16)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.zero_stage == 3:
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.deepspeed_config:
        with open(cfg.deepspeed_config, encoding="utf-8") as fh:
            user = json.load(fh)
        _merge(ds, user)
        if (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) != (cfg.micro_batch, gas):
            raise ValueError(
                f"{cfg.deepspeed_config}: set batch sizes with --micro-batch / --prompts / --group-size "
                "/ --mini-batches, not in the DeepSpeed config (the loop accumulates "
                f"{gas} micro-batches of {cfg.micro_batch})"
            )
        ds["train_batch_size"] = cfg.micro_batch * gas * world_size
    return ds


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


# ---------------------------------------------------------------------------------------------
# Sequences and batches
# ---------------------------------------------------------------------------------------------
@dataclass
class Seq:
    """One rollout, teacher-forced: prompt ids then response ids."""

    ids: list[int]
    n_prompt: int
    question: list[bool]  # [n_prompt]
    answer: list[bool]  # [n_response]
    advantage: float
    seed: int
    reward: float
    correct: bool
    has_answer: bool
    finished: bool
    index: int  # position in the rank's rollout list
    rollout: object = None
    sample: dict | None = None


def collate(seqs: list[Seq], pad_id: int, device) -> dict:
    """Right-padded tensors of a micro-batch (each sequence starts at position 0)."""
    B, T = len(seqs), max(len(s.ids) for s in seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    am = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    resp = torch.zeros(B, T, dtype=torch.bool)
    q = torch.zeros(B, T, dtype=torch.bool)
    a = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(seqs):
        n, p = len(s.ids), s.n_prompt
        ids[b, :n] = torch.tensor(s.ids, dtype=torch.long)
        am[b, :n] = True
        resp[b, p:n] = True
        q[b, :p] = torch.tensor(s.question, dtype=torch.bool)
        a[b, p:n] = torch.tensor(s.answer, dtype=torch.bool)
    adv = torch.tensor([s.advantage for s in seqs], dtype=torch.float32)  # [B]
    seeds = torch.tensor([s.seed for s in seqs], dtype=torch.long)  # [B]
    first = max(1, min(s.n_prompt for s in seqs))  # first response position in the batch
    out = dict(input_ids=ids, attention_mask=am, response_mask=resp, question_mask=q,
               answer_mask=a, advantages=adv)
    out = {k: v.to(device) for k, v in out.items()}
    out["seeds"], out["first"] = seeds, first
    return out


def _derive_seed(*parts) -> int:
    h = hashlib.blake2b("\x00".join(str(p) for p in parts).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 62) - 1)


def _prompt_offsets(tokenizer, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Char offsets of the prompt tokens `ids` inside `text` (tokenizer offsets when they
    reproduce `ids`, else incremental decoding of `ids` against `text`)."""
    for add in (False, True):
        try:
            enc = tokenizer(text, add_special_tokens=add, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):  # slow tokenizer
            break
        if list(enc["input_ids"]) == list(ids):
            return [tuple(o) for o in enc["offset_mapping"]]
    from ftcli.generation import token_offsets

    return token_offsets(tokenizer, ids, text)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
class _Timer:
    def __init__(self):
        self.t: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


class _CtrlC:
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
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False


@contextlib.contextmanager
def _quiet_hf_progress():
    """No tqdm bar from save_pretrained ("Writing model shards") under our progress bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _get_task(name: str):
    try:
        from ftcli import get_task  # type: ignore[attr-defined]
    except ImportError:
        from ftcli.tasks import get_task  # type: ignore[no-redef]
    return get_task(name)


def _versions() -> dict:
    import transformers

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import deepspeed

        out["deepspeed"] = deepspeed.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """GRPO with token credit on a DeepSpeed engine. `Trainer(cfg).run()` -> run directory."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, console=None, task=None):
        cfg.validate()
        self.cfg, self.resume = cfg, resume
        self.task = task  # a task object (tests); default: ftcli.get_task(cfg.task)
        self.ds = _import_deepspeed()
        import torch.distributed as dist

        self.dist = dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if cfg.prompts % self.world:
            raise ValueError(f"--prompts ({cfg.prompts}) must be divisible by the world size ({self.world})")
        self.prompts_per_rank = cfg.prompts // self.world
        seqs = self.prompts_per_rank * cfg.group_size
        if seqs % cfg.mini_batches:
            raise ValueError(f"sequences per rank ({seqs}) must be divisible by --mini-batches ({cfg.mini_batches})")
        self.seqs_per_mini = seqs // cfg.mini_batches
        self.rule = get_rule(cfg.credit)
        self.credit_opts = CreditOptions(**cfg.credit_options_kwargs())
        self.run_dir = Path(cfg.out)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.console = console
        self.is_main = self.rank == 0
        self._perm_cache: dict[int, list[int]] = {}
        self.last_saved = -1
        self.completed = 0  # last step whose optimizer update is done
        self.ctrl_c = _CtrlC()
        self.best_val: tuple[float, int] | None = None

    # -- setup ---------------------------------------------------------------------------------
    def _setup(self) -> int:
        cfg = self.cfg
        from ftcli.models import load_model, resolve_model

        self._prepare_run_dir()
        if self.task is None:
            self.task = _get_task(cfg.task)
        model, tok = load_model(cfg.model, attn_implementation=cfg.attn_implementation)
        self.tokenizer = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        use_cuda = torch.cuda.is_available()
        self.use_bf16 = use_cuda if cfg.bf16 is None else bool(cfg.bf16)
        if self.use_bf16 and not use_cuda:
            raise ValueError("--bf16 is for GPUs; CPU training runs in fp32")
        self.ds_config = build_ds_config(cfg, self.world, self.seqs_per_mini, self.use_bf16)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        ref = None
        if cfg.kl_coef > 0:
            import copy

            ref = copy.deepcopy(model).eval().requires_grad_(False)
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.engine, self.optimizer, _, _ = self.ds.initialize(model=model, optimizer=opt, config=self.ds_config)
        self.device = self.engine.device
        self.ref = None
        if ref is not None:
            if cfg.zero_stage == 3:
                ref_cfg = {k: v for k, v in self.ds_config.items() if k != "gradient_clipping"}
                self.ref, *_ = self.ds.initialize(model=ref, config=ref_cfg)
            else:
                self.ref = ref.to(self.device, dtype=torch.bfloat16 if self.use_bf16 else torch.float32)
        self.train_data = self.task.load("train")
        if cfg.train_size:
            self.train_data = list(self.train_data)[: cfg.train_size]
        if not self.train_data:
            raise ValueError(f"task {cfg.task!r} has no training samples")
        self.val_data = self._load_val() if cfg.val_every > 0 else []
        start = self._maybe_resume()
        if self.is_main:
            resolved = asdict(cfg)
            resolved.update(
                model_path=resolve_model(cfg.model), world_size=self.world,
                gradient_accumulation_steps=self.gas, sequences_per_step=cfg.prompts * cfg.group_size,
                deepspeed=self.ds_config, bf16_resolved=self.use_bf16, versions=_versions(),
                credit_needs=sorted(self.rule.needs),
            )
            atomic_write_json(self.run_dir / "config.json", resolved)
        return start

    def _prepare_run_dir(self):
        if self.is_main:
            if not self.resume and (self.run_dir / "metrics.jsonl").exists():
                raise ValueError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._barrier()

    def _load_val(self):
        try:
            data = self.task.load("validation")
        except (KeyError, ValueError, FileNotFoundError) as e:
            self._print(f"[yellow]no validation split for {self.cfg.task} ({e}); validation off[/]")
            return []
        return list(data)[: self.cfg.val_size]

    # -- data ----------------------------------------------------------------------------------
    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(_derive_seed(self.cfg.seed, "data", epoch))
            self._perm_cache = {epoch: torch.randperm(len(self.train_data), generator=g).tolist()}
        return self._perm_cache[epoch]

    def prompts_for_step(self, step: int) -> list[int]:
        """Dataset indices of this rank's prompts at `step` (1-based): a seeded permutation per
        epoch, consumed `prompts` at a time, rank r taking its slice."""
        n = len(self.train_data)
        base = (step - 1) * self.cfg.prompts + self.rank * self.prompts_per_rank
        out = []
        for pos in range(base, base + self.prompts_per_rank):
            out.append(self._perm(pos // n)[pos % n])
        return out

    # -- rollouts ------------------------------------------------------------------------------
    def _render(self, sample) -> str:
        from ftcli.generation import render_prompt

        prefix_fn = getattr(self.task, "assistant_prefix", None)
        prefix = prefix_fn(sample) if callable(prefix_fn) else ""
        return render_prompt(self.tokenizer, self.task.prompt(sample), assistant_prefix=prefix or "")

    @contextlib.contextmanager
    def _full_params(self):
        """ZeRO-3: gather every parameter on every rank for generation (no collectives inside
        `generate`, so ranks may stop at different lengths)."""
        if self.cfg.zero_stage == 3:
            with self.ds.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
                yield
        else:
            yield

    def _generate(self, prompts: list[str], n: int, temperature: float, seed: int, max_new: int):
        from ftcli.generation import generate

        cfg = self.cfg
        with self._full_params(), torch.no_grad():
            return generate(
                self.engine.module, self.tokenizer, prompts, n=n, max_new_tokens=max_new,
                temperature=temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=seed,
                batch_size=cfg.gen_batch_size,
            )

    def rollouts(self, step: int) -> list[Seq]:
        """Generate, reward and build this rank's sequences for `step`."""
        from ftcli.spans import find_question_span, span_to_token_mask

        cfg = self.cfg
        idx = self.prompts_for_step(step)
        samples = [self.train_data[i] for i in idx]
        texts = [self._render(s) for s in samples]
        groups = self._generate(texts, cfg.group_size, cfg.temperature, _derive_seed(cfg.seed, "gen", step), cfg.max_new_tokens)
        rewards = [float(self.task.reward(ro.response_text, s)) for s, g in zip(samples, groups, strict=True) for ro in g]
        adv = grpo.group_advantages(torch.tensor(rewards), cfg.group_size, cfg.norm_adv_std).tolist()
        seqs, k = [], 0
        for p, (sample, group) in enumerate(zip(samples, groups, strict=True)):
            p_ids = list(group[0].prompt_ids)
            p_off = _prompt_offsets(self.tokenizer, texts[p], p_ids)
            q_mask = span_to_token_mask(p_off, find_question_span(texts[p], str(sample.get("question", ""))), len(p_ids))
            for j, ro in enumerate(group):
                span = self.task.answer_span(ro.response_text)
                a_mask = span_to_token_mask(ro.response_offsets, span, len(ro.response_ids))
                gidx = (step - 1) * cfg.prompts * cfg.group_size + (self.rank * self.prompts_per_rank + p) * cfg.group_size + j
                seqs.append(Seq(
                    ids=p_ids + list(ro.response_ids), n_prompt=len(p_ids), question=q_mask.tolist(),
                    answer=a_mask.tolist(), advantage=adv[k], seed=_derive_seed(cfg.seed, "credit", gidx),
                    reward=rewards[k], correct=bool(self.task.verify(ro.response_text, sample)),
                    has_answer=span is not None, finished=bool(ro.finished), index=k, rollout=ro, sample=sample,
                ))
                k += 1
        return seqs

    # -- the update ----------------------------------------------------------------------------
    def _forward_logp(self, module, batch, need_entropy: bool, need_grad: bool):
        """Policy log-probs [B, T] (0 before `first`) and, optionally, entropies [B, T]."""
        ids, first = batch["input_ids"], batch["first"]
        T = ids.shape[1]
        ctx = contextlib.nullcontext() if need_grad else torch.no_grad()
        with ctx:
            out = module(input_ids=ids, attention_mask=batch["attention_mask"].long(),
                         logits_to_keep=T - first + 1, use_cache=False)
            logits = out.logits[:, :-1]  # [B, T - first, V]: predicts tokens first..T-1
            logp = grpo.token_logprobs(logits, ids[:, first:], self.cfg.temperature)  # [B, T-first]
            ent = None
            if need_entropy:  # with gradient only for an entropy bonus
                bonus = need_grad and self.cfg.entropy_coef > 0
                with contextlib.nullcontext() if bonus else torch.no_grad():
                    ent = grpo.token_entropy(logits, self.cfg.temperature)  # [B, T - first]
        pad = (first, 0)
        logp = torch.nn.functional.pad(logp, pad)  # [B, T]
        ent = torch.nn.functional.pad(ent, pad) if ent is not None else None
        return logp, ent

    def _micro_step(self, batch, old_logp, norm, timer: _Timer, stats: dict, sample_rows: list, seqs):
        cfg = self.cfg
        needs = self.rule.needs
        want_attn = "attention" in needs
        W = None
        if want_attn and cfg.credit_pass == "separate":
            from ftcli.attention import mean_attention

            with timer("credit"), torch.no_grad():
                W = mean_attention(self.engine.module, batch["input_ids"], batch["attention_mask"].long(), layers=cfg.layers).float()
        need_entropy = "entropy" in needs or cfg.entropy_coef > 0
        with timer("fwd_bwd"):
            if want_attn and cfg.credit_pass == "fused":
                from ftcli.attention import capture_attention

                with capture_attention(self.engine.module, layers=cfg.layers,
                                       attention_mask=batch["attention_mask"].long()) as cap:
                    logp, ent = self._forward_logp(self.engine, batch, need_entropy, True)
                W = cap.W
            else:
                logp, ent = self._forward_logp(self.engine, batch, need_entropy, True)
        with timer("credit"):
            inputs = CreditInputs(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                response_mask=batch["response_mask"], question_mask=batch["question_mask"],
                answer_mask=batch["answer_mask"], advantages=batch["advantages"], seeds=batch["seeds"],
                W=W, logp=logp.detach() if "logp" in needs else None,
                entropy=ent.detach() if ent is not None else None,
                model=self.engine.module if "model" in needs else None, temperature=cfg.temperature,
            )
            credit = compute_credit(self.rule, inputs, self.credit_opts)
            del W, inputs
        with timer("fwd_bwd"):
            resp = batch["response_mask"]
            old = logp.detach() if old_logp is None else old_logp
            loss_mat, clipped = grpo.clipped_surrogate(
                logp, old, batch["advantages"], credit.weights.to(logp.device), cfg.eps_low, cfg.eps_high
            )
            if self.ref is not None:
                ref_logp, _ = self._forward_logp(self.ref, batch, False, False)
                kl = grpo.kl_k3(logp, ref_logp)
                loss_mat = loss_mat + cfg.kl_coef * kl
                stats["kl"] += float((kl.detach() * resp).sum())
            if cfg.entropy_coef > 0:
                loss_mat = loss_mat - cfg.entropy_coef * ent
            share = grpo.aggregate_loss(loss_mat, resp, cfg.loss_agg, norm)
            self.engine.backward(share * grpo.backward_scale(self.world), scale_wrt_gas=False)
        rf = resp.float()
        stats["loss"] += float(share.detach())
        stats["clipped"] += float((clipped.float() * rf).sum())
        stats["credited"] += float((credit.credited & resp).sum())
        stats["fallback"] += float(credit.fallback.sum())
        if ent is not None:
            stats["entropy"] += float((ent.detach() * rf).sum())
        for b, s in enumerate(seqs):
            if s.index < cfg.log_samples:
                sample_rows.append((s, credit.weights[b].cpu(), None if credit.scores is None else credit.scores[b].cpu()))

    def _optimizer_step(self, timer: _Timer) -> float | None:
        """engine.step() at the accumulation boundary; returns the pre-clip global grad norm."""
        norm = None
        if self.cfg.zero_stage == 0:  # DeepSpeed reports no norm at stage 0: compute it
            sq = sum(float(p.grad.float().pow(2).sum()) for p in self.engine.module.parameters() if p.grad is not None)
            norm = math.sqrt(sq)
        self.ctrl_c.defer = True  # the weights change now: finish the step before stopping
        with timer("optim"):
            self.engine.step()
        if norm is None:
            g = self.engine.get_global_grad_norm()
            norm = None if g is None else float(g)
        return norm

    def _all_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            t = t.to(self.device)
            self.dist.all_reduce(t)
        return t.cpu().tolist()

    def update(self, seqs: list[Seq], timer: _Timer) -> tuple[dict, list, list]:
        """The policy update on this rank's sequences: `mini_batches` optimizer steps, each
        accumulating its micro-batches. Returns (sums of per-token stats, logged sample rows,
        grad norms)."""
        cfg = self.cfg
        if cfg.mini_batches > 1:
            self._compute_old_logp(seqs, timer)
        self.engine.train()
        stats = dict.fromkeys(("loss", "clipped", "credited", "fallback", "kl", "entropy"), 0.0)
        sample_rows: list = []
        grad_norms = []
        for mb in range(cfg.mini_batches):
            mini = seqs[mb * self.seqs_per_mini : (mb + 1) * self.seqs_per_mini]
            n_tok, n_seq = self._all_sum([sum(len(s.ids) - s.n_prompt for s in mini), len(mini)])
            norm = grpo.agg_normaliser(cfg.loss_agg, n_tok, n_seq, cfg.max_new_tokens)
            micro = [mini[i : i + cfg.micro_batch] for i in range(0, len(mini), cfg.micro_batch)]
            for m in micro:
                batch = collate(m, self.pad_id, self.device)
                # pi_old: the sampling policy; with one update per batch it is the current one
                old = self._old_logp_for(m, batch) if cfg.mini_batches > 1 else None
                self._micro_step(batch, old, norm, timer, stats, sample_rows, m)
                if m is not micro[-1]:
                    self.engine.step()  # a non-boundary micro-step: only counts
            grad_norms.append(self._optimizer_step(timer))
        self.engine.eval()
        stats["loss"] /= cfg.mini_batches  # the mean of the mini-batch objectives
        return stats, sample_rows, grad_norms

    def train_step(self, step: int) -> dict:
        cfg = self.cfg
        timer = _Timer()
        t0 = time.perf_counter()
        with timer("gen"):
            seqs = self.rollouts(step)
        stats, sample_rows, grad_norms = self.update(seqs, timer)
        # -- metrics (summed over ranks) --
        rewards = [s.reward for s in seqs]
        groups = [rewards[i : i + cfg.group_size] for i in range(0, len(rewards), cfg.group_size)]
        resp_tokens = sum(len(s.ids) - s.n_prompt for s in seqs)
        sums = self._all_sum([
            len(seqs), sum(rewards), sum(r * r for r in rewards), sum(s.correct for s in seqs),
            resp_tokens, stats["credited"], sum(not s.has_answer for s in seqs), stats["fallback"],
            sum(not s.finished for s in seqs), stats["clipped"], stats["loss"], stats["kl"],
            stats["entropy"], sum(max(g) == min(g) for g in groups), len(groups),
        ])
        (n, r_sum, r_sq, correct, toks, credited, no_ans, fallback, trunc, clipped, loss, kl, ent,
         flat, n_groups) = sums
        mean = r_sum / n
        row = {
            "step": step,
            "reward_mean": mean,
            "reward_std": math.sqrt(max(r_sq / n - mean * mean, 0.0)),
            "accuracy": correct / n,
            "response_len": toks / n,
            "truncated": trunc / n,
            "frac_credited": credited / max(toks, 1.0),
            "no_answer": int(no_ans),
            "credit_fallback": int(fallback),
            "groups_no_signal": flat / n_groups,
            "loss": loss,
            "grad_norm": None if any(g is None for g in grad_norms) else sum(grad_norms) / len(grad_norms),
            "clip_frac": clipped / max(toks, 1.0),
            "lr": cfg.lr,
        }
        if self.ref is not None:
            row["kl"] = kl / max(toks, 1.0)
        if "entropy" in self.rule.needs or cfg.entropy_coef > 0:
            row["entropy"] = ent / max(toks, 1.0)
        for k in ("gen", "credit", "fwd_bwd", "optim"):
            row[f"time_{k}"] = round(timer.t.get(k, 0.0), 4)
        row["time_step"] = round(time.perf_counter() - t0, 4)
        if self.is_main:
            self._write_samples(step, sample_rows)
        return row

    def _old_logp_for(self, micro: list[Seq], batch) -> torch.Tensor:
        """log pi_old of a micro-batch, computed before the step's first update."""
        rows = [self._old_logp[s.index] for s in micro]
        T = batch["input_ids"].shape[1]
        out = torch.zeros(len(micro), T, device=self.device)
        for b, r in enumerate(rows):
            out[b, : r.numel()] = r.to(self.device)
        return out

    def _compute_old_logp(self, seqs: list[Seq], timer: _Timer) -> None:
        self._old_logp = {}
        with timer("old_logp"):
            for i in range(0, len(seqs), self.cfg.micro_batch):
                m = seqs[i : i + self.cfg.micro_batch]
                batch = collate(m, self.pad_id, self.device)
                logp, _ = self._forward_logp(self.engine.module, batch, False, False)
                for b, s in enumerate(m):
                    self._old_logp[s.index] = logp[b, : len(s.ids)].detach().cpu()

    # -- validation ----------------------------------------------------------------------------
    def validate(self, step: int) -> float | None:
        if not self.val_data:
            return None
        cfg = self.cfg
        mine = self.val_data[self.rank :: self.world]
        correct = 0
        if mine:
            texts = [self._render(s) for s in mine]
            temp = cfg.temperature if cfg.val_temperature is None else cfg.val_temperature
            groups = self._generate(texts, 1, temp, _derive_seed(cfg.seed, "val"), cfg.max_new_tokens)
            correct = sum(bool(self.task.verify(g[0].response_text, s)) for s, g in zip(mine, groups, strict=True))
        c, n = self._all_sum([correct, len(mine)])
        return c / max(n, 1.0)

    # -- files ---------------------------------------------------------------------------------
    def _write_samples(self, step: int, rows: list) -> None:
        for s, w, sc in rows[: self.cfg.log_samples]:
            ro = s.rollout
            n_p = s.n_prompt
            wr = w[n_p : len(s.ids)].tolist()
            toks = [ro.response_text[a:b] for a, b in ro.response_offsets]
            rec = {
                "step": step, "id": s.sample.get("id"), "prompt": ro.prompt_text,
                "response": ro.response_text, "reward": s.reward, "correct": s.correct,
                "advantage": round(s.advantage, 6), "has_answer": s.has_answer,
                "response_ids": list(ro.response_ids), "tokens": toks,
                "weights": [round(x, 4) for x in wr],
                "credited": [i for i, x in enumerate(wr) if x != 1.0],
                "answer_tokens": [i for i, x in enumerate(s.answer) if x],
            }
            if sc is not None:
                rec["scores"] = [float(f"{x:.4g}") for x in sc[n_p : len(s.ids)].tolist()]
            append_jsonl(self.run_dir / "samples.jsonl", rec)

    def _barrier(self):
        if self.dist.is_available() and self.dist.is_initialized() and self.world > 1:
            self.dist.barrier()

    def save_checkpoint(self, step: int, final: bool = False) -> Path:
        """checkpoints/step_XXXXXX (HF safetensors + tokenizer + DeepSpeed state + RNG +
        trainer_state.json), written to a temp folder and renamed; `final` also refreshes
        checkpoints/final (HF weights + trainer state)."""
        name = f"step_{step:06d}"
        dst, tmp = self.ckpt_dir / name, self.ckpt_dir / f".{name}.tmp"
        was, self.ctrl_c.defer = self.ctrl_c.defer, True
        try:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self._barrier()
            self.engine.save_checkpoint(str(tmp / "ds"), tag="state", client_state={"ft_step": step})
            torch.save(
                {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                tmp / f"rng_state_rank{self.rank}.pt",
            )
            sd = self.engine._zero3_consolidated_16bit_state_dict() if self.cfg.zero_stage == 3 else None
            self._barrier()
            if self.is_main:
                with _quiet_hf_progress():
                    self.engine.module.save_pretrained(tmp, state_dict=sd)
                self.tokenizer.save_pretrained(tmp)
                state = {"step": step, "prompts_consumed": step * self.cfg.prompts, "world_size": self.world,
                         "zero_stage": self.cfg.zero_stage, "best_val": self.best_val}
                atomic_write_json(tmp / "trainer_state.json", state)
                _replace_dir(tmp, dst)
                if final:
                    self._write_final(dst, state)
                self._prune()
            self._barrier()
        finally:
            self.ctrl_c.defer = was
        self.last_saved = step
        return dst

    def _write_final(self, src: Path, state: dict) -> None:
        final, tmp = self.ckpt_dir / "final", self.ckpt_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("rng_state") and f.name != "trainer_state.json":
                try:  # checkpoint files are never modified in place: a hard link is a safe copy
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
        atomic_write_json(tmp / "trainer_state.json", state)
        _replace_dir(tmp, final)

    def _step_checkpoints(self) -> list[tuple[int, Path]]:
        out = []
        if self.ckpt_dir.is_dir():
            for d in self.ckpt_dir.iterdir():
                if d.name.startswith("step_") and (d / "trainer_state.json").is_file():
                    out.append((int(d.name[5:]), d))
        return sorted(out)

    def _prune(self) -> None:
        keep = {s for s, _ in self._step_checkpoints()[-max(self.cfg.keep_last, 1):]}
        if self.best_val is not None:
            keep.add(self.best_val[1])
        for s, d in self._step_checkpoints():
            if s not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def _maybe_resume(self) -> int:
        if not self.resume:
            return 0
        cks = self._step_checkpoints()
        if not cks:
            self._print("[yellow]--resume: no checkpoint yet, starting from step 0[/]")
            self._truncate_logs(-1)  # starts over: drop every row, the step-0 validation included
            return 0
        step, d = cks[-1]
        state = json.loads((d / "trainer_state.json").read_text())
        if state.get("world_size") != self.world or state.get("zero_stage") != self.cfg.zero_stage:
            raise ValueError(
                f"checkpoint {d} was written with world size {state.get('world_size')} and ZeRO "
                f"{state.get('zero_stage')}; resume with the same (now {self.world}, {self.cfg.zero_stage})"
            )
        self.engine.load_checkpoint(str(d / "ds"), tag="state", load_optimizer_states=True,
                                    load_lr_scheduler_states=True)
        rng = d / f"rng_state_rank{self.rank}.pt"
        if rng.is_file():
            st = torch.load(rng, weights_only=False)
            torch.set_rng_state(st["torch"])
            random.setstate(st["python"])
            if st.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["cuda"])
        bv = state.get("best_val")
        self.best_val = tuple(bv) if bv else None
        self.last_saved = step
        self._truncate_logs(step)
        self._print(f"resumed from {d} (step {step})")
        return step

    def _truncate_logs(self, step: int) -> None:
        """Drop log rows written after the checkpoint (they are regenerated identically)."""
        if not self.is_main:
            return
        for name in ("metrics.jsonl", "samples.jsonl"):
            p = self.run_dir / name
            if not p.exists():
                continue
            keep = []
            for line in p.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
            atomic_write_text(p, "".join(x + "\n" for x in keep))
        self._barrier()

    def _print(self, msg: str) -> None:
        if self.is_main and self.cfg.progress:
            if self.console is None:
                from rich.console import Console

                self.console = Console(stderr=True)
            self.console.print(msg)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Path:
        start = self._setup()
        cfg = self.cfg
        from ftcli.progress import progress_bar

        progress = progress_bar(
            "[bold]train[/] {task.fields[credit]}",
            "reward {task.fields[reward]}  acc {task.fields[acc]}  {task.fields[extra]}",
            console=self.console, disable=not (self.is_main and cfg.progress),
        )
        self.completed = start
        try:
            with progress, self.ctrl_c:
                bar = progress.add_task("train", total=cfg.steps, completed=start, credit=cfg.credit,
                                        reward="-", acc="-", extra="")
                if start == 0 and cfg.val_every:  # the starting point of the validation curve
                    t = time.perf_counter()
                    acc = self.validate(0)
                    if acc is not None:
                        if self.is_main:
                            append_jsonl(self.run_dir / "metrics.jsonl", {
                                "step": 0, "val_accuracy": acc, "time_val": round(time.perf_counter() - t, 4)})
                        progress.update(bar, extra=f"val {acc:.3f} before training")
                        if self.is_main and cfg.progress and not progress.console.is_terminal:
                            progress.console.print(f"step 0/{cfg.steps}  val {acc:.3f} (before training)")
                for step in range(start + 1, cfg.steps + 1):
                    if self.ctrl_c.pending:
                        raise KeyboardInterrupt
                    self.ctrl_c.defer = False
                    row = self.train_step(step)
                    self.completed = step
                    is_last = step == cfg.steps
                    stopping = self.ctrl_c.pending
                    if cfg.val_every and (step % cfg.val_every == 0 or is_last) and not stopping:
                        with _Timer()("val"):
                            t = time.perf_counter()
                            acc = self.validate(step)
                            if acc is not None:
                                row["val_accuracy"] = acc
                                row["time_val"] = round(time.perf_counter() - t, 4)
                                if self.best_val is None or acc > self.best_val[0]:
                                    self.best_val = (acc, step)
                    if self.is_main:
                        append_jsonl(self.run_dir / "metrics.jsonl", row)
                    every = cfg.checkpoint_every
                    if is_last or stopping or (every and step % every == 0):
                        self.save_checkpoint(step, final=is_last)
                    extra = f"len {row['response_len']:.0f}  credited {row['frac_credited']:.2f}  {row['time_step']:.1f}s/step"
                    if "val_accuracy" in row:
                        extra += f"  val {row['val_accuracy']:.3f}"
                    progress.update(bar, advance=1, reward=f"{row['reward_mean']:.3f}", acc=f"{row['accuracy']:.3f}", extra=extra)
                    if self.is_main and cfg.progress and not progress.console.is_terminal:
                        progress.console.print(
                            f"step {step}/{cfg.steps}  reward {row['reward_mean']:.3f}  acc {row['accuracy']:.3f}  {extra}"
                        )
                    if self.ctrl_c.pending and not is_last:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            done = self.completed
            if done > self.last_saved and done > 0:
                self._print(f"[yellow]interrupted: saving step {done} before exiting[/]")
                with self.ctrl_c:  # one more Ctrl-C aborts the save
                    self.ctrl_c.defer, self.ctrl_c.pending = True, True
                    self.save_checkpoint(done, final=False)
            raise
        return self.run_dir

    def close(self) -> None:
        """Release the engines (avoids the 2-rank ZeRO-3 exit abort; see research notes)."""
        for e in (getattr(self, "engine", None), getattr(self, "ref", None)):
            if e is not None and hasattr(e, "destroy"):
                e.destroy()


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an older `dst` (two renames)."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def train(cfg: TrainConfig, resume: bool = False, console=None, task=None) -> Path:
    """Run a training job; returns the run directory."""
    trainer = Trainer(cfg, resume=resume, console=console, task=task)
    try:
        return trainer.run()
    finally:
        trainer.close()
