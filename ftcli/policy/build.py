"""The default policy's tokenizer (byte-level BPE trained on the traces), its Qwen3 model
from scratch, and saving a checkpoint (see `ftcli.policy`)."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from ftcli.fetch.models import CHAT_TEMPLATE
from ftcli.policy import IM_END, IM_START, MODEL_SIZES, PAD, SPECIAL_TOKENS, TAG_TOKENS, PolicyError

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
_ATOMIC = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + TAG_TOKENS))


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE (`tokenizers`) with single-digit pre-splitting and merges across spaces,
    wrapped as a `PreTrainedTokenizerFast` with the ChatML template.

    The special and tag tokens get ids 0..6; the texts are cut at them before BPE training, so
    no merge ever crosses a tag (the same cut that encoding makes). BPE stops early when every
    chunk of the corpus is a single token (a corpus of fixed-template prompts gives ~600).
    """

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS + TAG_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pieces = (p for t in texts for p in _ATOMIC.split(t) if p)
    tk.train_from_iterator(pieces, trainer)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=PAD, eos_token=IM_END, bos_token=None, unk_token=None
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.model_max_length = 512
    return tok


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def new_policy_model(tokenizer, size: str = "small", seed: int = 0, max_positions: int = 512,
                     attn_implementation: str = "sdpa"):
    """A seeded, randomly initialised `Qwen3ForCausalLM` sized for `tokenizer`."""

    if size not in MODEL_SIZES:
        raise PolicyError(f"unknown model size {size!r} (known: {', '.join(MODEL_SIZES)})")
    s = MODEL_SIZES[size]
    vocab = int(math.ceil(len(tokenizer) / 64) * 64)  # room for added tokens, aligned
    cfg = Qwen3Config(
        vocab_size=vocab,
        head_dim=s["hidden_size"] // s["num_attention_heads"],
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        use_cache=True,
        **s,
    )
    cfg._attn_implementation = attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = cfg.bos_token_id
    return model


def round_to_fp16(model) -> None:
    """Round every floating-point parameter to the nearest float16 value (in place, still
    float32). A checkpoint stored in float16 then reloads as exactly this model."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(p.half().float())


def save_policy(model, tokenizer, out_dir: str | os.PathLike, extra_files: dict[str, str] | None = None,
                store_fp16: bool = False) -> Path:
    """`save_pretrained` model + tokenizer into a temporary sibling folder, then rename it into
    place (an interrupted save never leaves a half-written checkpoint).

    `store_fp16`: the safetensors hold float16 tensors (half the size) while `config.json`
    keeps float32, so `from_pretrained` upcasts them; call `round_to_fp16` first so that the
    reloaded model is exactly the saved one.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if store_fp16:
            for f in tmp.glob("*.safetensors"):
                sd = load_file(f)
                save_file({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, f,
                          metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; a checkpoint is an ordinary folder
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
