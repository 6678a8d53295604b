"""`ft ablate`: every experiment of the paper as a command (library: ftcli.ablate).

Analyses: `intervene` (Table 1), `format` and `tokens` (Sec. 5.2, Fig. 3), `overhead` (Table 6).
Training sweeps: `layers` (Fig. 6), `ratio` (Table 5), `gamma` and `weighting` (Table 7),
`credit` (Tables 2-4, Figs. 4-5). Results go to `--out` (default runs/ablate/<name>) as JSON/CSV
with PNGs beside them; a rerun skips what is finished.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

EPILOG = """Examples:

  ft ablate intervene --model qwen2.5-coder-0.5b --n 50

  ft ablate format --n 20          ft ablate tokens --n 50

  ft ablate overhead --lengths 512,2048

  ft ablate layers --range early --range mid,late,all --seeds 0,1,2

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
    from rich.console import Console

    c = Console()
    if not c.is_terminal:
        c = Console(width=160)
    return c


def _split(values, conv=str) -> list:
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


def _para(text: str) -> str:
    """Help text for rich mode: lines joined, blank lines kept as paragraph breaks."""
    import re

    paras = re.split(r"\n\s*\n|\n(?=\d+\. )", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paras)


def _out(out: Path | None, name: str) -> str:
    return str(out) if out is not None else f"runs/ablate/{name}"


def _parse_set(items: list[str] | None) -> dict:
    """--set KEY=VALUE -> TrainConfig overrides, typed by the field."""
    from ftcli.trainer import TrainConfig

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


# The options every training sweep shares (added to each sweep command's signature).
_KW = inspect.Parameter.KEYWORD_ONLY


def _p(name, annotation, default):
    return inspect.Parameter(name, _KW, annotation=annotation, default=default)


def _common_sweep_params() -> list[inspect.Parameter]:
    T = "Training (same for every variant)"
    E = "Evaluation"
    return [
        _p("model", Optional[str], typer.Option(None, "--model", "-m", help="Policy (alias, folder, hub id); default: ft train's default.", rich_help_panel=T)),  # noqa: UP045
        _p("task", Optional[str], typer.Option(None, "--task", help="Training task; default: ft train's (countdown).", rich_help_panel=T)),  # noqa: UP045
        _p("steps", Optional[int], typer.Option(None, "--steps", min=1, help="Optimizer steps per run.", rich_help_panel=T)),  # noqa: UP045
        _p("prompts", Optional[int], typer.Option(None, "--prompts", min=1, help="Prompts per step.", rich_help_panel=T)),  # noqa: UP045
        _p("group_size", Optional[int], typer.Option(None, "--group-size", min=1, help="Responses per prompt.", rich_help_panel=T)),  # noqa: UP045
        _p("max_new_tokens", Optional[int], typer.Option(None, "--max-new-tokens", min=1, help="Response length (training; also the eval budget unless --eval-max-new-tokens).", rich_help_panel=T)),  # noqa: UP045
        _p("lr", Optional[float], typer.Option(None, "--lr", help="Learning rate.", rich_help_panel=T)),  # noqa: UP045
        _p("preset", str, typer.Option("cpu", "--preset", help="ft train preset (cpu, paper).", rich_help_panel=T)),
        _p("set_", Optional[list[str]], typer.Option(None, "--set", help="Any other ft train option, KEY=VALUE (repeatable), e.g. --set temperature=0.99.", rich_help_panel=T)),  # noqa: UP045
        _p("seeds", str, typer.Option("0", "--seeds", help="Comma list of seeds; every variant runs each.", rich_help_panel=T)),
        _p("baseline", bool, typer.Option(True, "--baseline/--no-baseline", help="Also train plain GRPO (credit none) as the reference row.", rich_help_panel=T)),
        _p("eval_suite", Optional[str], typer.Option(None, "--eval-suite", help="Suite for ft eval (default: the task's).", rich_help_panel=E)),  # noqa: UP045
        _p("eval_limit", Optional[int], typer.Option(64, "--eval-limit", min=1, help="First N problems of each benchmark.", rich_help_panel=E)),  # noqa: UP045
        _p("eval_n", Optional[int], typer.Option(None, "--eval-n", min=1, help="Samples per problem (suite default otherwise).", rich_help_panel=E)),  # noqa: UP045
        _p("eval_temperature", Optional[float], typer.Option(None, "--eval-temperature", min=0.0, help="Eval temperature (suite default: 0.99; 0 = greedy).", rich_help_panel=E)),  # noqa: UP045
        _p("eval_max_new_tokens", Optional[int], typer.Option(None, "--eval-max-new-tokens", min=1, help="Eval token budget (default: the training --max-new-tokens).", rich_help_panel=E)),  # noqa: UP045
        _p("eval_batch_size", int, typer.Option(16, "--eval-batch-size", min=1, help="Sequences per generate call.", rich_help_panel=E)),
        _p("out", Optional[Path], typer.Option(None, "--out", "-o", help="Output folder (default runs/ablate/<name>).")),  # noqa: UP045
        _p("quiet", bool, typer.Option(False, "--quiet", "-q", help="No progress bars.")),
        _p("jobs", int, typer.Option(1, "--jobs", "-j", min=1, help="Runs trained and evaluated at once, each in its own process with one torch thread (results do not depend on it).")),
    ]


