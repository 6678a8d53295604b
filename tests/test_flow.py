"""The flow core: the project's golden vectors (tests/flow_vectors, from its float64
reference; see docs/flow.md), the external spec vectors when FT_FLOW_SPEC points at them,
identities, padding, errors."""

import glob
import json
import math
import os

import pytest
import torch

from ftcli.flow import (
    credit_weights,
    doob_transform,
    forward_flow,
    num_selected,
    potential,
    select_tokens,
    throughput,
    trace_flow,
    trace_flow_reference,
)

PROJECT_VECTORS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "flow_vectors", "*.json")))
SPEC_DIR = os.environ.get("FT_FLOW_SPEC")  # an external spec folder with vectors/*.json (CI)
SPEC_VECTORS = sorted(glob.glob(os.path.join(SPEC_DIR, "vectors", "*.json"))) if SPEC_DIR else []
VECTORS = PROJECT_VECTORS + SPEC_VECTORS
SPEC_EXACT = ("04_tau_ties", "08_chain_answer_last")  # the spec's deliberate ties


def _masks(T, Q, A, response):
    q = torch.zeros(1, T, dtype=torch.bool)
    a = torch.zeros(1, T, dtype=torch.bool)
    r = torch.zeros(1, T, dtype=torch.bool)
    q[0, list(Q)] = True
    a[0, list(A)] = True
    r[0, response[0] : response[1]] = True
    return q, a, r


def _close_to_threshold(tau_expected, k_sel, response):
    """Positions whose expected tau is within 1e-5 (relative) of the selection threshold."""
    resp = sorted(tau_expected[response[0] : response[1]], reverse=True)
    if k_sel == 0 or not resp:
        return set()
    thr = resp[min(k_sel, len(resp)) - 1]
    return {
        p
        for p in range(response[0], response[1])
        if abs(tau_expected[p] - thr) <= 1e-5 * max(abs(thr), 1e-30)
    }


# ---------------------------------------------------------------------------------------------
# Published vectors
# ---------------------------------------------------------------------------------------------
def test_vectors_are_present():
    assert len(PROJECT_VECTORS) >= 7, "tests/flow_vectors/*.json missing"
    if SPEC_DIR:
        assert len(SPEC_VECTORS) >= 7, f"FT_FLOW_SPEC={SPEC_DIR} holds no vectors/*.json"


def test_project_vectors_hold_hand_checked_values():
    """The dyadic tie case, by hand: the question token passes all flow on (tau = 2f = 2),
    four tokens carry a quarter each (tau 0.5), the answer absorbs all of it (tau = f = 1);
    k_sel = 3 takes the answer, then the tied tokens by position."""
    d = json.load(open(os.path.join(os.path.dirname(__file__), "flow_vectors", "p03_ties_at_the_cut.json")))
    e = d["expected"]
    assert e["tau"] == [2.0, 0.5, 0.5, 0.5, 0.5, 0.0, 1.0]
    assert e["h"][:5] == [0.5] * 5 and e["selected_positions"] == [1, 2, 6]


