"""Typer options generated from dataclass fields declared with `ftcli.options.option` (one
source for each option's name, default, help, panel and limits)."""

from __future__ import annotations

import inspect
import typing
from dataclasses import MISSING, fields
from typing import Optional

import click
import typer

from ftcli.options import check_field, check_limits, option_flag

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

    A field declared with `argument=True` is a positional argument; its `callback` and
    `typer_kw` go to typer as they are.

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
        cli_range = not unset and meta.get("cli_range", True)
        limits = {k: meta[k] for k in ("min", "max") if cli_range and meta.get(k) is not None}
        kw = {**({"show_default": False} if unset else {}), **limits, **meta.get("typer_kw", {})}
        if meta.get("callback") is not None:
            kw["callback"] = meta["callback"]
        ann = Optional[tp] if default is None else tp  # noqa: UP045 - typer needs a real typing object
        if meta.get("argument"):
            opt = typer.Argument(default, help=help_, **kw)
        else:
            opt = typer.Option(default, *decl, help=help_, rich_help_panel=panel or meta.get("panel"), **kw)
        out.append(param(f.name, ann, opt))
    return out


def command(params: list[inspect.Parameter], fn):
    """A callback typer can read: the generated `params` as its signature; calls `fn(kw)`
    with the parsed options."""

    def cmd(**kw):
        return fn(kw)

    cmd.__doc__ = fn.__doc__  # the command's help, when registration gives none
    cmd.__signature__ = inspect.Signature(params)
    cmd.__annotations__ = {p.name: p.annotation for p in params}
    return cmd


def parse_field(cls, name: str, text: str):
    """The value of field `name` of dataclass `cls` from a string (e.g. `--set KEY=VALUE`), by
    the field's type as the generated option reads it (a bool: 1/true/yes/on or 0/false/no/off;
    a tuple: a comma list), with its choices and limits checked (`check_limits`'s one line).
    Raises ValueError."""
    f = next((f for f in fields(cls) if f.name == name), None)
    if f is None:
        raise ValueError(f"{cls.__name__} has no field {name!r}")
    tp = _base_type(typing.get_type_hints(cls)[name])
    if typing.get_origin(tp) is tuple:
        return tuple(split_list(text, typing.get_args(tp)[0]))
    conv = {bool: click.BOOL, int: click.INT, float: click.FLOAT}.get(tp)
    try:
        value = conv.convert(text.strip(), None, None) if conv is not None else text
    except click.BadParameter as e:
        raise ValueError(f"{option_flag(name)}: {e.message}") from None
    check_field(f, value)
    return value


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
