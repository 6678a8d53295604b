"""The default policy: a small Qwen3 trained from scratch on Countdown solver traces.

    from ftcli.policy import build_default_policy
    build_default_policy("ftcli/assets/default-policy", seed=0)   # the shipped checkpoint

Three pieces, all deterministic for a given seed:

1. Traces (`countdown_trace`). A response in the TinyZero format that continues the task's
   pre-filled assistant turn (`task.assistant_prefix`, which ends with `<think>`): a few tried
   combinations, one per line, each a chain of binary steps `a op b = v`, ending with the
   working one, then `</think>` and `<answer>expr</answer>`:

       <think>                                              <- prompt (assistant prefix)
       79 + 60 = 139 [17, 139]; 139 - 17 = 122              <- a failed try (0-3, distinct)
       79 - 60 = 19 [17, 19]; 19 + 17 = 36                  <- the solution's steps
       </think>
       <answer>(79 - 60) + 17</answer><|im_end|>

   After every step but the last, `[...]` lists the values still to be used (the problem's
   numbers in prompt order, the new value last): the model copies operands from right there
   instead of tracking by itself which numbers are used, which halves its copy errors (on
   300 validation problems at T=1: 269 -> 141).

   The trace records a random search: failed tries are random `+`/`-` combinations, each the
   one nearest the target among a few draws; the solution is the first random combination
   (non-negative integer steps, `+ -` more often than `* /`) that hits the target, else the
   task's exhaustive `solve` if its steps are non-negative integers (else the problem is
   skipped, about 1% of them). `+` and `*` always put the larger operand first. So the model
   learns "copy numbers, compute, compare with the target, try again", on easy arithmetic.
   Responses are 20-200 tokens (mean about 80).

2. A byte-level BPE tokenizer (`train_tokenizer`) trained with `tokenizers` on those
   prompts and traces. Digits are always single tokens (arithmetic is learnt digit by digit),
   and BPE merges run across spaces, so the fixed instruction text of the Countdown prompt
   collapses into a handful of tokens: a prompt is about 45 tokens.
   ChatML specials (`<|pad|>`, `<|im_start|>`, `<|im_end|>`) are special tokens; the tags
   `<think>`, `</think>`, `<answer>`, `</answer>` are atomic added tokens that are *not*
   special, so decoding with `skip_special_tokens=True` keeps them (the verifier needs them).

3. `Qwen3ForCausalLM` from scratch (`new_policy_model`, sizes in `MODEL_SIZES`), trained by
   `ftcli.sft.sft_train` with the loss on response tokens only.
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ftcli.models import CHAT_TEMPLATE

PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Model sizes (Qwen3, tied embeddings, GQA). Parameter counts are for a ~600-token vocab.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512),
    "small": dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, intermediate_size=768),
    "base": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024),
}


class PolicyError(ValueError):
    """Bad policy-building input (one-line message for the CLI)."""


# ---------------------------------------------------------------------------------------------
# Countdown samples: numbers and target
# ---------------------------------------------------------------------------------------------
def numbers_and_target(sample: dict) -> tuple[list[int], int]:
    """(numbers, target) of a Countdown sample, whatever the field names of the plugin."""
    for nk in ("numbers", "nums"):
        if nk in sample:
            nums = [int(x) for x in sample[nk]]
            break
    else:
        gt = (sample.get("reward_model") or {}).get("ground_truth") or {}
        if "numbers" not in gt:
            raise PolicyError(f"sample {sample.get('id')!r} has no numbers")
        nums = [int(x) for x in gt["numbers"]]
    if "target" in sample:
        return nums, int(sample["target"])
    gt = (sample.get("reward_model") or {}).get("ground_truth") or {}
    return nums, int(gt["target"])


# ---------------------------------------------------------------------------------------------
# Expressions as step chains
# ---------------------------------------------------------------------------------------------
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class Node:
    """A binary expression tree over the problem's numbers (a leaf has `op == ""`)."""

    value: Fraction | int
    op: str = ""
    left: Node | None = None
    right: Node | None = None

    @property
    def leaf(self) -> bool:
        return not self.op

    def text(self, top: bool = True) -> str:
        """`(79 - 60) + 17`: every inner operation in parentheses, the outermost bare."""
        if self.leaf:
            return _num(self.value)
        s = f"{self.left.text(False)} {self.op} {self.right.text(False)}"
        return s if top else f"({s})"

    def steps(self) -> list[tuple[Fraction, str, Fraction, Fraction]]:
        """Post-order `(a, op, b, value)` steps: the order a person computes them."""
        if self.leaf:
            return []
        return self.left.steps() + self.right.steps() + [(self.left.value, self.op, self.right.value, self.value)]


