"""ftcli.integrations.trl: FlowTracer credit inside TRL's GRPOTrainer (tiny random models, CPU).

Per-token losses are read from TRL's own aggregation: with `loss_type="dr_grpo"` the loss is
sum(per_token_loss * mask) / (B * max_completion_length), and a one-hot `tool_mask` (which
only enters that loss mask) isolates one token's term.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import pytest
import torch

from ftcli.attention import layer_range, mean_attention
from ftcli.credit import RULES, CreditInputs, CreditOptions, compute_credit
from ftcli.fetch.models import char_tokenizer, tiny_causal_lm

HAVE_TRL = importlib.util.find_spec("trl") is not None
needs_trl = pytest.mark.skipif(not HAVE_TRL, reason='TRL is not installed (pip install "ftcli[trl]")')

QUESTIONS = ["Using the numbers [3, 5], make 8.", "Using [2, 9, 4], make 17 please."]
COMPLETIONS = ["ok <answer>3 + 5</answer>", "<answer>9+2*4</answer>", "no idea", "hm <answer>8</answer>x"]
MAX_LEN = 28  # max_completion_length


def prompt_text(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": prompt_text(q), "question": q} for q in QUESTIONS])


def distinct_chars(completions, **kwargs):
    """A reward that varies between random completions (so advantages are not all 0)."""
    return [float(len(set(c))) for c in completions]


def config(tmp_path, **kw):
    from trl import GRPOConfig

    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
        max_completion_length=MAX_LEN, max_steps=1, learning_rate=1e-2, report_to="none",
        save_strategy="no", logging_steps=1, use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
    )
    base.update(kw)
    return GRPOConfig(**base)


def trainers(tmp_path, credit="flow", options=None, layers="mid", **kw):
    """(ftcli trainer, TRL's own trainer), each on its own copy of the same tiny model."""
    from trl import GRPOTrainer

    from ftcli.integrations.trl import FlowTracerGRPOTrainer

    tok = char_tokenizer()
    common = dict(reward_funcs=distinct_chars, args=config(tmp_path, **kw), train_dataset=dataset(), processing_class=tok)
    ft = FlowTracerGRPOTrainer(
        model=tiny_causal_lm("qwen3", vocab_size=len(tok)), credit=credit, credit_options=options,
        layers=layers, task="countdown", **common,
    )
    trl = GRPOTrainer(model=tiny_causal_lm("qwen3", vocab_size=len(tok)), **common)
    return ft, trl


def batch(ft, advantages=(1.0, -0.5, 0.7, -1.2)):
    """A TRL batch dict (left-padded prompts, right-padded completions) with ftcli's spans."""
    from ftcli.integrations.trl import ANSWER_MASK, QUESTION_MASK, SEED

    tok = ft.processing_class
    rows = [{"prompt": prompt_text(q), "question": q} for q in (QUESTIONS[0], QUESTIONS[0], QUESTIONS[1], QUESTIONS[1])]
    p_ids = [tok(r["prompt"])["input_ids"] for r in rows]
    c_ids = [tok(c)["input_ids"] + [tok.eos_token_id] for c in COMPLETIONS]
    P, C = max(map(len, p_ids)), max(map(len, c_ids))
    assert C <= MAX_LEN
    B = len(rows)
    prompt_ids = torch.full((B, P), tok.pad_token_id)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    completion_ids = torch.full((B, C), tok.pad_token_id)
    completion_mask = torch.zeros(B, C, dtype=torch.long)
    for b in range(B):
        prompt_ids[b, P - len(p_ids[b]) :] = torch.tensor(p_ids[b])
        prompt_mask[b, P - len(p_ids[b]) :] = 1
        completion_ids[b, : len(c_ids[b])] = torch.tensor(c_ids[b])
        completion_mask[b, : len(c_ids[b])] = 1
    q, a = ft.credit_spans(rows, prompt_ids, prompt_mask, completion_ids, completion_mask)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.tensor(advantages), "num_items_in_batch": completion_mask.sum(),
        QUESTION_MASK: q, ANSWER_MASK: a, SEED: torch.arange(B),
    }


