"""`ft ablate`: every experiment of the paper as a command (library: ftcli.experiments).

Analyses: `intervene` (Table 1), `fidelity` (what each credit rule finds, beyond the paper), `format` and `tokens` (Sec. 5.2, Fig. 3), `overhead` (Table 6).
Training sweeps: `layers` (Fig. 6), `ratio` (Table 5), `gamma` and `weighting` (Table 7),
`credit` (Tables 2-4, Figs. 4-5), `sets` (training on one token set alone, beyond the paper). Results go to `--out` (default runs/ablate/<name>) as JSON/CSV
with PNGs beside them; a rerun skips what is finished. A training sweep runs seed by seed and
rewrites its results.json (marked partial) after each finished run.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, fields
from pathlib import Path

import typer
from rich.console import Console

from ftcli.commands.options import build, command, dataclass_params, parse_field, split_list
from ftcli.experiments.config import (
    FIDELITY_PROTOCOL,
    INTERVENE_PROTOCOL,
    FidelityConfig,
    InterveneConfig,
    OverheadConfig,
    SweepConfig,
    TextConfig,
)
from ftcli.options import WEIGHTINGS, describe_rules, option
from ftcli.train.config import TrainConfig

EPILOG = """Examples:

  ft ablate intervene --model qwen2.5-coder-0.5b --n 50

  ft ablate fidelity --n 300          ft ablate fidelity -m smollm2-135m --task gsm8k --responses gold --n 50 --token-sample 16

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
    """--set KEY=VALUE -> TrainConfig overrides, read by the field's type and checked against
    its choices and limits (`parse_field`, the generated options' reading)."""
    names = {f.name for f in fields(TrainConfig)}
    out = {}
    for item in items or []:
        key, eq, val = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not eq or key not in names:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=VALUE with KEY an `ft train` option")
        try:
            out[key] = parse_field(TrainConfig, key, val)
        except ValueError as e:
            raise typer.BadParameter(f"--set {item!r}: {e}") from None
    return out


# The options every training sweep shares (added to each sweep command's signature): the
# training options from TrainConfig (None = ft train's default), the sweep's from SweepConfig.
TRAIN_PANEL = "Training (same for every variant)"
EVAL_PANEL = "Evaluation"
SWEEP_TRAIN_OPTIONS = ("model", "task", "data_source", "data_root", "steps", "prompts", "group_size", "max_new_tokens", "lr")


@dataclass
class SweepRunOptions:
    """The options of a training sweep beside SweepConfig's: other ft train options, the
    evaluation overrides (None: the suite's default) and how the sweep runs."""

    set_: list[str] | None = option(None, "Any other ft train option, KEY=VALUE (repeatable), e.g. --set temperature=0.99.", TRAIN_PANEL)
    baseline: bool = option(True, "Also train plain GRPO (credit none) as the reference row.", TRAIN_PANEL)
    eval_n: int | None = option(None, "Samples per problem (suite default otherwise).", EVAL_PANEL, min=1)
    eval_temperature: float | None = option(None, "Eval temperature (suite default: 0.99; 0 = greedy).", EVAL_PANEL, min=0.0)
    eval_max_new_tokens: int | None = option(None, "Eval token budget (default: the training --max-new-tokens).", EVAL_PANEL, min=1)
    out: Path | None = option(None, "Output folder (default runs/ablate/<name>).", flags=("-o",))
    quiet: bool = option(False, "No progress bars.", flags=("-q",), toggle=False)
    jobs: int = option(1, "Runs trained and evaluated at once, each in its own process with one torch thread (results do not depend on it).", flags=("-j",), min=1)


@dataclass
class VariantOptions:
    """What each training sweep varies (each sweep takes its own fields)."""

    range_: list[str] | None = option(None, "Layer range(s): early|mid|late|all|paper-early|paper-mid|paper-late|A:B; repeatable or comma list (default: early, mid, late, all).")
    ratios: str = option("0.2,0.4,0.6", "Comma list of fractions.")
    select: str = option("top,bottom", "top, bottom or both.")
    gammas: str = option("0.5,1.2,1.5,1.8,2.0,3.0", "Comma list of weights (default: the paper's Table 7).")
    weightings: str = option(",".join(WEIGHTINGS), "Comma list (ftcli.credit.WEIGHTINGS).")
    masses: str = option("0.2,0.4,0.6,0.8", "Mass thresholds of the soft (mass) weighting; one variant each.")
    rules: str = option("none,attention,flow", "Comma list of credit rules.")
    sets: str = option("flow-top,flow-bottom,random", "Comma list of token sets, each trained on alone: RULE-top or RULE-bottom (the rule's top or bottom --set-ratio of each response), a bare RULE = RULE-top.")
    set_ratio: float = option(0.4, "Fraction of each response's tokens in a set.", gt=0.0, max=1.0)
    rest: float = option(0.0, "Weight of the tokens outside the set (ft train --rest-weight; 0 = trained on the set only).", min=0.0)


def _variant_params(*names: str) -> list[inspect.Parameter]:
    return dataclass_params(VariantOptions, only=names)


