"""Rollouts: the one generation backend shared by training (GRPO groups) and `ft eval`.

    prompt_text = render_prompt(tok, task.prompt(sample), task.assistant_prefix(sample))
    groups = generate(model, tok, [prompt_text], n=8, max_new_tokens=512, seed=step)
    groups[0][3].response_ids      # list[int], EOS included when emitted, never padding

Sampling is reproducible and independent of batching: every row (prompt i, sample j) draws
from its own `torch.Generator`, seeded by `(seed, prompt text, occurrence of that text in the
call, j)`. The same seed therefore gives the same samples on CPU whatever `batch_size` is or
which other prompts share the call (up to the tiny float differences that a different amount
of left padding can cause), and an interrupted eval that resumes redraws the same samples.
Mechanism (default, `compact=True`): an own KV-cached decode loop. The distinct prompts of a
batch are prefilled once (left padding) and the cache is expanded to the `n` rows of each
prompt; rows that emit EOS leave the decoded batch (batch and KV cache are compacted), so no
compute is spent on finished rows. Each step `_RowSampler` applies temperature / top-k / top-p
to the float32 logits and draws the token with the row's generator. `temperature == 0` is
plain greedy decoding. `compact=False` is the reference path: HF `model.generate` (greedy on
the one-hot logits that `_RowSampler` returns as a logits processor), every row prefilled and
decoded until the whole batch stops. Both paths draw the same tokens for the same seed (a row
consumes one uniform of its own generator per generated token in both).

Backends: `HFBackend` (CPU/GPU, the reference) and `VLLMBackend` (optional; `ftcli.vllm_engine`:
the same rollouts from vLLM's own sampler, so samples differ from HF ones for the same seed).
`get_backend("hf" | "vllm")`.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

ProgressFn = Callable[[int], None]


class GenerationError(ValueError):
    """Bad generation input or a missing backend (one-line message for the CLI)."""


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: Sequence[dict] | str, assistant_prefix: str = "") -> str:
    """Chat messages -> the prompt string the model continues.

    With a chat template: `apply_chat_template(messages, add_generation_prompt=True)` followed
    by `assistant_prefix` (text pre-filled at the start of the assistant turn; it belongs to
    the prompt, not to the response). Without one (base models): a plain
    `"{system}\\n\\nQuestion: {user}\\nAnswer: {assistant_prefix}"` layout.
    A bare string is treated as one user message.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    messages = list(messages)
    if not messages:
        raise GenerationError("render_prompt: empty message list")
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix
    parts = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system":
            parts.append(f"{content}\n\n")
        elif role == "user":
            parts.append(f"Question: {content}\n")
        else:  # an earlier assistant turn (few-shot)
            parts.append(f"Answer: {content}\n\n")
    return "".join(parts) + "Answer: " + assistant_prefix


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt text -> ids, the way `generate` does it (no padding).

    A chat template already writes any BOS/special tokens itself, so special tokens are not
    added (as in HF `apply_chat_template(tokenize=True)`); the plain fallback adds them.
    """
    add = not has_chat_template(tokenizer)
    return list(tokenizer(text, add_special_tokens=add)["input_ids"])


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids: the tokenizer's EOS plus the model's `generation_config.eos_token_id`(s)."""
    ids: list[int] = []
    cands: list[Any] = [getattr(tokenizer, "eos_token_id", None)]
    gc = getattr(model, "generation_config", None)
    if gc is not None:
        cands.append(gc.eos_token_id)
    for c in cands:
        for i in c if isinstance(c, (list, tuple)) else [c]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise GenerationError("the tokenizer has no EOS token; cannot tell finished responses")
    return ids


