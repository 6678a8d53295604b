#!/usr/bin/env bash
# Figures 4-5 (training curves): GRPO vs FlowTracer with identical settings and seeds; writes
# curves.png (reward and accuracy per step, seeds averaged) and prints the final evaluation.
#
# Usage: scripts/fig4.sh [MODEL]
#   env: TASK (countdown), RULES (none,flow), STEPS (12), SEEDS (0), PRESET (cpu), LIMIT (64),
#        OUT (runs/ablate/fig4), EXTRA
# CPU (1 thread, default model): about 15 minutes per seed.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
OUT="${OUT:-runs/ablate/fig4}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
# shellcheck disable=SC2086
ft ablate credit ${args[@]+"${args[@]}"} --rules "${RULES:-none,flow}" --task "${TASK:-countdown}" \
    --steps "${STEPS:-12}" --eval-limit "${LIMIT:-64}" --preset "${PRESET:-cpu}" --seeds "${SEEDS:-0}" \
    --out "$OUT" ${EXTRA:-}
echo "figure: $OUT/curves.png"