def _sweep_config(name: str, kw: dict):
    from ftcli.ablate import SweepConfig

    base = _parse_set(kw.pop("set_"))
    for k in ("model", "task", "steps", "prompts", "group_size", "max_new_tokens", "lr"):
        v = kw.pop(k)
        if v is not None:
            base[k] = v
    over = {}
    for k, ek in (("n", "eval_n"), ("temperature", "eval_temperature"), ("max_new_tokens", "eval_max_new_tokens")):
        v = kw.pop(ek)
        if v is not None:
            over[k] = v
    seeds = tuple(_split(kw.pop("seeds"), int)) or (0,)
    return SweepConfig(
        name=name, out=_out(kw.pop("out"), name), base=base, preset=kw.pop("preset"), seeds=seeds,
        eval_suite=kw.pop("eval_suite"), eval_limit=kw.pop("eval_limit"), eval_overrides=over,
        eval_batch_size=kw.pop("eval_batch_size"), progress=not kw.pop("quiet"),
    )


def _run_sweep(name: str, kw: dict, variants_fn, pivot=None) -> None:
    from rich.console import Console

    from ftcli.ablate import BASELINE, run_sweep, sweep_table

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


def _sweep_command(name: str, doc: str, extra: list[inspect.Parameter], variants_fn, pivot=None):
    def cmd(**kw):
        _run_sweep(name, kw, variants_fn, pivot)

    params = extra + _common_sweep_params()
    cmd.__signature__ = inspect.Signature(params)
    cmd.__annotations__ = {p.name: p.annotation for p in params}
    ablate_app.command(name, epilog=EPILOG, help=_para(doc))(cmd)


# ---------------------------------------------------------------------------------------------
# Training sweeps
# ---------------------------------------------------------------------------------------------
def _layers_variants(kw, cfg):
    from ftcli.ablate import layer_variants

    ranges = _split(kw.pop("range_")) or ["early", "mid", "late", "all"]
    return layer_variants(ranges)


_sweep_command(
    "layers",
    "Fig. 6: flow credit with W averaged over each layer range (early [0, L/3), mid [L/3, 2L/3), "
    "late [2L/3, L), all, or A:B); trains and evaluates every range; bars.png is the figure.",
    [_p("range_", Optional[list[str]], typer.Option(None, "--range", help="Layer range(s): early|mid|late|all|A:B; repeatable or comma list (default: all four)."))],  # noqa: UP045
    _layers_variants,
)


def _ratio_variants(kw, cfg):
    from ftcli.ablate import ratio_variants

    ratios = _split(kw.pop("ratios"), float)
    selects = _split(kw.pop("select"))
    bad = [s for s in selects if s not in ("top", "bottom")]
    if bad:
        raise typer.BadParameter(f"--select takes top and/or bottom, got {bad}")
    if any(not 0 < r <= 1 for r in ratios):
        raise typer.BadParameter("--ratios must lie in (0, 1]")
    return ratio_variants(ratios, selects)


