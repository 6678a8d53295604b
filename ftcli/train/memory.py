"""Memory per GPU of a training run, before it starts (`ft train --dry-run`), and the
generation batch that fits the KV cache (`--gen-batch-size auto`).

Every figure is a count of tensors times their bytes, one function per term:

    weights      P x w                          (/ world under ZeRO-3)
    gradients    P x w                          (/ world under ZeRO-2/3)
    optimizer    P x (8 + 4 [fp32 master, when w < 4])   (/ world under ZeRO-1/2/3)
    activations  tokens x L x a x w             (a: elements kept per token per decoder layer;
                 with checkpointing: tokens x L x h x w + tokens x a x w, one layer recomputed)
    log-probs    tokens x V x t                 (t: bytes per vocab entry per token of the
                 logits path; chunked: chunk x V x t)
    update peak  activations kept + max(log-probs + capture, one layer recomputed)
    capture      B x T x T x 4                  (the [B, T, T] fp32 W of one micro-batch)
    KV cache     rows x T x L x 2 x kv x w      (generation)

with P parameters, w bytes per element of the training dtype, L layers, h hidden size, V
vocabulary, kv = key/value heads x head dim. `a` counts the tensors a Qwen3/Llama decoder
layer saves for its backward (`activation_elements`); `bench/bench_memory.py` measures it on
CPU for real shapes and `tests/test_train_memory.py` checks the estimate against measured peaks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GiB = 1024**3


@dataclass
class ModelShape:
    """What the estimates need from a decoder-only model config."""

    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def model_shape(config) -> ModelShape:
    """ModelShape of a transformers config; parameters counted on the meta device (no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        params=params, layers=config.num_hidden_layers, hidden=config.hidden_size, heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
        intermediate=config.intermediate_size, vocab=config.vocab_size,
    )


def activation_elements(s: ModelShape, w: int) -> float:
    """Elements (in units of the training dtype) one decoder layer keeps per token for its
    backward, counted for a Qwen3/Llama layer with a flash-type attention kernel (f = 4 / w:
    an fp32 tensor in units of the training dtype; at w = 4 the fp32 "copies" are the tensors
    themselves, f = 1):

      2 RMSNorms: the fp32 input and the normed output        2 h (f + 1)
      q path: q_norm's fp32 input (the projection), its
        output, the rotated q, the attention output            q (f + 3)
      k/v path: k_norm's fp32 input, its output, the rotated
        k, and v                                               kv (f + 3)
      MLP: gate, act(gate), up, act(gate) x up                 4 I

    (RoPE's rotate_half copies are not kept: multiplying by cos/sin saves only cos/sin.)
    fp32: 4h + 4q + 4kv + 4I; bf16: 6h + 5q + 5kv + 4I (Qwen3-4B: 160 KB per token per layer).
    """
    h, q, kv, inter = s.hidden, s.q_dim, s.kv_dim, s.intermediate
    f = 4.0 / w if w < 4 else 1.0
    return 2 * h * (f + 1) + (q + kv) * (f + 3) + 4 * inter


def activation_bytes(s: ModelShape, tokens: int, w: int, checkpointing: bool) -> float:
    """Activations one micro-step of `tokens` tokens keeps through its forward (all layers):
    every layer's tensors, or with checkpointing only each layer's input hidden state."""
    if checkpointing:
        return tokens * s.layers * s.hidden * w
    return tokens * s.layers * activation_elements(s, w) * w


def recompute_bytes(s: ModelShape, tokens: int, w: int, checkpointing: bool) -> float:
    """With checkpointing, one layer's tensors exist again while the backward recomputes it."""
    return tokens * activation_elements(s, w) * w if checkpointing else 0.0


