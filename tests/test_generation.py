"""ftcli.generation on the tiny random Qwen3 (char tokenizer): shapes, padding, EOS handling,
seeding, offsets. The fixture model gets an lm_head bias that makes EOS likely (some rows
finish, some are truncated) and the pad token impossible (so "no padding" is checkable)."""

import pytest
import torch

from ftcli.fetch.models import ModelError, load_model, load_tokenizer
from ftcli.generation import (
    COMPACT_FRACTION,
    GenerationError,
    Rollout,
    encode_prompt,
    generate,
    get_backend,
    render_prompt,
    token_offsets,
    warp_logits,
)

MAX_NEW = 12


@pytest.fixture(scope="module")
def mt():
    model, tok = load_model("tiny-qwen3")
    V, H = model.lm_head.weight.shape
    head = torch.nn.Linear(H, V, bias=True)
    head.weight = model.lm_head.weight  # keep the tied weights
    with torch.no_grad():
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 2.5  # EOS about 1 step in 8
        head.bias[tok.pad_token_id] = -1e4  # never sampled: any pad id would be padding
    model.lm_head = head
    return model, tok


def _prompts(tok):
    return [
        render_prompt(tok, [{"role": "user", "content": "What is 2+3?"}]),
        render_prompt(tok, [{"role": "user", "content": "Hi"}], assistant_prefix="<think>"),
        render_prompt(
            tok,
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count 1 to 9"}],
        ),
    ]


def _ids(groups):
    return [[r.response_ids for r in g] for g in groups]


def test_render_prompt_chat_template_and_prefix():
    tok = load_tokenizer("tiny-qwen3")
    p = render_prompt(tok, [{"role": "user", "content": "Q?"}], assistant_prefix="<think>")
    assert p == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n<think>"
    assert render_prompt(tok, "Q?") == p[: -len("<think>")]


def test_render_prompt_fallback_without_template():
    tok = load_tokenizer("tiny-qwen3")
    tok.chat_template = None
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    assert render_prompt(tok, msgs, "Let") == "S\n\nQuestion: Q?\nAnswer: Let"


def test_shapes_no_padding_eos_and_finished(mt):
    model, tok = mt
    prompts = _prompts(tok)
    out = generate(model, tok, prompts, n=4, max_new_tokens=MAX_NEW, seed=0, batch_size=5)
    assert len(out) == 3 and all(len(g) == 4 for g in out)
    kinds = set()
    for p, g in zip(prompts, out, strict=True):
        for r in g:
            assert isinstance(r, Rollout) and r.prompt_text == p
            assert r.prompt_ids == encode_prompt(tok, p)  # unpadded, exactly the prompt
            assert tok.pad_token_id not in r.prompt_ids + r.response_ids
            n_eos = r.response_ids.count(tok.eos_token_id)
            if r.finished:
                assert r.response_ids[-1] == tok.eos_token_id and n_eos == 1
                assert 1 <= len(r.response_ids) <= MAX_NEW
            else:
                assert n_eos == 0 and len(r.response_ids) == MAX_NEW
            kinds.add(r.finished)
    assert kinds == {True, False}  # the biased model produces both cases
    assert len({len(g[0].prompt_ids) for g in out}) == 3  # different lengths, no left pad kept
    assert "<think>" in out[1][0].prompt_text and not out[1][0].response_text.startswith("<think>")


def test_seed_reproducible_and_batch_independent(mt):
    model, tok = mt
    prompts = _prompts(tok)
    a = generate(model, tok, prompts, n=3, max_new_tokens=MAX_NEW, seed=7, batch_size=4)
    b = generate(model, tok, prompts, n=3, max_new_tokens=MAX_NEW, seed=7, batch_size=4)
    c = generate(model, tok, prompts, n=3, max_new_tokens=MAX_NEW, seed=8, batch_size=4)
    assert _ids(a) == _ids(b)
    assert _ids(a) != _ids(c)
    # per-row generators: batch size and the other prompts in the call do not matter
    d = generate(model, tok, prompts, n=3, max_new_tokens=MAX_NEW, seed=7, batch_size=1)
    e = generate(model, tok, prompts[1:2], n=3, max_new_tokens=MAX_NEW, seed=7)
    assert _ids(a) == _ids(d)
    assert _ids(a)[1] == _ids(e)[0]


def test_n_samples_differ_and_duplicate_prompts_differ(mt):
    model, tok = mt
    p = _prompts(tok)[0]
    (g,) = generate(model, tok, [p], n=6, max_new_tokens=MAX_NEW, seed=0)
    assert len(g) == 6 and len({tuple(r.response_ids) for r in g}) > 1
    x, y = generate(model, tok, [p, p], n=1, max_new_tokens=MAX_NEW, seed=0)
    assert x[0].response_ids == g[0].response_ids  # first occurrence == the n=... stream j=0
    assert x[0].response_ids != y[0].response_ids  # the repeat is a fresh draw (GRPO groups)


def test_greedy_is_deterministic_and_padding_invariant(mt):
    model, tok = mt
    prompts = _prompts(tok)
    batched = generate(model, tok, prompts, n=2, max_new_tokens=MAX_NEW, temperature=0, batch_size=6)
    for p, g in zip(prompts, batched, strict=True):
        assert g[0].response_ids == g[1].response_ids
        (alone,) = generate(model, tok, [p], n=1, max_new_tokens=MAX_NEW, temperature=0)
        assert alone[0].response_ids == g[0].response_ids  # left padding does not change output


