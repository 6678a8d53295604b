"""`ft ablate`: every experiment of the paper as a command (library: ftcli.experiments).

Analyses: `intervene` (Table 1), `format` and `tokens` (Sec. 5.2, Fig. 3), `overhead` (Table 6).
Training sweeps: `layers` (Fig. 6), `ratio` (Table 5), `gamma` and `weighting` (Table 7),
`credit` (Tables 2-4, Figs. 4-5). Results go to `--out` (default runs/ablate/<name>) as JSON/CSV
with PNGs beside them; a rerun skips what is finished. A training sweep runs seed by seed and
rewrites its results.json (marked partial) after each finished run.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ftcli.commands.options import build, dataclass_params, param, split_list
from ftcli.experiments.config import (
    INTERVENE_PROTOCOL,
    InterveneConfig,
    OverheadConfig,
    SweepConfig,
    TextConfig,
)
from ftcli.options import WEIGHTINGS, describe_rules
from ftcli.train.config import TrainConfig

EPILOG = """Examples:

  ft ablate intervene --model qwen2.5-coder-0.5b --n 50

  ft ablate format --n 20          ft ablate tokens --n 50

  ft ablate overhead --lengths 512,2048

  ft ablate layers --range early --range mid,late,all --seeds 0,1,2

  ft ablate layers --range paper-early,paper-mid,paper-late

  ft ablate ratio --ratios 0.2,0.4,0.6 --select top,bottom

  ft ablate gamma --gammas 0.5,1,1.5,2,2.5,3

  ft ablate weighting --weightings raw,tanh,sigmoid,mad,log1p,mass

  ft ablate credit --rules none,random,entropy,attention,flow --steps 20 --seeds 0,1,2 --jobs 2
