"""The whole recipe of the default policy: traces -> tokenizer -> Qwen3 from scratch -> SFT ->
evaluation -> checkpoint with RECIPE.md (see `ftcli.policy`)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import tokenizers
import torch
import transformers

from ftcli import get_task
from ftcli.generation import render_prompt
from ftcli.policy import DEFAULT_RECIPE, IM_END, PolicyError, PolicyRecipe
from ftcli.policy.build import new_policy_model, round_to_fp16, save_policy, train_tokenizer
from ftcli.policy.sft import SFTConfig, evaluate_task, sft_train
from ftcli.policy.traces import SFTExample, TraceOptions, countdown_examples, numbers_and_target
from ftcli.tasks.countdown import make_sample
from ftcli.tasks.loading import GENERATED_TASKS, describe_data, task_data_options


def trace_options(r: PolicyRecipe) -> TraceOptions:
    return TraceOptions(fail_probs=tuple(r.fail_probs), near_miss_draws=r.near_miss_draws,
                        show_remaining=r.show_remaining)


def sft_config(r: PolicyRecipe) -> SFTConfig:
    return SFTConfig(steps=r.steps, batch_size=r.batch_size, lr=r.lr, warmup_steps=r.warmup_steps,
                     min_lr_ratio=r.min_lr_ratio, weight_decay=r.weight_decay, seed=r.seed, engine=r.engine,
                     max_length=r.max_positions)


def build_policy(
    out_dir: str | os.PathLike,
    recipe: PolicyRecipe | None = None,
    *,
    progress: bool = True,
    console=None,
    evaluate: bool = True,
    log: Callable[[str], None] | None = None,
    on_log: Callable[[dict], None] | None = None,
) -> dict:
    """Traces -> tokenizer -> Qwen3 from scratch -> SFT -> evaluation -> checkpoint in `out_dir`
    (with `RECIPE.md` and `sft_report.json`). Returns the report. `on_log` gets each SFT loss
    row (`sft_train`'s) and then one row of the evaluation accuracies (`ftcli.train.tracking`)."""
    r = recipe or PolicyRecipe()
    say = log or (lambda m: None)
    t_start = time.time()
    torch.manual_seed(r.seed)
    source = r.data_source if r.task in GENERATED_TASKS else None
    task = get_task(r.task, **task_data_options(r.task, r.data_root, source, r.seed))
    train = task.load("train")
    if r.problems is not None:
        train = train[: r.problems]
    t0 = time.time()
    examples = countdown_examples(task, train, None, seed=r.seed, traces_per_problem=r.traces_per_problem,
                                  opts=trace_options(r))
    t_data = time.time() - t0
    say(f"{len(examples)} traces from {len(train)} problems ({t_data:.0f} s)")
    tok = train_tokenizer((e.prompt + e.response + IM_END for e in examples), r.vocab_size)
    probe = examples[0]
    if render_prompt(tok, task.prompt({**_probe_sample(probe)}), task.assistant_prefix({})) != probe.prompt:
        raise PolicyError("the tokenizer's chat template renders prompts differently")  # pragma: no cover
    model = new_policy_model(tok, r.size, r.seed, r.max_positions)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"tokenizer: {len(tok)} tokens; model: Qwen3 {r.size}, {n_params / 1e6:.2f} M parameters")
    res = sft_train(model, tok, examples, sft_config(r), progress=progress, console=console, on_log=on_log)
    say(f"SFT: {r.steps} steps in {res.wall_s:.0f} s, final loss {res.final_loss:.3f}")
    if r.store_fp16:
        round_to_fp16(model)  # what is evaluated is exactly what is shipped
    report: dict[str, Any] = {
        "recipe": _jsonable(asdict(r)),
        "versions": _versions(),
        "parameters": n_params,
        "vocab_size": len(tok),
        "train_problems": len(train),
        "data": describe_data(task),
        "train_traces": len(examples),
        "data_seconds": round(t_data, 1),
        "sft_seconds": round(res.wall_s, 1),
        "sft_cpu_seconds": round(res.cpu_s, 1),
        "sft_tokens": res.tokens,
        "final_loss": res.final_loss,
        "loss_history": res.history,
        "torch_threads": torch.get_num_threads(),
    }
    if evaluate:
        ev = task.load(r.eval_split)
        if r.eval_problems is not None:
            ev = ev[: r.eval_problems]
        report["eval"] = {}
        for temp in r.eval_temperatures:
            name = "greedy" if temp == 0 else f"T={temp:g}"
            m = evaluate_task(model, tok, task, ev, temperature=temp, n=1,
                              max_new_tokens=r.eval_max_new_tokens, seed=r.seed,
                              group=lambda s: len(numbers_and_target(s)[0]))
            report["eval"][name] = m
            say(f"{r.eval_split} {name} (T={temp}): accuracy {m['accuracy']:.3f} "
                + " ".join(f"{k}-numbers {v['accuracy']:.3f}" for k, v in m.get("by_group", {}).items())
                + f", format {m['format_rate']:.3f}, {m['mean_response_tokens']:.0f} tokens ({m['seconds']} s)")
        if on_log is not None:
            on_log({"step": r.steps, f"{r.eval_split}_accuracy": {k: v["accuracy"] for k, v in report["eval"].items()}})
    report["total_seconds"] = round(time.time() - t_start, 1)
    save_policy(model, tok, out_dir, store_fp16=r.store_fp16, extra_files={
        "RECIPE.md": recipe_markdown(report),
        "sft_report.json": json.dumps(report, indent=2, default=str),
    })
    return report


