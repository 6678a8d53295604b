"""The GRPO training loop on a DeepSpeed engine, with pluggable token credit.

One step (= one optimizer step per mini-batch, one mini-batch by default):

    prompts (seeded order, sharded over ranks) -> G responses each (ftcli.generation)
    -> rewards (task verifier) -> group-normalised advantages (ftcli.grpo)
    -> for each micro-batch: policy forward [capturing W inside it when the rule needs
       attention; or `credit_pass="separate"`: a no-grad ftcli.attention.mean_attention pass]
       -> credit weights (ftcli.credit) -> weighted clipped surrogate + optional KL
       -> aggregate by the step's GLOBAL token/sequence count -> engine.backward / engine.step

The run directory is `ftcli.rundir.RunDir`. `resume=True` continues from the newest
complete checkpoint; on CPU the metrics (timings aside) equal those of an uninterrupted run
because every random draw is derived from (seed, step, sequence) (`ftcli.seeds.derive_seed`)
and DeepSpeed restores fp32 weights and optimizer state exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ftcli import get_task, grpo
from ftcli.credit import get_rule
from ftcli.evaluation.sampling import accuracy
from ftcli.fetch.models import load_model, resolve_model
from ftcli.generation import encode_prompt, generate, prompt_keys
from ftcli.progress import progress_bar, stderr_console
from ftcli.rundir import (
    RunDir,
    checkpoint_damage,
    quiet_hf_progress,
    read_manifest,
    step_dir_name,
    write_manifest,
)
from ftcli.seeds import derive_seed
from ftcli.sequences import TracedSeq, question_mask, task_prompt_text
from ftcli.spans import span_to_token_mask
from ftcli.tasks.loading import GENERATED_TASKS, describe_data, task_data_options
from ftcli.train.config import TrainConfig
from ftcli.train.engine import (
    build_ds_config,
    import_deepspeed,
    versions,
    warmup_scheduler,
    zero3_inference_params,
    zero3_partitioned_loading,
)
from ftcli.train.memory import auto_gen_batch_size
from ftcli.train.modelcard import command_line, write_model_card
from ftcli.train.stats import CtrlC, Timer
from ftcli.train.tracking import Tracker, create_tracker
from ftcli.train.update import NonFiniteError, PolicyUpdate
from ftcli.vllm_engine import require_vllm, stream_parameters


@dataclass
class RolloutSeq(TracedSeq):
    """One rollout of a step, teacher-forced, with its reward and outcome."""

    reward: float = 0.0
    correct: bool = False
    has_answer: bool = False
    finished: bool = True
    rollout: object = None  # the ftcli.generation.Rollout it came from
    sample: dict | None = None


class Trainer:
    """GRPO with token credit on a DeepSpeed engine. `Trainer(cfg).run()` -> run directory."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, console=None, task=None):
        cfg.validate()
        self.cfg, self.resume = cfg, resume
        self.task = task  # a task object (tests); default: ftcli.get_task(cfg.task) with cfg's data options
        self.ds = import_deepspeed()
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if cfg.prompts % self.world:
            raise ValueError(f"--prompts ({cfg.prompts}) must be divisible by the world size ({self.world})")
        self.prompts_per_rank = cfg.prompts // self.world
        seqs = self.prompts_per_rank * cfg.group_size
        if seqs % cfg.mini_batches:
            raise ValueError(f"sequences per rank ({seqs}) must be divisible by --mini-batches ({cfg.mini_batches})")
        self.seqs_per_mini = seqs // cfg.mini_batches
        self.rule = get_rule(cfg.credit)
        self.rundir = RunDir(cfg.out)
        self.run_dir = self.rundir.path
        self.console = console
        self.is_main = self.rank == 0
        self._perm_cache: dict[int, list[int]] = {}
        self.last_saved = -1
        self.completed = 0  # last step whose optimizer update is done
        self.ctrl_c = CtrlC()
        self.best_val: tuple[float, int] | None = None
        self.tracker = Tracker()  # --report-to; a no-op until run() starts it on rank 0
        self.created_dir = False  # this run made --out (a failure before any step removes it)
        self._rollout_backend = None  # --rollout vllm: a VLLMBackend over this rank's engine

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> int:
        """Load the task, the policy and the engines; resume; write config.json. Returns the
        step to continue after (0 for a new run)."""
        cfg = self.cfg
        if cfg.rollout == "vllm":
            require_vllm()  # one line, before the data, the model and --out
        if self.is_main and not self.resume and self.rundir.has_run():
            raise ValueError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        if self.task is None:
            source = cfg.data_source if cfg.task in GENERATED_TASKS else None
            self.task = get_task(cfg.task, **task_data_options(cfg.task, cfg.data_root, source, cfg.seed))
        # the data first: a missing file fails in seconds, before the model, the engine and --out
        self.train_data = self.task.load("train")  # a lazy sequence for generated tasks: slice, never list()
        if cfg.train_size:
            self.train_data = self.train_data[: cfg.train_size]
        if not len(self.train_data):
            raise ValueError(f"task {cfg.task!r} has no training samples")
        self.val_data = self._load_val() if cfg.validates else []
        if self.is_main:
            self.created_dir = not self.resume and not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._barrier()
        use_cuda = torch.cuda.is_available()
        self.use_bf16 = use_cuda if cfg.bf16 is None else bool(cfg.bf16)
        self.ds_config = build_ds_config(cfg, self.world, self.seqs_per_mini, self.use_bf16)
        self.gas = self.ds_config["gradient_accumulation_steps"]
        # loaded in the training dtype (bf16 weights when training in bf16: DeepSpeed keeps the
        # fp32 master copy in the optimizer); under ZeRO-3 each rank loads only its partition
        dtype = torch.bfloat16 if self.use_bf16 else torch.float32
        if cfg.zero_stage == 3:  # zero.Init partitions over the process group: it must exist first
            self.ds.init_distributed()
        self._zero3_init = zero3_partitioned_loading(self.ds_config)
        model, self.tokenizer = load_model(cfg.model, attn_implementation=cfg.attn_implementation, dtype=dtype)
        ref = None
        if cfg.kl_coef > 0:  # the reference model exists only for a KL term
            ref = (load_model(cfg.model, attn_implementation=cfg.attn_implementation, dtype=dtype)[0]
                   if cfg.zero_stage == 3 else copy.deepcopy(model))
            ref.eval().requires_grad_(False)
        if cfg.gradient_checkpointing:  # non-reentrant: the fused W capture and ZeRO-3 hooks stay exact
            enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.engine, self.optimizer, _, _ = self.ds.initialize(
            model=model, optimizer=opt, lr_scheduler=warmup_scheduler(opt, cfg.warmup_steps), config=self.ds_config)
        self.device = self.engine.device
        self.ref = None
        if ref is not None and cfg.zero_stage == 3:
            ref_cfg = {k: v for k, v in self.ds_config.items() if k != "gradient_clipping"}
            self.ref, *_ = self.ds.initialize(model=ref, config=ref_cfg)
        elif ref is not None:
            self.ref = ref.to(self.device, dtype=torch.bfloat16 if self.use_bf16 else torch.float32)
        self.updater = PolicyUpdate(cfg, self.engine, self.ref, self.tokenizer, self.world, self.seqs_per_mini, self.ctrl_c)
        self.gen_batch_size = cfg.gen_batch_rows() or auto_gen_batch_size(
            self.engine.module.config, cfg.max_new_tokens + self._longest_prompt(), self.device, dtype)
        start = self._maybe_resume()
        if cfg.rollout == "vllm":
            self._build_rollout_engine()
        if self.is_main:
            resolved = asdict(cfg)
            resolved.update(
                model_path=resolve_model(cfg.model), world_size=self.world,
                gradient_accumulation_steps=self.gas, sequences_per_step=cfg.prompts * cfg.group_size,
                micro_batch_per_rank=self.updater.micro_batch, gen_batch_size_resolved=self.gen_batch_size,
                deepspeed=self.ds_config, bf16_resolved=self.use_bf16, versions=versions(),
                credit_needs=sorted(self.rule.needs), data=describe_data(self.task),
            )
            self.rundir.write_config(resolved)
        return start

    def _longest_prompt(self, sample: int = 64) -> int:
        """Tokens of the longest prompt among the first `sample` training problems (the KV
        budget of `--gen-batch-size auto`)."""
        n = min(len(self.train_data), sample)
        return max(len(encode_prompt(self.tokenizer, task_prompt_text(self.tokenizer, self.task, self.train_data[i])))
                   for i in range(n))

    def _load_val(self):
        try:
            data = self.task.load("validation")
        except (KeyError, ValueError, FileNotFoundError) as e:
            self._print(f"[yellow]no validation split for {self.cfg.task} ({e}); validation off[/]")
            return []
        return list(data[: self.cfg.val_size])

    # -- rollouts ------------------------------------------------------------------------------
    def prompts_for_step(self, step: int, rank: int | None = None) -> list[int]:
        """Dataset indices of rank `rank`'s prompts (default: this rank's) at `step` (1-based):
        a seeded permutation per epoch, consumed `prompts` at a time, rank r taking its slice."""
        n = len(self.train_data)
        rank = self.rank if rank is None else rank
        base = (step - 1) * self.cfg.prompts + rank * self.prompts_per_rank
        return [self._perm(pos // n)[pos % n] for pos in range(base, base + self.prompts_per_rank)]

    def step_prompts(self, step: int) -> tuple[list[dict], list[str], list[int]]:
        """This rank's samples at `step`, their prompt texts, and their row-seed keys
        (`ftcli.generation.prompt_keys`): the occurrence of each prompt's text among the whole
        step's prompts, over all ranks, in global order. Two ranks that draw the same problem in
        a step therefore sample different rows, and a 1-rank and an N-rank run of the same
        global batch sample the same rows."""
        samples = [self.train_data[i] for r in range(self.world) for i in self.prompts_for_step(step, r)]
        texts = [task_prompt_text(self.tokenizer, self.task, s) for s in samples]
        keys = prompt_keys(texts)
        mine = slice(self.rank * self.prompts_per_rank, (self.rank + 1) * self.prompts_per_rank)
        return samples[mine], texts[mine], keys[mine]

    def seed_keys(self, step: int) -> list[int]:
        """Row-seed keys of this rank's prompts at `step` (`step_prompts`)."""
        return self.step_prompts(step)[2]

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "data", epoch))
            self._perm_cache = {epoch: torch.randperm(len(self.train_data), generator=g).tolist()}
        return self._perm_cache[epoch]

    def _full_params(self):
        """Generation and validation run on whole parameters with DeepSpeed's ZeRO-3 hooks
        removed (`zero3_inference_params`): no collectives inside `generate`, so ranks may stop
        at different lengths; the hooks are back before the update."""
        return zero3_inference_params(self.engine, self.ds, self.cfg.zero_stage)

    # -- the vLLM rollout engine (--rollout vllm; ftcli.vllm_engine) ---------------------------
    def _build_rollout_engine(self) -> None:
        """This rank's vLLM engine, built once from the policy's folder (or reused in this
        process), then given the trainer's current weights (a resumed run's checkpoint)."""
        from ftcli.fetch.models import TINY
        from ftcli.generation import VLLMBackend
        from ftcli.vllm_engine import EngineOptions, VLLMEngine

        cfg = self.cfg
        if cfg.model in TINY:
            raise ValueError(f"--rollout vllm needs a model folder or hub id; {cfg.model} exists only in memory")
        if self.world % cfg.vllm_tensor_parallel_size:
            raise ValueError(f"--vllm-tensor-parallel-size ({cfg.vllm_tensor_parallel_size}) must divide the world size ({self.world})")
        opts = EngineOptions(model=str(resolve_model(cfg.model)), dtype="bfloat16" if self.use_bf16 else "float32",
                             gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                             tensor_parallel_size=cfg.vllm_tensor_parallel_size, seed=cfg.seed)
        self._rollout_backend = VLLMBackend(engine=VLLMEngine.shared(opts))
        self._sync_rollout_weights()

    def _sync_rollout_weights(self) -> None:
        """Copy the trainer's weights into the vLLM engine in place, one parameter at a time
        (ZeRO-3: each gathered on its own), and reset its prefix cache."""
        self._rollout_backend.engine().load_weights(
            stream_parameters(self.engine.module, zero3=self.cfg.zero_stage == 3))

    def _generate(self, prompts: list[str], n: int, temperature: float, seed: int, keys: list[int]):
        cfg = self.cfg
        if self._rollout_backend is not None:  # --rollout vllm
            groups = self._rollout_backend.generate(
                self.engine.module, self.tokenizer, prompts, n=n, max_new_tokens=cfg.max_new_tokens,
                temperature=temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=seed, keys=keys)
            self._rollout_backend.engine().sleep()  # GPU: its memory goes back to the update
            return groups
        with self._full_params(), torch.no_grad():
            return generate(self.engine.module, self.tokenizer, prompts, n=n, max_new_tokens=cfg.max_new_tokens,
                            temperature=temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=seed,
                            batch_size=self.gen_batch_size, keys=keys)

    def rollouts(self, step: int) -> list[RolloutSeq]:
        """Generate, reward and build this rank's sequences for `step`."""
        cfg = self.cfg
        samples, texts, keys = self.step_prompts(step)
        groups = self._generate(texts, cfg.group_size, cfg.temperature, derive_seed(cfg.seed, "gen", step), keys)
        # one grading call per rollout: the reward and the verdict come from the same `grade`
        grades = [self.task.grade(ro.response_text, s) for s, g in zip(samples, groups, strict=True) for ro in g]
        rewards = [float(gr["reward"]) for gr in grades]
        adv = grpo.group_advantages(torch.tensor(rewards), cfg.group_size, cfg.norm_adv_std).tolist()
        seqs: list[RolloutSeq] = []
        for p, (sample, group) in enumerate(zip(samples, groups, strict=True)):
            p_ids = list(group[0].prompt_ids)
            q_mask = question_mask(self.tokenizer, texts[p], p_ids, str(sample.get("question", "")))
            for j, ro in enumerate(group):
                k = len(seqs)
                span = self.task.answer_span(ro.response_text)
                gidx = (step - 1) * cfg.prompts * cfg.group_size + (self.rank * self.prompts_per_rank + p) * cfg.group_size + j
                seqs.append(RolloutSeq(
                    ids=p_ids + list(ro.response_ids), n_prompt=len(p_ids), question=q_mask,
                    answer=span_to_token_mask(ro.response_offsets, span, len(ro.response_ids)).tolist(),
                    advantage=adv[k], seed=derive_seed(cfg.seed, "credit", gidx), reward=rewards[k],
                    correct=bool(grades[k]["correct"]), has_answer=span is not None,
                    finished=bool(ro.finished), rollout=ro, sample=sample,
                ))
        return seqs

    def update(self, seqs: list[RolloutSeq], timer: Timer):
        """The policy update on this rank's rollouts (`PolicyUpdate.update`); a non-finite loss
        or grad norm stops the run here, before anything of the step is logged or saved."""
        try:
            return self.updater.update(seqs, timer)
        except NonFiniteError as e:
            kept = f"checkpoint step {self.last_saved} is the newest" if self.last_saved > 0 else "no checkpoint written"
            raise NonFiniteError(f"step {self.completed + 1}: {e}; run stopped, {kept} (try a lower --lr)") from None

    def train_step(self, step: int) -> dict:
        """Rollouts, update, and the step's metrics row (summed over ranks)."""
        cfg = self.cfg
        timer, t0 = Timer(), time.perf_counter()
        lr = float(self.engine.get_lr()[0])  # of the step's first optimizer update (warm-up, a DeepSpeed scheduler)
        with timer("gen"):
            seqs = self.rollouts(step)
        stats, sample_rows, grad_norms = self.update(seqs, timer)
        if self._rollout_backend is not None:  # the next rollouts sample from the updated policy
            with timer("sync"):
                self._sync_rollout_weights()
        rewards = [s.reward for s in seqs]
        groups = [rewards[i : i + cfg.group_size] for i in range(0, len(rewards), cfg.group_size)]
        stats.sequences, stats.reward_sum, stats.reward_sq = len(seqs), sum(rewards), sum(r * r for r in rewards)
        stats.correct = sum(s.correct for s in seqs)
        stats.response_tokens = sum(s.n_response for s in seqs)
        stats.no_answer = sum(not s.has_answer for s in seqs)
        stats.truncated = sum(not s.finished for s in seqs)
        stats.flat_groups, stats.groups = sum(max(g) == min(g) for g in groups), len(groups)
        stats = stats.all_reduce(self.updater.all_sum)
        row = stats.row(step, lr, grad_norms, kl=self.ref is not None,
                        entropy="entropy" in self.rule.needs or cfg.entropy_coef > 0,
                        rollout=self._rollout_backend is not None)
        for k in ("gen", "capture", "credit", "fwd_bwd", "optim"):
            row[f"time_{k}"] = round(timer.t.get(k, 0.0), 4)
        if self._rollout_backend is not None:
            row["time_sync"] = round(timer.t.get("sync", 0.0), 4)
        row["time_step"] = round(time.perf_counter() - t0, 4)
        if self.is_main:
            recs = [_sample_record(step, s, w, sc) for s, w, sc in sample_rows[: cfg.log_samples]]
            for rec in recs:
                self.rundir.append_sample(rec)
            self.tracker.log_samples(step, recs)
        return row

    # -- validation ----------------------------------------------------------------------------
    def validate(self, step: int) -> float | None:
        """Accuracy on this rank's share of the validation problems, summed over ranks."""
        if not self.val_data:
            return None
        cfg = self.cfg
        mine = self.val_data[self.rank :: self.world]
        correct = 0
        if mine:
            temp = cfg.temperature if cfg.val_temperature is None else cfg.val_temperature
            backend = self._rollout_backend  # --rollout vllm: through the same engine
            with self._full_params() if backend is None else contextlib.nullcontext():
                correct, _ = accuracy(self.engine.module, self.tokenizer, self.task, mine, temperature=temp,
                                      seed=derive_seed(cfg.seed, "val"), max_new_tokens=cfg.max_new_tokens,
                                      top_p=cfg.top_p, top_k=cfg.top_k, batch_size=self.gen_batch_size,
                                      backend=backend)
        c, n = self.updater.all_sum([correct, len(mine)])
        return c / max(n, 1.0)

    # -- checkpoints ---------------------------------------------------------------------------
    def _barrier(self):
        if dist.is_available() and dist.is_initialized() and self.world > 1:
            dist.barrier()

    def save_checkpoint(self, step: int, final: bool = False) -> Path:
        """checkpoints/step_XXXXXX (HF safetensors + tokenizer + DeepSpeed state + RNG +
        trainer_state.json), written to a temp folder and renamed (RunDir); `final` also
        refreshes checkpoints/final."""
        tmp = self.rundir.checkpoints / f".{step_dir_name(step)}.tmp"
        was, self.ctrl_c.defer = self.ctrl_c.defer, True
        try:
            if self.is_main:
                tmp = self.rundir.checkpoint_tmp(step)
            self._barrier()
            self.engine.save_checkpoint(str(tmp / "ds"), tag="state", client_state={"ft_step": step})
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                       tmp / f"rng_state_rank{self.rank}.pt")
            sd = self.engine._zero3_consolidated_16bit_state_dict() if self.cfg.zero_stage == 3 else None  # DeepSpeed's API
            self._barrier()
            if self.is_main:
                with quiet_hf_progress():
                    self.engine.module.save_pretrained(tmp, state_dict=sd)
                self.tokenizer.save_pretrained(tmp)
                state = {"step": step, "prompts_consumed": step * self.cfg.prompts, "world_size": self.world,
                         "zero_stage": self.cfg.zero_stage, "best_val": self.best_val}
                self.rundir.commit_checkpoint(tmp, step, state, final)
                self.rundir.prune(self.cfg.keep_last, None if self.best_val is None else self.best_val[1])
            self._barrier()
        finally:
            self.ctrl_c.defer = was
        self.last_saved = step
        return self.rundir.checkpoints / step_dir_name(step)

    def _maybe_resume(self) -> int:
        if not self.resume:
            return 0
        found = self._newest_intact_checkpoint()
        if found is None:
            self._print("[yellow]--resume: no intact checkpoint yet, starting from step 0[/]")
            self._truncate_logs(-1)  # starts over: drop every row, the step-0 validation included
            return 0
        step, d, state = found
        if state.get("world_size") != self.world or state.get("zero_stage") != self.cfg.zero_stage:
            raise ValueError(
                f"checkpoint {d} was written with world size {state.get('world_size')} and ZeRO "
                f"{state.get('zero_stage')}; resume with the same (now {self.world}, {self.cfg.zero_stage})"
            )
        self.engine.load_checkpoint(str(d / "ds"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True)
        rng = d / f"rng_state_rank{self.rank}.pt"
        if rng.is_file():
            st = torch.load(rng, weights_only=False)
            torch.set_rng_state(st["torch"])
            random.setstate(st["python"])
            if st.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["cuda"])
        bv = state.get("best_val")
        self.best_val = tuple(bv) if bv else None
        self.last_saved = step
        self._truncate_logs(step)
        self._print(f"resumed from {d} (step {step})")
        return step

    def _newest_intact_checkpoint(self) -> tuple[int, Path, dict] | None:
        """(step, folder, trainer state) of the newest checkpoint whose files match its
        manifest (`ftcli.rundir.checkpoint_damage`); each newer damaged one is named
        and set aside as `step_XXXXXX.damaged`. None when no checkpoint is intact."""
        damaged, found = [], None
        for step, d in reversed(self.rundir.step_checkpoints(complete=None).items()):
            why = checkpoint_damage(d)
            if why is None:
                try:
                    found = (step, d, json.loads((d / "trainer_state.json").read_text(encoding="utf-8")))
                    break
                except (OSError, UnicodeDecodeError, ValueError) as e:
                    why = f"trainer_state.json: {type(e).__name__}"
            damaged.append((d, why))
        self._barrier()  # every rank has checked before the main one renames
        for d, why in damaged:
            if self.is_main:  # said even without --progress: the run goes back in time
                self.console = self.console or stderr_console()
                self.console.print(f"[yellow]--resume: checkpoint {d.name} is damaged ({why}); "
                                   f"set aside as {d.name}.damaged[/]", highlight=False)
                self.rundir.set_aside(d)
        self._barrier()
        return found

    def _truncate_logs(self, step: int) -> None:
        """Drop log rows written after the checkpoint (they are regenerated identically)."""
        if self.is_main:
            self.rundir.truncate_logs(step)
        self._barrier()

    def _print(self, msg: str) -> None:
        if self.is_main and self.cfg.progress:
            self.console = self.console or stderr_console()
            self.console.print(msg)

    # -- the loop ------------------------------------------------------------------------------
    def _validate_into(self, row: dict, step: int) -> None:
        t = time.perf_counter()
        acc = self.validate(step)
        if acc is not None:
            row["val_accuracy"] = acc
            row["time_val"] = round(time.perf_counter() - t, 4)
            if step and (self.best_val is None or acc > self.best_val[0]):
                self.best_val = (acc, step)

    def _report(self, progress, bar, step: int, row: dict) -> None:
        """Advance the progress bar; without a terminal, one line per step."""
        cfg = self.cfg
        if step == 0:
            extra = f"val {row['val_accuracy']:.3f} before training"
            progress.update(bar, extra=extra)
            line = f"step 0/{cfg.steps}  val {row['val_accuracy']:.3f} (before training)"
        else:
            extra = f"len {row['response_len']:.0f}  credited {row['frac_credited']:.2f}  {row['time_step']:.1f}s/step"
            if "val_accuracy" in row:
                extra += f"  val {row['val_accuracy']:.3f}"
            progress.update(bar, advance=1, reward=f"{row['reward_mean']:.3f}", acc=f"{row['accuracy']:.3f}", extra=extra)
            line = f"step {step}/{cfg.steps}  reward {row['reward_mean']:.3f}  acc {row['accuracy']:.3f}  {extra}"
        if self.is_main and cfg.progress and not progress.console.is_terminal:
            progress.console.print(line)

    def run(self) -> Path:
        """Set up, validate the starting policy, then step, validate, log and checkpoint.

        A new run that fails (or is interrupted) before it logs anything leaves no run folder
        behind; a resumed one is never removed."""
        try:
            return self._run()
        except BaseException:
            if self.is_main and self.created_dir and not self.rundir.has_run():
                self.rundir.discard()
            raise

    def _run(self) -> Path:
        start = self.setup()
        cfg = self.cfg
        # resume-aware: TensorBoard drops what an earlier attempt logged after the checkpoint
        # (everything when a resume starts over without one), as RunDir.truncate_logs does
        self.tracker = create_tracker(cfg.report_to, self.run_dir, self.rundir.config_file, rank=self.rank,
                                      resume_step=start if start else (-1 if self.resume else 0))
        progress = progress_bar(
            "[bold]train[/] {task.fields[credit]}",
            "reward {task.fields[reward]}  acc {task.fields[acc]}  {task.fields[extra]}",
            console=self.console, disable=not (self.is_main and cfg.progress),
        )
        self.completed = start
        try:
            with progress, self.ctrl_c:
                bar = progress.add_task("train", total=cfg.steps, completed=start, credit=cfg.credit,
                                        reward="-", acc="-", extra="")
                if start == 0 and cfg.val_every:  # the starting point of the validation curve
                    row = {"step": 0}
                    self._validate_into(row, 0)
                    if "val_accuracy" in row:
                        if self.is_main:
                            self.rundir.append_metrics(row)
                            self.tracker.log(0, row)
                        self._report(progress, bar, 0, row)
                for step in range(start + 1, cfg.steps + 1):
                    if self.ctrl_c.pending:
                        raise KeyboardInterrupt
                    self.ctrl_c.defer = False
                    row = self.train_step(step)
                    self.completed = step
                    is_last, stopping = step == cfg.steps, self.ctrl_c.pending
                    if cfg.val_every and (step % cfg.val_every == 0 or is_last) and not stopping:
                        self._validate_into(row, step)
                    if self.is_main:
                        self.rundir.append_metrics(row)
                        self.tracker.log(step, row)
                    every = cfg.checkpoint_every
                    if is_last or stopping or (every and step % every == 0):
                        self.save_checkpoint(step, final=is_last)
                        if is_last and self.is_main:
                            self._write_model_card(row)
                    self._report(progress, bar, step, row)
                    if self.ctrl_c.pending and not is_last:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            done = self.completed
            if done > self.last_saved and done > 0:
                self._print(f"[yellow]interrupted: saving step {done} before exiting[/]")
                with self.ctrl_c:  # one more Ctrl-C aborts the save
                    self.ctrl_c.defer, self.ctrl_c.pending = True, True
                    self.save_checkpoint(done, final=False)
            raise
        finally:
            self.tracker.close()
        return self.run_dir

    def _write_model_card(self, row: dict) -> None:
        """checkpoints/final/README.md: the hub model card of the final checkpoint (ftcli.train.modelcard)."""
        best = {"best_val_accuracy": self.best_val[0], "best_val_step": self.best_val[1]} if self.best_val else {}
        config = json.loads(self.rundir.config_file.read_text(encoding="utf-8"))
        write_model_card(self.rundir.final, config, {**row, **best}, command_line())
        write_manifest(self.rundir.final, reuse=read_manifest(self.rundir.final))  # the card is listed too

    def close(self) -> None:
        """Release the engines (avoids an intermittent abort of 2-rank ZeRO-3 processes at interpreter exit: a gloo all-gather outliving the interpreter)."""
        for e in (getattr(self, "engine", None), getattr(self, "ref", None)):
            if e is not None and hasattr(e, "destroy"):
                e.destroy()


