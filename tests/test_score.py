"""`ft score` through Typer's runner on a tiny random model, and the scoring library."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ftcli.cli import app
from ftcli.fetch.models import load_model
from ftcli.flow import trace_flow
from ftcli.score.pairs import answer_span, backbone_edges, score_pairs
from ftcli.spans import find_question_span, last_boxed_span, span_to_token_mask

runner = CliRunner()


def test_answer_span_default_boxed_and_regex():
    r = "so 3+4 = \\boxed{7}. Check: \\boxed{\\frac{1}{2}} done"
    s = answer_span(r)
    assert r[s[0] : s[1]] == "\\frac{1}{2}"
    s = answer_span("The answer is 42.", r"answer is (\d+)")
    assert s == (14, 16)
    assert answer_span("no box here") is None
    assert answer_span("\\boxed{12", None) is None  # truncated: unclosed
    with pytest.raises(ValueError, match="not a valid regex"):
        answer_span("x", "(")


def test_span_to_token_mask_partial_overlap():
    offsets = [(0, 3), (3, 7), (7, 8), (8, 12), (0, 0)]
    assert span_to_token_mask(offsets, (5, 9)).tolist() == [False, True, True, True, False]
    assert span_to_token_mask(offsets, None).tolist() == [False] * 5
    assert last_boxed_span("a\\boxed{b{c}}d") == (8, 12)
    assert find_question_span("<s>user\nWhat?\n", "What?") == (8, 13)


def test_score_pairs_matches_trace_flow_and_edges():
    model, tok = load_model("tiny-qwen3")
    pairs = [("What is 2+3?", "2+3 = 5, so \\boxed{5}."), ("Name a colour.", "Blue, probably.")]
    items = score_pairs(model, tok, pairs, top_edges=5, batch_size=2)
    a, b = items
    assert not a.fallback and b.fallback  # the second has no boxed answer
    assert a.answer_text == "5" and b.answer_text is None
    assert 0 < sum(a.selected) <= a.k_sel
    assert not any(b.selected) and set(b.weights) == {1.0}
    # question tokens spell the question; response tokens spell the response (+ EOS)
    q = "".join(t for t, m in zip(a.tokens, a.question, strict=True) if m)
    assert q == "What is 2+3?"
    resp = "".join(t for t, s in zip(a.tokens, a.segment, strict=True) if s == "response")
    assert resp.startswith("2+3 = 5, so \\boxed{5}.")
    # batch of 2 (padded) equals scoring alone
    alone = score_pairs(model, tok, pairs[:1], top_edges=5, batch_size=1)[0]
    torch.testing.assert_close(torch.tensor(alone.tau), torch.tensor(a.tau), rtol=1e-4, atol=1e-6)
    assert alone.selected == a.selected
    # edges are sorted, positive, and only leave non-answer tokens with h > 0
    flows = [e["flow"] for e in a.edges]
    assert flows == sorted(flows, reverse=True) and all(f > 0 for f in flows)
    for e in a.edges:
        assert not a.answer[e["from"]] and a.h[e["from"]] > 0 and e["from"] < e["to"]


def test_backbone_edges_on_a_diamond():
    W = torch.zeros(4, 4)
    W[0, 1], W[0, 2], W[1, 3], W[2, 3] = 0.5, 0.25, 1.0, 1.0
    q = torch.tensor([[True, False, False, False]])
    a = torch.tensor([[False, False, False, True]])
    r = torch.tensor([[False, True, True, True]])
    res = trace_flow(W[None], q, a, r)
    edges = backbone_edges(W, res.h[0], res.f[0], a[0], top=10)
    got = {(i, k): round(v, 6) for i, k, v in edges}
    assert got == {(0, 1): round(2 / 3, 6), (1, 3): round(2 / 3, 6), (0, 2): round(1 / 3, 6), (2, 3): round(1 / 3, 6)}


def test_cli_score_prompt_response_json_html(tmp_path):
    out_json, out_html = tmp_path / "c.json", tmp_path / "c.html"
    res = runner.invoke(
        app,
        ["score", "--model", "tiny-qwen3", "--prompt", "What is 2+3?", "--response",
         "2+3 = 5, so \\boxed{5}.", "--json", str(out_json), "--html", str(out_html)],
    )
    assert res.exit_code == 0, res.output
    assert "selected" in res.output and "answer: 5" in res.output
    doc = json.loads(out_json.read_text())
    item = doc["items"][0]
    for key in ("tokens", "offsets", "h", "f", "tau", "selected", "weights"):
        assert len(item[key]) == len(item["tokens"])
    assert doc["settings"]["ratio"] == 0.4
    page = out_html.read_text()
    assert page.startswith("<!doctype html>") and "class=\"t sel" in page and "<script" not in page


def test_cli_score_jsonl_and_fallback_message(tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text(
        json.dumps({"prompt": "Add 1 and 1.", "response": "It is \\boxed{2}."}) + "\n"
        + json.dumps({"prompt": "Say hi.", "response": "hi"}) + "\n"
    )
    res = runner.invoke(app, ["score", "--model", "tiny-llama", "--input", str(src)])
    assert res.exit_code == 0, res.output
    assert "no answer found" in res.output and "2 pairs scored; 1 without an answer span" in res.output


def test_cli_score_bad_input_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    res = runner.invoke(app, ["score", "--model", "tiny-qwen3", "--input", str(bad)])
    assert res.exit_code == 1
    assert "bad.jsonl:1: expected a JSON object with prompt and response" in res.output
    res = runner.invoke(app, ["score", "--model", "tiny-qwen3", "--prompt", "x"])
    assert res.exit_code != 0
    res = runner.invoke(app, ["score", "--model", "tiny-qwen3", "--prompt", "x", "--response", "y", "--layers", "banana"])
    assert res.exit_code == 1 and "Error:" in res.output


# -- issue 12: hostile inputs -------------------------------------------------------------------
def test_cli_score_non_utf8_is_one_line(tmp_path):
    runner = CliRunner()
    bad = "caf\udcff"  # how Python hands over an undecodable argv byte (surrogateescape)
    for flag in ("--prompt", "--response"):
        argv = {"--prompt": "What is 2+3?", "--response": "\\boxed{5}"}
        argv[flag] = bad
        res = runner.invoke(app, ["score", "--model", "tiny-qwen3", *[x for kv in argv.items() for x in kv]])
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1, res.output
        assert lines[0].startswith(f"Error: {flag} is not valid UTF-8 (character 4)")
    src = tmp_path / "pairs.jsonl"
    src.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xff", "response": "b"}\n')
    res = runner.invoke(app, ["score", "--model", "tiny-qwen3", "--input", str(src)])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: {src}:2: not valid UTF-8 (byte 16 of the line)  (FT_DEBUG=1 for the traceback)"]
    src.write_text('{"prompt": "a", "response": "b"}\r\n{"prompt": "x\\udcff", "response": "b"}\n')
    res = runner.invoke(app, ["score", "--model", "tiny-qwen3", "--input", str(src)])
    assert res.exit_code == 1 and f"Error: {src}:2: field prompt: not valid UTF-8" in res.output


def test_score_refuses_inputs_beyond_the_context_before_any_forward(monkeypatch, tmp_path):
    import ftcli.score.pairs as scoring

    calls = []
    monkeypatch.setattr(scoring, "mean_attention", lambda *a, **k: calls.append(1) / 0)
    model, tok = load_model("tiny-qwen3")
    ctx = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"^pair 2: \d+ tokens .*more than the limit of {ctx} "):
        score_pairs(model, tok, [("q", "short"), ("q", "7" * (ctx + 10))])
    with pytest.raises(ValueError, match=r"^x:1: \d+ tokens .*the limit of 16 "):
        score_pairs(model, tok, [("q", "a longer response than sixteen tokens")], max_tokens=16, names=["x:1"])
    with pytest.raises(ValueError, match=rf"^--max-tokens must be <= {ctx}, the model's context"):
        score_pairs(model, tok, [("q", "r")], max_tokens=ctx + 1)
    assert calls == []  # refused before any forward pass
    src = tmp_path / "long.jsonl"
    src.write_text('{"prompt": "q", "response": "r"}\n' + json.dumps({"prompt": "q", "response": "9" * 100}) + "\n")
    res = CliRunner().invoke(app, ["score", "--model", "tiny-qwen3", "--input", str(src), "--max-tokens", "40"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert f"Error: {src}:2: " in res.output and "more than the limit of 40" in res.output


@pytest.mark.parametrize(("argv", "says"), [(["--gamma", "nan"], "--gamma must be > 0, finite (got nan)"),
                                            (["--gamma", "-1"], "--gamma must be > 0"),
                                            (["--max-tokens", "0"], "--max-tokens must be >= 1")])
def test_cli_score_numeric_ranges(argv, says):
    res = CliRunner().invoke(app, ["score", "--model", "tiny-qwen3", "-p", "q", "-r", "r", *argv])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {says}"), res.output