def _num(x: Fraction | int) -> str:
    if isinstance(x, int):
        return str(x)
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.4g}"


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b if b != 0 else None
    raise PolicyError(f"unknown operator {op!r}")


def parse_expression(expr: str) -> Node:
    """`"(79 - 60) + 17"` -> Node tree (exact arithmetic). Raises PolicyError if not + - * /.

    `+` and `*` put their larger operand first (the canonical form of every trace)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError as e:
        raise PolicyError(f"cannot parse expression {expr!r}") from e

    def walk(n) -> Node:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return Node(Fraction(n.value))
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            a, b, op = walk(n.left), walk(n.right), _OPS[type(n.op)]
            if op in "+*" and a.value < b.value:  # canonical: larger operand first
                a, b = b, a
            v = _apply(op, a.value, b.value)
            if v is None:
                raise PolicyError(f"division by zero in {expr!r}")
            return Node(v, op, a, b)
        raise PolicyError(f"unsupported expression {expr!r}")

    return walk(tree)


def render_attempt(node: Node, numbers: Sequence[int] | None = None) -> str:
    """One tried combination: `79 - 60 = 19, 19 + 17 = 36`.

    With `numbers` (the problem's, in prompt order), every step but the last is followed by
    the values still to be used, the new one last: `79 - 60 = 19 [17, 19]; 19 + 17 = 36`.
    """
    steps = node.steps()
    if numbers is None:
        return ", ".join(f"{_num(a)} {op} {_num(b)} = {_num(v)}" for a, op, b, v in steps)
    left = [Fraction(x) for x in numbers]
    parts = []
    for n, (a, op, b, v) in enumerate(steps):
        left.remove(Fraction(a))
        left.remove(Fraction(b))
        left.append(Fraction(v))
        part = f"{_num(a)} {op} {_num(b)} = {_num(v)}"
        if n < len(steps) - 1:
            part += " [" + ", ".join(_num(x) for x in left) + "]"
        parts.append(part)
    return "; ".join(parts)


def random_expression(numbers: Sequence[int], rng: random.Random, op_weights=(4, 4, 1, 1)) -> Node:
    """A random valid combination of all numbers: intermediate values are non-negative
    integers (`+ - *` put the larger operand first, `/` only when exact and not by 1)."""
    ops = rng.choices("+-*/", weights=op_weights, k=4 * len(numbers))
    for attempt in range(100):
        items = [Node(int(x)) for x in numbers]
        k = 0
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            a, b = items[i], items[j]
            op = ops[k % len(ops)] if attempt == 0 else rng.choices("+-*/", weights=op_weights)[0]
            k += 1
            if op in "+-*" and a.value < b.value:  # larger operand first (canonical, no negatives)
                a, b = b, a
            elif op == "/":
                if b.value in (0, 1) or a.value % b.value:
                    a, b = b, a
                if b.value in (0, 1) or a.value % b.value:
                    break
            v = {"+": a.value + b.value, "-": a.value - b.value, "*": a.value * b.value}.get(op)
            if v is None:
                v = a.value // b.value
            items = [x for n, x in enumerate(items) if n != i and n != j] + [Node(v, op, a, b)]
        if len(items) == 1:
            return items[0]
    raise PolicyError(f"no random combination found for {list(numbers)}")  # pragma: no cover


def near_miss(numbers: Sequence[int], target: int, rng: random.Random, draws: int = 3,
              op_weights=(4, 4, 1, 1)) -> Node:
    """A failed try: the random combination (not hitting the target) closest to the target
    among `draws` random ones."""
    best: Node | None = None
    for _ in range(50):
        e = random_expression(numbers, rng, op_weights)
        if e.value == target:
            continue
        if best is None or abs(e.value - target) < abs(best.value - target):
            best = e
        draws -= 1
        if draws <= 0:
            break
    if best is None:  # pragma: no cover - every combination hits the target
        raise PolicyError(f"no failed try exists for {list(numbers)} -> {target}")
    return best


def search_solution(numbers: Sequence[int], target: int, rng: random.Random, tries: int = 400) -> Node | None:
    """A solution found by random tries (`random_expression`: non-negative integer steps,
    `+`/`-` drawn more often than `*`/`/`), or None after `tries` misses.

    This is the search the trace records, and it is what makes the demonstrated solutions
    easy to imitate: `solve` (the task's exhaustive solver, the fallback) returns the first
    expression of its own search order, often with negative intermediate values.
    """
    for _ in range(tries):
        e = random_expression(numbers, rng)
        if e.value == target:
            return e
    return None


def is_plain(node: Node) -> bool:
    """Every step value is a non-negative integer."""
    return all(v >= 0 and (isinstance(v, int) or v.denominator == 1) for _, _, _, v in node.steps())


@dataclass
class TraceOptions:
    """How traces look. `fail_probs[k]`: probability of k failed tries before the solution."""

    fail_probs: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)
    near_miss_draws: int = 3
    fail_op_weights: tuple[float, ...] = (1, 1, 0, 0)  # + - * / in failed tries
    search_tries: int = 3000
    show_remaining: bool = True  # list the values still to be used after each step


def countdown_trace(
    numbers: Sequence[int],
    target: int,
    solution: Node | str,
    rng: random.Random,
    opts: TraceOptions | None = None,
) -> str:
    """Response text (continuing an assistant prefix that ends with `<think>`) for one problem:
    failed tries, the solution's steps, `</think>`, `<answer>solution</answer>`."""
    opts = opts or TraceOptions()
    sol = parse_expression(solution) if isinstance(solution, str) else solution
    if sol.value != target:
        raise PolicyError(f"{sol.text()!r} does not make {target}")
    k = rng.choices(range(len(opts.fail_probs)), weights=opts.fail_probs)[0]
    shown = numbers if opts.show_remaining else None
    final = render_attempt(sol, shown)
    lines: list[str] = []
    for _ in range(k):  # distinct failed tries (a repeated try teaches nothing)
        for _ in range(10):
            line = render_attempt(near_miss(numbers, target, rng, opts.near_miss_draws, opts.fail_op_weights), shown)
            if line not in lines and line != final:
                lines.append(line)
                break
    lines.append(final)
    return "\n" + "\n".join(lines) + f"\n</think>\n<answer>{sol.text()}</answer>"


# ---------------------------------------------------------------------------------------------
# SFT examples from a task
# ---------------------------------------------------------------------------------------------
@dataclass
class SFTExample:
    """One demonstration: `prompt` (rendered chat prompt incl. assistant prefix) + `response`."""

    prompt: str
    response: str
    meta: dict = field(default_factory=dict)


def countdown_examples(
    task,
    samples: Sequence[dict],
    tokenizer_or_template,
    seed: int = 0,
    traces_per_problem: int = 1,
    opts: TraceOptions | None = None,
    solve: Callable[[list[int], int], str | None] | None = None,
    fallback_to_solver: bool = True,
    check: bool = True,
) -> list[SFTExample]:
    """Solver traces for Countdown samples, rendered through the task's own chat prompt.

    `tokenizer_or_template`: a tokenizer with a chat template (or None for the project's
    ChatML template). Solutions come from `search_solution` (random tries), falling back to
    `solve(numbers, target)`, by default the task plugin's exhaustive solver. Problems are
    skipped when there is no solution, when the only one found has negative or fractional
    steps, or when the random search misses and `fallback_to_solver` is off. With
    `check`, every trace is scored by `task.reward` and must get 1.0.
    """
    from ftcli.generation import render_prompt

    tok = tokenizer_or_template if tokenizer_or_template is not None else _TemplateOnly()
    solve = solve or _task_solver(task)
    opts = opts or TraceOptions()
    rng = random.Random(seed)
    out: list[SFTExample] = []
    for s in samples:
        nums, target = numbers_and_target(s)
        prompt = render_prompt(tok, task.prompt(s), task.assistant_prefix(s))
        sol = search_solution(nums, target, rng, opts.search_tries)
        if sol is None:
            if not fallback_to_solver:
                continue
            expr = solve(nums, target)
            if not expr:
                continue
            sol = parse_expression(expr)
            if not is_plain(sol):  # negative or fractional steps: too hard to imitate, skip
                continue
        for _ in range(traces_per_problem):
            resp = countdown_trace(nums, target, sol, rng, opts)
            if check:
                r = task.reward(resp, s)
                if r != 1.0:
                    raise PolicyError(f"trace for {nums} -> {target} scored {r}: {resp!r}")
            out.append(SFTExample(prompt, resp, {"numbers": nums, "target": target}))
    return out


def _task_solver(task):
    fn = getattr(task, "solve", None)
    if fn is None:
        try:
            from ftcli.tasks import countdown as cd

            fn = cd.solve
        except (ImportError, AttributeError) as e:  # pragma: no cover
            raise PolicyError("the Countdown task plugin has no solve(numbers, target)") from e
    return fn


class _TemplateOnly:
    """Minimal stand-in for a tokenizer when only the chat template is needed."""

    chat_template = CHAT_TEMPLATE

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        out = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
        return out + (f"{IM_START}assistant\n" if add_generation_prompt else "")


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
_ATOMIC = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + TAG_TOKENS))


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE (`tokenizers`) with single-digit pre-splitting and merges across spaces,
    wrapped as a `PreTrainedTokenizerFast` with the ChatML template.

    The special and tag tokens get ids 0..6; the texts are cut at them before BPE training, so
    no merge ever crosses a tag (the same cut that encoding makes). BPE stops early when every
    chunk of the corpus is a single token (a corpus of fixed-template prompts gives ~600).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS + TAG_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pieces = (p for t in texts for p in _ATOMIC.split(t) if p)
    tk.train_from_iterator(pieces, trainer)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=PAD, eos_token=IM_END, bos_token=None, unk_token=None
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.model_max_length = 512
    return tok


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def new_policy_model(tokenizer, size: str = "small", seed: int = 0, max_positions: int = 512,
                     attn_implementation: str = "sdpa"):
    """A seeded, randomly initialised `Qwen3ForCausalLM` sized for `tokenizer`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if size not in MODEL_SIZES:
        raise PolicyError(f"unknown model size {size!r} (known: {', '.join(MODEL_SIZES)})")
    s = MODEL_SIZES[size]
    vocab = int(math.ceil(len(tokenizer) / 64) * 64)  # room for added tokens, aligned
    cfg = Qwen3Config(
        vocab_size=vocab,
        head_dim=s["hidden_size"] // s["num_attention_heads"],
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        use_cache=True,
        **s,
    )
    cfg._attn_implementation = attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = cfg.bos_token_id
    return model


def round_to_fp16(model) -> None:
    """Round every floating-point parameter to the nearest float16 value (in place, still
    float32). A checkpoint stored in float16 then reloads as exactly this model."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(p.half().float())