def _sample_record(step: int, s: RolloutSeq, w: torch.Tensor, sc: torch.Tensor | None) -> dict:
    """One samples.jsonl row: the response, its tokens, credit weights (and scores)."""
    ro, n_p = s.rollout, s.n_prompt
    wr = w[n_p : len(s.ids)].tolist()
    rec = {
        "step": step, "id": s.sample.get("id"), "prompt": ro.prompt_text,
        "response": ro.response_text, "reward": s.reward, "correct": s.correct,
        "advantage": round(s.advantage, 6), "has_answer": s.has_answer,
        "response_ids": list(ro.response_ids), "tokens": [ro.response_text[a:b] for a, b in ro.response_offsets],
        "weights": [round(x, 4) for x in wr],
        "credited": [i for i, x in enumerate(wr) if x != 1.0],
        "answer_tokens": [i for i, x in enumerate(s.answer) if x],
    }
    if sc is not None:
        rec["scores"] = [float(f"{x:.4g}") for x in sc[n_p : len(s.ids)].tolist()]
    return rec


def train(cfg: TrainConfig, resume: bool = False, console=None, task=None) -> Path:
    """Run a training job; returns the run directory."""
    trainer = Trainer(cfg, resume=resume, console=console, task=task)
    try:
        return trainer.run()
    finally:
        trainer.close()