def with_old_logps(trl_trainer, inputs, noise=0.3):
    """Add old log-probs = current + noise, so that some ratios are clipped."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        logp, _, _ = trl_trainer._get_per_token_logps_and_entropies(trl_trainer.model, ids, am, ids.shape[1] - inputs["prompt_ids"].shape[1])
    g = torch.Generator().manual_seed(1)
    return {**inputs, "old_per_token_logps": logp + noise * torch.randn(logp.shape, generator=g)}


@pytest.fixture
def spy(monkeypatch):
    """Records (W before the rule ran, Credit) of every compute_credit call of the trainer."""
    import ftcli.integrations.trl as mod

    calls = []
    real = mod.compute_credit

    def wrapped(rule, inputs, opts):
        W = None if inputs.W is None else inputs.W.clone()  # the flow works in place on W
        out = real(rule, inputs, opts)
        calls.append((W, out, inputs))
        return out

    monkeypatch.setattr(mod, "compute_credit", wrapped)
    return calls


# ---------------------------------------------------------------------------------------------
# Import guard
# ---------------------------------------------------------------------------------------------
def test_importing_ftcli_never_imports_trl():
    code = (
        "import sys, ftcli, ftcli.credit, ftcli.attention, ftcli.integrations, ftcli.tasks; "
        "sys.exit('trl' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_trl_gives_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    monkeypatch.delitem(sys.modules, "ftcli.integrations.trl", raising=False)
    with pytest.raises(ImportError, match=r'^ftcli.integrations.trl needs TRL: pip install "ftcli\[trl\]"$'):
        importlib.import_module("ftcli.integrations.trl")


# ---------------------------------------------------------------------------------------------
# Arguments and spans
# ---------------------------------------------------------------------------------------------
@needs_trl
def test_bad_arguments_fail_before_training(tmp_path):
    from ftcli.integrations.trl import FlowTracerGRPOTrainer, credit_options_from

    tok = char_tokenizer()
    kw = dict(model=tiny_causal_lm("qwen3", vocab_size=len(tok)), reward_funcs=distinct_chars,
              args=config(tmp_path), train_dataset=dataset(), processing_class=tok)
    with pytest.raises(ValueError, match="needs the final-answer span"):
        FlowTracerGRPOTrainer(credit="flow", **kw)
    with pytest.raises(ValueError, match="unknown credit rule"):
        FlowTracerGRPOTrainer(credit="nope", task="countdown", **kw)
    with pytest.raises(ValueError, match="--select"):
        FlowTracerGRPOTrainer(credit="flow", task="countdown", credit_options={"select": "middle"}, **kw)
    with pytest.raises(ValueError, match="layer"):
        FlowTracerGRPOTrainer(credit="flow", task="countdown", layers="7:9", **kw)
    opts = credit_options_from({"ratio": 0.2, "gamma": 2.0, "weighting": "tanh", "fai_window": [2, 5]})
    assert opts == CreditOptions(ratio=0.2, gamma=2.0, weighting="tanh", fai_window=(2, 5))


@needs_trl
def test_spans_mark_the_question_and_the_answer_tokens(tmp_path):
    ft, _ = trainers(tmp_path)
    inputs = batch(ft)
    tok = ft.processing_class
    from ftcli.integrations.trl import ANSWER_MASK, QUESTION_MASK

    for b in range(4):
        q_ids = inputs["prompt_ids"][b][inputs[QUESTION_MASK][b]]
        assert tok.decode(q_ids.tolist()) == QUESTIONS[b // 2]
        a_ids = inputs["completion_ids"][b][inputs[ANSWER_MASK][b]]
        want = {0: "3 + 5", 1: "9+2*4", 2: "", 3: "8"}[b]
        assert tok.decode(a_ids.tolist()) == want


# ---------------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------------
@needs_trl
def test_a_training_step_runs_credits_tokens_and_changes_weights(tmp_path):
    ft, _ = trainers(tmp_path)
    ft.answer_span = lambda text: (max(len(text) - 4, 0), len(text)) if text else None  # random text has no tags
    before = {n: p.detach().clone() for n, p in ft.model.named_parameters()}
    ft.train()
    log = ft.state.log_history[0]
    assert log["reward_std"] > 0  # non-zero advantages
    assert 0 < log["flowtracer/credited_frac"] <= 0.5  # ceil(0.4 n) of n tokens per sequence
    assert log["flowtracer/fallback_frac"] == 0
    changed = [n for n, p in ft.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) > 0


@needs_trl
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_gamma_one_gives_trls_own_loss(tmp_path, spy, loss_type):
    ft, trl = trainers(tmp_path, options=CreditOptions(gamma=1.0), loss_type=loss_type)
    inputs = with_old_logps(trl, batch(ft))
    forwards = []  # model forwards per loss
    hooks = [m.register_forward_pre_hook(lambda mod, args, who=who: forwards.append(who))
             for who, m in (("ours", ft.model), ("theirs", trl.model))]
    ours = ft._compute_loss(ft.model, dict(inputs))
    theirs = trl._compute_loss(trl.model, dict(inputs))
    for h in hooks:
        h.remove()
    assert forwards == ["ours", "theirs"]  # one each: W came from TRL's own policy forward
    assert len(spy) == 1 and spy[0][0] is not None  # credit ran, on a captured W
    assert bool((spy[0][1].weights == 1).all())
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    # the same batch with credit on does change the loss (the comparison can fail)
    ft.credit_options = CreditOptions(gamma=1.5)
    assert not torch.allclose(ft._compute_loss(ft.model, dict(inputs)), theirs, rtol=1e-4, atol=0)


@needs_trl
@pytest.mark.parametrize("rule", ["flow", "entropy"])
def test_per_token_loss_is_trls_times_ftcli_weights(tmp_path, spy, rule):
    ft, trl = trainers(tmp_path, credit=rule, options=CreditOptions(gamma=1.5, ratio=0.4), loss_type="dr_grpo")
    inputs = with_old_logps(trl, batch(ft), noise=0.3)
    P = inputs["prompt_ids"].shape[1]
    mask = inputs["completion_mask"].bool()
    ours, theirs = torch.zeros(mask.shape), torch.zeros(mask.shape)
    for b, t in mask.nonzero().tolist():
        one = torch.zeros(mask.shape, dtype=torch.long)
        one[b, t] = 1
        ours[b, t] = ft._compute_loss(ft.model, {**inputs, "tool_mask": one}).detach()
        theirs[b, t] = trl._compute_loss(trl.model, {**inputs, "tool_mask": one}).detach()
    w = spy[-1][1].weights[:, P:]  # [B, C] ftcli's weights on this batch
    assert all(torch.equal(c[1].weights, spy[-1][1].weights) for c in spy)
    assert bool((w[mask] == 1.5).any()) and bool((w[mask] == 1.0).any())
    assert bool((theirs[mask] != 0).all())
    torch.testing.assert_close(ours, w * theirs, rtol=1e-6, atol=1e-9)
    if rule == "flow":  # the weights are ftcli's own on W from a separate eager-equivalent pass
        W, _, ci = spy[-1]
        ids = ci.input_ids
        W_ref = mean_attention(ft.model, ids, ci.attention_mask.long(), layers="mid")
        ref = compute_credit("flow", CreditInputs(
            input_ids=ids, attention_mask=ci.attention_mask, response_mask=ci.response_mask,
            question_mask=ci.question_mask, answer_mask=ci.answer_mask, advantages=ci.advantages, W=W_ref,
        ), CreditOptions(gamma=1.5, ratio=0.4))
        assert torch.equal(ref.weights, spy[-1][1].weights)
        assert bool(ref.fallback.tolist() == [False, False, True, False])  # row 2 has no answer


@needs_trl
@pytest.mark.parametrize("layers", ["mid", "1:5"])
def test_captured_W_equals_eager_mean_over_the_layers(tmp_path, spy, layers):
    ft, _ = trainers(tmp_path, layers=layers)
    inputs = batch(ft)
    ft.model.train()  # as in training (gradient checkpointing on): W still counts each layer once
    ft.current_gradient_accumulation_steps = 1  # set by TRL's training loop
    enable = getattr(ft.model, "activation_checkpointing_enable", None) or ft.model.gradient_checkpointing_enable
    enable()  # what TRL's training loop does (GRPOConfig.gradient_checkpointing defaults to True)
    ft._compute_loss(ft.model, dict(inputs)).backward()
    ft.model.eval()
    W = spy[0][0]
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    am = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    model = ft.model
    orig = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = model(input_ids=ids, attention_mask=am, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(orig)
    chosen = layer_range(layers, len(att))
    A = torch.stack([att[i].float() for i in chosen]).mean(dim=(0, 2))  # [B, query, key]
    v = am.bool()
    ref = A.transpose(1, 2).triu(1) * v[:, :, None] * v[:, None, :]  # [B, key, query]
    assert W.shape == ref.shape and W.sum() > 0
    torch.testing.assert_close(W, ref, atol=1e-5, rtol=0)
    assert model.config._attn_implementation == orig


@needs_trl
@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_credit_rule_runs_inside_trls_update(tmp_path, spy, rule):
    ft, _ = trainers(tmp_path, credit=rule)
    inputs = batch(ft)
    loss = ft._compute_loss(ft.model, dict(inputs))
    assert torch.isfinite(loss)
    loss.backward()
    if rule == "none":  # TRL's own loss, no credit
        assert spy == []
        return
    (W, credit, ci), = spy
    needs = RULES[rule].needs
    assert (W is not None) == ("attention" in needs)
    assert (ci.entropy is not None) == ("entropy" in needs) and (ci.logp is not None) == ("logp" in needs)
    P = inputs["prompt_ids"].shape[1]
    resp = inputs["completion_mask"].bool()
    assert bool((credit.weights[:, :P] == 1).all()) and bool((credit.weights[:, P:][~resp] == 1).all())
