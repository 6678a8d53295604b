"""Rollouts from vLLM: one in-process engine per rank, shared by `ft train --rollout vllm` and
`ft eval --backend vllm`.

    eng = VLLMEngine.shared(EngineOptions(model="ftcli/assets/default-policy"))
    groups = eng.generate(tok, prompts, stops=stop_token_ids(model, tok), n=8, max_new_tokens=192,
                          seed=s, keys=keys)        # list[list[Rollout]], as ftcli.generation.generate
    eng.load_weights(stream_parameters(model))      # after every update: the trainer's weights

The rollouts are those of `ftcli.generation.generate`: the same prompt ids (`encode_prompt`),
stop tokens (`stop_token_ids`: EOS included in `response_ids` when emitted), `finished` flags
(the last id is a stop token), character offsets, and one request per row seeded with
`row_seed(seed, prompt, key, j)` (`prompt_keys`: the trainer's keys, else the occurrence of
the prompt text). vLLM's sampler draws its own random numbers, so a row's tokens differ from
the HF loop's for the same seed; the distribution is the same (temperature, top-k, top-p).
Each rollout also carries `logprobs`: vLLM's log-prob of every sampled token under the
distribution it sampled from (`logprobs_mode="processed_logprobs"`: after temperature, top-k
and top-p), which the trainer compares with its own (`rollout_logprob_gap`).

Engine: in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), built once per process and reused
(`VLLMEngine.shared`): a vLLM engine is not torn down cleanly in-process. Under a launcher
(`WORLD_SIZE` > 1) it runs with `distributed_executor_backend="external_launcher"` on the
trainer's processes; tensor-parallel groups are blocks of consecutive ranks, and the ranks of
one group generate the union of their prompts (`_tp_gather`). On GPU the engine takes
`gpu_memory_utilization` of the memory and sleeps during the update (`sleep()`, level 1:
weights offloaded, KV cache freed; woken by the next weight sync and generation). On CPU:
eager mode, float32, no sleep (not supported there), a KV cache of `cpu_kv_cache_gib` (vLLM's
CPU default reserves 92% of the machine's memory), and chunked prefill off, since a seeded
request whose prefill is chunked fails on CPU ("CPU Generator does not use offset").

Weight sync (`load_weights`): the worker's in-place reload
(`model_executor.driver_worker.worker.reload_weights(weights_iterator=...)`): vLLM buffers the
tensors of one layer until the layer is complete, then runs its kernel processing (fused QKV,
CPU weight packing) and copies the result into the live parameters. On CPU an LM head tied to
the embedding keeps a packed copy of the weight that the reload does not rebuild (the head
loads nothing of its own), so it is rebuilt here; then the prefix cache is reset, since cached
KV blocks were computed with the old weights.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from ftcli.generation import (
    GenerationError,
    ProgressFn,
    Rollout,
    check_sampling,
    encode_prompt,
    prompt_keys,
    row_seed,
)

INSTALL_HINT = "pip install 'ftcli[gpu]' on a GPU machine; on CPU `just vllm-setup` and its venv"
# CPU: tokens one engine step may schedule. Chunked prefill is off there, so this bounds the
# prompt tokens prefilled per step (at least max_model_len); 16K takes a 128-row step at once.
CPU_BATCH_TOKENS = 16384


def vllm_missing() -> str | None:
    """Why vLLM cannot be used in this environment, or None when it is installed."""
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed ({INSTALL_HINT})"
    return None


def require_vllm() -> None:
    """Raise a one-line GenerationError when vLLM is not installed."""
    why = vllm_missing()
    if why:
        raise GenerationError(why)


@dataclass(frozen=True)
class EngineOptions:
    """What one engine is built from (also its key in the per-process cache)."""

    model: str  # a model folder or hub id vLLM can open
    dtype: str | None = None  # None: float32 on CPU, the checkpoint's dtype on GPU
    max_model_len: int | None = None  # None: the model's own context length
    gpu_memory_utilization: float = 0.4  # GPU: weights + KV cache share; the trainer keeps the rest
    tensor_parallel_size: int = 1
    seed: int = 0  # vLLM's global seed (every request carries its own seed)
    max_num_seqs: int = 256  # rows decoded at once
    cpu_kv_cache_gib: float = 2.0  # CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE, in GiB, overrides)


class VLLMEngine:
    """One in-process vLLM engine: `generate` -> rollouts, `load_weights`, `sleep`."""

    _cache: dict[EngineOptions, VLLMEngine] = {}

    @classmethod
    def shared(cls, opts: EngineOptions) -> VLLMEngine:
        """The engine of `opts`, built on first use and reused by later calls in this process
        (a later trainer syncs its own weights into it before generating)."""
        opts = replace(opts, dtype=opts.dtype or ("auto" if torch.cuda.is_available() else "float32"))
        if opts not in cls._cache:
            cls._cache[opts] = cls(opts)
        return cls._cache[opts]

    def __init__(self, opts: EngineOptions):
        require_vllm()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: reachable weights
        from vllm import LLM

        self.opts = opts
        self.on_gpu = torch.cuda.is_available()
        kw: dict = dict(model=opts.model, seed=opts.seed, max_num_seqs=opts.max_num_seqs,
                        tensor_parallel_size=opts.tensor_parallel_size, enable_prefix_caching=True,
                        logprobs_mode="processed_logprobs", max_model_len=opts.max_model_len)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kw["distributed_executor_backend"] = "external_launcher"
        if self.on_gpu:
            kw.update(dtype=opts.dtype or "auto", gpu_memory_utilization=opts.gpu_memory_utilization,
                      enable_sleep_mode=True)
        else:
            max_len = opts.max_model_len or _context_length(opts.model)
            kw.update(dtype=opts.dtype or "float32", enforce_eager=True, enable_chunked_prefill=False,
                      max_num_batched_tokens=max(max_len, CPU_BATCH_TOKENS), max_model_len=max_len,
                      kv_cache_memory_bytes=int(opts.cpu_kv_cache_gib * 2**30))
        self.llm = LLM(**kw)
        self.asleep: set[str] = set()  # the sleeping parts: "weights", "kv_cache"
        self.synced = False  # True once a trainer's weights replaced those of `opts.model`

    # -- sampling ------------------------------------------------------------------------------
    def generate(self, tokenizer, prompts: Sequence[str], *, stops: Sequence[int], n: int = 1,
                 max_new_tokens: int = 256, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 seed: int = 0, keys: Sequence[int | str] | None = None, batch_size: int | None = None,
                 progress: ProgressFn | None = None) -> list[list[Rollout]]:
        """`n` rollouts per prompt, `out[i][j]` (see the module doc); all rows in one engine
        call (vLLM batches them itself: `batch_size` is accepted for the common signature and
        not used)."""
        from vllm import SamplingParams

        check_sampling(n, max_new_tokens, batch_size or 1, temperature, top_p, top_k)
        prompts = list(prompts)
        if not prompts:
            return []
        pids = [encode_prompt(tokenizer, p) for p in prompts]
        if any(len(p) == 0 for p in pids):
            raise GenerationError("empty prompt")
        rows = [(i, j, row_seed(seed, p, key, j))
                for i, (p, key) in enumerate(zip(prompts, prompt_keys(prompts, keys), strict=True))
                for j in range(n)]
        rows = self._tp_gather(rows, pids)
        self._wake("weights", "kv_cache")
        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, top_k=top_k, seed=s,
                                 max_tokens=max_new_tokens, stop_token_ids=list(stops), logprobs=0,
                                 detokenize=False) for _, _, s, _, _ in rows]
        outs = self.llm.generate([{"prompt_token_ids": ids} for _, _, _, ids, _ in rows], params, use_tqdm=False)
        res: list[list[Rollout | None]] = [[None] * n for _ in prompts]
        for (i, j, _, _, mine), out in zip(rows, outs, strict=True):
            if mine:
                o = out.outputs[0]
                lp = [d[t].logprob for t, d in zip(o.token_ids, o.logprobs, strict=True)]
                res[i][j] = Rollout.from_ids(tokenizer, prompts[i], pids[i], list(o.token_ids), stops, lp)
        if progress is not None:
            progress(len(prompts) * n)
        return res  # type: ignore[return-value]

    def _tp_gather(self, rows, pids) -> list[tuple]:
        """Rows as (prompt index, sample, seed, prompt ids, this rank's). With tensor
        parallelism every rank of a group must submit the same requests: the group's rows are
        gathered (over vLLM's tensor-parallel CPU group) and each rank keeps its own results."""
        mine = [(i, j, s, pids[i], True) for i, j, s in rows]
        if self.opts.tensor_parallel_size == 1:
            return mine
        import torch.distributed as dist
        from vllm.distributed.parallel_state import get_tp_group

        grp = get_tp_group()
        parts: list = [None] * grp.world_size
        dist.all_gather_object(parts, mine, group=grp.cpu_group)
        me = grp.rank_in_group
        return [(i, j, s, p, mine_ and k == me) for k, part in enumerate(parts) for i, j, s, p, mine_ in part]

    # -- weights and memory --------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the trainer's weights (HF names, whole tensors, one at a time) into the engine
        in place; then rebuild the CPU-packed tied LM head and reset the prefix cache."""
        self._reload(iter(weights))
        self.synced = True

    def reset_weights(self) -> None:
        """Back to the weights of `opts.model` on disk (a shared engine that a trainer synced,
        reused by `ft eval` in the same process)."""
        self._reload(None)
        self.synced = False

    def _reload(self, weights: Iterator[tuple[str, torch.Tensor]] | None) -> None:
        self._wake("weights")
        worker = self.llm.llm_engine.model_executor.driver_worker.worker
        worker.reload_weights(weights_iterator=weights)  # None: from the model's files
        if not self.on_gpu:
            _repack_cpu_lm_heads(worker.model_runner.get_model())
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """GPU: free the engine's memory for the update (level 1: weights to CPU, KV cache
        dropped); woken by the next `load_weights` / `generate`. A no-op on CPU."""
        if self.on_gpu and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def _wake(self, *tags: str) -> None:
        todo = [t for t in tags if t in self.asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self.asleep -= set(todo)


def _context_length(model: str) -> int:
    """The model's context length from its config (vLLM's default max_model_len)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    n = getattr(cfg, "max_position_embeddings", None)
    if not n:
        raise GenerationError(f"{model}: no max_position_embeddings in its config; cannot size the vLLM engine")
    return int(n)


