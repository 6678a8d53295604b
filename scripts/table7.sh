#!/usr/bin/env bash
# Table 7 (weighting): the weight gamma of the top-40% flow tokens (the paper's 0.5, 1.2, 1.5, 1.8,
# 2.0, 3.0), then continuous maps from flow to weights (raw flow, tanh of z-score, sigmoid, MAD,
# log1p, soft mass thresholds 20/40/60/80%) against the paper's binary top-40%; GRPO as the
# reference row of each. GRPO and gamma 1.5 (= binary top-40%) are the runs of scripts/table3.sh
# when it ran first. GAMMAS=1.0,... adds gamma 1 (plain GRPO, bit for bit: a check, not a row).
#
# Usage: scripts/table7.sh [MODEL]
#   env: PARTS (gamma,weighting), GAMMAS (0.5,1.2,1.5,1.8,2.0,3.0), WEIGHTINGS (binary,raw,tanh,sigmoid,mad,log1p,mass),
#        MASSES (0.2,0.4,0.6,0.8: the paper's row), WEIGHTING_SEEDS (seeds of the
#        continuous maps: VARIANT_SEEDS, else 0; GRPO and binary run SEEDS), OUT (runs/ablate/table7),
#        T3 (runs/ablate/table3), and the shared settings of scripts/_countdown.sh
# CPU (2 cores, default policy): see README. Rerunning skips finished runs.
source "$(dirname "$0")/_countdown.sh"
OUT="${OUT:-runs/ablate/table7}"
T3="${T3:-runs/ablate/table3}"
PARTS="${PARTS:-gamma,weighting}"
if [[ ",$PARTS," == *,gamma,* ]]; then
    share "$T3" credit-none "$OUT/gamma" grpo
    share "$T3" credit-flow "$OUT/gamma" gamma-1.5
    ft ablate gamma "${sweep[@]}" --gammas "${GAMMAS:-0.5,1.2,1.5,1.8,2.0,3.0}" --out "$OUT/gamma"
fi
if [[ ",$PARTS," == *,weighting,* ]]; then
    share "$T3" credit-none "$OUT/weighting" grpo
    share "$T3" credit-flow "$OUT/weighting" w-binary
    share "$OUT/gamma" grpo "$OUT/weighting" grpo
    share "$OUT/gamma" gamma-1.5 "$OUT/weighting" w-binary
    # the continuous maps on one seed by default (GRPO and binary keep SEEDS) so that the script
    # finishes within a few hours on a CPU
    ft ablate weighting "${sweep[@]}" --weightings "${WEIGHTINGS:-binary,raw,tanh,sigmoid,mad,log1p,mass}" \
        --masses "${MASSES:-0.2,0.4,0.6,0.8}" --variant-seeds "${WEIGHTING_SEEDS:-${VARIANT_SEEDS:-0}}" --out "$OUT/weighting"
fi