def build_default_policy(out_dir: str | os.PathLike, seed: int = 0, **kw) -> dict:
    """Rebuild the shipped `default-policy` checkpoint (DEFAULT_RECIPE with `seed`) in `out_dir`."""
    return build_policy(out_dir, replace(DEFAULT_RECIPE, seed=seed), **kw)


def _probe_sample(ex: SFTExample) -> dict:
    return make_sample(ex.meta["numbers"], ex.meta["target"], "probe")


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def recipe_markdown(report: dict) -> str:
    """RECIPE.md: how the checkpoint was made, and what it scores."""
    r = report["recipe"]
    lines = [
        "# default-policy: how it was made",
        "",
        "A small Qwen3 (`Qwen3ForCausalLM`) trained from scratch on Countdown solver traces by",
        "`ftcli.policy.recipe.build_policy` (supervised, loss on response tokens only). Rebuild:",
        "",
        "```bash",
        f"OMP_NUM_THREADS=1 ft sft --out ftcli/assets/default-policy --seed {r['seed']}",
        f"# or: python -c \"from ftcli.policy.recipe import build_default_policy; build_default_policy('ftcli/assets/default-policy', seed={r['seed']})\"",
        "```",
        "",
        "## Recipe",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in r.items()]
    lines += [
        "",
        "## Data",
        "",
        f"- Problems: the first {report['train_problems']} samples of the Countdown task's `train` split: "
        + ("the seeded generator (`ftcli.tasks.countdown`, no files; " + json.dumps(report["data"]) + ")."
           if report.get("data", {}).get("source") == "generated" else
           "TinyZero train rows from the UFT parquet, minus the 500-problem validation hold-out"
           + (f" ({json.dumps(report['data'])})." if "data" in report else ".")),
        f"- Traces: {report['train_traces']} ({r['traces_per_problem']} per problem, different failed tries), "
        "rendered through the task's own chat prompt and assistant prefix; every trace scores 1.0 with the task's reward.",
        "- A trace: 0-3 failed tries (random combinations near the target), the solution's steps, "
        "`</think>`, `<answer>expr</answer>`. Solutions come from random search (non-negative integer steps), "
        "else the task's `solve`.",
        "",
        "## Model and training",
        "",
        f"- {report['parameters']:,} parameters, vocabulary {report['vocab_size']} (byte-level BPE trained on the traces)"
        + ("; trained in float32, weights rounded to float16 and stored so (`config.json` says float32: "
           "`from_pretrained` upcasts them; the accuracy below is of the rounded weights)." if r.get("store_fp16") else "."),
        f"- Trace generation {report['data_seconds']} s; SFT {report['sft_seconds']} s wall, "
        f"{report.get('sft_cpu_seconds', '?')} s CPU "
        f"({report['sft_tokens']:,} tokens incl. padding) with {report['torch_threads']} torch thread(s); "
        f"final loss {report['final_loss']:.4f}; whole build {report.get('total_seconds', '?')} s.",
        f"- Versions: {report['versions']}.",
    ]
    if "eval" in report:
        lines += ["", f"## Accuracy on the `{r['eval_split']}` split", "",
                  "`ftcli.generation.generate` from the task's prompt, one sample per problem (seeded), "
                  f"max {r['eval_max_new_tokens']} new tokens, scored by the task's reward (1.0 = correct).", "",
                  "| decoding | all | 3 numbers | 4 numbers | format (reward > 0) | mean tokens |",
                  "|---|---|---|---|---|---|"]
        for name, m in report["eval"].items():
            g = m.get("by_group", {})
            lines.append(
                f"| {name} | {m['accuracy']:.3f} | "
                f"{g.get('3', {}).get('accuracy', float('nan')):.3f} | {g.get('4', {}).get('accuracy', float('nan')):.3f} | "
                f"{m['format_rate']:.3f} | {m['mean_response_tokens']:.1f} |")
        ex = next(iter(report["eval"].values()))["examples"][:1]
        if ex:
            lines += ["", "A greedy response:", "", "```", ex[0].strip("\n"), "```"]
    return "\n".join(lines) + "\n"
