"""The run directory of `ft train` (`--out`): its layout, in one place.

    config.json        every option, resolved (plus world size, DeepSpeed config, versions)
    metrics.jsonl      one row per step (and with validation a step-0 row for the start)
    samples.jsonl      a few responses per step with their tokens and credit weights
    checkpoints/step_XXXXXX/   HF safetensors (`from_pretrained`-loadable) + tokenizer,
                       trainer_state.json, rng_state_rank*.pt, ds/ (DeepSpeed optimizer state)
                       and manifest.json (sha256 and size of every other file, written
                       last; a checkpoint whose files differ from it is damaged)
    checkpoints/final/ HF weights + tokenizer + trainer_state.json of the last step, and
                       README.md, its hub model card (ftcli.train.modelcard)
    tb/, wandb/        with --report-to: TensorBoard event files, the W&B run (ftcli.train.tracking)

Every file is written atomically (temp + rename; jsonl rows are appended whole and fsynced).
`RunDir` is what every module that touches a run uses: the trainer (save, resume, prune),
`ft eval` (which checkpoint a `--ckpt` spec names), the sweeps (is a run finished) and the plots
(metrics).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import MISSING, fields
from pathlib import Path

from ftcli.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

STEP_DIR = re.compile(r"^step_(\d+)$")
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, reuse: dict | None = None) -> Path:
    """Write `folder/manifest.json` ({"files": {relpath: {"sha256", "size"}}}, every file
    below `folder`) atomically: the last file written into a checkpoint. `reuse`: the entries
    of a manifest whose files were hard-linked here (same name and size: not hashed again)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST:
            size = p.stat().st_size
            old = (reuse or {}).get(rel)
            files[rel] = old if old and old.get("size") == size else {"sha256": file_sha256(p), "size": size}
    return atomic_write_json(folder / MANIFEST, {"files": files})