def save_policy(model, tokenizer, out_dir: str | os.PathLike, extra_files: dict[str, str] | None = None,
                store_fp16: bool = False) -> Path:
    """`save_pretrained` model + tokenizer into a temporary sibling folder, then rename it into
    place (an interrupted save never leaves a half-written checkpoint).

    `store_fp16`: the safetensors hold float16 tensors (half the size) while `config.json`
    keeps float32, so `from_pretrained` upcasts them; call `round_to_fp16` first so that the
    reloaded model is exactly the saved one.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if store_fp16:
            from safetensors.torch import load_file, save_file

            for f in tmp.glob("*.safetensors"):
                sd = load_file(f)
                save_file({k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}, f,
                          metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private; a checkpoint is an ordinary folder
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# The whole recipe
# ---------------------------------------------------------------------------------------------
@dataclass
class PolicyRecipe:
    """Everything `build_policy` needs; `DEFAULT_RECIPE` made the shipped checkpoint."""

    seed: int = 0
    size: str = "base"
    vocab_size: int = 1024
    max_positions: int = 512
    problems: int | None = None  # training problems from the task's train split (None: all)
    traces_per_problem: int = 2
    fail_probs: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)
    near_miss_draws: int = 3
    show_remaining: bool = True
    steps: int = 1700
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    engine: str = "deepspeed"  # ZeRO-0 engine; "torch" gives the same updates without DeepSpeed
    eval_split: str = "test"
    eval_problems: int | None = None  # None: the whole split
    eval_max_new_tokens: int = 192
    eval_temperatures: tuple[float, ...] = (0.0, 0.7, 1.0)  # 0 = greedy
    store_fp16: bool = True  # weights rounded to float16 after SFT and stored so (half the size)
    task: str = "countdown"

    def trace_options(self) -> TraceOptions:
        return TraceOptions(fail_probs=tuple(self.fail_probs), near_miss_draws=self.near_miss_draws,
                            show_remaining=self.show_remaining)

    def sft_config(self):
        from ftcli.sft import SFTConfig

        return SFTConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                         warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio,
                         weight_decay=self.weight_decay, seed=self.seed, engine=self.engine,
                         max_length=self.max_positions)


DEFAULT_RECIPE = PolicyRecipe()


def build_policy(
    out_dir: str | os.PathLike,
    recipe: PolicyRecipe | None = None,
    *,
    progress: bool = True,
    console=None,
    evaluate: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Traces -> tokenizer -> Qwen3 from scratch -> SFT -> evaluation -> checkpoint in `out_dir`
    (with `RECIPE.md` and `sft_report.json`). Returns the report."""
    from ftcli.sft import evaluate_task, sft_train
    from ftcli.tasks import get_task

    r = recipe or PolicyRecipe()
    say = log or (lambda m: None)
    t_start = time.time()
    torch.manual_seed(r.seed)
    task = get_task(r.task)
    train = task.load("train")
    if r.problems is not None:
        train = train[: r.problems]
    t0 = time.time()
    examples = countdown_examples(task, train, None, seed=r.seed, traces_per_problem=r.traces_per_problem,
                                  opts=r.trace_options())
    t_data = time.time() - t0
    say(f"{len(examples)} traces from {len(train)} problems ({t_data:.0f} s)")
    tok = train_tokenizer((e.prompt + e.response + IM_END for e in examples), r.vocab_size)
    probe = examples[0]
    from ftcli.generation import render_prompt

    if render_prompt(tok, task.prompt({**_probe_sample(probe)}), task.assistant_prefix({})) != probe.prompt:
        raise PolicyError("the tokenizer's chat template renders prompts differently")  # pragma: no cover
    model = new_policy_model(tok, r.size, r.seed, r.max_positions)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"tokenizer: {len(tok)} tokens; model: Qwen3 {r.size}, {n_params / 1e6:.2f} M parameters")
    res = sft_train(model, tok, examples, r.sft_config(), progress=progress, console=console)
    say(f"SFT: {r.steps} steps in {res.wall_s:.0f} s, final loss {res.final_loss:.3f}")
    if r.store_fp16:
        round_to_fp16(model)  # what is evaluated is exactly what is shipped
    report: dict[str, Any] = {
        "recipe": _jsonable(asdict(r)),
        "versions": _versions(),
        "parameters": n_params,
        "vocab_size": len(tok),
        "train_problems": len(train),
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
    report["total_seconds"] = round(time.time() - t_start, 1)
    save_policy(model, tok, out_dir, store_fp16=r.store_fp16, extra_files={
        "RECIPE.md": recipe_markdown(report),
        "sft_report.json": json.dumps(report, indent=2, default=str),
    })
    return report


def build_default_policy(out_dir: str | os.PathLike, seed: int = 0, **kw) -> dict:
    """Rebuild the shipped `default-policy` checkpoint (DEFAULT_RECIPE with `seed`) in `out_dir`."""
    from dataclasses import replace

    return build_policy(out_dir, replace(DEFAULT_RECIPE, seed=seed), **kw)


def _probe_sample(ex: SFTExample) -> dict:
    from ftcli.tasks.countdown import make_sample

    return make_sample(ex.meta["numbers"], ex.meta["target"], "probe")


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _versions() -> dict:
    import platform

    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def recipe_markdown(report: dict) -> str:
    """RECIPE.md: how the checkpoint was made, and what it scores."""
    r = report["recipe"]
    lines = [
        "# default-policy: how it was made",
        "",
        "A small Qwen3 (`Qwen3ForCausalLM`) trained from scratch on Countdown solver traces by",
        "`ftcli.policy.build_policy` (supervised, loss on response tokens only). Rebuild:",
        "",
        "```bash",
        f"OMP_NUM_THREADS=1 ft sft --out ftcli/assets/default-policy --seed {r['seed']}",
        f"# or: python -c \"from ftcli.policy import build_default_policy; build_default_policy('ftcli/assets/default-policy', seed={r['seed']})\"",
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
        f"- Problems: the first {report['train_problems']} samples of the Countdown task's `train` split "
        "(TinyZero train rows from the shared UFT parquet, minus the 500-problem validation hold-out).",
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
