#!/usr/bin/env bash
# Figures 4-5 (training curves): GRPO vs FlowTracer with identical settings and seeds; writes
# curves.png (reward and accuracy per step, seeds averaged) and prints the final evaluation.
# With the shared defaults these are the runs of scripts/table3.sh (reused when it ran first).
#
# Usage: scripts/fig4.sh [MODEL]
#   env: RULES (none,flow), OUT (runs/ablate/fig4), T3 (runs/ablate/table3), and the shared
#        settings of scripts/_countdown.sh (STEPS 80, SEEDS 0-4, ...)
# CPU (2 cores, default policy): see README. Rerunning skips finished runs.
source "$(dirname "$0")/_countdown.sh"
OUT="${OUT:-runs/ablate/fig4}"
T3="${T3:-runs/ablate/table3}"
share "$T3" credit-none "$OUT" credit-none
share "$T3" credit-flow "$OUT" credit-flow
ft ablate credit "${sweep[@]}" --rules "${RULES:-none,flow}" --out "$OUT"
echo "figure: $OUT/curves.png"