def logprob_bytes(s: ModelShape, tokens: int, w: int, chunk: int) -> float:
    """Peak temporaries of the log-probs of `tokens` positions, with the LM head's weight
    gradient that the backward allocates beside them (V x H). From full logits: the logits (w),
    their fp32 copy (when w < 4) and, in the backward, the fp32 softmax and gradient: (w + 4 + 8)
    bytes per vocab entry per token (14 at bf16). Chunked (`ftcli.train.logprobs`): the same
    temporaries for `chunk` positions at a time (measured on CPU: about three fp32 [chunk, V]
    buffers at the backward's peak, with the BLAS copy of the transposed gradient), 12 bytes
    per position kept for the backward, and the weight gradient accumulated in fp32."""
    per_entry = w + (4 if w < 4 else 0) + 8
    if not chunk:
        return tokens * s.vocab * per_entry + s.vocab * s.hidden * w
    head_grad = s.vocab * s.hidden * (4 + (w if w < 4 else 0))  # fp32 accumulator (+ its cast)
    return min(tokens, chunk) * s.vocab * per_entry + tokens * 12 + head_grad


def capture_bytes(batch: int, seq: int) -> float:
    """The fused W capture's [B, T, T] fp32 buffer."""
    return batch * seq * seq * 4.0


def kv_cache_bytes(s: ModelShape, rows: int, seq: int, w: int) -> float:
    """KV cache of `rows` generated sequences of `seq` tokens."""
    return rows * seq * s.layers * 2 * s.kv_dim * w


def state_bytes(s: ModelShape, w: int, zero_stage: int, world: int) -> dict[str, float]:
    """Weights, gradients and optimizer state per GPU under ZeRO `zero_stage` over `world` ranks."""
    P = s.params
    opt = P * (8 + (4 if w < 4 else 0))  # Adam m, v (+ fp32 master weights)
    return {
        "weights": P * w / (world if zero_stage >= 3 else 1),
        "gradients": P * w / (world if zero_stage >= 2 else 1),
        "optimizer": opt / (world if zero_stage >= 1 else 1),
    }


def auto_gen_batch_size(config, seq_len: int, device, dtype, fraction: float = 0.85, cpu_default: int = 128) -> int:
    """Rows per generate() call for `--gen-batch-size auto`: on a GPU, as many as the KV cache
    of `seq_len` tokens fits in `fraction` of the memory free after the weights; on CPU
    `cpu_default` (the measured main-job setting)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return cpu_default
    free, _ = torch.cuda.mem_get_info(dev)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    w = torch.tensor([], dtype=dtype).element_size()
    per_row = seq_len * config.num_hidden_layers * 2 * kv * w + config.vocab_size * 4 * 2  # + a step's logits
    return max(1, int(free * fraction // per_row))


@dataclass
class Plan:
    """The per-GPU memory plan of a run (bytes), with the micro-batch plan behind it."""

    rows: dict[str, float]  # update phase, by term
    generation: dict[str, float]  # generation phase, by term
    micro_batch: int  # sequences per micro-step per rank
    tokens_per_micro: int
    micro_steps: int  # per optimizer step per rank
    gen_rows: int
    seq_len: int
    world: int
    gpu_bytes: float

    @property
    def update_total(self) -> float:
        """State + kept activations + the larger of the forward's end (log-prob temporaries and
        the capture) and a checkpointed layer's recompute in the backward."""
        r = self.rows
        return (r["weights"] + r["gradients"] + r["optimizer"] + r["activations"]
                + max(r["log-probs"] + r["capture"], r["layer recompute"]))

    @property
    def generation_total(self) -> float:
        return sum(self.generation.values())

    def warnings(self) -> list[str]:
        """One line for each phase that does not fit, with what would make it fit."""
        out = []
        cap = self.gpu_bytes
        if self.update_total > cap:
            big = max(self.rows, key=self.rows.get)
            out.append(f"the update needs {self.update_total / GiB:.1f} GiB per GPU, over {cap / GiB:.0f} GiB "
                       f"(largest: {big} {self.rows[big] / GiB:.1f} GiB): try --gradient-checkpointing, "
                       "--micro-tokens, --logprob-chunk, a higher --zero-stage or more GPUs")
        if self.generation_total > cap:
            out.append(f"generation needs {self.generation_total / GiB:.1f} GiB per GPU, over {cap / GiB:.0f} GiB: "
                       "lower --gen-batch-size (or auto)")
        return out