def _repack_cpu_lm_heads(model: torch.nn.Module) -> None:
    """CPU: rebuild the packed GEMM weight of every LM head from its current weight. A head
    tied to the embedding shares the (reloaded) weight tensor but keeps the packed copy made at
    load time (`dispatch_cpu_unquantized_gemm`), since the reload loads nothing into it."""
    for mod in model.modules():
        if type(mod).__name__ == "ParallelLMHead" and hasattr(mod, "cpu_linear"):
            mod.quant_method.process_weights_after_loading(mod)


def stream_parameters(module: torch.nn.Module, zero3: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, whole tensor) of every parameter of the trainer's model, one at a time.

    ZeRO-3: each parameter is gathered on its own (`deepspeed.zero.GatheredParameters([p])`)
    and copied out before it is released, so at most one parameter is whole at a time on the
    trainer's side (vLLM holds a layer's tensors until that layer is complete). Otherwise the
    live tensors are yielded (vLLM copies them). Tied weights appear once (under the
    embedding's name), as in an HF checkpoint."""
    if not zero3:
        for name, p in module.named_parameters():
            yield name, p.detach()
        return
    import deepspeed

    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            whole = p.detach().clone()
        yield name, whole


def rollout_logp_matrix(seqs: Sequence, T: int, device=None) -> torch.Tensor | None:
    """[B, T]: the rollout engine's log-prob of each response token of `seqs` (the rollouts'
    `Rollout.logprobs`) at its position in the right-padded batch of `ftcli.sequences.collate`
    (0 elsewhere); None when no sequence carries engine log-probs (the HF loop)."""
    lps = [getattr(getattr(s, "rollout", None), "logprobs", None) for s in seqs]
    if all(lp is None for lp in lps):
        return None
    out = torch.zeros(len(seqs), T, dtype=torch.float32)  # [B, T]
    for b, (s, lp) in enumerate(zip(seqs, lps, strict=True)):
        if lp is not None:
            out[b, s.n_prompt : s.n_prompt + len(lp)] = torch.tensor(lp, dtype=torch.float32)
    return out if device is None else out.to(device)
