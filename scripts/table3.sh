#!/usr/bin/env bash
# Table 3 (Countdown, credit rules): GRPO and every token rule of the paper (random, entropy,
# gradient, correlation, attention) against FlowTracer credit, trained with identical settings
# and seeds (paired: the same problems and sampling seeds per arm) on Countdown, evaluated on the
# held-out test set; results_md.py prints the paired difference to GRPO with its 95% interval and
# the minimal detectable difference. RULES=none,random,entropy,attention,flow gives the old 5-arm
# table; RULES=...,clip-cov,fai adds the rules that `correlation` and `attention` named before they
# became the paper's baselines (RESULTS.md's rows of those names; a run folder trained under the
# old names is refused, not reused); TASK=crossthinkqa for the CrossThinkQA column. The paper's
# scale: MODEL=Qwen/Qwen3-4B-Base PRESET=paper SUITE=countdown STEPS=500 JOBS=1 (on GPUs).
#
# Usage: scripts/table3.sh [MODEL]
#   env: RULES (none,random,entropy,gradient,correlation,attention,flow), OUT (runs/ablate/table3), and the shared
#        settings of scripts/_countdown.sh (SEEDS 0,1,2,3,4, VARIANT_SEEDS, JOBS 2, STEPS 80,
#        SUITE countdown-mixed, LIMIT 1024, EVAL_N 4, ...)
# CPU (2 cores, default policy): 35 runs, times in README. Rerunning skips finished runs, so
# VARIANT_SEEDS=0,1,2 then the default adds seeds in steps that each leave a complete table.
source "$(dirname "$0")/_countdown.sh"
ft ablate credit "${sweep[@]}" --rules "${RULES:-none,random,entropy,gradient,correlation,attention,flow}" \
    --out "${OUT:-runs/ablate/table3}"