@pytest.mark.parametrize("path", VECTORS, ids=[os.path.basename(p) for p in VECTORS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vector(path, dtype):
    d = json.load(open(path))
    e = d["expected"]
    T = d["T"]
    q, a, r = _masks(T, d["Q"], d["A"], d["response"])
    W = torch.tensor(d["W"], dtype=torch.float64).to(dtype)[None]
    W_before = W.clone()
    res = trace_flow(W, q, a, r, ratio=d["rho"], gamma=d["gamma"])
    assert torch.equal(W, W_before), "trace_flow must leave W unchanged"
    assert res.h.dtype == dtype and res.tau.dtype == dtype
    rtol, atol = (1e-10, 0.0) if dtype == torch.float64 else (2e-5, 1e-6)
    for key in ("h", "f", "tau", "weights"):
        exp = torch.tensor(e[key], dtype=torch.float64)
        torch.testing.assert_close(res[key][0].double(), exp, rtol=rtol, atol=atol, msg=key)
    assert int(res.k_sel[0]) == e["k_sel"]
    assert math.isclose(float(res.absorbed[0]), e["absorbed"], rel_tol=rtol, abs_tol=atol)
    got = res.mask[0].long().tolist()
    tolerant = set()
    if dtype == torch.float32 and not d.get("exact_mask", d["name"] in SPEC_EXACT):
        tolerant = _close_to_threshold(e["tau"], e["k_sel"], d["response"])
    for p, (x, y) in enumerate(zip(got, e["mask"], strict=True)):
        assert x == y or p in tolerant, f"mask differs at {p}"
    if not tolerant:
        assert res.mask[0].nonzero()[:, 0].tolist() == e["selected_positions"]
    assert bool(res.fallback[0]) == (not d["A"] or not d["Q"])


@pytest.mark.parametrize("path", VECTORS, ids=[os.path.basename(p) for p in VECTORS])
def test_reference_reproduces_vector(path):
    d = json.load(open(path))
    e = d["expected"]
    ref = trace_flow_reference(d["W"], d["Q"], d["A"], tuple(d["response"]), d["rho"], d["gamma"])
    for key in ("h", "f", "tau", "weights"):
        torch.testing.assert_close(
            torch.tensor(ref[key], dtype=torch.float64),
            torch.tensor(e[key], dtype=torch.float64),
            rtol=1e-10,
            atol=0.0,
        )
    torch.testing.assert_close(
        torch.tensor(ref["Wp"], dtype=torch.float64),
        torch.tensor(e["Wp"], dtype=torch.float64),
        rtol=1e-10,
        atol=1e-15,
    )
    assert ref["mask"] == e["mask"] and ref["selected_positions"] == e["selected_positions"]


# ---------------------------------------------------------------------------------------------
# Random graphs
# ---------------------------------------------------------------------------------------------
def random_attention_W(T, seed, sparsity=0.0, sink=True):
    """W[i,k] = causal softmax attention of query k to key i (i < k), optionally sparsified."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, T, generator=g, dtype=torch.float64) * 2.0
    if sink:
        logits[:, 0] += 2.0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    attn = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)  # [query, key]
    W = attn.T.triu(1).contiguous()  # [key, query], strict upper
    if sparsity > 0:
        keep = torch.rand(T, T, generator=g, dtype=torch.float64) >= sparsity
        W = W * keep
    return W


def random_case(T, seed, sparsity=0.0):
    g = torch.Generator().manual_seed(1000 + seed)
    r0 = int(torch.randint(3, max(4, T // 2), (1,), generator=g))
    W = random_attention_W(T, seed, sparsity)
    Q = sorted(set(torch.randint(0, r0, (max(1, r0 // 2),), generator=g).tolist()))
    a0 = int(torch.randint(r0, T, (1,), generator=g))
    a1 = min(T, a0 + int(torch.randint(1, 4, (1,), generator=g)))
    A = list(range(a0, a1))
    return W, Q, A, (r0, T)


def _run(W, Q, A, response, dtype=torch.float64, ratio=0.4, gamma=1.5):
    T = W.shape[-1]
    q, a, r = _masks(T, Q, A, response)
    return trace_flow(W.to(dtype)[None].clone(), q, a, r, ratio=ratio, gamma=gamma), (q, a, r)


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_matches_formulas_and_reference(seed):
    T = 12 + 5 * seed
    W, Q, A, resp = random_case(T, seed, sparsity=0.3 if seed % 2 else 0.0)
    res, (q, a, r) = _run(W, Q, A, resp)
    h = potential(W[None], a)
    Wp = doob_transform(W[None], h, a)
    f = forward_flow(Wp, q)
    f = torch.where(h > 0, f, q.double() / q.sum())  # h = 0: injected flow stays
    tau = throughput(f, h, a)
    torch.testing.assert_close(res.h, h, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(res.f, f, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(res.tau, tau, rtol=1e-10, atol=1e-14)
    ref = trace_flow_reference(W, Q, A, resp)
    torch.testing.assert_close(res.tau[0], torch.tensor(ref["tau"], dtype=torch.float64), rtol=1e-10, atol=1e-14)
    assert res.mask[0].long().tolist() == ref["mask"]


@pytest.mark.parametrize("seed", range(10))
def test_identities(seed):
    T = 20 + 3 * seed
    W, Q, A, resp = random_case(T, seed, sparsity=0.5 if seed % 3 == 0 else 0.1)
    res, (q, a, r) = _run(W, Q, A, resp)
    h, f = res.h[0], res.f[0]
    Aset = set(A)
    # 1. h >= 0, h = 0 after the last answer token; h = 0 iff no path reaches A
    assert (h >= 0).all()
    assert (h[max(A) + 1 :] == 0).all()
    reach = torch.zeros(T, dtype=torch.bool)
    for i in range(T - 1, -1, -1):
        reach[i] = i in Aset or bool(((W[i, i + 1 :] > 0) & reach[i + 1 :]).any())
    assert torch.equal(h > 0, reach)
    # 2. sum h <= |A| T
    assert float(h.sum()) <= len(A) * T
    # 3. rows of W' sum to 1 (non-answer, h > 0) or 0, 0 <= W' <= 1
    Wp = doob_transform(W[None], res.h, a)[0]
    rows = Wp.sum(dim=1)
    live = (h > 0) & ~a[0]
    torch.testing.assert_close(rows[live], torch.ones_like(rows[live]))
    assert (rows[~live] == 0).all()
    assert (Wp >= 0).all() and (Wp <= 1 + 1e-12).all()
    # 4. absorbed flow = fraction of question tokens that reach A
    reaching = sum(1 for qq in Q if h[qq] > 0) / len(Q)
    assert math.isclose(float(res.absorbed[0]), reaching, rel_tol=1e-10, abs_tol=1e-12)
    # 5. cut conservation at every t
    for t in range(T):
        crossing = float((f[: t + 1, None] * Wp[: t + 1, t + 1 :]).sum())
        absorbed = float(sum(f[x] for x in A if x <= t))
        injected = sum(1.0 / len(Q) for qq in Q if qq <= t and h[qq] > 0)
        assert math.isclose(crossing + absorbed, injected, rel_tol=1e-9, abs_tol=1e-12), t


def _brute_force_flow(W, Q, A):
    """f(k) = share of question-to-answer path weight through k, by enumerating paths."""
    T = W.shape[0]
    Aset = set(A)

    def paths(i):  # all paths from i that end at the first answer token reached
        if i in Aset:
            yield [i], 1.0
            return
        for k in range(i + 1, T):
            w = float(W[i, k])
            if w > 0:
                for p, pw in paths(k):
                    yield [i] + p, w * pw

    f = [0.0] * T
    for qq in Q:
        ps = list(paths(qq))
        Z = sum(w for _, w in ps)
        if Z == 0:
            f[qq] += 1.0 / len(Q)  # no path: the injected flow stays
            continue
        for p, w in ps:
            for node in p:
                f[node] += (w / Z) / len(Q)
    return f


@pytest.mark.parametrize("seed", range(8))
def test_flow_equals_path_enumeration(seed):
    T = 7 + seed % 3  # T < 10
    W = random_attention_W(T, seed, sparsity=0.4)
    g = torch.Generator().manual_seed(seed)
    Q = sorted(set(torch.randint(0, 3, (2,), generator=g).tolist()))
    A = [T - 3, T - 2] if seed % 2 else [T - 2]
    res, _ = _run(W, Q, A, (3, T))
    expected = torch.tensor(_brute_force_flow(W, Q, A), dtype=torch.float64)
    torch.testing.assert_close(res.f[0], expected, rtol=1e-10, atol=1e-13)


def test_h_scale_invariance_of_doob_transform_and_selection():
    W, Q, A, resp = random_case(30, 3)
    res, (q, a, r) = _run(W, Q, A, resp)
    Wp1 = doob_transform(W[None], res.h, a)
    Wp2 = doob_transform(W[None], res.h * 37.5, a)
    torch.testing.assert_close(Wp1, Wp2)
    f = forward_flow(Wp2, q)
    tau = throughput(f, res.h, a)
    assert torch.equal(select_tokens(tau, r, 0.4), res.mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padding_invariance(dtype):
    W, Q, A, (r0, r1) = random_case(40, 5)
    T, p = W.shape[0], 7
    base, _ = _run(W, Q, A, (r0, r1), dtype=dtype)
    # left padding: p zero rows/cols in front; right padding: p at the end; one batch
    Wl = torch.zeros(T + p, T + p, dtype=torch.float64)
    Wl[p:, p:] = W
    Wr = torch.zeros(T + p, T + p, dtype=torch.float64)
    Wr[:T, :T] = W
    Wb = torch.stack([Wl, Wr]).to(dtype)
    q = torch.zeros(2, T + p, dtype=torch.bool)
    a = torch.zeros_like(q)
    r = torch.zeros_like(q)
    q[0, [x + p for x in Q]] = True
    q[1, Q] = True
    a[0, [x + p for x in A]] = True
    a[1, A] = True
    r[0, r0 + p : r1 + p] = True
    r[1, r0:r1] = True
    res = trace_flow(Wb, q, a, r)
    for key in ("h", "f", "tau", "weights", "mask"):
        torch.testing.assert_close(res[key][0, p:], base[key][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res[key][1, :T], base[key][0], rtol=1e-5, atol=1e-7)
    assert (res.tau[0, :p] == 0).all() and (res.tau[1, T:] == 0).all()
    assert (res.weights[0, :p] == 1).all() and (res.weights[1, T:] == 1).all()


def test_batch_rows_are_independent():
    cases = [random_case(25, s) for s in range(3)]
    T = 25
    Wb = torch.stack([c[0] for c in cases]).float()
    q = torch.zeros(3, T, dtype=torch.bool)
    a = torch.zeros_like(q)
    r = torch.zeros_like(q)
    for b, (_, Q, A, (r0, r1)) in enumerate(cases):
        q[b, Q] = True
        a[b, A] = True
        r[b, r0:r1] = True
    res = trace_flow(Wb, q, a, r)
    for b, (W, Q, A, resp) in enumerate(cases):
        one, _ = _run(W, Q, A, resp, dtype=torch.float32)
        # batch shape may change fp32 rounding (a few ulp), never the selection
        torch.testing.assert_close(res.tau[b], one.tau[0], rtol=1e-5, atol=1e-7)
        assert torch.equal(res.mask[b], one.mask[0])
        assert torch.equal(res.weights[b], one.weights[0])


def test_fp32_matches_fp64_selection_on_realistic_attention():
    T = 400
    W = random_attention_W(T, 11)
    Q, A, resp = list(range(5, 60)), [380, 381, 382], (100, T)
    r64, _ = _run(W, Q, A, resp, dtype=torch.float64)
    r32, _ = _run(W, Q, A, resp, dtype=torch.float32)
    torch.testing.assert_close(r32.tau.double(), r64.tau, rtol=2e-5, atol=1e-6)
    assert torch.equal(r32.mask, r64.mask)


def test_bf16_input_computes_in_fp32_and_fp64_stays_fp64():
    W, Q, A, resp = random_case(30, 2)
    res, _ = _run(W, Q, A, resp, dtype=torch.bfloat16)
    assert res.h.dtype == torch.float32 and res.weights.dtype == torch.float32
    res64, _ = _run(W, Q, A, resp, dtype=torch.float64)
    assert res64.tau.dtype == torch.float64


def test_w_requiring_grad_and_non_contiguous_views_are_accepted_and_unchanged():
    W, Q, A, resp = random_case(30, 6)
    base, (q, a, r) = _run(W, Q, A, resp, dtype=torch.float32)
    Wg = W.float()[None].clone().requires_grad_(True)
    res = trace_flow(Wg, q, a, r)
    assert torch.equal(res.tau, base.tau) and torch.equal(Wg.detach()[0], W.float())
    Wt = W.float().T.contiguous().T[None]  # same values, column-major storage
    assert not Wt.is_contiguous()
    res = trace_flow(Wt, q, a, r)
    torch.testing.assert_close(res.tau, base.tau)
    assert torch.equal(Wt[0], W.float())


def test_overwrite_skips_restore_but_gives_same_result():
    W, Q, A, resp = random_case(30, 4)
    keep, (q, a, r) = _run(W, Q, A, resp)
    scratch = W[None].clone()
    res = trace_flow(scratch, q, a, r, overwrite=True)
    assert torch.equal(res.tau, keep.tau)
    assert not torch.equal(scratch[0], W)


# ---------------------------------------------------------------------------------------------
# Fallback, selection, API shape
# ---------------------------------------------------------------------------------------------
def test_empty_answer_and_empty_question_fall_back_to_uniform():
    W, Q, A, (r0, r1) = random_case(20, 1)
    T = 20
    q, a, r = _masks(T, Q, A, (r0, r1))
    q2 = q.clone()
    q2[:] = False
    a2 = a.clone()
    a2[:] = False
    res = trace_flow(
        torch.stack([W, W, W]).float(),
        torch.cat([q, q, q2]),
        torch.cat([a, a2, a]),
        torch.cat([r, r, r]),
    )
    assert res.fallback.tolist() == [False, True, True]
    for b in (1, 2):
        assert not res.mask[b].any() and (res.weights[b] == 1).all()
        assert (res.h[b] == 0).all() and (res.tau[b, r0:r1] == 0).all()
    assert 1 <= int(res.mask[0].sum()) <= int(res.k_sel[0])


def test_k_sel_rounding():
    assert num_selected(torch.tensor([15, 10, 1, 0, 3]), 0.4).tolist() == [6, 4, 1, 0, 2]
    assert num_selected(torch.tensor([5]), 0.2).tolist() == [1]


def test_select_tokens_ties_zero_and_bottom():
    scores = torch.tensor([[9.0, 0.5, 0.5, 0.0, 0.2, 0.5]])
    resp = torch.tensor([[False, True, True, True, True, True]])
    assert select_tokens(scores, resp, 0.4).nonzero()[:, 1].tolist() == [1, 2]
    # never a zero score; ties to the lower position
    assert select_tokens(scores, resp, 1.0).nonzero()[:, 1].tolist() == [1, 2, 4, 5]
    assert select_tokens(scores, resp, 0.4, largest=False).nonzero()[:, 1].tolist() == [1, 4]
    w = credit_weights(select_tokens(scores, resp, 0.4), 2.0)
    assert w.tolist() == [[1.0, 2.0, 2.0, 1.0, 1.0, 1.0]]


def test_result_access_by_name_attribute_and_unpacking():
    W, Q, A, resp = random_case(15, 0)
    res, _ = _run(W, Q, A, resp)
    h, f, tau, mask, weights, fallback, k_sel, absorbed = res
    assert res["tau"] is res.tau is tau and res[0] is h
    assert h.shape == f.shape == tau.shape == mask.shape == weights.shape == (1, 15)
    assert fallback.shape == k_sel.shape == absorbed.shape == (1,)


@pytest.mark.parametrize(
    "case, match",
    [
        ("W2d", "W must have shape"),
        ("Wnonsquare", "W must have shape"),
        ("mask_shape", "question_mask has shape"),
        ("q_in_response", "question_mask .* outside the prompt"),
        ("a_in_prompt", "answer_mask .* outside the response"),
        ("noncontig", "not one contiguous span"),
        ("ratio", "ratio"),
        ("int_W", "floating"),
    ],
)
def test_bad_input_raises_value_error(case, match):
    T = 10
    W = random_attention_W(T, 0).float()[None]
    q, a, r = _masks(T, [1, 2], [8], (4, 10))
    kw = {}
    if case == "W2d":
        W = W[0]
    elif case == "Wnonsquare":
        W = W[:, :, :-1]
    elif case == "mask_shape":
        q = q[:, :-1]
    elif case == "q_in_response":
        q[0, 5] = True
    elif case == "a_in_prompt":
        a[0, 2] = True
    elif case == "noncontig":
        r[0, 6] = False
    elif case == "ratio":
        kw["ratio"] = 1.5
    elif case == "int_W":
        W = (W > 0).long()
    with pytest.raises(ValueError, match=match):
        trace_flow(W, q, a, r, **kw)


def test_path_enumeration_helper_is_not_trivial():
    # guards the brute force itself: a diamond with known shares
    W = torch.zeros(4, 4, dtype=torch.float64)
    W[0, 1], W[0, 2], W[1, 3], W[2, 3] = 0.5, 0.25, 1.0, 1.0
    f = _brute_force_flow(W, [0], [3])
    assert [round(x, 6) for x in f] == [1.0, round(2 / 3, 6), round(1 / 3, 6), 1.0]