# ---------------------------------------------------------------------------------------------
# Rollouts and token offsets
# ---------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One sampled response.

    `response_offsets[t] = (start, end)`: characters of `response_text` produced by
    `response_ids[t]`; special tokens (EOS) are zero-width `(len, len)`; the bytes of a
    character split across tokens all map to that character's span.
    """

    prompt_text: str
    response_text: str
    prompt_ids: list[int]
    response_ids: list[int]
    finished: bool  # True: EOS emitted (last response id); False: cut at max_new_tokens
    response_offsets: list[tuple[int, int]] = field(default_factory=list)
    # the sampling engine's log-prob of each response token (vLLM: under the distribution it
    # sampled from); None from the HF loop, whose sampler is the trainer's own model
    logprobs: list[float] | None = None

    @classmethod
    def from_ids(cls, tokenizer, prompt_text: str, prompt_ids: Sequence[int], response_ids: Sequence[int],
                 stops: Sequence[int], logprobs: Sequence[float] | None = None) -> Rollout:
        """The rollout of sampled `response_ids` (cut after the first stop token by the
        sampler): decoded text, character offsets, `finished` = the last id is a stop token."""
        resp = list(response_ids)
        text = _decode(tokenizer, resp)
        return cls(prompt_text=prompt_text, response_text=text, prompt_ids=list(prompt_ids), response_ids=resp,
                   finished=bool(resp) and resp[-1] in stops, response_offsets=token_offsets(tokenizer, resp, text),
                   logprobs=None if logprobs is None else list(logprobs))


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def token_offsets(tokenizer, ids: Sequence[int], text: str | None = None) -> list[tuple[int, int]]:
    """Char span of each token of `ids` inside `text = decode(ids, skip_special_tokens=True)`.

    Incremental detokenisation with a short look-back window (O(T)): the piece of token t is
    `decode(ids[s:t+1])[len(decode(ids[s:t])):]` with `s = t - 6`. A token that ends inside a
    multi-byte character (decodes to U+FFFD) waits for the token that completes it, and they
    all get that character's span. If the pieces do not tile `text` exactly (an exotic
    decoder), falls back to full-prefix decoding (O(T^2), exact).
    """
    ids = list(ids)
    if text is None:
        text = _decode(tokenizer, ids)
    out = _offsets_window(tokenizer, ids, text)
    return out if out is not None else _offsets_prefix(tokenizer, ids, text)


def _offsets_window(tokenizer, ids, text, window: int = 6):
    offsets: list[tuple[int, int]] = []
    pos, pending = 0, 0  # pending: tokens waiting for a multi-byte character to complete
    for t in range(len(ids)):
        s = max(0, t - pending - window)
        a = _decode(tokenizer, ids[s : t - pending])
        b = _decode(tokenizer, ids[s : t + 1])
        if b.endswith("\ufffd") and not text[pos:].startswith(b[len(a) :]):
            pending += 1
            continue
        if not b.startswith(a):
            return None
        piece = b[len(a) :]
        if text[pos : pos + len(piece)] != piece:
            return None
        offsets.extend([(pos, pos + len(piece))] * (pending + 1))
        pos += len(piece)
        pending = 0
    if pending:
        offsets.extend([(pos, len(text))] * pending)
        pos = len(text)
    return offsets if pos == len(text) else None


def _offsets_prefix(tokenizer, ids, text):
    offsets, prev, pend = [], 0, 0
    for t in range(len(ids)):
        d = _decode(tokenizer, ids[: t + 1])
        if not text.startswith(d):  # ends inside a character
            pend += 1
            continue
        offsets.extend([(prev, len(d))] * (pend + 1))
        prev, pend = len(d), 0
    offsets.extend([(prev, len(text))] * pend)
    return offsets


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def row_seed(seed: int, prompt: str, occurrence: int, sample: int) -> int:
    """Seed of row (prompt, sample): blake2b of `(seed, prompt, occurrence, sample)`, 63 bits."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{int(seed)}\x00{occurrence}\x00{sample}\x00".encode())
    h.update(prompt.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def prompt_keys(prompts: Sequence[str], keys: Sequence[int | str] | None = None) -> list[int | str]:
    """The key of each prompt in its row seeds: `keys` when given (one per prompt), else the
    occurrence count of the prompt's text so far (0 for its first copy, 1 for the next, ...)."""
    if keys is not None:
        keys = list(keys)
        if len(keys) != len(prompts):
            raise GenerationError(f"{len(keys)} keys for {len(prompts)} prompts")
        return keys
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        out.append(seen.get(p, 0))
        seen[p] = out[-1] + 1
    return out


def warp_logits(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering; filtered logits are -inf.

    scores: [B, V] -> [B, V] float32. Top-p keeps the smallest prefix of tokens (by
    probability, descending) whose mass reaches `top_p`; the most likely token is always kept.
    """
    x = scores.float() / max(float(temperature), 1e-8)  # [B, V]
    V = x.shape[-1]
    if top_k and 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]  # [B, 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)  # [B, V]
        probs = sorted_x.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly before each token
        drop = before >= top_p
        drop[..., 0] = False
        x = x.scatter(-1, idx, sorted_x.masked_fill(drop, float("-inf")))
    return x


class _RowSampler:
    """Per-row seeded sampling: one generator per row, one uniform per row and step.

    Row b draws one uniform u_b from its own CPU generator per step; the token is the
    inverse-CDF pick `min{i : cdf_b[i] > u_b * cdf_b[-1]}` over the warped distribution, done
    for the whole batch at once on the model's device (one small CPU draw per row, no
    per-row kernels). `pick` serves the own decode loop (any subset of the rows, in any
    order); `__call__` is the HF logits-processor form used by the reference path, which
    returns one-hot logits (0 at the pick, -inf elsewhere) so that greedy picks the draw.
    """

    def __init__(self, seeds: list[int], temperature: float, top_k: int, top_p: float):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def pick(self, scores: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """scores [B, V] of rows `rows` (indices into the seeds) -> drawn token ids [B]."""
        probs = warp_logits(scores, self.temperature, self.top_k, self.top_p).softmax(-1)  # [B, V]
        u = torch.cat([torch.rand(1, generator=self.gens[r], dtype=torch.float64) for r in rows])  # [B]
        cdf = probs.double().cumsum(-1)  # [B, V]
        target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)  # [B, 1]
        picks = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)  # [B, 1]
        return picks.squeeze(-1)  # [B]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        picks = self.pick(scores, range(len(self.gens)))  # [B]
        out = torch.full_like(scores, float("-inf"))  # [B, V]
        out.scatter_(-1, picks.unsqueeze(-1), 0.0)
        return out


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


# Compact the decoded batch once this fraction of its rows has finished (at least one row):
# a compaction copies the KV cache once, about what one decode step reads, so finished rows
# are dropped in small groups rather than one at a time.
COMPACT_FRACTION = 0.125


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, L], attention mask [B, L]), left padded to the longest."""
    L = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)  # [B, L]
    attn = torch.zeros((len(seqs), L), dtype=torch.long)  # [B, L]
    for b, x in enumerate(seqs):
        ids[b, L - len(x) :] = torch.tensor(list(x), dtype=torch.long)
        attn[b, L - len(x) :] = 1
    return ids, attn


