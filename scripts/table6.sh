#!/usr/bin/env bash
# Table 6 (overhead): update-step time and credit time with no credit, FlowTracer with W captured
# inside the update forward (fused), and FlowTracer with the paper's separate no-grad pass, at
# two context lengths, interleaved in one process; overheads are ratios to the no-credit step.
#
# Usage: scripts/table6.sh [MODEL]
#   env: LENGTHS (512,2048), MICRO_BATCH (1), REPEATS (3), OUT (runs/ablate/table6), EXTRA
# CPU (1 thread, the default policy): about 30 s (measured; see README).
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
# shellcheck disable=SC2086
ft ablate overhead ${args[@]+"${args[@]}"} --lengths "${LENGTHS:-512,2048}" \
    --micro-batch "${MICRO_BATCH:-1}" --repeats "${REPEATS:-3}" --out "${OUT:-runs/ablate/table6}" ${EXTRA:-}
