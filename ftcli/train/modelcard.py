"""The model card of a trained checkpoint: `checkpoints/final/README.md` in the hub's form
(YAML metadata between `---` lines, then markdown), so the folder can be uploaded as it is.

    write_model_card(run.final, config, final_metrics, command_line())

The metadata holds `base_model` (when it is a hub id), `library_name`, `license` and `datasets`
when known, `tags` and a `model-index` with the final validation accuracy; the body names the
base model, task, credit rule and its options, steps, the final metrics and the exact command.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml  # PyYAML, a dependency of transformers

from ftcli.credit import RULES
from ftcli.fetch.data import registry
from ftcli.fetch.models import ALIASES
from ftcli.io import atomic_write_text

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
# The hub model behind each ftcli alias (the keys are `ftcli.fetch.models.ALIASES` values) and its
# licence; `default-policy` is ftcli's own model, trained from scratch (Apache-2.0).
ALIAS_HUB = {
    "smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    "qwen2.5-coder-0.5b-instruct": ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "apache-2.0"),
    "default-policy": (None, "apache-2.0"),
}
CREDIT_OPTIONS = ("ratio", "select", "gamma", "weighting", "mass", "layers", "nonneg_only", "credit_tokens")
MAX_README_BYTES = 65536  # a base model's README is read only this far (for its licence)


def is_hub_id(name: str) -> bool:
    """`owner/name` in the hub's spelling, and not a local path."""
    return bool(HUB_ID.match(name or "")) and not Path(name).expanduser().exists()


def front_matter(text: str) -> dict:
    """The YAML metadata block of a model card (`---` ... `---` at the top; {} without one)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def base_model_info(config: Mapping) -> tuple[str, str | None, str | None]:
    """(what to call the base model, its hub id or None, its licence or None) from the run's
    `model` (alias, folder or hub id) and resolved `model_path`."""
    model = str(config.get("model") or "")
    if not model:
        return "none (trained from scratch)", None, None
    alias = ALIASES.get(model.lower())
    if alias in ALIAS_HUB:
        hub, licence = ALIAS_HUB[alias]
        return (hub or model), hub, licence
    if is_hub_id(model):
        return model, model, None
    path = Path(str(config.get("model_path") or model)).expanduser()
    readme = path / "README.md"
    licence = None
    if readme.is_file():  # a local base model: reuse its card's licence
        with open(readme, encoding="utf-8", errors="replace") as fh:
            meta = front_matter(fh.read(MAX_README_BYTES))
        licence = meta.get("license") if isinstance(meta.get("license"), str) else None
    return model, None, licence


def task_datasets(task: str) -> list[str]:
    """Hub datasets of a task's problems (the `hub` field of tasks/sources.toml)."""
    out: list[str] = []
    for src in registry():
        hub = src.hub.split(" ")[0] if src.hub else ""
        if task in src.tasks and HUB_ID.match(hub) and hub not in out:
            out.append(hub)
    return out


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, for the card: `ft ...` for the console script, `python -m
    ftcli.train ...` under a launcher (its --local_rank argument dropped)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    path, args = Path(argv[0]), argv[1:]
    prog = path.name
    if prog == "train_entry.py" or (prog == "__main__.py" and path.parent.name == "train"):
        args = [a for a in args if not re.match(r"^--local[_-]rank(=|$)", a)]
        return shlex.join(["python", "-m", "ftcli.train", *args])
    return shlex.join(["ft" if prog == "ft" else prog, *args])


def _ftcli_version() -> str:
    try:
        return importlib.metadata.version("ftcli")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def card_metadata(config: Mapping, final_metrics: Mapping, name: str) -> dict:
    """The card's YAML metadata (hub model card fields)."""
    task = str(config.get("task") or "")
    _, hub, licence = base_model_info(config)
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    generated = data.get("source") == "generated"
    # problems from the project's generator are not any hub dataset's
    datasets = [] if generated else task_datasets(task)
    meta: dict = {}
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "transformers"
    if licence:
        meta["license"] = licence
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    method = "grpo" if "credit" in config else "sft"
    meta["tags"] = [t for t in ("ftcli", "flowtracer", method, task) if t]
    acc = final_metrics.get("val_accuracy")
    if isinstance(acc, (int, float)) and not isinstance(acc, bool):
        n = config.get("val_size")
        meta["model-index"] = [{
            "name": name,
            "results": [{
                "task": {"type": "text-generation", "name": f"{task} ({method.upper()})"},
                "dataset": {"name": f"{task} validation" + (" (generated" + (f", seed {data.get('seed')}" if "seed" in data else "") + ")" if generated else "")
                            + (f" (first {n} problems)" if n else ""),
                            "type": datasets[0] if datasets else task, "split": "validation"},
                "metrics": [{"type": "accuracy", "value": float(acc), "name": "validation accuracy",
                             "verified": False}],
            }],
        }]
    return meta


