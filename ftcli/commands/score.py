"""`ft score`: FlowTracer credit of given responses, shown token by token."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from ftcli.commands.options import build, command, dataclass_params
from ftcli.fetch.models import DEFAULT_MODEL, load_model
from ftcli.io import atomic_write_text
from ftcli.options import LAYERS_HELP, option
from ftcli.progress import progress_bar

EPILOG = """Examples:

  ft score --prompt "What is 17 + 25?" --response "17 + 25 = 42, so \\boxed{42}."

  ft score --input pairs.jsonl --json credit.json --html credit.html

  ft score --input pairs.jsonl --layers 10:20 --answer-pattern "answer is (\\d+)"
"""


def _utf8_error(text: str) -> str | None:
    """Why `text` is not valid UTF-8 (the shell passes undecodable bytes as lone surrogates,
    and JSON may escape them), None if it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"not valid UTF-8 (character {e.start + 1})"
    return None


def _read_pairs(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(pairs, names 'FILE:LINE') of a JSONL file; a bad line is one ValueError naming it
    (physical lines: split on \\n only)."""
    pairs, names = [], []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid UTF-8 (byte {e.start + 1} of the line)") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = (row["prompt"], row["response"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected a JSON object with prompt and response ({e})") from None
        for key, v in zip(("prompt", "response"), pair, strict=True):
            if not isinstance(v, str):
                raise ValueError(f"{path}:{n}: field {key}: expected a string, got {type(v).__name__}")
            if why := _utf8_error(v):
                raise ValueError(f"{path}:{n}: field {key}: {why}")
        pairs.append(pair)
        names.append(f"{path}:{n}")
    if not pairs:
        raise ValueError(f"{path} has no rows")
    return pairs, names


@dataclass
class ScoreOptions:
    """`ft score`'s options (the numeric ranges are checked in one line each, before the model
    is loaded)."""

    prompt: str | None = option(None, "The user question (chat-formatted for the model).", flags=("-p",))
    response: str | None = option(None, "The response to credit.", flags=("-r",))
    input: Path | None = option(None, "JSONL file of {prompt, response} rows.", flags=("-i",),
                                typer_kw={"exists": True, "dir_okay": False})
    model: str = option(DEFAULT_MODEL, "Alias, local path or hub id.", flags=("-m",))
    layers: str = option("mid", LAYERS_HELP)
    ratio: float = option(0.4, "Fraction of response tokens selected.", min=0.0, max=1.0)
    gamma: float = option(1.5, "Weight of the selected tokens.", gt=0,
                          why="a weight <= 0 flips or removes the credited tokens' credit")
    answer_pattern: str | None = option(None, "Regex for the answer span (group 1 if any); default: content of the last \\boxed{...}.")
    top_edges: int = option(8, "How many backbone edges to list.", min=0, cli_range=False)
    json_: Path | None = option(None, "Write tokens, offsets, h, f, tau, selected, weights here.")
    html: Path | None = option(None, "Write a self-contained per-token heat map here.")
    batch_size: int = option(4, "Pairs per forward pass.", min=1)
    max_tokens: int | None = option(None, "Refuse a pair longer than this many tokens (chat template included), before any forward pass; default and maximum: the model's context.", min=1, cli_range=False)
    quiet: bool = option(False, "No per-token view in the terminal.", flags=("-q",), toggle=False)


def score(kw: dict):
    """Compute FlowTracer token credit for responses and show it token by token."""
    from ftcli.score.pairs import score_pairs
    from ftcli.score.render import (  # imported here: `ft --help` stays fast
        render_html,
        render_terminal,
    )

    prompt, response, input = kw["prompt"], kw["response"], kw["input"]
    if input is not None:
        if prompt is not None or response is not None:
            raise typer.BadParameter("give either --input or --prompt/--response, not both")
        pairs, names = _read_pairs(input)
    elif prompt is None or response is None:
        raise typer.BadParameter("give --prompt and --response, or --input FILE.jsonl")
    else:
        for flag, text in (("--prompt", prompt), ("--response", response)):
            if why := _utf8_error(text):
                raise ValueError(f"{flag} is {why}")
        pairs, names = [(prompt, response)], ["--prompt/--response"]
    o = build(ScoreOptions, kw)  # the ranges, one line each (before the model is loaded)
    model, layers, ratio, gamma, answer_pattern = o.model, o.layers, o.ratio, o.gamma, o.answer_pattern
    json_out, html_out = o.json_, o.html
    console = Console()
    mdl, tok = load_model(model)
    settings = {"model": model, "layers": layers, "ratio": ratio, "gamma": gamma, "answer_pattern": answer_pattern}
    with progress_bar("scoring", console=console, transient=True, disable=len(pairs) <= o.batch_size) as prog:
        task = prog.add_task("scoring", total=len(pairs))
        items = score_pairs(
            mdl, tok, pairs, layers=layers, ratio=ratio, gamma=gamma, answer_pattern=answer_pattern,
            top_edges=o.top_edges, batch_size=o.batch_size, on_batch=lambda n: prog.advance(task, n),
            max_tokens=o.max_tokens, names=names,
        )
    if not o.quiet:
        for n, item in enumerate(items):
            render_terminal(console, item, index=n if len(items) > 1 else None)
    n_fb = sum(it.fallback for it in items)
    if len(items) > 1 or n_fb:
        console.print(f"{len(items)} pairs scored; {n_fb} without an answer span (uniform fallback)")
    if json_out is not None:
        doc = {"settings": settings, "items": [it.to_json() for it in items]}
        atomic_write_text(json_out, json.dumps(doc, indent=1))
        console.print(f"wrote {json_out}")
    if html_out is not None:
        atomic_write_text(html_out, render_html(items, settings=settings))
        console.print(f"wrote {html_out}")


def register(app: typer.Typer) -> None:
    app.command("score", epilog=EPILOG)(command(dataclass_params(ScoreOptions), score))
