#!/usr/bin/env bash
# Table 3 (Countdown, credit rules): GRPO, random, entropy, attention and FlowTracer credit,
# trained with identical settings and seeds on Countdown and evaluated on its held-out test set.
# Add gradient and correlation with RULES=none,random,entropy,gradient,correlation,attention,flow;
# TASK=crossthinkqa for the CrossThinkQA column.
#
# Usage: scripts/table3.sh [MODEL]
#   env: TASK (countdown), RULES (none,random,entropy,attention,flow), SEEDS (0; the paper-style
#        comparison wants 0,1,2), STEPS, PRESET (cpu), LIMIT (64), OUT (runs/ablate/table3), EXTRA
# CPU (1 thread, default model): about 25 minutes per seed. Rerunning skips finished runs.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
[[ -n "${STEPS:-}" ]] && args+=(--steps "$STEPS")
# shellcheck disable=SC2086
ft ablate credit ${args[@]+"${args[@]}"} --rules "${RULES:-none,random,entropy,attention,flow}" \
    --task "${TASK:-countdown}" --eval-limit "${LIMIT:-64}" --preset "${PRESET:-cpu}" \
    --seeds "${SEEDS:-0}" --out "${OUT:-runs/ablate/table3}" ${EXTRA:-}
