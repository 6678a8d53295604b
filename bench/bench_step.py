"""Benchmark: the whole training step, and what the credit costs in it (paper Table 6).

    python bench/bench_step.py                      # main job, SmolLM2 at 1K and 2K, today vs 7bdec2c
    python bench/bench_step.py --full               # SmolLM2 at 1K, 2K and 4K tokens
    python bench/bench_step.py --parts main smollm2 # any of: main smollm2 old compile

One torch thread; every comparison is interleaved in one run (arms rotated round by round),
medians and minimums over the rounds, wall and process CPU seconds; the machine's load average
is recorded before and after each part. Table 6 itself is `ftcli.experiments.overhead` (also
what `ft ablate overhead` runs):

- `main`: the main job's step (`ft train` defaults: the default policy, 16 prompts x 8, 192 new
  tokens, flow credit) on real rollouts (`rollout_overhead`): each round samples the step once
  (generation), then runs the trainer's update under credit none (uniform weights), flow fused,
  flow separate (the paper's extra pass) and flow fused with rollout-order micro-batches (the
  old grouping); the padded token slots of both groupings.
- `smollm2`: SmolLM2-135M, 2 sequences of exactly 1K and 2K tokens (`--full`: and 4K), the same
  arms (`overhead`), with the forced-length sampling of the 2 rows timed once per length.
- `old`: the main job's step today against commit 7bdec2c: each repetition runs two steps in a
  fresh process per tree (PYTHONPATH at the tree; the old tree is a `git worktree` made and
  removed here), the order alternating, and compares the second step's seconds per response
  token (the first pays one-time costs); the same prompts and seed, so the same rollouts.
- `compile` (not in the default set): the update's forward/backward, eager against
  `torch.compile`, at the main job's micro-batch shape.

Writes bench/results/step.json (and prints a summary). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD_COMMIT = "7bdec2c"
PAPER = "paper (Table 6, extra forward pass): +2.2% of a step at 1K tokens, +4.5% at 8K"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main_config(out: str, **kw):
    """The main job's settings (`ft train` defaults), no validation, no samples."""
    from ftcli.train.config import resolve_config

    return resolve_config("cpu", out=out, val_every=0, progress=False, log_samples=0, steps=100, **kw)


def part_main(args) -> dict:
    from ftcli.experiments.overhead import rollout_overhead

    with tempfile.TemporaryDirectory(prefix="ft-bench-step-") as d:
        res = rollout_overhead(main_config(str(Path(d) / "run")), repeats=args.repeats,
                               progress=lambda i, n: print(f"  main: round {i}/{n}", flush=True))
    res["settings"] = {"model": "default-policy", "prompts": 16, "group_size": 8, "max_new_tokens": 192,
                       "credit": "flow", "micro_batch": 16, "repeats": args.repeats}
    return res


def part_smollm2(args) -> dict:
    from ftcli.experiments.config import OverheadConfig
    from ftcli.experiments.overhead import overhead

    lengths = (1024, 2048, 4096) if args.full else tuple(args.lengths)
    with tempfile.TemporaryDirectory(prefix="ft-bench-oh-") as d:
        cfg = OverheadConfig(model="smollm2-135m", lengths=lengths, micro_batch=2, repeats=args.repeats,
                             warmup=0, out=d)
        return overhead(cfg, progress=False, generation=True)


