# Settings shared by the Countdown training sweeps (scripts/table3.sh, table5.sh, table7.sh,
# fig4.sh, fig6.sh); sourced, not run. Every sweep trains each variant x seed with `ft train`'s
# preset (cpu: GRPO on the default policy, lr 1e-4 constant) on the whole train split of
# TinyZero's files (--data-source files: fresh problems every step; fetched into the data cache
# on first use), without validation, and evaluates the final checkpoint on the whole held-out
# test file (1,024 problems, 3 and 4 numbers) at the rollout temperature, 4 samples each.
#
# Why these defaults (issue 15; pilots of GRPO on 512 held-out problems at T 1, one sample each,
# 8 prompts x 8 per step, runs/pilot, and lever runs at the full evaluation, runs/ablate/lever-*):
#   - 80 steps at lr 1e-4: sampled accuracy 14.2 -> 17.6 (20 steps) -> 18.8 (60) -> 20.4 (80)
#     -> 20.6 (100); the old 16 steps gave about +1. 80 is where the curve flattens.
#   - lr 3e-4 and 1e-3 collapse (greedy 28.5 -> 15.2 in 30 steps, and to 0); lr 2e-4 was no
#     faster than 1e-4 over 30 steps (17.8); lr 5e-5 stayed flat (14.8 at 60 steps).
#   - 8 prompts x 16 responses (GROUP=16): GRPO at 8 x 8 gained +4.8 points over the starting
#     policy (5 seeds; issue 15 asks for 5), with half of its groups all right or all wrong (no
#     gradient). On seed 0, 80 steps, the full evaluation: 8 x 8 21.1%, 8 x 16 22.4%, 16 x 8
#     22.0%, 4 x 16 18.9%, 8 x 8 at lr 2e-4 with a 20-update warm-up 18.1% (start 15.7%); 8 x 16
#     on 5 seeds: 21.9 +- 0.8, +6.2 over the start (95% interval +5.3 to +7.2), +1.4 over 8 x 8
#     paired by seed. It costs 1.5x the step time (11 s against 7.4 s).
#     RESULTS.md's Tables 3, 5 and 7 and Fig. 6 ran at both (GROUP=8 was the earlier default).
#   - The gains are a sharper sampling distribution (greedy decoding already scores about 28%),
#     so the evaluation samples at T 1, as the policy is trained; 1,024 problems x 4 samples
#     put the noise of one evaluation from the sampling alone at 0.5 points (measured).
#
#   MODEL / $1   policy (default: ft train's, the shipped default-policy)
#   TASK         training task (countdown)
#   SUITE        eval suite (countdown-mixed: 3- and 4-number test problems, sampled at T 1;
#                countdown = the paper's 4-number suite, sampled at T 0.99)
#   LIMIT        first N test problems (1024: all)  EVAL_N  samples per problem (4)
#   SEEDS        (0,1,2,3,4)    JOBS   runs at once (2)
#   VARIANT_SEEDS  seeds of the rows other than GRPO and default FlowTracer (default: SEEDS)
#   REFERENCE    results.json of a finished sweep with these settings (results/table3-g16/results.json;
#                GROUP=8: results/table3/results.json):
#                its GRPO and FlowTracer seeds are reused, not retrained (on a machine without runs/)
#   STEPS        optimizer steps per run (80)
#   PROMPTS      prompts per step (8)        GROUP   responses per prompt (16): with the cpu
#                preset; another preset (PRESET=paper) keeps its own unless these are given
#   PRESET       (cpu)                            EXTRA   more `ft ablate` options
#   DATA_ROOT    folder with the benchmark files (default: $FT_DATA, else the data cache)
# shellcheck shell=bash
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
TASK="${TASK:-countdown}"
if [[ "$TASK" == countdown ]]; then SUITE="${SUITE:-countdown-mixed}"; else SUITE="${SUITE:-$TASK}"; fi
sweep=(--task "$TASK" --eval-suite "$SUITE" --eval-limit "${LIMIT:-1024}" --eval-n "${EVAL_N:-4}"
       --eval-batch-size "${EVAL_BATCH:-128}" --preset "${PRESET:-cpu}"
       --seeds "${SEEDS:-0,1,2,3,4}" --jobs "${JOBS:-2}" --steps "${STEPS:-80}"
       --set val_every=0 --set train_size=0 --set save_every=20 -q)
# save_every: a run stopped midway (a killed sweep) resumes from its last 20-step checkpoint;
# saving does not change what a run computes, so earlier runs without it are still reused
# the batch: 8 prompts x 16 with the cpu preset (above); another preset keeps its own unless given
if [[ "${PRESET:-cpu}" == cpu ]]; then PROMPTS="${PROMPTS:-8}" GROUP="${GROUP:-16}"; fi
[[ -n "${PROMPTS:-}" ]] && sweep+=(--prompts "$PROMPTS")
[[ -n "${GROUP:-}" ]] && sweep+=(--group-size "$GROUP")
[[ "$TASK" == countdown ]] && sweep+=(--data-source files)
[[ -n "${VARIANT_SEEDS:-}" ]] && sweep+=(--variant-seeds "$VARIANT_SEEDS")
[[ -n "${REFERENCE:-}" ]] && sweep+=(--reference "$REFERENCE")
[[ -n "$MODEL" ]] && sweep+=(--model "$MODEL")
[[ -n "${DATA_ROOT:-}" ]] && sweep+=(--data-root "$DATA_ROOT")
# shellcheck disable=SC2206
extra=(${EXTRA:-})
sweep+=(${extra[@]+"${extra[@]}"})

# share FROM_SWEEP FROM_KEY TO_SWEEP TO_KEY: reuse the runs of a variant that another sweep
# trained with identical options (a symlink; the sweep then finds them trained and evaluated).
share() {
    local src="$1/runs/$2" dst="$3/runs/$4"
    if [[ -d "$src" && ! -e "$dst" ]]; then
        mkdir -p "$3/runs"
        ln -s "$(realpath "$src")" "$dst"
    fi
}
