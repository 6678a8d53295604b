#!/usr/bin/env bash
# Beyond the paper (issue 28): what each credit rule's scores find, on the same responses
# (`ft ablate fidelity`; the protocol is in `ft ablate fidelity --help`): (a) answer change when
# the rule's top 5/10/20% of reasoning tokens are blocked, with exact McNemar tests between rules;
# (b) the Spearman correlation of its scores with each token's (and line's) causal effect on the
# answer's log-likelihood; (c) the share of GRPO's gradient norm carried by its selected 40%.
#
# Usage: scripts/fidelity.sh [default|smollm2|qwen-coder|all]   (all: default and smollm2, in that order)
#   default: the shipped policy, N_DEFAULT (300) Countdown test problems, its own greedy responses,
#            every reasoning token blocked alone, BATCHES (3) batches of 8 x 8 training rollouts
#   smollm2: SmolLM2-135M-Instruct, N_SMOLLM2 (50) GSM8K test problems' gold solutions, TOKEN_SAMPLE
#            (16) tokens a response blocked alone; BATCHES_SMOLLM2 (3) batches of GROUPS_SMOLLM2 (4)
#            training prompts x GROUP_SIZE_SMOLLM2 (4) responses, the last the gold solution
#            (--gold-in-group): it solves almost no GSM8K problem, so groups of its own samples
#            alone carry no advantage and give GRPO no gradient to measure
#   qwen-coder: Qwen2.5-Coder-0.5B-Instruct (optional model, fetched on first use; README, Models)
#            with smollm2's settings: N_QWEN (50), TOKEN_SAMPLE, GROUPS_SMOLLM2, GROUP_SIZE_SMOLLM2,
#            the gold in each group; BATCHES_QWEN (0): its 9 gradient copies do not fit 24 GB, so
#            (c) runs one weighting at a time, 18 forward-backward passes of 8 sequences a batch
#            (not measured; roughly 25 min a batch on one core by its size)
#   env: OUT (runs/ablate: fidelity-default-policy, fidelity-smollm2 under it), EXTRA (more options)
# CPU (1 thread): default 14 min, smollm2 24 min + about 30 min for (c), qwen-coder about 1 h 10 min
# for (a) and (b) (measured). Rerunning resumes.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
WHICH="${1:-all}"
OUT="${OUT:-runs/ablate}"
case "$WHICH" in
    default|smollm2|qwen-coder|all) ;;
    *) echo "usage: scripts/fidelity.sh [default|smollm2|qwen-coder|all] (got '$WHICH')" >&2; exit 2 ;;
esac
if [[ "$WHICH" == default || "$WHICH" == all ]]; then
    # shellcheck disable=SC2086
    ft ablate fidelity --model default-policy --task countdown --n "${N_DEFAULT:-300}" \
        --batches "${BATCHES:-3}" --out "$OUT/fidelity-default-policy" ${EXTRA:-}
fi
if [[ "$WHICH" == smollm2 || "$WHICH" == all ]]; then
    # shellcheck disable=SC2086
    ft ablate fidelity --model smollm2-135m --task gsm8k --responses gold --n "${N_SMOLLM2:-50}" \
        --token-sample "${TOKEN_SAMPLE:-16}" --batches "${BATCHES_SMOLLM2:-3}" --groups "${GROUPS_SMOLLM2:-4}" \
        --group-size "${GROUP_SIZE_SMOLLM2:-4}" --gold-in-group \
        --out "$OUT/fidelity-smollm2" ${EXTRA:-}
fi
if [[ "$WHICH" == qwen-coder ]]; then
    # shellcheck disable=SC2086
    ft ablate fidelity --model qwen2.5-coder-0.5b --task gsm8k --responses gold --n "${N_QWEN:-50}" \
        --token-sample "${TOKEN_SAMPLE:-16}" --batches "${BATCHES_QWEN:-0}" --groups "${GROUPS_SMOLLM2:-4}" \
        --group-size "${GROUP_SIZE_SMOLLM2:-4}" --gold-in-group \
        --out "$OUT/fidelity-qwen-coder" ${EXTRA:-}
fi
