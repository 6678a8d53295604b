#!/usr/bin/env bash
# Table 5 (selected fraction): FlowTracer credit on the top or bottom 20/40/60% of response
# tokens by throughput, plus GRPO; prints the per-variant table and the top/bottom x ratio layout.
#
# Usage: scripts/table5.sh [MODEL]
#   env: TASK (countdown), RATIOS (0.2,0.4,0.6), SELECT (top,bottom), SEEDS (0), STEPS, PRESET (cpu),
#        LIMIT (64), OUT (runs/ablate/table5), EXTRA
# CPU (1 thread, default model): about 30 minutes per seed (7 runs). Rerunning skips finished runs.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
[[ -n "${STEPS:-}" ]] && args+=(--steps "$STEPS")
# shellcheck disable=SC2086
ft ablate ratio ${args[@]+"${args[@]}"} --ratios "${RATIOS:-0.2,0.4,0.6}" --select "${SELECT:-top,bottom}" \
    --task "${TASK:-countdown}" --eval-limit "${LIMIT:-64}" --preset "${PRESET:-cpu}" \
    --seeds "${SEEDS:-0}" --out "${OUT:-runs/ablate/table5}" ${EXTRA:-}
