# Settings shared by the Countdown training sweeps (scripts/table3.sh, table5.sh, table7.sh,
# fig4.sh, fig6.sh); sourced, not run. Every sweep trains each variant x seed with `ft train`'s
# preset (cpu: GRPO on the default policy, lr 1e-4) on the whole train split of TinyZero's files
# (--data-source files: fresh problems every step; fetched into the data cache on first use),
# without validation, and evaluates the final checkpoint on the held-out test split (files too).
#
#   MODEL / $1   policy (default: ft train's, the shipped default-policy)
#   TASK         training task (countdown)
#   SUITE        eval suite (countdown-mixed: 3- and 4-number test problems, sampled at T 1, avg@2;
#                countdown = the paper's 4-number suite, sampled at T 0.99)
#   LIMIT        first N test problems (300)      SEEDS   (0,1,2)      JOBS   runs at once (2)
#   STEPS        optimizer steps per run (16)     PROMPTS prompts per step (8; x 8 responses)
#   PRESET       (cpu)                            EXTRA   more `ft ablate` options
#   DATA_ROOT    folder with the benchmark files (default: $FT_DATA, else the data cache)
# shellcheck shell=bash
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
TASK="${TASK:-countdown}"
if [[ "$TASK" == countdown ]]; then SUITE="${SUITE:-countdown-mixed}"; else SUITE="${SUITE:-$TASK}"; fi
sweep=(--task "$TASK" --eval-suite "$SUITE" --eval-limit "${LIMIT:-300}" --preset "${PRESET:-cpu}"
       --seeds "${SEEDS:-0,1,2}" --jobs "${JOBS:-2}" --steps "${STEPS:-16}" --prompts "${PROMPTS:-8}"
       --set val_every=0 --set train_size=0 -q)
[[ "$TASK" == countdown ]] && sweep+=(--data-source files)
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