CHILD = """
import importlib.util, json, os, sys, time, torch
torch.set_num_threads(1)
out, steps, tree = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import ftcli
for sub in ("tasks", "evals"):  # <tree>/tasks is installed as ftcli.tasks: take this tree's, not the installed one
    init = os.path.join(tree, sub, "__init__.py")
    if os.path.isfile(init):
        spec = importlib.util.spec_from_file_location("ftcli." + sub, init, submodule_search_locations=[os.path.dirname(init)])
        mod = sys.modules["ftcli." + sub] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
try:
    from ftcli.train.loop import Trainer
    from ftcli.train.config import resolve_config
except ImportError:  # the trainer of 7bdec2c: one module
    from ftcli.trainer import Trainer, resolve_config
kw = dict(out=out, val_every=0, progress=False, log_samples=0, steps=steps)
try:  # today's default draws generated problems: read the same files as 7bdec2c
    cfg = resolve_config("cpu", data_source="files", **kw)
except ValueError:
    cfg = resolve_config("cpu", **kw)
tr = Trainer(cfg)
(getattr(tr, "setup", None) or tr._setup)()  # 7bdec2c names it _setup
rows = []
for step in range(1, steps + 1):
    c0 = time.process_time()
    row = tr.train_step(step)
    row["cpu_step"] = time.process_time() - c0
    rows.append(row)
tr.close()
print("RESULT " + json.dumps([{k: r[k] for k in ("time_step", "time_gen", "cpu_step", "response_len")} for r in rows]))
"""


def run_child(tree: Path, steps: int) -> list[dict]:
    from ftcli.config import data_root

    # the same data root for both trees (7bdec2c looks beside its checkout without FT_DATA)
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", FT_DATA=str(data_root()))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # set by this process's engine
        env.pop(k, None)
    with tempfile.TemporaryDirectory(prefix="ft-bench-ab-") as d:
        p = subprocess.run([sys.executable, "-c", CHILD, str(Path(d) / "run"), str(steps), str(tree)], cwd=d, env=env,
                           capture_output=True, text=True, timeout=1800)
    if p.returncode:
        raise RuntimeError(f"step in {tree} failed:\n{p.stderr[-3000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def part_old(args) -> dict:
    from ftcli.experiments.stats import median

    old = Path(args.old_tree or Path(tempfile.gettempdir()) / "ft-bench-7bdec2c")
    made = False
    if not (old / "ftcli" / "trainer.py").is_file():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), OLD_COMMIT],
                       check=True, capture_output=True)
        made = True
    n_seq = 16 * 8
    runs: dict[str, list[dict]] = {"today": [], OLD_COMMIT: []}
    try:
        for rep in range(args.repeats):
            order = [("today", ROOT), (OLD_COMMIT, old)]
            for name, tree in order if rep % 2 == 0 else order[::-1]:
                for step, r in enumerate(run_child(tree, args.old_steps), 1):
                    tok = r["response_len"] * n_seq
                    runs[name].append({**r, "step": step, "response_tokens": tok, "ms_per_token": 1e3 * r["time_step"] / tok,
                                       "cpu_ms_per_token": 1e3 * r["cpu_step"] / tok})
                print(f"  old: rep {rep + 1}/{args.repeats} {name}: {runs[name][-1]['time_step']:.1f} s", flush=True)
    finally:
        if made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)

    def summary(xs):
        return {k: {"median": median([x[k] for x in xs]), "min": min(x[k] for x in xs)}
                for k in ("time_step", "time_gen", "cpu_step", "response_tokens", "ms_per_token", "cpu_ms_per_token")}

    s = {k: summary([x for x in v if x["step"] == args.old_steps]) for k, v in runs.items()}  # the last step of each process
    return {"runs": runs, "summary": s,
            "speedup_per_response_token": s[OLD_COMMIT]["ms_per_token"]["median"] / s["today"]["ms_per_token"]["median"],
            "speedup_per_response_token_cpu": s[OLD_COMMIT]["cpu_ms_per_token"]["median"] / s["today"]["cpu_ms_per_token"]["median"],
            "note": f"main-job steps 1..{args.old_steps} (seed 0) per fresh process, the last one summarised "
                    f"(medians, minimums), {args.repeats} repetitions, order alternating; the same prompts and "
                    "seed in both trees (so the same rollouts)"}


