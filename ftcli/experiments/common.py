"""What the experiments share: settings guard, CSV output, model and task resolution, the
teacher-forced flow of a batch of traced sequences, and the number formats of the tables."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ftcli import get_task
from ftcli.attention import mean_attention
from ftcli.fetch.models import load_model
from ftcli.flow import trace_flow
from ftcli.io import atomic_write_json, atomic_write_text
from ftcli.progress import progress_bar
from ftcli.sequences import TracedSeq, collate
from ftcli.tasks.loading import task_data_options


def guard_settings(out: Path, settings: dict, ignore: Sequence[str] = (),
                   canonical: Callable[[dict], dict] | None = None) -> None:
    """Refuse to resume an output folder made with different settings (except `ignore`);
    `canonical` maps both sides to a form where equal meanings compare equal."""
    f = out / "settings.json"
    if f.is_file():
        old = json.loads(f.read_text(encoding="utf-8"))
        new = json.loads(json.dumps(settings))  # as saved: a tuple option compares equal to its JSON list
        if canonical is not None:
            old, new = canonical(old), canonical(settings)
        diff = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
        if diff:
            raise ValueError(
                f"{out} holds results made with other settings ({', '.join(diff)}); "
                "choose another --out or delete that folder"
            )
    atomic_write_json(f, settings)


def write_csv(path: Path, rows: list[list]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    atomic_write_text(path, buf.getvalue())


def progress(console, enabled: bool):
    return progress_bar("[bold]{task.description}", console=console, disable=not enabled)


def open_experiment(cfg, task=None, ignore: Sequence[str] = ()):
    """(out folder, settings, task object) of an analysis: the settings are all of cfg but `out`;
    an --out holding another experiment's settings (beyond `ignore`) is refused; `task` (or
    cfg.task) is resolved under cfg.data_root."""
    out = Path(cfg.out)
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    guard_settings(out, settings, ignore=ignore)
    return out, settings, resolve_task(task if task is not None else cfg.task, cfg.data_root)


def load_pair(model, device=None):
    """(model, tokenizer) from a name or an already loaded pair."""
    if isinstance(model, tuple):
        return model
    return load_model(model, device=device)


def resolve_task(task, data_root: str | Path | None = None):
    """A task object from a name (`ftcli.get_task`, its files under `data_root`, else $FT_DATA,
    else the data cache) or the object itself."""
    return get_task(task, **task_data_options(task, data_root)) if isinstance(task, str) else task


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def decode(tok, ids: Sequence[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


def trace_flows(model, seqs: Sequence[TracedSeq], layers="mid", ratio: float = 0.4, gamma: float = 1.5,
                pad_id: int = 0, batch_size: int = 8) -> list[dict]:
    """`trace_flow` on W from one teacher-forced forward per batch (right padding; the flow is
    padding-invariant). Returns per sequence {"tau", "selected" ([n_response], response
    positions), "fallback"}."""
    device = next(model.parameters()).device
    out: list[dict] = []
    for b0 in range(0, len(seqs), batch_size):
        chunk = seqs[b0 : b0 + batch_size]
        batch = collate(chunk, pad_id)
        am = batch["attention_mask"].long()  # [B, T]
        with torch.no_grad():
            W = mean_attention(model, batch["input_ids"].to(device), am.to(device), layers=layers).float().cpu()
        res = trace_flow(W, batch["question_mask"], batch["answer_mask"], batch["response_mask"],
                         ratio=ratio, gamma=gamma, overwrite=True)
        for b, s in enumerate(chunk):
            p, n = s.n_prompt, len(s.ids)
            out.append({"tau": res.tau[b, p:n].clone(), "selected": res.mask[b, p:n].clone(),
                        "fallback": bool(res.fallback[b])})
        del W
    return out


# -- number formats of the tables ----------------------------------------------------------------
def fmt_num(x, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def fmt_pm(m, sd, nd: int = 3) -> str:
    return "—" if m is None else f"{m:.{nd}f} ± {sd:.{nd}f}"


def fmt_pct(x, nd: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{nd}f}"


def fmt_rate_ci(p: dict) -> str:
    """A `proportion` as "rate [lo, hi] (k/n)" in percent."""
    if p["rate"] is None:
        return "—"
    return f"{100 * p['rate']:.1f} [{100 * p['ci'][0]:.1f}, {100 * p['ci'][1]:.1f}] ({p['k']}/{p['n']})"


def fmt_pm_pct(st: dict) -> str:
    """{"mean", "std"} as "mean ± std" in percent."""
    if st.get("mean") is None:
        return "—"
    return f"{100 * st['mean']:.1f}" + (f" ± {100 * st['std']:.1f}" if st.get("std") else "")
