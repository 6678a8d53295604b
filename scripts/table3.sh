#!/usr/bin/env bash
# Table 3 (Countdown, credit rules): GRPO, random, entropy, attention and FlowTracer credit,
# trained with identical settings and seeds on Countdown, evaluated on the held-out test set.
# Add gradient and correlation with RULES=none,random,entropy,gradient,correlation,attention,flow;
# TASK=crossthinkqa for the CrossThinkQA column. The paper's scale: MODEL=Qwen/Qwen3-4B-Base
# PRESET=paper SUITE=countdown STEPS=500 JOBS=1 (on GPUs).
#
# Usage: scripts/table3.sh [MODEL]
#   env: RULES (none,random,entropy,attention,flow), OUT (runs/ablate/table3), and the shared
#        settings of scripts/_countdown.sh (SEEDS 0,1,2, JOBS 2, STEPS 16, SUITE, LIMIT 300, ...)
# CPU (2 cores, default policy): see README (15 runs). Rerunning skips finished runs.
source "$(dirname "$0")/_countdown.sh"
ft ablate credit "${sweep[@]}" --rules "${RULES:-none,random,entropy,attention,flow}" \
    --out "${OUT:-runs/ablate/table3}"