def micro_slots(cfg, micro: int, prompt_tokens: int) -> int:
    """Token slots of the largest micro-batch of `micro` sequences, every response at
    --max-new-tokens: micro x (prompt + response) padded or packed (a packed row holds the
    same real tokens, without padding); packed with --share-prompt, one copy per distinct
    prompt, and `micro` consecutive sequences grouped by prompt in groups of G span at most
    ceil((micro - 1) / G) + 1 prompts (`ftcli.packing.packed_micro_batches`)."""
    if not (cfg.pack and cfg.share_prompt):
        return micro * (prompt_tokens + cfg.max_new_tokens)
    prompts = min(micro, -(-(micro - 1) // cfg.group_size) + 1)
    return prompts * prompt_tokens + micro * cfg.max_new_tokens


def plan_memory(cfg, shape: ModelShape, world: int, gpu_gb: float, prompt_tokens: int, bf16: bool = True) -> Plan:
    """The memory plan of TrainConfig `cfg` for `shape` on `world` GPUs of `gpu_gb` GiB, with
    prompts of `prompt_tokens` and every response at --max-new-tokens (the worst case), in the
    run's layout (`micro_slots`)."""
    w = 2 if bf16 else 4
    seq = prompt_tokens + cfg.max_new_tokens
    micro = cfg.micro_batch_per_rank(world)
    if cfg.micro_tokens:
        micro = max(1, min(micro, cfg.micro_tokens // seq))
    tokens = micro_slots(cfg, micro, prompt_tokens)
    seqs_per_rank = cfg.prompts * cfg.group_size // max(world, 1) // cfg.mini_batches
    rows = state_bytes(shape, w, cfg.zero_stage, world)
    rows["activations"] = activation_bytes(shape, tokens, w, cfg.gradient_checkpointing)
    rows["layer recompute"] = recompute_bytes(shape, tokens, w, cfg.gradient_checkpointing)
    rows["log-probs"] = logprob_bytes(shape, tokens, w, cfg.logprob_chunk)
    from ftcli.credit import get_rule

    needs_w = "attention" in get_rule(cfg.credit).needs
    rows["capture"] = capture_bytes(micro, seq) if needs_w else 0.0
    gen = state_bytes(shape, w, cfg.zero_stage, world)
    gen["weights"] = shape.params * w  # gathered whole for generation under ZeRO-3
    gpu_bytes = gpu_gb * GiB
    n = cfg.gen_batch_rows()
    if n is None:  # auto: what the KV cache fits beside the state
        per_row = kv_cache_bytes(shape, 1, seq, w)
        n = max(1, int((0.85 * gpu_bytes - sum(gen.values())) // per_row))
        n = min(n, cfg.prompts * cfg.group_size // max(world, 1))
    gen["KV cache"] = kv_cache_bytes(shape, n, seq, w)
    return Plan(rows, gen, micro, tokens, math.ceil(seqs_per_rank / micro), n, seq, world, gpu_bytes)


def render_plan(plan: Plan, console, title: str) -> None:
    """The plan as two rich tables (update, generation), the micro-batch plan and warnings."""
    from rich.table import Table

    for name, rows, total in (("update", plan.rows, plan.update_total), ("generation", plan.generation, plan.generation_total)):
        t = Table(title=f"{name} phase, per GPU ({title})", title_justify="left")
        t.add_column("term")
        t.add_column("GiB", justify="right")
        for k, v in rows.items():
            t.add_row(k, f"{v / GiB:.2f}")
        t.add_row("[bold]peak[/]" if name == "update" else "[bold]total[/]",
                  f"[bold]{total / GiB:.2f}[/] of {plan.gpu_bytes / GiB:.0f}")
        console.print(t)
    console.print(f"micro-batch plan: {plan.micro_steps} micro-steps of {plan.micro_batch} sequences "
                  f"(<= {plan.tokens_per_micro} tokens) per rank per optimizer step on {plan.world} GPUs; "
                  f"generation batches of {plan.gen_rows} rows x {plan.seq_len} tokens")
    warns = plan.warnings()
    for line in warns:
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    if not warns:
        console.print(f"[green]fits[/] {plan.world} x {plan.gpu_bytes / GiB:.0f} GiB")