def test_offsets_consistent_with_decoding(mt):
    model, tok = mt
    out = generate(model, tok, _prompts(tok), n=3, max_new_tokens=MAX_NEW, seed=3)
    for g in out:
        for r in g:
            assert len(r.response_offsets) == len(r.response_ids)
            assert "".join(r.response_text[a:b] for a, b in r.response_offsets) == r.response_text
            for (a, b), t in zip(r.response_offsets, r.response_ids, strict=True):
                piece = tok.decode([t], skip_special_tokens=True)
                assert r.response_text[a:b] == piece
            if r.finished:
                n = len(r.response_text)
                assert r.response_offsets[-1] == (n, n)  # EOS is zero-width


def test_offsets_multibyte_on_real_tokenizer():
    try:
        tok = load_tokenizer("smollm2-135m")
    except (ModelError, OSError) as e:  # pragma: no cover - default model not installed
        pytest.skip(f"default model unavailable: {e}")
    text = "Héllo 😀 日本 \\boxed{5}"
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    dec = tok.decode(ids, skip_special_tokens=True)
    off = token_offsets(tok, ids, dec)
    assert len(off) == len(ids) and off[-1] == (len(dec), len(dec))
    covered = "".join(dec[a:b] for i, (a, b) in enumerate(off) if i == 0 or off[i - 1] != (a, b))
    assert covered == dec
    assert all(a <= b for a, b in off) and all(off[i][0] >= off[i - 1][0] for i in range(1, len(off)))


def test_warp_logits_topk_topp():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k2 = warp_logits(logits, 1.0, 2, 1.0)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = warp_logits(logits, 1.0, 0, 0.8)  # 0.5 + 0.3 reaches 0.8: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p = warp_logits(logits, 1.0, 0, 0.81)  # needs the third
    assert torch.isfinite(p[0, :3]).all() and torch.isinf(p[0, 3])
    t = warp_logits(logits, 0.5, 0, 1.0)
    assert torch.allclose(t, logits / 0.5)


def test_backends_and_bad_input(mt):
    model, tok = mt
    assert get_backend("hf").name == "hf"
    with pytest.raises(GenerationError, match="unknown backend"):
        get_backend("nope")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(GenerationError, match="vllm"):
            get_backend("vllm")
    with pytest.raises(GenerationError):
        generate(model, tok, ["x"], n=0)
    assert generate(model, tok, []) == []


def test_row_sampler_matches_distribution():
    from ftcli.generation import _RowSampler

    B = 4000
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).expand(B, 4)
    out = _RowSampler(list(range(B)), 1.0, 0, 1.0)(None, logits)  # [B, V] one-hot (0 / -inf)
    assert (torch.isfinite(out).sum(-1) == 1).all()
    freq = torch.bincount(out.argmax(-1), minlength=4).float() / B
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    top2 = _RowSampler(list(range(B)), 1.0, 2, 1.0)(None, logits).argmax(-1)
    assert set(top2.tolist()) == {0, 1}


@pytest.fixture(scope="module")
def mt64(mt):
    """The EOS-biased tiny model in float64: the two decode paths differ only by float
    rounding of another batch shape, far below float32 logits' resolution."""
    import copy

    model, tok = mt
    return copy.deepcopy(model).double(), tok


@pytest.mark.parametrize(
    ("kw", "batch_size"),
    [
        ({"seed": 11}, 64),  # all rows in one batch: 3 prompts (one repeated) x 5
        ({"seed": 12, "top_k": 40, "top_p": 0.95, "temperature": 1.3}, 7),  # groups split across batches
        ({"temperature": 0.0}, 64),  # greedy
    ],
)
def test_compact_path_matches_reference_token_for_token(mt64, kw, batch_size):
    model, tok = mt64
    prompts = _prompts(tok)
    prompts = prompts + [prompts[0]]  # a repeated prompt: shares a prefill, draws fresh samples
    common = dict(n=5, max_new_tokens=24, batch_size=batch_size, **kw)
    new = generate(model, tok, prompts, **common)
    ref = generate(model, tok, prompts, compact=False, **common)
    assert _ids(new) == _ids(ref)
    for gn, gr in zip(new, ref, strict=True):
        for a, b in zip(gn, gr, strict=True):
            assert (a.finished, a.response_text, a.response_offsets, a.prompt_ids) == (
                b.finished, b.response_text, b.response_offsets, b.prompt_ids)
    if kw.get("temperature", 1.0) > 0:
        lengths = [len(r.response_ids) for g in new for r in g]
        assert len(set(lengths)) > 3  # rows finished at many different steps
        assert sum(r.finished for g in new for r in g) > len(lengths) // 2
    if kw.get("seed") == 11:
        assert {r.finished for g in new for r in g} == {True, False}  # and some were cut


def test_compact_path_prefills_each_prompt_once_and_drops_finished_rows(mt):
    model, tok = mt
    prompts = _prompts(tok)
    prompts = prompts + [prompts[1]]
    shapes = []  # input_ids shape of every forward call

    def hook(module, args, kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))

    h = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = generate(model, tok, prompts, n=6, max_new_tokens=MAX_NEW, seed=5, batch_size=64)
    finally:
        h.remove()
    assert shapes[0][0] == 3 and shapes[0][1] > 1  # one prefill row per distinct prompt
    decode = [b for b, t in shapes[1:]]
    assert all(t == 1 for _, t in shapes[1:])
    assert decode == sorted(decode, reverse=True) and decode[0] > decode[-1]  # rows only ever leave
    lengths = [len(r.response_ids) for g in out for r in g]
    assert len(decode) == max(lengths) - 1  # stops with the last unfinished row
    # a decode step feeds the rows still unfinished (each yields one more useful token; a
    # row's first comes from the prefill) plus fewer than the compaction threshold of
    # finished rows waiting to be dropped
    threshold = max(1, int(COMPACT_FRACTION * 24))
    assert sum(decode) <= sum(lengths) - 24 + len(decode) * (threshold - 1)
    assert sum(decode) < 24 * len(decode)  # the reference decodes every row at every step
