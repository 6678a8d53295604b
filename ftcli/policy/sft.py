"""Supervised fine-tuning (warm start): next-token loss on response tokens only.

    from ftcli.policy.sft import SFTConfig, sft_train
    result = sft_train(model, tokenizer, examples, SFTConfig(steps=800, batch_size=32, seed=0))

An example is a rendered prompt (chat template + assistant prefix, exactly what rollouts
start from: `ftcli.generation.render_prompt`) and a response; the sequence is
`encode_prompt(prompt) + encode(response) + [EOS]`, and only the response and EOS tokens carry
loss (labels of prompt and padding tokens are -100). Prompt and response are tokenised
separately, the way `ftcli.generation.generate` produces them, so SFT trains on the same token
sequences GRPO later samples.

Deterministic for a given seed on CPU: batches are drawn epoch by epoch from a seeded
permutation, there is no dropout, and the learning-rate schedule (linear warm-up, cosine decay
to `min_lr_ratio * lr`) depends only on the step. Two engines: `torch` (plain AdamW with
gradient clipping) and `deepspeed` (ZeRO stage 0, fp32, the same client AdamW, through
`ftcli.train.engine`); on one CPU process they give the same updates.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ftcli.evaluation.sampling import sample_task
from ftcli.generation import encode_prompt
from ftcli.progress import progress_bar
from ftcli.train.engine import ds_config, import_deepspeed

IGNORE = -100
ENGINES = ("torch", "deepspeed")


class SFTError(ValueError):
    """Bad SFT input (one-line message for the CLI)."""


@dataclass
class SFTConfig:
    """Optimisation settings of `sft_train`."""

    steps: int = 800
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 40
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    engine: str = "torch"
    log_every: int = 10
    max_length: int = 512
    length_buckets: int = 16  # batches per window re-cut by length (1: plain random batches)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise SFTError("steps and batch_size must be >= 1")
        if self.lr <= 0:
            raise SFTError("lr must be > 0")
        if self.engine not in ENGINES:
            raise SFTError(f"unknown engine {self.engine!r} (known: {', '.join(ENGINES)})")


@dataclass
class Encoded:
    """Token ids of one example; `n_prompt` leading ids carry no loss."""

    ids: list[int]
    n_prompt: int


@dataclass
class SFTResult:
    history: list[dict] = field(default_factory=list)  # one row per log step
    wall_s: float = 0.0
    cpu_s: float = 0.0  # process CPU time (the wall time of a shared machine overstates the cost)
    tokens: int = 0  # tokens processed (incl. padding)
    final_loss: float = float("nan")


def encode_example(tokenizer, prompt: str, response: str, max_length: int = 512) -> Encoded:
    """`prompt` ids (as `generate` encodes them) + response ids + EOS, cut at `max_length`."""
    p = encode_prompt(tokenizer, prompt)
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is None:
        raise SFTError("the tokenizer has no EOS token")
    ids = (p + r + [eos])[:max_length]
    if len(p) >= len(ids):
        raise SFTError(f"prompt of {len(p)} tokens leaves no room for a response (max_length {max_length})")
    return Encoded(ids, len(p))


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (-100 on prompt and padding)."""
    L = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)  # [B, L]
    attn = torch.zeros((len(batch), L), dtype=torch.long)  # [B, L]
    labels = torch.full((len(batch), L), IGNORE, dtype=torch.long)  # [B, L]
    for b, e in enumerate(batch):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids, dtype=torch.long)
        attn[b, :n] = 1
        labels[b, e.n_prompt : n] = ids[b, e.n_prompt : n]
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_lr_ratio * lr` (step 0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


def batch_indices(
    n: int, batch_size: int, steps: int, seed: int, lengths: Sequence[int] | None = None, bucket: int = 16
) -> list[list[int]]:
    """Indices of every step's batch: seeded permutations, one epoch after another.

    With `lengths`, each window of `bucket` consecutive batches is re-cut by sequence length
    (sorted, then the window's batches are shuffled), so batches hold similar lengths and
    padding wastes little compute; every example is seen about once per epoch.
    """
    rng = random.Random(seed)
    out: list[list[int]] = []
    pool: list[int] = []
    while len(out) < steps:
        if len(pool) < batch_size * max(bucket, 1):
            perm = list(range(n))
            rng.shuffle(perm)
            pool += perm
        take = batch_size * max(bucket, 1)
        window, pool = pool[:take], pool[take:]
        if lengths is not None and bucket > 1:
            window.sort(key=lambda i: lengths[i])
        chunks = [window[k : k + batch_size] for k in range(0, len(window), batch_size)]
        chunks = [c for c in chunks if len(c) == batch_size] or chunks
        if lengths is not None and bucket > 1:
            rng.shuffle(chunks)
        out += chunks
    return out[:steps]


def response_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose label is not -100."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, L, V]
    labels = batch["labels"][:, 1:]  # [B, L-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE
    )


def _deepspeed_engine(model, opt, cfg: SFTConfig):
    ds = import_deepspeed()  # the GRPO trainer's set-up (env, CPU accelerator)
    config = ds_config(cfg.batch_size, 1, 1, cfg.grad_clip, zero_stage=0, bf16=False)
    engine, _, _, _ = ds.initialize(model=model, optimizer=opt, config=config)
    return engine


def sft_train(
    model,
    tokenizer,
    examples: Sequence,
    cfg: SFTConfig | None = None,
    *,
    progress: bool = False,
    console=None,
    on_log: Callable[[dict], None] | None = None,
) -> SFTResult:
    """Train `model` in place on `examples` (objects with `.prompt` and `.response`, or pairs).

    Returns the loss history (mean response-token loss over each `log_every` window). With
    `progress`, a rich progress bar shows loss, learning rate and tokens per second.
    """
    cfg = cfg or SFTConfig()
    cfg.validate()
    if not examples:
        raise SFTError("no training examples")
    enc = []
    for ex in examples:
        prompt, response = (ex.prompt, ex.response) if hasattr(ex, "prompt") else ex
        enc.append(encode_example(tokenizer, prompt, response, cfg.max_length))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    plan = batch_indices(len(enc), cfg.batch_size, cfg.steps, cfg.seed,
                         lengths=[len(e.ids) for e in enc] if cfg.length_buckets > 1 else None,
                         bucket=cfg.length_buckets)

    torch.manual_seed(cfg.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )
    engine = _deepspeed_engine(model, opt, cfg) if cfg.engine == "deepspeed" else None
    fwd = engine if engine is not None else model

    result = SFTResult()
    t0, c0 = time.time(), time.process_time()
    window: list[float] = []
    bar = _Bar(cfg.steps, console) if progress else None
    try:
        for step, idx in enumerate(plan):
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = collate([enc[i] for i in idx], pad_id)
            loss = response_loss(fwd, batch)
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
            window.append(float(loss.detach()))
            result.tokens += batch["input_ids"].numel()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                row = {"step": step + 1, "loss": sum(window) / len(window), "lr": lr,
                       "elapsed_s": round(time.time() - t0, 2), "tokens": result.tokens}
                result.history.append(row)
                window = []
                if on_log is not None:
                    on_log(row)
            if bar is not None:
                bar.update(step + 1, window[-1] if window else result.history[-1]["loss"], lr,
                           result.tokens / max(time.time() - t0, 1e-6))
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    result.wall_s = time.time() - t0
    result.cpu_s = time.process_time() - c0
    result.final_loss = result.history[-1]["loss"] if result.history else float("nan")
    return result


class _Bar:
    """A rich progress bar: step, loss, lr, tokens/s, elapsed and remaining time."""

    def __init__(self, total: int, console=None):
        self.p = progress_bar(
            "[bold]sft", "loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}  {task.fields[tps]:.0f} tok/s",
            console=console,
        )
        self.p.start()
        self.t = self.p.add_task("sft", total=total, loss=float("nan"), lr=0.0, tps=0.0)

    def update(self, done: int, loss: float, lr: float, tps: float):
        self.p.update(self.t, completed=done, loss=loss, lr=lr, tps=tps)

    def close(self):
        self.p.stop()


# ---------------------------------------------------------------------------------------------
# Evaluation with the rollout backend and the task's reward
# ---------------------------------------------------------------------------------------------
def evaluate_task(
    model,
    tokenizer,
    task,
    samples: Sequence[dict],
    *,
    temperature: float = 0.0,
    n: int = 1,
    max_new_tokens: int = 192,
    seed: int = 0,
    batch_size: int = 64,
    group: Callable[[dict], object] | None = None,
) -> dict:
    """Accuracy (reward == 1), format rate (reward > 0) and mean response length of `n`
    samples per problem, drawn with `ftcli.generation.generate` from the task's own prompt.
    `group(sample)` splits the accuracy (e.g. by how many numbers a Countdown problem has)."""
    t0 = time.time()
    _, outs = next(sample_task(model, tokenizer, task, samples, n=n, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed, batch_size=batch_size), ([], []))
    tot = {"n": 0, "correct": 0, "formatted": 0, "tokens": 0, "finished": 0}
    groups: dict = {}
    examples = []
    for s, rolls in zip(samples, outs, strict=True):
        key = group(s) if group else None
        g = groups.setdefault(key, {"n": 0, "correct": 0})
        for r in rolls:
            rew = float(task.reward(r.response_text, s))
            ok = rew >= 1.0
            tot["n"] += 1
            tot["correct"] += ok
            tot["formatted"] += rew > 0
            tot["tokens"] += len(r.response_ids)
            tot["finished"] += r.finished
            g["n"] += 1
            g["correct"] += ok
        if len(examples) < 3:
            examples.append(rolls[0].response_text)
    res = {
        "accuracy": tot["correct"] / max(tot["n"], 1),
        "format_rate": tot["formatted"] / max(tot["n"], 1),
        "finished_rate": tot["finished"] / max(tot["n"], 1),
        "mean_response_tokens": tot["tokens"] / max(tot["n"], 1),
        "n_problems": len(samples),
        "samples_per_problem": n,
        "temperature": temperature,
        "seconds": round(time.time() - t0, 1),
        "examples": examples,
    }
    if group:
        res["by_group"] = {str(k): {"accuracy": v["correct"] / max(v["n"], 1), "n": v["n"]}
                           for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    return res


def config_dict(cfg: SFTConfig) -> dict:
    d = asdict(cfg)
    d["betas"] = list(cfg.betas)
    return d
