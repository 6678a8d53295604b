#!/usr/bin/env bash
# Table 1 (causal intervention): on N GSM8K problems, block the information of the top-20%,
# bottom-20% and a random 20% of reasoning tokens by flow and regenerate the answer; prints the
# answer-change and correctness-reversal rates with counts and Wilson 95% intervals, beside the
# paper's numbers. The protocol is in `ft ablate intervene --help`.
#
# Usage: scripts/table1.sh [MODEL]        e.g. scripts/table1.sh qwen2.5-coder-0.5b
#   env: N (50 problems), TASK (gsm8k), MAX_NEW_TOKENS (256), OUT (runs/ablate/table1), EXTRA (more options)
# CPU (1 thread, default model): about 15 minutes for N=50. Rerunning resumes.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
# shellcheck disable=SC2086
ft ablate intervene ${args[@]+"${args[@]}"} --task "${TASK:-gsm8k}" --n "${N:-50}" \
    --max-new-tokens "${MAX_NEW_TOKENS:-256}" --out "${OUT:-runs/ablate/table1}" ${EXTRA:-}
