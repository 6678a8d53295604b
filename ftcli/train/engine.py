"""The DeepSpeed side of training, shared by `ft train` and `ft sft`: the process environment
DeepSpeed needs, its import, and the engine config generated from the options."""

from __future__ import annotations

import contextlib
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
    micro = cfg.micro_batch_per_rank(world_size)
    # nominal: the loop sets the accumulation boundary itself (a token budget varies the count)
    gas = math.ceil(seqs_per_rank / micro)
    ds = ds_config(micro, gas, world_size, cfg.grad_clip, cfg.zero_stage, use_bf16)
    if cfg.zero_stage == 3:
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if cfg.deepspeed_config:
        with open(cfg.deepspeed_config, encoding="utf-8") as fh:
            user = json.load(fh)
        _merge(ds, user)
        if (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) != (micro, gas):
            raise ValueError(
                f"{cfg.deepspeed_config}: set batch sizes with --micro-batch / --prompts / --group-size "
                "/ --mini-batches, not in the DeepSpeed config (the loop accumulates "
                f"{gas} micro-batches of {micro})"
            )
        ds["train_batch_size"] = micro * gas * world_size
        if cfg.warmup_steps and "scheduler" in ds:
            raise ValueError(f"{cfg.deepspeed_config} has a scheduler: drop it or --warmup-steps, not both")
    return ds


def zero3_partitioned_loading(ds_config: dict):
    """Under ZeRO-3, models built while the returned object is alive are partitioned as they
    load (transformers' `HfDeepSpeedConfig` -> `deepspeed.zero.Init`): each rank holds 1/world
    of the weights instead of a whole fp32 copy on the host. Keep it referenced for the
    engine's lifetime (transformers holds it weakly). None at other stages."""
    if ds_config.get("zero_optimization", {}).get("stage") != 3:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


@contextlib.contextmanager
def zero3_inference_params(engine, deepspeed_module, zero_stage: int):
    """Every parameter of `engine.module` whole and hook-free for a generation phase (ZeRO-3).

    Under ZeRO-3 DeepSpeed partitions each parameter and its module hooks gather it before a
    submodule runs and release it after, with collectives. Inside `generate` that means every
    decode step re-gathers the whole model, and ranks that decode a different number of steps
    (their responses end at different lengths) issue mismatched collectives and fail. So for
    the whole phase: gather every parameter once (`GatheredParameters`, read-only), remove
    DeepSpeed's forward/backward module hooks, and re-register them before the parameters are
    partitioned again (TRL's `unwrap_model_for_generation` does the same). Inside the block the
    module is a plain torch model: no collectives, any number of decode steps per rank.
    Stages 0-2 keep whole parameters on every rank: nothing to do.
    """
    if zero_stage != 3:
        yield
        return
    offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
    module = offload.module
    with deepspeed_module.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        for p in _all_params(module):
            p.ds_active_sub_modules.clear()
        for h in (*offload.forward_hooks, *offload.backward_hooks):
            h.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            offload._register_deepspeed_module(module)  # DeepSpeed's own (re-)registration


def _all_params(module) -> list:
    """Every parameter of `module` and its submodules, ZeRO-3's external parameters included."""
    out = []
    for m in module.modules():
        out += list(m.parameters(recurse=False))
        ext = getattr(m, "ds_external_parameters", None)
        if callable(ext):
            out += [p for _, p in ext()]
    return out


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
