"""TRL's GRPOTrainer on Countdown with FlowTracer credit (ftcli.integrations.trl).

On this CPU (the shipped default policy, a few minutes; `pip install -e ".[trl]"` first):

    OMP_NUM_THREADS=1 python examples/trl_flowtracer.py --max-steps 2

A hub model on GPUs (the paper's settings: 64 prompts x 8 responses per step, lr 1e-6,
1024 new tokens; 8 GPUs, vLLM for generation):

    accelerate launch --num_processes 8 examples/trl_flowtracer.py \\
        --model Qwen/Qwen3-4B-Base --prompts 64 --num-generations 8 --micro-batch 8 \\
        --max-completion-length 1024 --lr 1e-6 --temperature 0.99 --top-k 100 \\
        --max-steps 500 --bf16 --use-vllm --output-dir runs/trl-qwen3-4b-flow

Options `--credit`, `--ratio`, `--select`, `--gamma`, `--weighting`, `--layers` are those of
`ft train`; `--credit none` is TRL's plain GRPO on the same data. Prompts are rendered as
`ft train` renders them (the task's chat prompt plus its assistant prefix), the reward is the
task's, and the Countdown problems come from the benchmark file when the data root has it,
else from the task's seeded generator.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from ftcli import get_task
from ftcli.credit import RULES, SELECT_MODES, WEIGHTINGS, CreditOptions
from ftcli.fetch.models import DEFAULT_POLICY, load_tokenizer, resolve_model
from ftcli.generation import render_prompt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_POLICY, help="ftcli alias, folder or hub id (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=30, help="optimizer steps (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step, all processes (default: %(default)s)")
    p.add_argument("--num-generations", type=int, default=8, help="responses per prompt, G (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=0, help="sequences per forward and process (0: all)")
    p.add_argument("--max-completion-length", type=int, default=192)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--credit", default="flow", choices=list(RULES))
    p.add_argument("--ratio", type=float, default=0.4)
    p.add_argument("--select", default="top", choices=SELECT_MODES)
    p.add_argument("--gamma", type=float, default=1.5)
    p.add_argument("--weighting", default="binary", choices=WEIGHTINGS)
    p.add_argument("--layers", default="mid", help="layers averaged into W: mid|early|late|all|A:B")
    p.add_argument("--problems", type=int, default=256, help="Countdown training problems (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--use-vllm", action="store_true", help="generate with vLLM (colocated; GPU)")
    p.add_argument("--output-dir", default="runs/trl-flowtracer")
    return p.parse_args(argv)


def countdown_problems(n: int, seed: int):
    """(task, first n training problems): the benchmark file, else the seeded generator."""
    task = get_task("countdown")
    try:
        return task, list(task.load("train")[:n])
    except FileNotFoundError:
        task = get_task("countdown", source="generated", seed=seed)
        return task, list(task.load("train")[:n])


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    from datasets import Dataset
    from trl import GRPOConfig

    from ftcli.integrations.trl import FlowTracerGRPOTrainer

    model = resolve_model(args.model)  # an ftcli alias -> its folder; a hub id as is
    tokenizer = load_tokenizer(args.model)
    task, problems = countdown_problems(args.problems, args.seed)
    rows = [
        {   # a plain-text prompt (TRL tokenizes it as is): chat template + assistant prefix
            "prompt": render_prompt(tokenizer, task.prompt(s), task.assistant_prefix(s)),
            "question": s["question"], "numbers": s["numbers"], "target": s["target"],
        }
        for s in problems
    ]

    def countdown_reward(completions, numbers, target, **kwargs):
        return [task.reward(c, {"numbers": n, "target": t}) for c, n, t in zip(completions, numbers, target, strict=True)]

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_process = args.prompts * args.num_generations // world
    if per_process * world != args.prompts * args.num_generations:
        raise SystemExit(f"Error: {args.prompts} x {args.num_generations} sequences do not split over {world} processes")
    micro = args.micro_batch or per_process
    if per_process % micro:
        raise SystemExit(f"Error: --micro-batch {micro} does not divide {per_process} sequences per process")
    config = GRPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, learning_rate=args.lr,
        lr_scheduler_type="constant", per_device_train_batch_size=micro,
        gradient_accumulation_steps=per_process // micro, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=args.temperature,
        top_k=args.top_k, beta=0.0, loss_type="dapo", seed=args.seed, bf16=args.bf16,
        use_vllm=args.use_vllm, vllm_mode="colocate", logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        # TRL turns gradient checkpointing on by default; on CPU, at this size, it only recomputes
        # the forward in the backward (activations are small): off there, TRL's default on GPUs
        gradient_checkpointing=torch.cuda.is_available(),
    )
    trainer = FlowTracerGRPOTrainer(
        model=model, reward_funcs=countdown_reward, args=config,
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        credit=args.credit, layers=args.layers, task=task,
        credit_options=CreditOptions(ratio=args.ratio, select=args.select, gamma=args.gamma,
                                     weighting=args.weighting),
    )
    trainer.train()
    trainer.save_model(os.path.join(args.output_dir, "final"))
    if trainer.accelerator.is_main_process:
        print(f"done: {args.max_steps} steps in {time.perf_counter() - t0:.0f} s; "
              f"model in {os.path.join(args.output_dir, 'final')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