def _common_sweep_params() -> list[inspect.Parameter]:
    run = SweepRunOptions
    return [
        # the training options from TrainConfig (None = ft train's default)
        *dataclass_params(TrainConfig, only=SWEEP_TRAIN_OPTIONS, unset=True, panel=TRAIN_PANEL, flags={"model": ("-m",)},
                          note=lambda f: f" (default: ft train's, {f.default})"),
        *dataclass_params(SweepConfig, only=("preset", "seeds", "variant_seeds", "reference")),
        *dataclass_params(run, only=("set_", "baseline")),
        *dataclass_params(SweepConfig, only=("eval_suite", "eval_limit")),
        *dataclass_params(run, only=("eval_n", "eval_temperature", "eval_max_new_tokens")),
        *dataclass_params(SweepConfig, only=("eval_batch_size",)),
        *dataclass_params(run, only=("out", "quiet", "jobs")),
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
    """Register `fn(kw)` as `ft ablate NAME` with the generated `params`."""
    ablate_app.command(name, epilog=EPILOG, help=doc)(command(params, fn))


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
    _variant_params("range_"),
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
    _variant_params("ratios", "select"),
    _ratio_variants, _ratio_pivot,
)


def _gamma_variants(kw, cfg):
    from ftcli.experiments.variants import gamma_variants

    return gamma_variants(split_list(kw.pop("gammas"), float))


_sweep_command(
    "gamma",
    "Table 7 (gamma): the weight given to the top-40% flow tokens, the paper's 0.5 to 3.0.",
    _variant_params("gammas"),
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
    _variant_params("weightings", "masses"),
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
    _variant_params("rules"),
    _credit_variants,
)


def _set_variants(kw, cfg):
    from ftcli.credit import get_rule
    from ftcli.experiments.variants import set_variants

    variants = set_variants(split_list(kw.pop("sets")), kw.pop("set_ratio"), kw.pop("rest"))
    for v in variants:
        get_rule(v.train["credit"])
    return variants


_sweep_command(
    "sets",
    "Issue 28: does a token set carry the learning signal? The same training with the loss "
    "restricted to one set of response tokens (weight 1 on the set, --rest on the others): the "
    "flow's top and bottom 40% and a random 40%, against GRPO on all tokens. "
    "Example: ft ablate sets --sets flow-top,flow-bottom,random --seeds 0,1,2,3,4",
    _variant_params("sets", "set_ratio", "rest"),
    _set_variants,
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

QUIET = dataclass_params(SweepRunOptions, only=("quiet",))[0]


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


FIDELITY_HELP = ("Beyond the paper: what each credit rule's scores find, on the same responses. (a) Answer "
                 "change when the rule's top k% of reasoning tokens are blocked (Table 1's intervention), with "
                 "paired exact McNemar tests between rules; (b) the Spearman correlation of each rule's scores "
                 "with each token's (and line's) own causal effect, the drop of the answer's log-likelihood when "
                 "it alone is blocked; (c) on GRPO rollouts, the share of GRPO's gradient norm carried by each "
                 "rule's selected set, and its cosine with the whole gradient."
                 f"\n\nProtocol:\n\n{_para(FIDELITY_PROTOCOL)}")


def _fidelity(kw: dict) -> None:
    from ftcli.experiments.fidelity import fidelity, fidelity_tables

    quiet = kw.pop("quiet")
    cfg = build(FidelityConfig, kw)
    res = fidelity(cfg, console=Console(stderr=True), progress=not quiet)
    con = _console()
    for table in fidelity_tables(res):
        con.print(table)
    st = ", ".join(f"{k}: {v}" for k, v in res["status"].items())
    con.print(f"problems: {st}; reference accuracy {100 * (res['reference_accuracy']['rate'] or 0):.1f}%")
    con.print(f"results: {cfg.out}/results.json, problems.jsonl, gradient.jsonl, arms.csv, mcnemar.csv, "
              "effects.csv, gradient.csv, fidelity.png")


_command("fidelity", FIDELITY_HELP, [*dataclass_params(FidelityConfig), QUIET], _fidelity)


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


@dataclass
class TokensOptions:
    """`ft ablate tokens`'s options beside TextConfig's: the ranking, and the optional training."""

    top: int = option(20, "Tokens per panel of fig3_tokens.png.", min=1)
    min_count: int = option(3, "Occurrences needed to be ranked.", min=1)
    train_: bool = option(False, "Also train flow credit on all / structural-only / semantic-only tokens (+ GRPO), with the sweep options below.")
    train_task: str | None = option(None, "Task of the training runs (default: ft train's).")
    steps: int | None = option(None, "Optimizer steps per run.", min=1)
    set_: list[str] | None = option(None, "Other ft train options, KEY=VALUE.")
    jobs: int = option(1, "Training runs at once (each in its own process).", flags=("-j",), min=1)


_command("tokens", _para(TOKENS_HELP), [
    *dataclass_params(TextConfig, defaults={"out": "runs/ablate/tokens", "model": None}),
    *dataclass_params(TokensOptions, only=("top", "min_count", "train_", "train_task", "steps", "set_")),
    *dataclass_params(SweepConfig, only=("seeds", "eval_suite", "eval_limit")),
    *dataclass_params(TokensOptions, only=("jobs",)),
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