def _new_cache(model):
    """HF's `DynamicCache` for the model's config (layer types: full or sliding attention).

    A preallocated buffer instead of its per-step concatenation was tried: no measurable gain
    on CPU at 128 rows (within the +-10% noise), so the plain cache stays."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _decode_compact(model, prompt_ids: Sequence[Sequence[int]], row_prompt: Sequence[int],
                    sampler: _RowSampler | None, stops: Sequence[int], pad_id: int,
                    max_new_tokens: int) -> list[list[int]]:
    """Own decode loop: shared prefill per distinct prompt, finished rows leave the batch.

    prompt_ids: the distinct prompts of this batch; row_prompt[b]: the prompt of row b.
    Returns the generated ids of each row, cut after its first stop token. Positions are
    those of HF `generate` (left padding: `cumsum(mask) - 1`), logits are cast to float32
    before sampling as HF does, so a row sees the same logits as on the reference path up
    to the float differences of another batch shape. (`torch.compile` of the model forward
    was tried for this loop on CPU and left out: 0.75-0.84x, bench/bench_generation.py.)
    """
    device = _model_device(model)
    ids, attn = _left_pad(prompt_ids, pad_id)  # [U, L]
    pos0 = (attn.cumsum(-1) - 1).clamp_(min=0)  # [U, L]
    cache = _new_cache(model)
    params = inspect.signature(model.forward).parameters
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    # transformers >= 5.25 names the KV cache argument `cache` (past_key_values: deprecated)
    kv = "cache" if "cache" in params else "past_key_values"
    out = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos0.to(device),
                use_cache=True, **{kv: cache}, **keep_last)
    src = torch.tensor(list(row_prompt), dtype=torch.long)  # [B]: row -> distinct prompt
    logits = out.logits[:, -1].float()[src.to(device)]  # [B, V] float32, as in HF generate
    cache.batch_select_indices(src.to(device))  # expand: the rows of one prompt share its prefill
    attn = attn[src].to(device)  # [B, L]
    pos = attn.sum(-1)  # [B]: position of the next token (prompt length)
    del out

    B = len(row_prompt)
    live = list(range(B))  # live[k]: the row decoded in slot k of the batch
    done_slot = torch.zeros(B, dtype=torch.bool, device=device)  # [B]: finished, not yet dropped
    tokens: list[list[int]] = [[] for _ in range(B)]
    stop_t = torch.tensor(list(stops), dtype=torch.long, device=device)
    for t in range(max_new_tokens):
        picks = sampler.pick(logits, live) if sampler is not None else logits.argmax(-1)  # [b]
        for k, (tok_id, done) in enumerate(zip(picks.tolist(), done_slot.tolist(), strict=True)):
            if not done:
                tokens[live[k]].append(tok_id)
        done_slot |= torch.isin(picks, stop_t)
        n_done = int(done_slot.sum())
        if n_done == len(live) or t == max_new_tokens - 1:
            break
        if n_done >= max(1, int(COMPACT_FRACTION * len(live))):
            keep = (~done_slot).nonzero().squeeze(-1)  # [b']
            cache.batch_select_indices(keep)
            attn, pos, picks = attn[keep], pos[keep], picks[keep]
            live = [live[k] for k in keep.tolist()]
            done_slot = done_slot[keep]
        attn = torch.cat([attn, attn.new_ones((len(live), 1))], dim=-1)  # [b, L + t + 1]
        out = model(input_ids=picks.unsqueeze(-1), attention_mask=attn, position_ids=pos.unsqueeze(-1),
                    use_cache=True, **{kv: cache})
        logits = out.logits[:, -1].float()  # [b, V]
        pos = pos + 1
        del out
    return tokens


def _decode_reference(model, prompt_ids: Sequence[Sequence[int]], row_prompt: Sequence[int],
                      sampler: _RowSampler | None, stops: Sequence[int], pad_id: int,
                      max_new_tokens: int) -> list[list[int]]:
    """Reference path: HF `model.generate` on every row (no shared prefill, finished rows keep
    decoding until the batch stops); same return value as `_decode_compact`."""
    from transformers import GenerationConfig, LogitsProcessorList

    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,  # sampling happens in _RowSampler; greedy picks its one-hot choice
        num_beams=1,
        # HF's neutral defaults, set explicitly so a model's own sampling defaults never apply
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_length=0,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=list(stops),
    )
    device = _model_device(model)
    input_ids, attn = _left_pad([prompt_ids[i] for i in row_prompt], pad_id)  # [B, L]
    procs = LogitsProcessorList([sampler] if sampler is not None else [])
    out = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attn.to(device),
        generation_config=gen_cfg,
        logits_processor=procs,
    )  # [B, L + T], T <= max_new_tokens
    tokens = []
    for resp in out[:, input_ids.shape[1] :].tolist():
        for t, tok_id in enumerate(resp):
            if tok_id in stops:
                resp = resp[: t + 1]
                break
        tokens.append(resp)
    return tokens


def check_sampling(n: int, max_new_tokens: int, batch_size: int, temperature: float, top_p: float,
                   top_k: int) -> None:
    """One-line GenerationError for sampling arguments out of range (every backend)."""
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise GenerationError("n, max_new_tokens and batch_size must be >= 1")
    if temperature < 0 or not (0.0 < top_p <= 1.0) or top_k < 0:
        raise GenerationError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    compact: bool = True,
    keys: Sequence[int | str] | None = None,
) -> list[list[Rollout]]:
    """Sample `n` responses per prompt (KV cache, left padding).

    Returns `out[i][j]`: sample j of prompt i. `temperature == 0` is greedy (all n samples
    equal). `top_k == 0` and `top_p == 1` disable those filters. `progress(k)` is called with
    the number of rollouts finished after each batch of at most `batch_size` rows. Rows are
    batched by prompt length (longest first) to limit padding; results come back in input
    order. `compact=True` (default): own decode loop, one prefill per distinct prompt of a
    batch, finished rows dropped from the batch; `compact=False`: the HF `model.generate`
    reference path (same tokens for the same seed, up to float differences).

    `keys[i]` (optional) names prompt i in the row seeds instead of its occurrence count among
    equal prompt texts: the trainer passes each prompt's global position in the step, so two
    ranks that draw the same problem sample different rows, and a prompt's rows do not depend
    on how the step is split over ranks.
    """
    check_sampling(n, max_new_tokens, batch_size, temperature, top_p, top_k)
    prompts = list(prompts)
    if not prompts:
        return []
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]
    if any(len(p) == 0 for p in prompt_ids):
        raise GenerationError("empty prompt")

    rows = []  # (prompt index, sample index, row seed)
    for i, (p, key) in enumerate(zip(prompts, prompt_keys(prompts, keys), strict=True)):
        rows += [(i, j, row_seed(seed, p, key, j)) for j in range(n)]
    order = sorted(range(len(rows)), key=lambda r: -len(prompt_ids[rows[r][0]]))  # stable

    results: dict[tuple[int, int], Rollout] = {}
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, len(order), batch_size):
            batch = [rows[r] for r in order[b0 : b0 + batch_size]]
            distinct: dict[tuple[int, ...], int] = {}  # prompt ids -> index among this batch's prompts
            row_prompt = [distinct.setdefault(tuple(prompt_ids[i]), len(distinct)) for i, _, _ in batch]
            sampler = _RowSampler([s for _, _, s in batch], temperature, top_k, top_p) if temperature > 0 else None
            decode = _decode_compact if compact else _decode_reference
            with torch.no_grad():
                new = decode(model, list(distinct), row_prompt, sampler, stops, pad_id, max_new_tokens)
            for (i, j, _), resp in zip(batch, new, strict=True):
                results[(i, j)] = Rollout.from_ids(tokenizer, prompts[i], prompt_ids[i], resp, stops)
            if progress is not None:
                progress(len(batch))
    finally:
        if was_training:
            model.train()
    return [[results[(i, j)] for j in range(n)] for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------
class Backend(Protocol):
    """A rollout engine: same signature and return value as `generate`."""

    name: str

    def generate(self, model, tokenizer, prompts: Sequence[str], **kw) -> list[list[Rollout]]: ...


class HFBackend:
    """HF transformers `generate` (CPU or GPU); the reference backend."""

    name = "hf"

    def generate(self, model, tokenizer, prompts, **kw):
        return generate(model, tokenizer, prompts, **kw)


class VLLMBackend:
    """vLLM (optional: `pip install 'ftcli[gpu]'`; on CPU `just vllm-setup`): an adapter over
    `ftcli.vllm_engine`, whose rollouts match `generate`'s (same prompt ids, stops, `finished`
    flags, row seeds; vLLM's own sampler, so other tokens for the same seed) and carry vLLM's
    log-probs. The engine is built on the first `generate` from `model_path` (a folder or hub
    id; vLLM loads its own weights, so the HF `model` argument may be None: it only adds its
    EOS ids) and reused by later backends of the same options; `engine=` wraps one that exists
    (the trainer's). `engine_options`: fields of `ftcli.vllm_engine.EngineOptions`."""

    name = "vllm"
    chunk_problems = 512  # `ft eval`: problems per engine call (vLLM schedules the rows itself)

    def __init__(self, model_path: str | None = None, engine=None, **engine_options):
        from ftcli.vllm_engine import require_vllm

        require_vllm()
        self.model_path, self.engine_options, self._engine = model_path, engine_options, engine

    def engine(self, model=None):
        """The `ftcli.vllm_engine.VLLMEngine` (built or reused on first use)."""
        from ftcli.vllm_engine import EngineOptions, VLLMEngine

        if self._engine is None:
            path = self.model_path or getattr(model, "name_or_path", None)
            if not path:
                raise GenerationError("the vllm backend needs model_path (a model folder or hub id)")
            self._engine = VLLMEngine.shared(EngineOptions(model=str(path), **self.engine_options))
            if self._engine.synced:  # a trainer in this process changed its weights
                self._engine.reset_weights()
        return self._engine

    def generate(self, model, tokenizer, prompts, **kw):
        return self.engine(model).generate(tokenizer, prompts, stops=stop_token_ids(model, tokenizer), **kw)


BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend}


def get_backend(name: str = "hf", **kwargs) -> Backend:
    """Backend by name (`hf`, `vllm`); vLLM raises a one-line error when not installed."""
    try:
        cls = BACKENDS[name.lower()]
    except KeyError:
        raise GenerationError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})") from None
    return cls(**kwargs)


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    """`ids` decoded as the text `token_offsets` maps into: special tokens skipped, no clean-up."""
    return _decode(tokenizer, ids)
