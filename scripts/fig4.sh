#!/usr/bin/env bash
# Figures 4-5 (training curves): GRPO vs FlowTracer with identical settings and seeds; writes
# curves.png (reward and accuracy per step, seeds averaged) and prints the final evaluation.
#
# Usage: scripts/fig4.sh [MODEL]
#   env: RULES (none,flow), STEPS (30), OUT (runs/ablate/fig4), and the shared settings of
#        scripts/_countdown.sh
# CPU (2 cores, default policy): see README. Rerunning skips finished runs.
STEPS="${STEPS:-30}"
source "$(dirname "$0")/_countdown.sh"
OUT="${OUT:-runs/ablate/fig4}"
ft ablate credit "${sweep[@]}" --rules "${RULES:-none,flow}" --out "$OUT"
echo "figure: $OUT/curves.png"
