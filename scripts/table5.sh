#!/usr/bin/env bash
# Table 5 (selected fraction): FlowTracer credit on the top or bottom 20/40/60% of response
# tokens by throughput, plus GRPO; prints the per-variant table and the top/bottom x ratio layout.
# GRPO and Top-40% are the runs of scripts/table3.sh when it ran first with the same settings.
#
# Usage: scripts/table5.sh [MODEL]
#   env: RATIOS (0.2,0.4,0.6), SELECT (top,bottom), OUT (runs/ablate/table5), T3 (runs/ablate/table3),
#        and the shared settings of scripts/_countdown.sh
# CPU (2 cores, default policy): see README. Rerunning skips finished runs.
source "$(dirname "$0")/_countdown.sh"
OUT="${OUT:-runs/ablate/table5}"
T3="${T3:-runs/ablate/table3}"
share "$T3" credit-none "$OUT" grpo
share "$T3" credit-flow "$OUT" top-0.4
ft ablate ratio "${sweep[@]}" --ratios "${RATIOS:-0.2,0.4,0.6}" --select "${SELECT:-top,bottom}" --out "$OUT"