def _ratio_pivot(res):
    from ftcli.ablate import pivot_table

    return pivot_table(res, "select", "ratio", "Table 5 layout · Avg (%) by selected fraction")


_sweep_command(
    "ratio",
    "Table 5: flow credit on the top or bottom 20/40/60% of response tokens by throughput.",
    [_p("ratios", str, typer.Option("0.2,0.4,0.6", "--ratios", help="Comma list of fractions.")),
     _p("select", str, typer.Option("top,bottom", "--select", help="top, bottom or both."))],
    _ratio_variants, _ratio_pivot,
)


def _gamma_variants(kw, cfg):
    from ftcli.ablate import gamma_variants

    return gamma_variants(_split(kw.pop("gammas"), float))


_sweep_command(
    "gamma",
    "Table 7 (gamma): the weight given to the top-40% flow tokens, 0.5 to 3.0.",
    [_p("gammas", str, typer.Option("0.5,1.0,1.5,2.0,2.5,3.0", "--gammas", help="Comma list of weights."))],
    _gamma_variants,
)


def _weighting_variants(kw, cfg):
    from ftcli.ablate import weighting_variants
    from ftcli.credit import WEIGHTINGS

    ws = _split(kw.pop("weightings"))
    bad = [w for w in ws if w not in WEIGHTINGS]
    if bad:
        raise typer.BadParameter(f"unknown weighting(s) {bad}; choose from {', '.join(WEIGHTINGS)}")
    return weighting_variants(ws, _split(kw.pop("masses"), float))


_sweep_command(
    "weighting",
    "Table 7 (weighting): flow scores to weights by a continuous map (raw flow, tanh of z-score, "
    "sigmoid, MAD, log1p, soft mass thresholds 20-80%) against the paper's binary top-40%.",
    [_p("weightings", str, typer.Option("binary,raw,tanh,sigmoid,mad,log1p,mass", "--weightings", help="Comma list (ftcli.credit.WEIGHTINGS).")),
     _p("masses", str, typer.Option("0.2,0.4,0.6,0.8", "--masses", help="Mass thresholds of the soft (mass) weighting; one variant each."))],
    _weighting_variants,
)


def _credit_variants(kw, cfg):
    from ftcli.ablate import credit_variants
    from ftcli.credit import get_rule

    rules = _split(kw.pop("rules"))
    for r in rules:
        get_rule(r)
    return credit_variants(rules)


_sweep_command(
    "credit",
    "Tables 2-4, Figs. 4-5: the same training with each credit rule (none = GRPO, random, entropy, "
    "gradient, correlation, attention, flow); curves.png holds the training curves.",
    [_p("rules", str, typer.Option("none,attention,flow", "--rules", help="Comma list of credit rules."))],
    _credit_variants,
)


# ---------------------------------------------------------------------------------------------
# Analyses
# ---------------------------------------------------------------------------------------------
FORMAT_HELP = """Sec. 5.2: overlap of the top-40% reasoning tokens when the same reasoning ends in a bare
    value, a full line, an explanation, or a letter choice (A = that answer segment)."""

TOKENS_HELP = """Sec. 5.2 / Fig. 3: structural delimiters (no letter or digit) vs semantic tokens among the
    high-flow tokens, and ranked bars of the highest- and lowest-flow tokens; with --train, credit
    restricted to each class (rules flow-structural, flow-semantic)."""

OVERHEAD_HELP = """Table 6: update-step time and credit time with credit none, flow (W captured in the
    update forward) and flow with the paper's separate no-grad pass, at each context length,
    interleaved in one process; overhead = ratio to the none step at the same length."""

def _intervene_help() -> str:
    from ftcli.ablate import INTERVENE_PROTOCOL

    body = _para(INTERVENE_PROTOCOL)
    return ("Table 1: causal intervention. Blocks the information of the top / bottom / a random "
            "--ratio of reasoning tokens by flow (no later token may attend to them) and regenerates "
            "the answer; reports answer-change and correctness-reversal rates with counts and Wilson "
            f"95% intervals.\n\nProtocol:\n\n{body}")