def part_compile(args) -> dict:
    """Eager vs torch.compile (inductor, static shapes) on the update's forward/backward of the
    default policy at one micro-batch of the main job (16 sequences, `--compile-len` tokens)."""
    import torch

    from ftcli import grpo
    from ftcli.experiments.stats import median
    from ftcli.fetch.models import load_model

    model, tok = load_model("default-policy")
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tok), (16, args.compile_len), generator=g)  # [16, T]
    am = torch.ones_like(ids)

    def fwd_bwd(m):
        out = m(input_ids=ids, attention_mask=am, use_cache=False)
        (-grpo.token_logprobs(out.logits[:, :-1], ids[:, 1:], 1.0).mean()).backward()

    def timed(m):
        t0 = time.perf_counter()
        fwd_bwd(m)
        return time.perf_counter() - t0

    res: dict = {"tokens": args.compile_len, "batch": 16}
    try:
        cm = torch.compile(model, dynamic=False)
        t0 = time.perf_counter()
        fwd_bwd(cm)
        res["compile_first_call_s"] = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report why compile is not usable here
        res["error"] = f"{type(e).__name__}: {e}"[:500]
        return res
    eager, comp = [], []
    for _ in range(args.repeats):
        eager.append(timed(model))
        comp.append(timed(cm))
    res.update(eager_s=eager, compiled_s=comp, speedup=median(eager) / median(comp))
    return res


def summarize(res: dict) -> list[str]:
    lines = []
    if "main" in res:
        m = res["main"]
        by = {r["arm"]: r for r in m["rows"]}
        base = by["none-fused"]
        lines.append(f"main job: generation {m['generation_s']:.1f} s, update (none) {base['step_s']:.1f} s, "
                     f"whole step {base['whole_step_s']:.1f} s; padded slots / real tokens: "
                     f"by length {m['padded_over_real']['length']:.3f}, rollout order {m['padded_over_real']['group']:.3f}")
        for arm in ("flow-fused", "flow-separate"):
            r = by[arm]
            lines.append(f"  {arm} over none (uniform): {r['share_pct']:+.2f}% of the whole step "
                         f"(CPU {r['share_cpu_pct']:+.2f}%); capture {r['capture_s'] + r['fused_capture_s']:.3f} s, "
                         f"solve {r['solve_s']:.3f} s")
        g = by["flow-fused-group"]
        lines.append(f"  update, rollout-order micro-batches / by length: {g['step_s'] / by['flow-fused']['step_s']:.2f}x")
    if "smollm2" in res:
        for r in res["smollm2"]["rows"]:
            if r["arm"] != "none-fused":
                lines.append(f"SmolLM2 T={r['length']} {r['arm']}: {r.get('share_pct', float('nan')):+.2f}% of the whole step "
                             f"(update alone {r['overhead_pct']:+.2f}%; gen {r.get('gen_s', float('nan')):.1f} s)")
    if "old" in res:
        o = res["old"]
        lines.append(f"step per response token, {OLD_COMMIT} / today: {o['speedup_per_response_token']:.2f}x "
                     f"(CPU {o['speedup_per_response_token_cpu']:.2f}x)")
    if "compile" in res:
        c = res["compile"]
        lines.append(f"torch.compile update fwd/bwd: {c.get('speedup', float('nan')):.2f}x {c.get('error', '')}")
    lines.append(PAPER)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["main", "smollm2", "old"], choices=["main", "smollm2", "old", "compile"])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (>= 3)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048], help="SmolLM2 context lengths")
    ap.add_argument("--full", action="store_true", help="SmolLM2 at 1K, 2K and 4K (4K: minutes per round)")
    ap.add_argument("--old-steps", type=int, default=2, help="steps per process in the today-vs-old comparison (the last is compared)")
    ap.add_argument("--old-tree", help=f"a checkout of {OLD_COMMIT} (default: a git worktree made and removed here)")
    ap.add_argument("--compile-len", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "step.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() else {}  # parts not run keep their last results
    res.update(torch=torch.__version__, threads=1, cpu_count=os.cpu_count(), paper=PAPER)
    for part in args.parts:
        print(f"{part} ...", flush=True)
        before, t0 = load(), time.perf_counter()
        r = globals()[f"part_{part}"](args)
        r.update(load_avg_before=before, load_avg_after=load(), wall_s=round(time.perf_counter() - t0, 1),
                 date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        res[part] = r
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
    print("\n".join(summarize(res)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
