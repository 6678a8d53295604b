#!/usr/bin/env bash
# Figure 6 (layer ranges): FlowTracer with W averaged over the early [0, L/3), middle
# [L/3, 2L/3), late [2L/3, L) or all layers, plus GRPO; bars.png is the figure.
# GRPO and mid are the runs of scripts/table3.sh when it ran first with the same settings.
#
# Usage: scripts/fig6.sh [MODEL]
#   env: RANGES (early,mid,late,all), OUT (runs/ablate/fig6), T3 (runs/ablate/table3), and the
#        shared settings of scripts/_countdown.sh
# CPU (2 cores, default policy): see README. Rerunning skips finished runs.
source "$(dirname "$0")/_countdown.sh"
OUT="${OUT:-runs/ablate/fig6}"
T3="${T3:-runs/ablate/table3}"
share "$T3" credit-none "$OUT" grpo
share "$T3" credit-flow "$OUT" layers-mid
ft ablate layers "${sweep[@]}" --range "${RANGES:-early,mid,late,all}" --out "$OUT"
echo "figure: $OUT/bars.png"
