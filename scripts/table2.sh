#!/usr/bin/env bash
# Table 2 (main results): GRPO vs the attention credit vs FlowTracer, trained with identical
# settings and seeds on TASK and evaluated on SUITE (default: the math task and the paper's five
# math benchmarks, one column each, then Avg).
#
# Usage: scripts/table2.sh [MODEL]        e.g. scripts/table2.sh Qwen/Qwen3-4B-Base (GPU: PRESET=paper)
#   env: TASK (math), SUITE (math), RULES (none,attention,flow), SEEDS (0), STEPS (6), PROMPTS (2),
#        GROUP_SIZE (4), MAX_NEW_TOKENS (96),
#        PRESET (cpu), LIMIT (10 problems per benchmark), EVAL_N (1; "suite" = the suite's n, e.g. AIME avg@16),
#        OUT (runs/ablate/table2), EXTRA (more options, e.g. "--set max_new_tokens=256")
# CPU (1 thread, SmolLM2-135M): about 20 minutes. The small CPU runs check the pipeline; the
# paper's numbers need its scale (--preset paper on GPUs). Rerunning skips finished runs.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
MODEL="${1:-${MODEL:-smollm2-135m}}"  # a language model: the default policy only knows Countdown
args=()
[[ -n "$MODEL" ]] && args+=(--model "$MODEL")
# the CPU preset is sized for the 6M default policy; SmolLM2 runs get the small setting below
args+=(--steps "${STEPS:-6}" --prompts "${PROMPTS:-2}" --group-size "${GROUP_SIZE:-4}" --max-new-tokens "${MAX_NEW_TOKENS:-96}"
       --set micro_batch=4 --set gen_batch_size=16 --set train_size=0 --set val_every=0)
[[ "${EVAL_N:-1}" != "suite" ]] && args+=(--eval-n "${EVAL_N:-1}")
# shellcheck disable=SC2086
ft ablate credit ${args[@]+"${args[@]}"} --rules "${RULES:-none,attention,flow}" --no-baseline \
    --task "${TASK:-math}" --eval-suite "${SUITE:-math}" --eval-limit "${LIMIT:-10}" \
    --preset "${PRESET:-cpu}" --seeds "${SEEDS:-0}" --out "${OUT:-runs/ablate/table2}" ${EXTRA:-}
