#!/usr/bin/env bash
# Table 4 (Llama models): the paper's rows, GRPO, Random, Entropy, Attention (maximum attention,
# Li et al. 2025d) and FlowTracer, trained on TASK and evaluated on the paper-llama group
# (AMC23, MATH500, OlympiadBench, Minerva, GSM8K; one column each, then Avg).
#
# Usage: scripts/table4.sh [MODEL]        e.g. scripts/table4.sh meta-llama/Llama-3.2-3B-Instruct (GPU)
#   env: TASK (gsm8k), RULES (none,random,entropy,attention,flow), SEEDS (0), STEPS (6), PROMPTS (2), GROUP_SIZE (4),
#        MAX_NEW_TOKENS (96), PRESET (cpu), LIMIT (10 per benchmark),
#        EVAL_N (1; "suite" for the suites' n), OUT (runs/ablate/table4), EXTRA
# CPU (1 thread, SmolLM2-135M): about 15 minutes for GRPO and FlowTracer (a pipeline check at
# CPU scale; not timed with the five rows, about 2.5 times as many runs).
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
ft ablate credit ${args[@]+"${args[@]}"} --rules "${RULES:-none,random,entropy,attention,flow}" --no-baseline \
    --task "${TASK:-gsm8k}" --eval-suite paper-llama --eval-limit "${LIMIT:-10}" \
    --preset "${PRESET:-cpu}" --seeds "${SEEDS:-0}" --out "${OUT:-runs/ablate/table4}" ${EXTRA:-}
