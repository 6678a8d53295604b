"""Typer options generated from dataclass fields declared with `ftcli.options.option` (one
source for each option's name, default, help, panel and limits)."""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, fields
from typing import Optional

import typer

KW = inspect.Parameter.KEYWORD_ONLY


def param(name: str, annotation, default) -> inspect.Parameter:
    """A keyword-only parameter of a generated command signature."""
    return inspect.Parameter(name, KW, annotation=annotation, default=default)


def split_list(values, conv=str) -> list:
    """Comma lists, repeatable: ['early', 'mid,late'] -> ['early', 'mid', 'late']."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if part:
                try:
                    out.append(conv(part))
                except ValueError:
                    raise typer.BadParameter(f"cannot read {part!r} as {conv.__name__}") from None
    return out


def _base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args and typing.get_origin(tp) is not tuple else tp


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def dataclass_params(cls, *, only: tuple[str, ...] | None = None, defaults: dict | None = None,
                     panel: str | None = None) -> list[inspect.Parameter]:
    """One typer option per CLI field of dataclass `cls` (a tuple field is a comma list)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or (only is not None and f.name not in only):
            continue
        tp = _base_type(hints[f.name])
        default = (defaults or {}).get(f.name, _default(f))
        flag = "--" + f.name.replace("_", "-")
        help_ = meta.get("help", "")
        if meta.get("choices"):
            help_ += f" One of: {', '.join(meta['choices'])}."
        if typing.get_origin(tp) is tuple:
            tp, default = str, None if default is None else ",".join(map(str, default))
        decl = [f"{flag}/--no-{flag[2:]}"] if tp is bool else [flag, *meta.get("flags", ())]
        limits = {k: meta[k] for k in ("min", "max") if meta.get(k) is not None}
        ann = Optional[tp] if default is None else tp  # noqa: UP045 - typer needs a real typing object
        out.append(param(f.name, ann, typer.Option(default, *decl, help=help_, rich_help_panel=panel or meta.get("panel"), **limits)))
    return out


def build(cls, kw: dict, **fixed):
    """An instance of `cls` from the command's keyword arguments (popping its fields from
    `kw`; comma lists become tuples), with `fixed` values on top."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in kw:
            v = kw.pop(f.name)
            tp = _base_type(hints[f.name])
            if typing.get_origin(tp) is tuple and isinstance(v, str):
                v = tuple(split_list(v, typing.get_args(tp)[0]))
            values[f.name] = v
    return cls(**{**values, **fixed})
