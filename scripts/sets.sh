#!/usr/bin/env bash
# Issue 28 (beyond the paper): does a token set carry GRPO's learning signal? The same training as
# Table 3 with the loss restricted to one set of response tokens (weight 1 on the set, 0 on the
# rest: `ft train --gamma 1 --rest-weight 0`): the flow's top 40%, its bottom 40% and a random 40%,
# paired by seed with GRPO on all tokens (the committed GRPO seeds of Table 3 are reused, not
# retrained). results_md.py prints the paired differences with their 95% intervals.
#
# Usage: scripts/sets.sh [MODEL]
#   env: SETS (flow-top,flow-bottom,random), RATIO (0.4), OUT (runs/ablate/sets),
#        REFERENCE (results/table3-g16/results.json: GRPO's seeds; a partial results.json of this
#        sweep from another machine also goes on where it stopped), and the shared settings of
#        scripts/_countdown.sh (SEEDS 0,1,2,3,4, JOBS 2, STEPS 80, ...)
# CPU (2 cores, default policy): 15 runs of about 13 minutes each with one thread.
REFERENCE="${REFERENCE:-results/table3-g16/results.json}"
source "$(dirname "$0")/_countdown.sh"
ft ablate sets "${sweep[@]}" --sets "${SETS:-flow-top,flow-bottom,random}" --set-ratio "${RATIO:-0.4}" \
    --out "${OUT:-runs/ablate/sets}"
