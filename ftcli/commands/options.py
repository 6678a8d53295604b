"""Typer options generated from dataclass fields declared with `ftcli.options.option` (one
source for each option's name, default, help, panel and limits)."""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, fields
from typing import Optional

import typer

from ftcli.options import check_limits, option_flag

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


def _comma(values) -> str:
    return ",".join(format(v, "g") if isinstance(v, float) else str(v) for v in values)


def dataclass_params(cls, *, only: tuple[str, ...] | None = None, defaults: dict | None = None,
                     panel: str | None = None, flags: dict | None = None, unset: bool = False,
                     note=None) -> list[inspect.Parameter]:
    """One typer option per CLI field of dataclass `cls` (fields declared with
    `ftcli.options.option`; `only`: just these), in field order; the one place where options
    become flags. A tuple field is a comma list.

    `defaults`: CLI defaults other than the fields'; `panel`: one help panel for all (else each
    field's); `flags`: extra flags by field name; `unset`: every option defaults to None (not
    given: the command fills in a preset or the field's default later; the limits are then
    `check_limits`'s, on the built object); `note(field) -> str`: appended to the help (what
    the default is)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True) or (only is not None and f.name not in only):
            continue
        tp = _base_type(hints[f.name])
        default = None if unset else (defaults or {}).get(f.name, _default(f))
        flag = option_flag(f.name)
        help_ = meta.get("help", "")
        if meta.get("choices"):
            help_ += f" One of: {', '.join(meta['choices'])}."
        if note is not None:
            help_ += note(f)
        if typing.get_origin(tp) is tuple:
            tp, default = str, None if default is None else _comma(default)
        extra = (*meta.get("flags", ()), *(flags or {}).get(f.name, ()))
        toggle = tp is bool and meta.get("toggle", True)
        decl = [f"{flag}/--no-{flag[2:]}"] if toggle else [flag, *extra]
        limits = {} if unset else {k: meta[k] for k in ("min", "max") if meta.get(k) is not None}
        ann = Optional[tp] if default is None else tp  # noqa: UP045 - typer needs a real typing object
        opt = typer.Option(default, *decl, help=help_, rich_help_panel=panel or meta.get("panel"),
                           **({"show_default": False} if unset else {}), **limits)
        out.append(param(f.name, ann, opt))
    return out


def command(params: list[inspect.Parameter], fn):
    """A callback typer can read: the generated `params` as its signature; calls `fn(kw)`
    with the parsed options."""

    def cmd(**kw):
        return fn(kw)

    cmd.__signature__ = inspect.Signature(params)
    cmd.__annotations__ = {p.name: p.annotation for p in params}
    return cmd


def build(cls, kw: dict, **fixed):
    """An instance of `cls` from the command's keyword arguments (popping its fields from
    `kw`; comma lists become tuples), with `fixed` values on top; its choices and limits
    checked (`check_limits`: one line naming the option)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name in kw:
            v = kw.pop(f.name)
            tp = _base_type(hints[f.name])
            if typing.get_origin(tp) is tuple and isinstance(v, str):
                v = tuple(split_list(v, typing.get_args(tp)[0]))
            values[f.name] = v
    obj = cls(**{**values, **fixed})
    check_limits(obj)
    return obj
