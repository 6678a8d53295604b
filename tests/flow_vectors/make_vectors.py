"""Regenerate the project's golden flow vectors (tests/flow_vectors/*.json).

    python tests/flow_vectors/make_vectors.py

Each vector is a small attention DAG with question and answer positions; `expected` comes
from the project's float64 reference `ftcli.flow.trace_flow_reference` (the equations of
docs/flow.md read literally). Hand-built cases use dyadic weights, so their selections are
exact in any precision (`exact_mask: true`); random cases are causal softmax attention.
Only regenerate after a deliberate change of the algorithm, and say so in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ftcli.flow import trace_flow_reference

HERE = Path(__file__).resolve().parent


def dag(T: int, edges: dict[tuple[int, int], float]) -> list[list[float]]:
    W = [[0.0] * T for _ in range(T)]
    for (i, k), w in edges.items():
        assert i < k
        W[i][k] = w
    return W


def random_attention(T: int, seed: int, sparsity: float = 0.0) -> list[list[float]]:
    """W[i, k] = causal softmax attention of query k to key i (i < k), with a sink at 0."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, T, generator=g, dtype=torch.float64) * 2.0
    logits[:, 0] += 2.0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    attn = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)  # [query, key]
    W = attn.T.triu(1).contiguous()  # [key, query]
    if sparsity:
        W = W * (torch.rand(T, T, generator=g, dtype=torch.float64) >= sparsity)
    return W.tolist()


CASES = [
    dict(
        name="p01_two_paths",
        description="Question 0-1, answer 7; a strong and a weak path, token 8 after the answer.",
        T=9, Q=[0, 1], A=[7], response=[2, 9], exact_mask=True,
        W=dag(9, {(0, 2): 0.5, (0, 3): 0.25, (1, 3): 0.5, (2, 4): 0.5, (3, 5): 0.5,
                  (4, 7): 0.5, (5, 6): 0.5, (6, 7): 0.5, (7, 8): 0.5, (2, 6): 0.25}),
    ),
    dict(
        name="p02_unreachable_and_dead_question",
        description="Question token 1 has no path to the answer (its flow stays); tokens 4 and "
        "5 are dead ends.",
        T=8, Q=[0, 1], A=[6], response=[2, 8], exact_mask=True,
        W=dag(8, {(0, 2): 0.5, (0, 4): 0.25, (1, 5): 0.5, (2, 3): 0.5, (3, 6): 0.5,
                  (2, 6): 0.25, (6, 7): 1.0}),
    ),
    dict(
        name="p03_ties_at_the_cut",
        description="Four tokens with equal throughput compete for the last two places: ties "
        "go to the lower position.",
        T=7, Q=[0], A=[6], response=[1, 7], exact_mask=True,
        W=dag(7, {(0, 1): 0.25, (0, 2): 0.25, (0, 3): 0.25, (0, 4): 0.25,
                  (1, 6): 0.5, (2, 6): 0.5, (3, 6): 0.5, (4, 6): 0.5}),
    ),
    dict(
        name="p04_multi_answer_chain",
        description="Answer span of three tokens; edges between answer tokens are ignored "
        "(answer tokens are absorbing).",
        T=10, Q=[1], A=[7, 8, 9], response=[3, 10], exact_mask=True,
        W=dag(10, {(1, 3): 0.5, (1, 4): 0.5, (3, 7): 0.5, (4, 8): 0.25, (3, 5): 0.5,
                   (5, 9): 0.5, (7, 8): 0.5, (8, 9): 0.5, (0, 1): 0.5}),
    ),
    dict(
        name="p05_empty_answer",
        description="No answer found: uniform fallback, nothing selected.",
        T=6, Q=[0], A=[], response=[2, 6], exact_mask=True,
        W=dag(6, {(0, 2): 0.5, (2, 3): 0.5, (3, 5): 0.5}),
    ),
    dict(
        name="p06_random_attention_T24",
        description="Causal softmax attention with a sink, one answer token.",
        T=24, Q=[2, 3, 4], A=[20], response=[8, 24], exact_mask=False,
        W=random_attention(24, 1),
    ),
    dict(
        name="p07_sparse_attention_T40_k_sel_rounding",
        description="Half the edges dropped, a two-token answer, |R| = 15 so k_sel = 6.",
        T=40, Q=[5, 6, 7, 9], A=[36, 37], response=[25, 40], exact_mask=False,
        W=random_attention(40, 2, sparsity=0.5),
    ),
]


def main() -> None:
    for case in CASES:
        ref = trace_flow_reference(case["W"], case["Q"], case["A"], tuple(case["response"]),
                                   0.4, 1.5)
        vector = {**case, "rho": 0.4, "gamma": 1.5, "expected": ref}
        (HERE / f"{case['name']}.json").write_text(json.dumps(vector) + "\n")
        print(case["name"], "selected", ref["selected_positions"], "k_sel", ref["k_sel"])


if __name__ == "__main__":
    main()
