#!/usr/bin/env bash
# Table 7 (weighting): the weight gamma of the top-40% flow tokens (0.5 to 3.0), then continuous
# maps from flow to weights (raw flow, tanh of z-score, sigmoid, MAD, log1p, soft mass thresholds
# 20-80%) against the paper's binary top-40%; GRPO as the reference row of each.
#
# Usage: scripts/table7.sh [MODEL]
#   env: TASK (countdown), GAMMAS (0.5,1.0,1.5,2.0,2.5,3.0), WEIGHTINGS (binary,raw,tanh,sigmoid,mad,log1p,mass),
#        MASSES (0.2,0.8; the paper's full row: 0.2,0.4,0.6,0.8), SEEDS (0), STEPS, PRESET (cpu),
#        LIMIT (64), OUT (runs/ablate/table7), EXTRA
# CPU (1 thread, default model): about 45 minutes per seed (gamma: 7 runs, weighting: 7 new runs;
# GRPO and binary = gamma 1.5 are shared). Rerunning skips finished runs.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-}}"
OUT="${OUT:-runs/ablate/table7}"
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
[[ -n "${STEPS:-}" ]] && args+=(--steps "$STEPS")
common=(--task "${TASK:-countdown}" --eval-limit "${LIMIT:-64}" --preset "${PRESET:-cpu}" --seeds "${SEEDS:-0}")
# shellcheck disable=SC2086
ft ablate gamma ${args[@]+"${args[@]}"} "${common[@]}" --gammas "${GAMMAS:-0.5,1.0,1.5,2.0,2.5,3.0}" \
    --out "$OUT/gamma" ${EXTRA:-}
# The weighting sweep reuses the gamma sweep's runs with identical options: GRPO, and gamma 1.5
# (= the binary top-40% weighting).
mkdir -p "$OUT/weighting/runs"
[[ -e "$OUT/weighting/runs/grpo" ]] || ln -s ../../gamma/runs/grpo "$OUT/weighting/runs/grpo"
if [[ -d "$OUT/gamma/runs/gamma-1.5" && ! -e "$OUT/weighting/runs/w-binary" ]]; then
    ln -s ../../gamma/runs/gamma-1.5 "$OUT/weighting/runs/w-binary"
fi
# shellcheck disable=SC2086
ft ablate weighting ${args[@]+"${args[@]}"} "${common[@]}" --weightings "${WEIGHTINGS:-binary,raw,tanh,sigmoid,mad,log1p,mass}" \
    --masses "${MASSES:-0.2,0.8}" --out "$OUT/weighting" ${EXTRA:-}
