"""ftcli.attention: W of paper Eq. 1 against eager `output_attentions=True` (SPEC "The influence
matrix W"), on tiny random models (fast) and the real default model (slow)."""

from __future__ import annotations

import pytest
import torch

from ftcli.attention import _STATE_ATTR, capture_attention, layer_range, mean_attention
from ftcli.fetch.models import tiny_causal_lm

ATOL = 1e-5
NUM_LAYERS = 6  # tiny_causal_lm default


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def make_batch(B: int, T: int, padding: str, seed: int = 0, vocab: int = 101):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    if padding == "left":
        am[0, : T // 4] = 0
        if B > 2:
            am[2, :3] = 0
    elif padding == "right":
        am[0, T - T // 3 :] = 0
        if B > 2:
            am[2, T - 2 :] = 0
    elif padding == "mixed":
        am[0, :5] = 0
        am[1, T - 4 :] = 0
    ids = ids.masked_fill(am == 0, 0)
    return ids, am


def eager_attentions(model, ids, am):
    """Every layer's [B, H, T, T] map from eager attention; the implementation is restored."""
    orig = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=am, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(orig)


def reference_W(attentions, layers, am):
    """Eq. 1 from eager maps: mean over layers and query heads, transposed to [B, key, query],
    diagonal / lower triangle / padded rows and columns zeroed."""
    A = torch.stack([attentions[i].float() for i in layers]).mean(dim=(0, 2))  # [B, q, k]
    W = A.transpose(1, 2).triu(1)  # [B, k(key), q(query)]
    if am is not None:
        v = am.bool()
        W = W * v[:, :, None] * v[:, None, :]
    return W


@pytest.fixture(scope="module")
def models():
    return {arch: tiny_causal_lm(arch) for arch in ("qwen3", "llama")}


@pytest.fixture(scope="module")
def cases(models):
    """(arch, padding) -> (model, ids, am, eager attentions); T differs per case (23..67)."""
    out = {}
    shapes = {"left": (3, 41), "right": (3, 67), "mixed": (2, 23), "none": (2, 30)}
    for arch, model in models.items():
        for padding, (B, T) in shapes.items():
            ids, am = make_batch(B, T, padding, seed=len(out))
            out[arch, padding] = (model, ids, am, eager_attentions(model, ids, am))
    return out


# ---------------------------------------------------------------------------------------------
# layer_range
# ---------------------------------------------------------------------------------------------
def test_layer_range_named_and_ranges():
    assert layer_range(None, 30) == list(range(10, 20))
    assert layer_range("mid", 30) == list(range(10, 20))
    assert layer_range("early", 30) == list(range(0, 10))
    assert layer_range("late", 30) == list(range(20, 30))
    assert layer_range("all", 30) == list(range(30))
    assert layer_range("mid", 6) == [2, 3]
    assert layer_range(" MID ", 7) == [2, 3]
    assert layer_range("2:5", 6) == [2, 3, 4]
    assert layer_range(":2", 6) == [0, 1]
    assert layer_range("4:", 6) == [4, 5]
    assert layer_range("-2:", 6) == [4, 5]
    assert layer_range((1, 4), 6) == [1, 2, 3]
    assert layer_range([5, 0, 3, 3], 6) == [0, 3, 5]
    assert layer_range(range(2, 4), 6) == [2, 3]


def test_paper_layer_ranges_are_fig6_scaled_to_the_depth():
    # Qwen3-4B's 36 layers: exactly the figure's 0-15 / 15-25 / 25-35, as the A:B form gives them
    assert layer_range("paper-early", 36) == list(range(0, 15)) == layer_range("0:15", 36)
    assert layer_range("paper-mid", 36) == list(range(15, 25)) == layer_range("15:25", 36)
    assert layer_range("paper-late", 36) == list(range(25, 35)) == layer_range("25:35", 36)
    assert layer_range(" Paper-Mid ", 36) == list(range(15, 25))
    # other depths: bounds round(A L / 36), halves up
    assert layer_range("paper-early", 30) == list(range(0, 13))  # 12.5 -> 13
    assert layer_range("paper-mid", 30) == list(range(13, 21))  # 20.8 -> 21
    assert layer_range("paper-late", 30) == list(range(21, 29))  # 29.2 -> 29
    assert layer_range("paper-mid", 24) == list(range(10, 17))  # 16.7 -> 17
    assert layer_range("paper-early", 6) == [0, 1, 2]  # 2.5 -> 3
    assert layer_range("paper-mid", 6) == [3]
    assert layer_range("paper-late", 6) == [4, 5]  # 5.8 -> 6
    for L in range(1, 81):  # never empty, in range, in order; the three tile [0, round(35 L / 36))
        e, m, lt = (layer_range(f"paper-{n}", L) for n in ("early", "mid", "late"))
        assert e and m and lt and all(0 <= i < L for i in e + m + lt)
        if L >= 4:
            assert e + m + lt == list(range(e[0], lt[-1] + 1)) and e[0] == 0


@pytest.mark.parametrize(
    "spec, match",
    [
        ("middle", "bad layer spec"),
        ("5", "bad layer spec"),
        ("a:b", "needs integers"),
        ("4:2", "selects no valid layers"),
        ("0:7", "selects no valid layers"),
        ("3:3", "selects no valid layers"),
        ((1, 2, 3), "tuple must be"),
        ((1.0, 2), "tuple must be"),
        ([], "needs one or more ints"),
        ([0, 6], "out of range"),
        ([-1], "out of range"),
        ([True], "needs one or more ints"),
        (3, "bad layer spec"),
        (2.5, "bad layer spec"),
    ],
)
def test_layer_range_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        layer_range(spec, 6)


def test_layer_range_empty_named_range():
    with pytest.raises(ValueError, match="empty"):
        layer_range("mid", 1)
    with pytest.raises(ValueError, match="num_layers"):
        layer_range("all", 0)


# ---------------------------------------------------------------------------------------------
# parity with eager
# ---------------------------------------------------------------------------------------------
SPECS = [None, "all", "early", "late", "2:5", [0, 3, 5], (1, 4)]


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("padding", ["left", "right", "mixed", "none"])
def test_parity_with_eager(cases, arch, padding):
    model, ids, am, att = cases[arch, padding]
    T = ids.shape[1]
    for spec in SPECS:
        W = mean_attention(model, ids, am, spec, chunk_size=16)  # chunk < T: several chunks
        assert W.shape == (ids.shape[0], T, T) and W.dtype == torch.float32
        ref = reference_W(att, layer_range(spec, NUM_LAYERS), am)
        torch.testing.assert_close(W, ref, atol=ATOL, rtol=0, msg=lambda m, s=spec: f"{s}: {m}")
        assert W.sum() > 0
        assert model.config._attn_implementation == "sdpa"


def test_parity_without_attention_mask(cases):
    model, ids, _, att = cases["qwen3", "none"]
    W = mean_attention(model, ids, None, "all", chunk_size=7)
    torch.testing.assert_close(W, reference_W(att, range(NUM_LAYERS), None), atol=ATOL, rtol=0)


def test_chunk_size_does_not_matter(cases):
    model, ids, am, _ = cases["llama", "left"]
    Ws = [mean_attention(model, ids, am, "all", chunk_size=c) for c in (1, 5, 16, 256)]
    for W in Ws[1:]:
        torch.testing.assert_close(W, Ws[0], atol=1e-6, rtol=0)


def test_eager_model_parity_and_restored(models):
    model = tiny_causal_lm("llama", attn_implementation="eager")
    ids, am = make_batch(2, 29, "mixed")
    att = eager_attentions(model, ids, am)
    W = mean_attention(model, ids, am, "all", chunk_size=8)
    torch.testing.assert_close(W, reference_W(att, range(NUM_LAYERS), am), atol=ATOL, rtol=0)
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_parity_sliding_window_and_softcap(arch):
    """Other families on the attention interface: Gemma2 (logit softcap, sliding layers; eager
    only) and Gemma3 (sliding layers under sdpa) go through the mask each layer receives."""
    import transformers as tf

    kw = dict(
        vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0, sliding_window=6,
    )  # fmt: skip
    if arch == "gemma2":
        cfg, cls, impl = (
            tf.Gemma2Config(**kw, attn_logit_softcapping=5.0),
            tf.Gemma2ForCausalLM,
            "eager",
        )
    else:
        cfg, cls, impl = tf.Gemma3TextConfig(**kw), tf.Gemma3ForCausalLM, "sdpa"
    cfg._attn_implementation = impl
    model = cls(cfg).eval()
    ids, am = make_batch(2, 30, "mixed")
    att = eager_attentions(model, ids, am)
    W = mean_attention(model, ids, am, "all", chunk_size=8)
    torch.testing.assert_close(W, reference_W(att, range(4), am), atol=ATOL, rtol=0)
    assert model.config._attn_implementation == impl


def test_flash_family_path_with_2d_masks(cases, monkeypatch):
    """Flash kernels get a 2D padding mask (or None) and read the implementation name from
    `module.config`; exercised on CPU with a fake kernel standing in for flash-attn."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import ftcli.attention as fa

    seen_masks = []

    def fake_flash(module, query, key, value, attention_mask, **kwargs):
        assert module.config._attn_implementation == "sdpa"  # the original name, via the view
        assert attention_mask is None or attention_mask.ndim == 2
        seen_masks.append(None if attention_mask is None else attention_mask.shape)
        T = query.shape[2]
        causal = torch.ones(T, T, dtype=torch.bool, device=query.device).tril()
        m4 = causal[None, None]
        if attention_mask is not None:
            m4 = m4 & attention_mask.bool()[:, None, None, :]
        return sdpa_attention_forward(module, query, key, value, m4, **kwargs)

    monkeypatch.setattr(fa, "_kernel_for", lambda orig: ("varlen", fake_flash))
    for padding in ("left", "right", "none"):
        model, ids, am, att = cases["qwen3", padding]
        W = mean_attention(model, ids, am, "all", chunk_size=16)
        torch.testing.assert_close(W, reference_W(att, range(NUM_LAYERS), am), atol=ATOL, rtol=0)
        assert model.config._attn_implementation == "sdpa"
    assert None in seen_masks and any(m is not None for m in seen_masks)


# ---------------------------------------------------------------------------------------------
# structure of W
# ---------------------------------------------------------------------------------------------
def test_structure_padding_diagonal_triangle(cases):
    for padding in ("left", "right", "mixed"):
        model, ids, am, _ = cases["qwen3", padding]
        W = mean_attention(model, ids, am, chunk_size=16)
        pad = am == 0
        for b in range(W.shape[0]):
            assert torch.all(W[b][pad[b], :] == 0) and torch.all(W[b][:, pad[b]] == 0)
        assert torch.all(torch.tril(W) == 0)  # diagonal and lower triangle
        assert torch.all(W >= 0)
        assert torch.all(W.sum(dim=1) <= 1 + 1e-5)  # columns: probabilities minus the diagonal
        assert torch.isfinite(W).all()


# ---------------------------------------------------------------------------------------------
# implementation switching, errors, early stop
# ---------------------------------------------------------------------------------------------
def _no_state_left(model):
    return not any(hasattr(m, _STATE_ATTR) for m in model.modules())


def test_restored_after_exception(models):
    model = models["qwen3"]
    ids, am = make_batch(2, 20, "left")

    def boom(*_):
        raise KeyError("boom")

    h = model.model.layers[3].register_forward_hook(boom)
    try:
        with pytest.raises(KeyError, match="boom"):
            mean_attention(model, ids, am, "all")
    finally:
        h.remove()
    assert model.config._attn_implementation == "sdpa"
    assert _no_state_left(model)

    with pytest.raises(RuntimeError, match="inside"):
        with capture_attention(model) as cap:
            assert model.config._attn_implementation.startswith("ftcli_flow")
            raise RuntimeError("inside")
    assert cap.W is None
    assert model.config._attn_implementation == "sdpa"
    assert _no_state_left(model)
    # still works afterwards
    assert mean_attention(model, ids, am).shape == (2, 20, 20)


def test_nested_capture_refused(models):
    model = models["llama"]
    with capture_attention(model):
        with pytest.raises(RuntimeError, match="already active"):
            with capture_attention(model):
                pass
    assert model.config._attn_implementation == "sdpa"


def test_bad_inputs(models):
    model = models["qwen3"]
    ids, am = make_batch(2, 20, "left")
    with pytest.raises(ValueError, match="attention_mask shape"):
        mean_attention(model, ids, am[:, :10])
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mean_attention(model, ids[0], None)
    with pytest.raises(ValueError, match="chunk_size"):
        mean_attention(model, ids, am, chunk_size=0)
    with pytest.raises(ValueError, match="out of range"):
        mean_attention(model, ids, am, [7])
    assert model.config._attn_implementation == "sdpa"


def test_stop_after_last_same_W_and_skips_later_layers(cases):
    model, ids, am, _ = cases["llama", "right"]
    calls = []
    hooks = [
        model.model.layers[5].register_forward_hook(lambda *_: calls.append("layer5")),
        model.lm_head.register_forward_hook(lambda *_: calls.append("head")),
    ]
    try:
        W_stop = mean_attention(model, ids, am, "1:3", stop_after_last=True)
        assert calls == []
        W_full = mean_attention(model, ids, am, "1:3", stop_after_last=False)
        assert "layer5" in calls
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(W_stop, W_full, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# fused capture (training forward with autograd)
# ---------------------------------------------------------------------------------------------
def _loss_and_grads(model, ids, am):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=am).logits  # [B, T, V]
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    loss = -(lp * am[:, 1:]).sum() / am[:, 1:].sum()
    loss.backward()
    return logits.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_fused_capture_same_W_and_unchanged_grads(cases, arch):
    model, ids, am, _ = cases[arch, "mixed"]
    W_ref = mean_attention(model, ids, am, "2:5", chunk_size=16)
    logits0, g0 = _loss_and_grads(model, ids, am)
    # no explicit attention_mask: the capture reads the 2D mask the forward gets
    with capture_attention(model, "2:5", chunk_size=16) as cap:
        logits1, g1 = _loss_and_grads(model, ids, am)
        assert model.config._attn_implementation.startswith("ftcli_flow")
    assert model.config._attn_implementation == "sdpa"
    model.zero_grad(set_to_none=True)
    assert cap.seen == [2, 3, 4]
    torch.testing.assert_close(cap.W, W_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits1, logits0, atol=0, rtol=0)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=0, rtol=0, msg=n)
    assert not cap.W.requires_grad


def test_fused_capture_with_gradient_checkpointing_counts_layers_once():
    model = tiny_causal_lm("qwen3")
    ids, am = make_batch(2, 25, "left")
    W_ref = mean_attention(model, ids, am, chunk_size=8)
    enable = (
        getattr(model, "activation_checkpointing_enable", None)
        or model.gradient_checkpointing_enable
    )
    enable()
    model.train()
    with capture_attention(model, None, am, chunk_size=8) as cap:
        model(input_ids=ids, attention_mask=am, use_cache=False).logits.sum().backward()
    assert cap.seen == [2, 3]
    torch.testing.assert_close(cap.W, W_ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# bf16
# ---------------------------------------------------------------------------------------------
def test_bf16_model_close_to_fp32():
    ids, am = make_batch(2, 33, "left")
    W32 = mean_attention(tiny_causal_lm("qwen3"), ids, am, chunk_size=8)
    mb = tiny_causal_lm("qwen3").to(torch.bfloat16)
    W16 = mean_attention(mb, ids, am, chunk_size=8)
    assert W16.dtype == torch.float32 and torch.isfinite(W16).all()
    torch.testing.assert_close(W16, W32, atol=1e-2, rtol=0)
    assert torch.all(torch.tril(W16) == 0)
    assert next(mb.parameters()).dtype == torch.bfloat16  # model untouched


# ---------------------------------------------------------------------------------------------
# the recompute kernel against a straightforward float64 eager softmax (random q/k)
# ---------------------------------------------------------------------------------------------
def eager_head_mean(q, k, keep, add, scale, softcap=None, sinks=None):
    """[B, Tq, Tk] float64: mean over query heads of softmax(q k^T * scale (+ softcap) + mask),
    keys of GQA groups repeated, fully masked rows 0: transformers' eager attention, spelled out."""
    H, Hkv = q.shape[1], k.shape[1]
    s = q.double() @ k.double().repeat_interleave(H // Hkv, dim=1).transpose(-1, -2) * scale
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    if add is not None:
        s = s + add.double()
    Tk = s.shape[-1]
    if sinks is not None:
        s = torch.cat([s, sinks.double().view(1, H, 1, 1).expand(*s.shape[:3], 1)], dim=-1)
    return torch.softmax(s, dim=-1)[..., :Tk].nan_to_num(0.0).mean(1)


@pytest.mark.parametrize("mode", ["built", "bool4d", "float4d", "window", "softcap", "sinks"])
def test_kernel_matches_eager_softmax_mean(mode):
    from ftcli.attention import _accumulate_layer

    g = torch.Generator().manual_seed(3)
    B, H, Hkv, T, d = 2, 6, 2, 37, 8
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1, :5] = False  # left padding: row 1's first queries see no key at all
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    keep = causal[None, None] & pad[:, None, None, :]  # [B, 1, T, T]
    mask, add, kw = None, None, {}
    if mode == "bool4d":
        mask = keep
    elif mode == "float4d":  # eager's additive mask: dtype min, so masked rows are uniform
        mask = torch.zeros(B, 1, T, T).masked_fill(~keep, torch.finfo(torch.float32).min)
        add, keep = mask, None
    elif mode == "window":
        kw["sliding_window"] = 6
        pos = torch.arange(T)
        keep = keep & (pos[None, :] > pos[:, None] - 6)
    elif mode == "softcap":
        kw["softcap"] = 2.0
    elif mode == "sinks":
        kw["sinks"] = torch.randn(H, generator=g)
    ref = torch.zeros(B, T, T, dtype=torch.float64)
    bufs = {c: torch.zeros(B, T, T) for c in (1, 5, 16, 64)}
    for _layer in range(2):  # two layers accumulate
        q = torch.randn(B, H, T, d, generator=g) * 2
        k = torch.randn(B, Hkv, T, d, generator=g) * 2
        ref += eager_head_mean(q, k, keep, add, d**-0.5, kw.get("softcap"), kw.get("sinks"))
        for c, buf in bufs.items():
            _accumulate_layer(buf, q, k, mask, pad if mask is None else None, d**-0.5, c, **kw)
    dead = ref[1, :5].sum(-1)  # row 1's padded queries: no key (eager's float mask: uniform)
    torch.testing.assert_close(dead, torch.full_like(dead, 2.0 if mode == "float4d" else 0.0))
    for c, buf in bufs.items():
        assert torch.isfinite(buf).all()
        torch.testing.assert_close(
            buf.double(), ref, atol=1e-6, rtol=0, msg=lambda m, c=c: f"chunk {c}: {m}"
        )


@pytest.mark.parametrize("T", [1, 7, 11, 24])
def test_transpose_strict_upper_in_place(T):
    from ftcli.attention import _transpose_strict_upper

    A = torch.randn(3, T, T)
    want = A.transpose(1, 2).triu(diagonal=1)
    out = _transpose_strict_upper(A.clone(), tile=4)  # tiles of 4: partial and diagonal tiles
    assert torch.equal(out, want)


# ---------------------------------------------------------------------------------------------
# real default model (slow)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_parity_real_default_model():
    from ftcli.fetch.models import load_model

    model, tok = load_model("smollm2-135m")
    L = model.config.num_hidden_layers
    texts = [
        "Question: what is 12 times 7? Think step by step, then give the answer in a box.",
        "The capital of France is Paris. The capital of Italy is",
    ]
    enc = tok(texts, return_tensors="pt", padding="max_length", max_length=64, truncation=True)
    ids, am = enc["input_ids"], enc["attention_mask"]
    assert (am == 0).any()  # the second text is padded
    att = eager_attentions(model, ids, am)
    for spec in (None, "all"):
        W = mean_attention(model, ids, am, spec, chunk_size=24)
        torch.testing.assert_close(W, reference_W(att, layer_range(spec, L), am), atol=ATOL, rtol=0)
    assert model.config._attn_implementation == "sdpa"