def card_text(config: Mapping, final_metrics: Mapping, command: str, name: str, path_hint: str) -> str:
    """The whole README.md: metadata block and markdown body."""
    meta = card_metadata(config, final_metrics, name)
    base_name, _, _ = base_model_info(config)
    task = str(config.get("task") or "?")
    grpo = "credit" in config  # a `ft train` run; otherwise supervised (`ft sft`)
    credit = str(config.get("credit"))
    rule = RULES.get(credit)
    rows = [("base model", f"`{base_name}`"), ("task", f"`{task}`")]
    if grpo:
        rows.append(("credit rule", f"`{credit}`" + (f" ({rule.summary})" if rule and rule.summary else "")))
    if grpo and credit != "none":
        opts = [k for k in CREDIT_OPTIONS if k in config and (k != "mass" or config.get("weighting") == "mass")]
        rows += [(k.replace("_", " ") if k.startswith("credit") else f"credit {k}", f"`{config[k]}`") for k in opts]
    rows.append(("steps", _fmt(final_metrics.get("step", config.get("steps", "?")))))
    for k in ("prompts", "group_size", "lr", "seed"):
        if k in config:
            rows.append((k.replace("_", " "), f"`{config[k]}`"))
    acc = final_metrics.get("val_accuracy")
    rows.append(("final validation accuracy", _fmt(acc) if acc is not None else "not measured"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    scalars = {k: v for k, v in final_metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "val_accuracy")}
    metrics = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in scalars.items())
    if grpo:
        intro = (f"`{base_name}` trained with GRPO on the `{task}` task by ftcli (the FlowTracer reference "
                 f"implementation), with the `{credit}` credit rule deciding which response tokens get "
                 "extra credit in the policy-gradient loss.")
    elif not config.get("model"):
        intro = f"A model trained from scratch (supervised) on the `{task}` task by ftcli (the FlowTracer reference implementation)."
    else:
        intro = f"`{base_name}` fine-tuned (supervised) on the `{task}` task by ftcli (the FlowTracer reference implementation)."
    body = f"""# {name}

{intro}

| setting | value |
|---|---|
{table}
"""
    if metrics:
        body += f"""
Metrics of the last step (as in the run's `metrics.jsonl`):

| metric | value |
|---|---|
{metrics}
"""
    body += f"""
## Command

```bash
{command}
```

ftcli {_ftcli_version()}; every option of the run is in its `config.json`.

## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "{path_hint}"  # this folder, or the hub repo you uploaded it to
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
messages = [{{"role": "user", "content": "..."}}]  # a prompt in the task's format
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**inputs, max_new_tokens={int(config.get("max_new_tokens") or 256)})
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

With ftcli, prompts in the task's own format: `ftcli.get_task("{task}").prompt(sample)`.
"""
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{head}---\n\n{body}"


def write_model_card(checkpoint_dir: str | os.PathLike, config: Mapping, final_metrics: Mapping, command: str,
                     name: str | None = None, path_hint: str | os.PathLike | None = None) -> Path:
    """Write `<checkpoint_dir>/README.md` (atomically) for a checkpoint trained with `config`
    (the run's resolved config.json), ending with `final_metrics` (the last metrics row: `step`,
    `val_accuracy`, ...) and produced by `command`. `name` defaults to the run folder's name;
    `path_hint`, the folder the card's loading example names, to `checkpoint_dir` (pass the
    final place when the card is written into a temporary folder that is renamed later)."""
    ckpt = Path(checkpoint_dir)
    if name is None:
        out = str(config.get("out") or "")
        name = Path(out).name if out else (ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name)
    text = card_text(config, json.loads(json.dumps(dict(final_metrics), default=str)), command, name or "ftcli-model",
                     str(path_hint if path_hint is not None else ckpt))
    return atomic_write_text(ckpt / "README.md", text)
