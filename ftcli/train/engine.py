"""The DeepSpeed side of training, shared by `ft train` and `ft sft`: the process environment
DeepSpeed needs, its import, and the engine config generated from the options."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys

import torch

from ftcli.config import cache_dir


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


def import_deepspeed():
    """`deepspeed`, imported after `setup_distributed_env` (its import reads the environment;
    imported here, not at module level, so that `ft --help` stays fast), its logger quietened."""
    setup_distributed_env()
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


def ds_config(micro_batch: int, gas: int, world_size: int, grad_clip: float, zero_stage: int, bf16: bool) -> dict:
    """The DeepSpeed config of an engine: batch sizes, clipping, ZeRO stage, bf16, no logging."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": gas,
        "train_batch_size": micro_batch * gas * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": bool(bf16)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_ds_config(cfg, world_size: int, seqs_per_rank: int, use_bf16: bool) -> dict:
    """The DeepSpeed config from the options (user JSON merged on top, recursively)."""
    gas = math.ceil(seqs_per_rank / cfg.micro_batch)
    ds = ds_config(cfg.micro_batch, gas, world_size, cfg.grad_clip, cfg.zero_stage, use_bf16)
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
        if cfg.warmup_steps and "scheduler" in ds:
            raise ValueError(f"{cfg.deepspeed_config} has a scheduler: drop it or --warmup-steps, not both")
    return ds


def warmup_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int):
    """Linear warm-up: optimizer update k (1-based) of the first `warmup_steps` uses lr * k /
    warmup_steps, every later one lr; None when `warmup_steps` is 0 (constant lr). DeepSpeed steps
    it after each optimizer update and keeps its state in the checkpoint."""
    if warmup_steps <= 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warmup_steps))


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def versions() -> dict:
    """Versions of Python, torch, transformers and DeepSpeed (for config.json)."""
    import transformers  # imported here: ft --help does not need it

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import deepspeed  # optional at this point: a version only

        out["deepspeed"] = deepspeed.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
