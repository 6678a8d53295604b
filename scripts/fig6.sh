#!/usr/bin/env bash
# Figure 6 (layer ranges): FlowTracer with W averaged over the early [0, L/3), middle
# [L/3, 2L/3), late [2L/3, L) or all layers, plus GRPO; bars.png is the figure.
#
# Usage: scripts/fig6.sh [MODEL]
#   env: TASK (countdown), RANGES (early,mid,late,all), SEEDS (0), STEPS, PRESET (cpu), LIMIT (64),
#        OUT (runs/ablate/fig6), EXTRA
# CPU (1 thread, default model): about 25 minutes per seed (5 runs). Rerunning skips finished runs.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
OUT="${OUT:-runs/ablate/fig6}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
[[ -n "${STEPS:-}" ]] && args+=(--steps "$STEPS")
# shellcheck disable=SC2086
ft ablate layers ${args[@]+"${args[@]}"} --range "${RANGES:-early,mid,late,all}" --task "${TASK:-countdown}" \
    --eval-limit "${LIMIT:-64}" --preset "${PRESET:-cpu}" --seeds "${SEEDS:-0}" --out "$OUT" ${EXTRA:-}
echo "figure: $OUT/bars.png"
