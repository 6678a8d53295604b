#!/usr/bin/env bash
# Figure 3 and Sec. 5.2: which tokens carry the flow. Ranked bars of the highest- and lowest-flow
# tokens (fig3_tokens.png), the structural-vs-semantic table, and the answer-format overlap table
# (format_overlap.png). Forward passes only.
#
# Usage: scripts/fig3.sh [MODEL]
#   env: N (50 problems), TASK (gsm8k), SOURCE (gold: worked solutions; model: the model's own
#        responses), OUT (runs/ablate/fig3), EXTRA
# CPU (1 thread, default model): about 2 minutes (1 min 50 s measured; SOURCE=model: about 15).
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
OUT="${OUT:-runs/ablate/fig3}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
common=(--task "${TASK:-gsm8k}" --n "${N:-50}" --source "${SOURCE:-gold}")
# shellcheck disable=SC2086
ft ablate tokens ${args[@]+"${args[@]}"} "${common[@]}" --out "$OUT/tokens" ${EXTRA:-}
# shellcheck disable=SC2086
ft ablate format ${args[@]+"${args[@]}"} "${common[@]}" --out "$OUT/format" ${EXTRA:-}
echo "figure: $OUT/tokens/fig3_tokens.png"