"""

ablate_app = typer.Typer(
    help="Reproduce the paper's experiments: the causal intervention (Table 1), answer format and "
    "token classes (Sec. 5.2), credit overhead (Table 6), and training sweeps over layers, ratio, "
    "gamma, weighting and credit rules (Tables 2-5, 7; Figs. 4-6).",
    epilog=EPILOG,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _console():
    c = Console()
    if not c.is_terminal:
        c = Console(width=160)
    return c


def _para(text: str) -> str:
    """Help text for rich mode: lines joined, blank lines kept as paragraph breaks."""
    paras = re.split(r"\n\s*\n|\n(?=\d+\. )", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paras)


def _out(out: Path | None, name: str) -> str:
    return str(out) if out is not None else f"runs/ablate/{name}"


def _parse_set(items: list[str] | None) -> dict:
    """--set KEY=VALUE -> TrainConfig overrides, typed by the field."""
    hints = typing.get_type_hints(TrainConfig)
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not eq or key not in names:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=VALUE with KEY an `ft train` option")
        tp = hints[key]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        base = args[0] if args else tp
        if base is bool:
            out[key] = val.strip().lower() in ("1", "true", "yes", "on")
        elif base in (int, float):
            out[key] = base(val)
        else:
            out[key] = val
    return out


# The options every training sweep shares (added to each sweep command's signature): the
# training options from TrainConfig (None = ft train's default), the sweep's from SweepConfig.
TRAIN_PANEL = "Training (same for every variant)"
EVAL_PANEL = "Evaluation"
SWEEP_TRAIN_OPTIONS = ("model", "task", "data_source", "data_root", "steps", "prompts", "group_size", "max_new_tokens", "lr")


def _train_params() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in fields(TrainConfig):
        if f.name in SWEEP_TRAIN_OPTIONS:
            flags = ("-m",) if f.name == "model" else ()
            out.append(param(f.name, Optional[hints[f.name]], typer.Option(  # noqa: UP045
                None, "--" + f.name.replace("_", "-"), *flags, rich_help_panel=TRAIN_PANEL,
                help=f"{f.metadata['help']} (default: ft train's, {f.default})")))
    return out


def _common_sweep_params() -> list[inspect.Parameter]:
    return [
        *_train_params(),
        *dataclass_params(SweepConfig, only=("preset", "seeds", "variant_seeds", "reference")),
        param("set_", Optional[list[str]], typer.Option(None, "--set", help="Any other ft train option, KEY=VALUE (repeatable), e.g. --set temperature=0.99.", rich_help_panel=TRAIN_PANEL)),  # noqa: UP045
        param("baseline", bool, typer.Option(True, "--baseline/--no-baseline", help="Also train plain GRPO (credit none) as the reference row.", rich_help_panel=TRAIN_PANEL)),
        *dataclass_params(SweepConfig, only=("eval_suite", "eval_limit")),
        param("eval_n", Optional[int], typer.Option(None, "--eval-n", min=1, help="Samples per problem (suite default otherwise).", rich_help_panel=EVAL_PANEL)),  # noqa: UP045
        param("eval_temperature", Optional[float], typer.Option(None, "--eval-temperature", min=0.0, help="Eval temperature (suite default: 0.99; 0 = greedy).", rich_help_panel=EVAL_PANEL)),  # noqa: UP045
        param("eval_max_new_tokens", Optional[int], typer.Option(None, "--eval-max-new-tokens", min=1, help="Eval token budget (default: the training --max-new-tokens).", rich_help_panel=EVAL_PANEL)),  # noqa: UP045
        *dataclass_params(SweepConfig, only=("eval_batch_size",)),
        param("out", Optional[Path], typer.Option(None, "--out", "-o", help="Output folder (default runs/ablate/<name>).")),  # noqa: UP045
        param("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress bars.")),
        param("jobs", int, typer.Option(1, "--jobs", "-j", min=1, help="Runs trained and evaluated at once, each in its own process with one torch thread (results do not depend on it).")),
    ]


def _sweep_config(name: str, kw: dict) -> SweepConfig:
    base = _parse_set(kw.pop("set_"))
    for k in SWEEP_TRAIN_OPTIONS:
        v = kw.pop(k)
        if v is not None:
            base[k] = v
    over = {}
    for k, ek in (("n", "eval_n"), ("temperature", "eval_temperature"), ("max_new_tokens", "eval_max_new_tokens")):
        v = kw.pop(ek)
        if v is not None:
            over[k] = v
    cfg = build(SweepConfig, kw, name=name, out=_out(kw.pop("out"), name), base=base, eval_overrides=over,
                progress=not kw.pop("quiet"))
    cfg.seeds = cfg.seeds or (0,)
    return cfg


def _run_sweep(name: str, kw: dict, variants_fn, pivot=None) -> None:
    # imported here, as every experiment below: `ft --help` stays fast
    from ftcli.experiments.sweep import run_sweep, sweep_table
    from ftcli.experiments.variants import BASELINE

    baseline = kw.pop("baseline")
    jobs = kw.pop("jobs", 1)
    cfg = _sweep_config(name, kw)
    variants = variants_fn(kw, cfg)
    if baseline and not any(v.baseline for v in variants):
        variants = [BASELINE, *variants]
    res = run_sweep(cfg, variants, console=Console(stderr=True), jobs=jobs)
    con = _console()
    con.print(sweep_table(res))
    if pivot is not None:
        con.print(pivot(res))
    con.print(f"results: {cfg.out}/results.json, results.csv, curves.png, bars.png")


def _command(name: str, doc: str, params: list[inspect.Parameter], fn) -> None:
    """Register `fn(**kw)` as `ft ablate NAME` with the generated `params`."""

    def cmd(**kw):
        fn(kw)

    cmd.__signature__ = inspect.Signature(params)
    cmd.__annotations__ = {p.name: p.annotation for p in params}
    ablate_app.command(name, epilog=EPILOG, help=doc)(cmd)


def _sweep_command(name: str, doc: str, extra: list[inspect.Parameter], variants_fn, pivot=None):
    _command(name, _para(doc), extra + _common_sweep_params(), lambda kw: _run_sweep(name, kw, variants_fn, pivot))


# ---------------------------------------------------------------------------------------------
# Training sweeps
# ---------------------------------------------------------------------------------------------
def _layers_variants(kw, cfg):
    from ftcli.experiments.variants import layer_variants

    return layer_variants(split_list(kw.pop("range_")) or ["early", "mid", "late", "all"])


_sweep_command(
    "layers",
    "Fig. 6: flow credit with W averaged over each layer range (early [0, L/3), mid [L/3, 2L/3), "
    "late [2L/3, L), all; paper-early, paper-mid, paper-late: the figure's 0:15, 15:25, 25:35 of "
    "Qwen3-4B's 36 layers scaled to the model's depth; or A:B, half-open, e.g. 15:25); trains and "
    "evaluates every range; bars.png is the figure.",
    [param("range_", Optional[list[str]], typer.Option(None, "--range", help="Layer range(s): early|mid|late|all|paper-early|paper-mid|paper-late|A:B; repeatable or comma list (default: early, mid, late, all)."))],  # noqa: UP045
    _layers_variants,
)


def _ratio_variants(kw, cfg):
    from ftcli.experiments.variants import ratio_variants

    ratios = split_list(kw.pop("ratios"), float)
    selects = split_list(kw.pop("select"))
    bad = [s for s in selects if s not in ("top", "bottom")]
    if bad:
        raise typer.BadParameter(f"--select takes top and/or bottom, got {bad}")
    if any(not 0 < r <= 1 for r in ratios):
        raise typer.BadParameter("--ratios must lie in (0, 1]")
    return ratio_variants(ratios, selects)


def _ratio_pivot(res):
    from ftcli.experiments.sweep import pivot_table

    return pivot_table(res, "select", "ratio", "Table 5 layout · Avg (%) by selected fraction")


_sweep_command(
    "ratio",
    "Table 5: flow credit on the top or bottom 20/40/60% of response tokens by throughput.",
    [param("ratios", str, typer.Option("0.2,0.4,0.6", "--ratios", help="Comma list of fractions.")),
     param("select", str, typer.Option("top,bottom", "--select", help="top, bottom or both."))],
    _ratio_variants, _ratio_pivot,
)


def _gamma_variants(kw, cfg):
    from ftcli.experiments.variants import gamma_variants

    return gamma_variants(split_list(kw.pop("gammas"), float))


_sweep_command(
    "gamma",
    "Table 7 (gamma): the weight given to the top-40% flow tokens, the paper's 0.5 to 3.0.",
    [param("gammas", str, typer.Option("0.5,1.2,1.5,1.8,2.0,3.0", "--gammas", help="Comma list of weights (default: the paper's Table 7)."))],
    _gamma_variants,
)


def _weighting_variants(kw, cfg):
    from ftcli.experiments.variants import weighting_variants

    ws = split_list(kw.pop("weightings"))
    bad = [w for w in ws if w not in WEIGHTINGS]
    if bad:
        raise typer.BadParameter(f"unknown weighting(s) {bad}; choose from {', '.join(WEIGHTINGS)}")
    return weighting_variants(ws, split_list(kw.pop("masses"), float))


_sweep_command(
    "weighting",
    "Table 7 (weighting): flow scores to weights by a continuous map (raw flow, tanh of z-score, "
    "sigmoid, MAD, log1p, soft mass thresholds 20-80%) against the paper's binary top-40%.",
    [param("weightings", str, typer.Option(",".join(WEIGHTINGS), "--weightings", help="Comma list (ftcli.credit.WEIGHTINGS).")),
     param("masses", str, typer.Option("0.2,0.4,0.6,0.8", "--masses", help="Mass thresholds of the soft (mass) weighting; one variant each."))],
    _weighting_variants,
)


def _credit_variants(kw, cfg):
    from ftcli.credit import get_rule
    from ftcli.experiments.variants import credit_variants

    rules = split_list(kw.pop("rules"))
    for r in rules:
        get_rule(r)
    return credit_variants(rules)


_sweep_command(
    "credit",
    f"Tables 2-4, Figs. 4-5: the same training with each credit rule ({describe_rules()}; none = "
    "GRPO); curves.png holds the training curves.",
    [param("rules", str, typer.Option("none,attention,flow", "--rules", help="Comma list of credit rules."))],
    _credit_variants,
)


# ---------------------------------------------------------------------------------------------
# Analyses
# ---------------------------------------------------------------------------------------------
FORMAT_HELP = """Sec. 5.2: overlap of the top-40% reasoning tokens when the same reasoning ends in a bare
    value, a full line, an explanation, or a letter choice (A = that answer segment)."""

TOKENS_HELP = """Sec. 5.2 / Fig. 3: structural delimiters (no letter or digit) vs semantic tokens among the
    high-flow tokens, and ranked bars of the highest- and lowest-flow tokens; with --train, credit
    restricted to each class (ft train --credit-tokens structural / semantic)."""

OVERHEAD_HELP = """Table 6: update-step time and credit time with credit none, flow (W captured in the
    update forward) and flow with the paper's separate no-grad pass, at each context length,
    interleaved in one process; overhead = ratio to the none step at the same length."""

INTERVENE_HELP = ("Table 1: causal intervention. Blocks the information of the top / bottom / a random "
                  "--ratio of reasoning tokens by flow (no later token may attend to them) and regenerates "
                  "the answer; reports answer-change and correctness-reversal rates with counts and Wilson "
                  f"95% intervals.\n\nProtocol:\n\n{_para(INTERVENE_PROTOCOL)}")

QUIET = param("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress bars."))


def _intervene(kw: dict) -> None:
    from ftcli.experiments.intervene import intervene, intervention_table

    quiet = kw.pop("quiet")
    cfg = build(InterveneConfig, kw)
    res = intervene(cfg, console=Console(stderr=True), progress=not quiet)
    con = _console()
    con.print(intervention_table(res))
    st = ", ".join(f"{k}: {v}" for k, v in res["status"].items())
    con.print(f"problems: {st}; original accuracy {100 * (res['original_accuracy']['rate'] or 0):.1f}%")
    con.print(f"results: {cfg.out}/results.json, problems.jsonl, table.csv, intervene.png")


_command("intervene", INTERVENE_HELP, [*dataclass_params(InterveneConfig), QUIET], _intervene)


def _format(kw: dict) -> None:
    from ftcli.experiments.text import answer_format, format_table

    quiet = kw.pop("quiet")
    cfg = build(TextConfig, kw)
    res = answer_format(cfg, console=Console(stderr=True), progress=not quiet)
    con = _console()
    con.print(format_table(res))
    con.print(f"results: {cfg.out}/results.json, problems.jsonl, table.csv, format_overlap.png")


_command("format", _para(FORMAT_HELP), [*dataclass_params(TextConfig), QUIET], _format)


def _tokens(kw: dict) -> None:
    from ftcli.experiments.text import token_classes, tokens_table
    from ftcli.experiments.variants import token_class_variants

    quiet, top, min_count, train_ = kw.pop("quiet"), kw.pop("top"), kw.pop("min_count"), kw.pop("train_")
    train_kw = {k: kw.pop(k) for k in ("train_task", "steps", "set_", "seeds", "eval_suite", "eval_limit")}
    model = kw.pop("model")  # None: the default model here, ft train's default for --train
    cfg = build(TextConfig, kw, **({"model": model} if model else {}))
    res = token_classes(cfg, console=Console(stderr=True), progress=not quiet, top=top, min_count=min_count)
    con = _console()
    con.print(tokens_table(res))
    con.print(f"results: {cfg.out}/results.json, tokens.csv, fig3_tokens.png")
    if not train_:
        return
    sweep_kw = dict(model=model, task=train_kw["train_task"], data_source=None, data_root=cfg.data_root, steps=train_kw["steps"],
                    prompts=None, group_size=None, max_new_tokens=None, lr=None, preset="cpu",
                    set_=train_kw["set_"], seeds=train_kw["seeds"], baseline=True, eval_suite=train_kw["eval_suite"],
                    eval_limit=train_kw["eval_limit"], eval_n=None, eval_temperature=None, eval_max_new_tokens=None,
                    eval_batch_size=16, out=Path(cfg.out) / "train", quiet=quiet, jobs=kw.pop("jobs"))
    _run_sweep("tokens-train", sweep_kw, lambda kw, cfg: token_class_variants())


_command("tokens", _para(TOKENS_HELP), [
    *dataclass_params(TextConfig, defaults={"out": "runs/ablate/tokens", "model": None}),
    param("top", int, typer.Option(20, "--top", min=1, help="Tokens per panel of fig3_tokens.png.")),
    param("min_count", int, typer.Option(3, "--min-count", min=1, help="Occurrences needed to be ranked.")),
    param("train_", bool, typer.Option(False, "--train/--no-train", help="Also train flow credit on all / structural-only / semantic-only tokens (+ GRPO), with the sweep options below.")),
    param("train_task", Optional[str], typer.Option(None, "--train-task", help="Task of the training runs (default: ft train's).")),  # noqa: UP045
    param("steps", Optional[int], typer.Option(None, "--steps", min=1, help="Optimizer steps per run.")),  # noqa: UP045
    param("set_", Optional[list[str]], typer.Option(None, "--set", help="Other ft train options, KEY=VALUE.")),  # noqa: UP045
    *dataclass_params(SweepConfig, only=("seeds", "eval_suite", "eval_limit")),
    param("jobs", int, typer.Option(1, "--jobs", "-j", min=1, help="Training runs at once (each in its own process).")),
    QUIET,
], _tokens)


def _overhead(kw: dict) -> None:
    from ftcli.experiments.overhead import overhead, overhead_table

    quiet = kw.pop("quiet")
    cfg = build(OverheadConfig, kw)
    res = overhead(cfg, console=Console(stderr=True), progress=not quiet)
    con = _console()
    con.print(overhead_table(res))
    con.print(f"results: {cfg.out}/results.json, table.csv")


_command("overhead", _para(OVERHEAD_HELP), [*dataclass_params(OverheadConfig), QUIET], _overhead)


def register(app: typer.Typer) -> None:
    app.add_typer(ablate_app, name="ablate")