def read_manifest(folder: Path) -> dict | None:
    """The "files" of `folder/manifest.json`; None when there is none (a checkpoint written
    before manifests); ValueError when it is unreadable."""
    f = folder / MANIFEST
    if not f.is_file():
        return None
    try:
        files = json.loads(f.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{MANIFEST}: unreadable ({type(e).__name__})") from None
    return files


def checkpoint_damage(folder: Path, skip=lambda rel: False) -> str | None:
    """Why the checkpoint `folder` is damaged, in a few words naming the file
    ('ds/state/x.pt: missing', 'model.safetensors: 1000 bytes, 2000 expected ...',
    'trainer_state.json: sha256 differs ...'); None if intact. Checks the files its manifest
    lists (but those `skip(relpath)` names); a checkpoint without a manifest (written before
    manifests) is checked for a readable trainer_state.json only."""
    try:
        files = read_manifest(folder)
    except ValueError as e:
        return str(e)
    if files is None:
        try:
            json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None if is_model_dir(folder) else "trainer_state.json: missing"
        except (OSError, UnicodeDecodeError, ValueError):
            return "trainer_state.json: not valid JSON"
        return None
    for rel, want in files.items():
        if skip(rel):
            continue
        p = folder / rel
        if not p.is_file():
            return f"{rel}: missing"
        size = p.stat().st_size
        if size != want.get("size"):
            return f"{rel}: {size} bytes, {want.get('size')} expected (truncated or overwritten)"
        if file_sha256(p) != want.get("sha256"):
            return f"{rel}: sha256 differs from the manifest (corrupted)"
    return None


def is_training_state(rel: str) -> bool:
    """Files only a resume needs (DeepSpeed state, RNG): `ft eval` does not check them."""
    return rel.startswith("ds/") or rel.startswith("rng_state")


def is_model_dir(p: Path) -> bool:
    """A folder `from_pretrained` can load (it holds a config.json)."""
    return (p / "config.json").is_file()


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an older `dst` (two renames)."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def quiet_hf_progress():
    """No tqdm bar from save_pretrained ("Writing model shards") under our progress bar."""
    # imported here: `ft --help` does not need transformers
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# options that do not change what a run computes (folder, data location, reporting, saving)
NOT_RUN_OPTIONS = ("out", "data_root", "progress", "report_to", "save_every", "keep_last", "log_samples")


class RunDir:
    """One run directory (see the module docstring for its layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.config_file = self.path / "config.json"
        self.metrics_file = self.path / "metrics.jsonl"
        self.samples_file = self.path / "samples.jsonl"
        self.final = self.checkpoints / "final"

    # -- reading ------------------------------------------------------------------------------
    def metrics(self) -> list[dict]:
        """Rows of metrics.jsonl (a torn last line is skipped)."""
        return read_jsonl(self.metrics_file)

    def has_run(self) -> bool:
        return self.metrics_file.exists()

    def step_checkpoints(self, complete: str | None = "trainer_state.json") -> dict[int, Path]:
        """{step: folder} of the checkpoints/step_XXXXXX folders that hold `complete` (None:
        every step folder)."""
        out = {}
        if self.checkpoints.is_dir():
            for d in self.checkpoints.iterdir():
                m = STEP_DIR.match(d.name)
                if m and d.is_dir() and (complete is None or (d / complete).is_file()):
                    out[int(m.group(1))] = d
        return dict(sorted(out.items()))

    def option_diff(self, cfg) -> list[str]:
        """The options (TrainConfig fields) whose value in this run's config.json differs from
        `cfg`'s; a field the file lacks (an older version) counts at its default. Where the run
        lives, where its data came from and how it reports do not count."""
        try:
            saved = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return []  # no readable record: nothing to compare (a damaged run fails on resume)
        out = []
        for f in fields(cfg):
            if f.name in NOT_RUN_OPTIONS:
                continue
            default = f.default if f.default is not MISSING else None
            value, now = saved.get(f.name, default), getattr(cfg, f.name)
            if isinstance(now, str) and isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # an option that became a string (--gen-batch-size 16 | auto)
            if value != now:
                out.append(f.name)
        return out

    def is_finished(self, steps: int) -> bool:
        """A final checkpoint and metrics up to `steps`."""
        if not is_model_dir(self.final):
            return False
        rows = self.metrics()
        return bool(rows) and max(int(r.get("step", 0)) for r in rows) >= steps

    # -- writing ------------------------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        append_jsonl(self.metrics_file, row)

    def append_sample(self, row: dict) -> None:
        append_jsonl(self.samples_file, row)

    def write_config(self, resolved: dict) -> None:
        atomic_write_json(self.config_file, resolved)

    def truncate_logs(self, step: int) -> None:
        """Drop the log rows written after `step` (-1: all rows; a torn line is dropped too)."""
        for p in (self.metrics_file, self.samples_file):
            if p.exists():
                keep = [line for line in p.read_text(encoding="utf-8").splitlines() if _row_step(line, step + 1) <= step]
                atomic_write_text(p, "".join(x + "\n" for x in keep))

    def discard(self) -> None:
        """Remove the whole run folder: only for a new run that failed before logging a row."""
        shutil.rmtree(self.path, ignore_errors=True)

    def checkpoint_tmp(self, step: int) -> Path:
        """A fresh temporary folder for the checkpoint of `step` (main rank only)."""
        tmp = self.checkpoints / f".{step_dir_name(step)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, step: int, state: dict, final: bool) -> Path:
        """Write trainer_state.json into the finished `tmp` and rename it to step_XXXXXX;
        `final` also refreshes checkpoints/final (HF weights + trainer state)."""
        atomic_write_json(tmp / "trainer_state.json", state)
        write_manifest(tmp)  # last: the digests of every file
        dst = self.checkpoints / step_dir_name(step)
        replace_dir(tmp, dst)
        if final:
            self._write_final(dst, state)
        return dst

    def _write_final(self, src: Path, state: dict) -> None:
        tmp = self.checkpoints / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith("rng_state") and f.name not in ("trainer_state.json", MANIFEST):
                try:  # checkpoint files are never modified in place: a hard link is a safe copy
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
        atomic_write_json(tmp / "trainer_state.json", state)
        write_manifest(tmp, reuse=read_manifest(src))
        replace_dir(tmp, self.final)

    def set_aside(self, folder: Path) -> Path:
        """Rename a damaged checkpoint to `<name>.damaged` (kept for inspection, no longer a
        step checkpoint: resume, eval and pruning ignore it)."""
        dst = folder.with_name(folder.name + ".damaged")
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(folder, dst)
        return dst

    def prune(self, keep_last: int, also_keep: int | None = None) -> None:
        """Delete step checkpoints except the newest `keep_last` (>= 1) and `also_keep`."""
        cks = self.step_checkpoints()
        keep = set(list(cks)[-max(keep_last, 1) :])
        if also_keep is not None:
            keep.add(also_keep)
        for s, d in cks.items():
            if s not in keep:
                shutil.rmtree(d, ignore_errors=True)


def _row_step(line: str, torn: int) -> int:
    """The `step` of one JSONL line (0 when absent; `torn` when the line does not parse)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return torn