@ablate_app.command("intervene", epilog=EPILOG, help=_intervene_help())
def intervene_cmd(
    model: str = typer.Option(None, "--model", "-m", help="Alias, folder or hub id (default: the default model)."),
    task: str = typer.Option("gsm8k", "--task", help="Task plugin (its test split by default)."),
    split: str = typer.Option("test", "--split"),
    n: int = typer.Option(50, "--n", min=1, help="Problems (the first N of the split)."),
    ratio: float = typer.Option(0.2, "--ratio", min=0.0, max=1.0, help="Fraction of reasoning tokens blocked per arm."),
    layers: str = typer.Option("mid", "--layers", help="Layers averaged into W: mid|early|late|all|A:B."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Budget of the original response."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="Original response: 0 = greedy, else seeded sampling."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and of the random arm."),
    slack: int = typer.Option(16, "--slack", min=0, help="Regeneration budget beyond the original answer tail (tokens)."),
    keep_truncated: bool = typer.Option(False, "--keep-truncated", help="Also use problems whose original response hit --max-new-tokens (its answer is only its last number; for smoke runs with random models)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default runs/ablate/intervene)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    from rich.console import Console

    from ftcli.ablate import InterveneConfig, intervene, intervention_table
    from ftcli.models import DEFAULT_MODEL

    cfg = InterveneConfig(model=model or DEFAULT_MODEL, task=task, split=split, n=n, ratio=ratio, layers=layers,
                          max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, slack=slack, keep_truncated=keep_truncated,
                          batch_size=batch_size, out=_out(out, "intervene"))
    res = intervene(cfg, console=Console(stderr=True), progress=not quiet)
    con = _console()
    con.print(intervention_table(res))
    st = ", ".join(f"{k}: {v}" for k, v in res["status"].items())
    con.print(f"problems: {st}; original accuracy {100 * (res['original_accuracy']['rate'] or 0):.1f}%")
    con.print(f"results: {cfg.out}/results.json, problems.jsonl, table.csv, intervene.png")


def _text_cfg(name, model, task, split, n, ratio, layers, source, max_new_tokens, seed, batch_size, out):
    from ftcli.ablate import TextConfig
    from ftcli.models import DEFAULT_MODEL

    return TextConfig(model=model or DEFAULT_MODEL, task=task, split=split, n=n, ratio=ratio, layers=layers,
                      source=source, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
                      out=_out(out, name))


@ablate_app.command("format", epilog=EPILOG, help=_para(FORMAT_HELP))
def format_cmd(
    model: str = typer.Option(None, "--model", "-m", help="Alias, folder or hub id (default: the default model)."),
    task: str = typer.Option("gsm8k", "--task"),
    split: str = typer.Option("test", "--split"),
    n: int = typer.Option(50, "--n", min=1, help="Problems (the first N)."),
    ratio: float = typer.Option(0.4, "--ratio", min=0.0, max=1.0, help="Top fraction compared."),
    layers: str = typer.Option("mid", "--layers"),
    source: str = typer.Option("gold", "--source", help="gold: the sample's worked solution; model: the model's own greedy response."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="For --source model."),
    seed: int = typer.Option(0, "--seed", help="Seed of the letter-choice option order."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    out: Path = typer.Option(None, "--out", "-o"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    from rich.console import Console

    from ftcli.ablate import answer_format, format_table

    cfg = _text_cfg("format", model, task, split, n, ratio, layers, source, max_new_tokens, seed, batch_size, out)
    res = answer_format(cfg, console=Console(stderr=True), progress=not quiet)
    con = _console()
    con.print(format_table(res))
    con.print(f"results: {cfg.out}/results.json, problems.jsonl, table.csv, format_overlap.png")


@ablate_app.command("tokens", epilog=EPILOG, help=_para(TOKENS_HELP))
def tokens_cmd(
    model: str = typer.Option(None, "--model", "-m", help="Alias, folder or hub id (default: the default model)."),
    task: str = typer.Option("gsm8k", "--task", help="Task of the analysed responses."),
    split: str = typer.Option("test", "--split"),
    n: int = typer.Option(50, "--n", min=1, help="Responses analysed."),
    ratio: float = typer.Option(0.4, "--ratio", min=0.0, max=1.0),
    layers: str = typer.Option("mid", "--layers"),
    source: str = typer.Option("gold", "--source", help="gold: worked solution + boxed answer; model: the model's own response."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="For --source model."),
    top: int = typer.Option(20, "--top", min=1, help="Tokens per panel of fig3_tokens.png."),
    min_count: int = typer.Option(3, "--min-count", min=1, help="Occurrences needed to be ranked."),
    train_: bool = typer.Option(False, "--train/--no-train", help="Also train flow credit on all / structural-only / semantic-only tokens (+ GRPO), with the sweep options below."),
    train_task: str = typer.Option(None, "--train-task", help="Task of the training runs (default: ft train's)."),
    steps: int = typer.Option(None, "--steps", min=1),
    seeds: str = typer.Option("0", "--seeds"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Other ft train options, KEY=VALUE."),  # noqa: UP045
    eval_suite: str = typer.Option(None, "--eval-suite", help="Suite of the training runs' eval (default: the training task's)."),
    eval_limit: int = typer.Option(64, "--eval-limit", min=1),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    out: Path = typer.Option(None, "--out", "-o"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    from rich.console import Console

    from ftcli.ablate import token_classes, tokens_table

    cfg = _text_cfg("tokens", model, task, split, n, ratio, layers, source, max_new_tokens, seed, batch_size, out)
    err = Console(stderr=True)
    res = token_classes(cfg, console=err, progress=not quiet, top=top, min_count=min_count)
    con = _console()
    con.print(tokens_table(res))
    con.print(f"results: {cfg.out}/results.json, tokens.csv, fig3_tokens.png")
    if not train_:
        return
    from ftcli.ablate import register_token_class_rules, token_class_variants
    from ftcli.models import load_tokenizer

    kw = dict(model=model, task=train_task, steps=steps, prompts=None, group_size=None, max_new_tokens=None,
              lr=None, preset="cpu", set_=set_, seeds=seeds, baseline=True, eval_suite=eval_suite,
              eval_limit=eval_limit, eval_n=None, eval_temperature=None, eval_max_new_tokens=None,
              eval_batch_size=16, out=Path(cfg.out) / "train", quiet=quiet,
              jobs=1)  # the token-class rules live in this process's registry
    mdl_name = model
    if mdl_name is None:
        from ftcli.trainer import TrainConfig

        mdl_name = TrainConfig().model
    register_token_class_rules(load_tokenizer(mdl_name))
    _run_sweep("tokens-train", kw, lambda kw, cfg: token_class_variants())


@ablate_app.command("overhead", epilog=EPILOG, help=_para(OVERHEAD_HELP))
def overhead_cmd(
    model: str = typer.Option(None, "--model", "-m", help="Policy (default: ft train's default)."),
    task: str = typer.Option("countdown", "--task", help="Task whose first training prompt is used."),
    lengths: str = typer.Option("512,2048", "--lengths", help="Context lengths (prompt + response tokens)."),
    micro_batch: int = typer.Option(1, "--micro-batch", min=1, help="Sequences per step."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed rounds (median)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed rounds first."),
    layers: str = typer.Option("mid", "--layers"),
    out: Path = typer.Option(None, "--out", "-o"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    from rich.console import Console

    from ftcli.ablate import OverheadConfig, overhead, overhead_table

    if model is None:
        from ftcli.trainer import TrainConfig

        model = TrainConfig().model
    cfg = OverheadConfig(model=model, task=task, lengths=tuple(_split(lengths, int)), micro_batch=micro_batch,
                         repeats=repeats, warmup=warmup, layers=layers, out=_out(out, "overhead"))
    res = overhead(cfg, console=Console(stderr=True), progress=not quiet)
    con = _console()
    con.print(overhead_table(res))
    con.print(f"results: {cfg.out}/results.json, table.csv")


def register(app: typer.Typer) -> None:
    app.add_typer(ablate_app, name="ablate")
