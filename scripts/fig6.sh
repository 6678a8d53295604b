#!/usr/bin/env bash
# Figure 6 (layer ranges): FlowTracer with W averaged over the figure's ranges of Qwen3-4B's 36
# layers, 0-15 / 15-25 / 25-35 (paper-early, paper-mid, paper-late: [0, 15), [15, 25), [25, 35)
# scaled to the model's depth, see `ft ablate layers --help`), plus GRPO; bars.png is the figure.
# Other ranges: early [0, L/3), mid [L/3, 2L/3) (the default of training), late [2L/3, L), all,
# or A:B (half-open). GRPO, and mid when RANGES has it, are the runs of scripts/table3.sh when it
# ran first with the same settings.
#
# Usage: scripts/fig6.sh [MODEL]
#   env: RANGES (paper-early,paper-mid,paper-late), OUT (runs/ablate/fig6), T3 (runs/ablate/table3),
#        and the shared settings of scripts/_countdown.sh
# CPU (2 cores, default policy): see README. Rerunning skips finished runs.
source "$(dirname "$0")/_countdown.sh"
OUT="${OUT:-runs/ablate/fig6}"
T3="${T3:-runs/ablate/table3}"
share "$T3" credit-none "$OUT" grpo
RANGES="${RANGES:-paper-early,paper-mid,paper-late}"
[[ ",$RANGES," == *,mid,* ]] && share "$T3" credit-flow "$OUT" layers-mid
ft ablate layers "${sweep[@]}" --range "$RANGES" --out "$OUT"
echo "figure: $OUT/bars.png"
