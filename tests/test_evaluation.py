"""`ft eval` on CPU: metric estimators against hand-computed values, suites, checkpoint
resolution, resume after interruption, results schema and protocol, the CLI on tiny-qwen3.

A fake task (first character of the response decides both graders' verdicts) stands in for the
task plugins, so these tests do not depend on them; one CLI test uses the real `math500` suite
and is skipped while `ftcli.tasks` has no `get_task`."""

import json
import math

import pytest
from typer.testing import CliRunner

import ftcli.evaluation.benchmarks as ev
import ftcli.evaluation.suites as suites
import ftcli.generation as gen
from ftcli.cli import app
from ftcli.evaluation.benchmarks import Target, collect_results, evaluate, resolve_checkpoint
from ftcli.evaluation.metrics import (
    MetricError,
    avg_at_k,
    compute_metric,
    disagreement_rate,
    maj_at_k,
    majority_correct,
    mean_pass_at_k,
    parse_metric,
    pass_at_k,
    standard_metrics,
)
from ftcli.evaluation.suites import EvalError, load_suite
from ftcli.fetch.models import load_model

runner = CliRunner()


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # n - c < k: every pair has a correct sample
    assert pass_at_k(4, 4, 4) == 1.0
    # numerically stable where the binomials overflow floats
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    assert pass_at_k(2000, 7, 1000) == pytest.approx(1 - math.comb(1993, 1000) / math.comb(2000, 1000))
    assert mean_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(0.25)
    with pytest.raises(MetricError):
        pass_at_k(3, 1, 4)


def test_avg_at_k_hand_values():
    c = [[True, False, True, True], [False, False, False, False]]
    assert avg_at_k(c, 4) == pytest.approx(0.375)  # (3/4 + 0) / 2
    assert avg_at_k(c, 2) == pytest.approx(0.25)  # first two samples: (1/2 + 0) / 2
    assert avg_at_k([[True], [False], [True]], 1) == pytest.approx(2 / 3)
    assert compute_metric("avg@4", c) == compute_metric("pass@1", c) == pytest.approx(0.375)


def test_maj_at_k_ties_and_abstentions():
    # 2-2 tie: the answer seen first wins (Counter.most_common order)
    assert majority_correct(["5", "6", "5", "6"], [True, False, True, False]) is True
    assert majority_correct(["6", "5", "5", "6"], [False, True, True, False]) is False
    # a clear majority beats an earlier answer
    assert majority_correct(["6", "5", "5"], [False, True, True]) is True
    # abstentions (None / empty) do not vote; all abstain -> wrong
    assert majority_correct([None, None, "3"], [False, False, True]) is True
    assert majority_correct([None, ""], [False, False]) is False
    # normalisation: spaces, $...$, \left/\right
    assert majority_correct(["x", " 1/2 ", "$1/2$"], [False, True, True]) is True
    # maj@k only looks at the first k samples
    assert majority_correct(["7", "8", "8"], [True, False, False], k=1) is True
    answers = [["5", "6", "5", "6"], ["1", "1", "2", "2"]]
    correct = [[True, False, True, False], [False, False, True, True]]
    assert maj_at_k(answers, correct, 4) == pytest.approx(0.5)
    assert compute_metric("maj@4", correct, answers) == pytest.approx(0.5)


def test_disagreement_and_panel():
    assert disagreement_rate([True, False, True, None], [True, True, False, False]) == pytest.approx(2 / 3)
    assert disagreement_rate([True], [None]) is None
    c = [[True, False, True, True], [False, False, False, False]]
    a = [["1", "2", "1", "1"], ["3", "3", "4", "4"]]
    m = standard_metrics(c, a)
    assert set(m) == {"avg@4", "pass@1", "pass@2", "pass@4", "maj@4"}
    assert m["pass@4"] == pytest.approx(0.5) and m["maj@4"] == pytest.approx(0.5)
    assert m["pass@2"] == pytest.approx((1 - 0 / 6 + 0) / 2)  # c=3 of 4: C(1,2)=0 -> 1
    assert set(standard_metrics([[True], [False]], [["1"], ["2"]])) == {"avg@1", "pass@1"}
    assert parse_metric("avg@16") == ("avg", 16)
    with pytest.raises(MetricError, match="unknown metric"):
        parse_metric("best@3")


# ---------------------------------------------------------------------------------------------
# suites and checkpoints
# ---------------------------------------------------------------------------------------------
def test_shipped_suites():
    names = suites.list_suites()
    for s in ["aime24", "aime25", "amc23", "math500", "olympiadbench", "minerva", "gsm8k",
              "countdown", "crossthinkqa", "math", "paper-llama"]:
        assert s in names
        load_suite(s)
    assert [b.name for b in load_suite("math").benchmarks] == ["aime24", "aime25", "amc23", "math500", "olympiadbench"]
    assert [b.name for b in load_suite("paper-llama").benchmarks] == ["amc23", "math500", "olympiadbench", "minerva", "gsm8k"]
    a = load_suite("aime24").benchmarks[0]
    assert (a.metric, a.n, a.temperature, a.top_p, a.top_k) == ("avg@16", 16, 0.99, 1.0, 100)
    assert load_suite("amc23").benchmarks[0].metric == "pass@1"
    with pytest.raises(EvalError, match="unknown suite 'nope' \\(known: .*aime24"):
        load_suite("nope")
    o = suites.apply_overrides(a, n=4, seed=3)
    assert (o.metric, o.n, o.seed) == ("avg@4", 4, 3)


def _ckpt(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_resolve_checkpoint(tmp_path):
    run = tmp_path / "x"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")  # a run folder has its resolved config too
    s10 = _ckpt(run / "checkpoints" / "step_000010")
    s20 = _ckpt(run / "checkpoints" / "step_000020")
    s30 = _ckpt(run / "checkpoints" / "step_000030")
    assert resolve_checkpoint(str(run)) == s30  # no final/: highest step
    final = _ckpt(run / "checkpoints" / "final")
    assert resolve_checkpoint(str(run)) == final
    assert resolve_checkpoint(f"{run}:final") == final
    assert resolve_checkpoint(f"{run}:20") == s20 == resolve_checkpoint(f"{run}:step_000020")
    assert resolve_checkpoint(str(s10)) == s10  # a model folder is itself
    rows = [{"step": 5, "loss": 1.0}, {"step": 10, "val_accuracy": 0.4}, {"step": 20, "val_accuracy": 0.5},
            {"step": 30, "val_accuracy": 0.5}, {"step": 40, "val_accuracy": 0.9}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    # step 40 has no checkpoint; 20 and 30 tie at 0.5 -> the later step
    assert resolve_checkpoint(f"{run}:best") == s30
    with pytest.raises(EvalError, match="no checkpoint for step 7"):
        resolve_checkpoint(f"{run}:7")
    with pytest.raises(EvalError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"))
    assert ev.default_out("aime24", None, f"{run}:best", s30) == run / "eval" / "best" / "aime24"
    assert ev.default_out("aime24", None, str(run), final) == run / "eval" / "aime24"


# ---------------------------------------------------------------------------------------------
# end to end with a fake task
# ---------------------------------------------------------------------------------------------
class FakeTask:
    """Graders look at the first response character: math_verify accepts a-m, sympy a-z."""

    name = "fake"

    def load(self, split):
        return [{"id": f"p{i}", "question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(5)]

    def prompt(self, s):
        return [{"role": "user", "content": s["question"]}]

    def assistant_prefix(self, s):
        return ""

    def answer_span(self, r):
        return (0, 1) if r else None

    def grade(self, r, s):
        c = r[:1]
        ok = "a" <= c <= "m"
        return {"math_verify": ok, "sympy": "a" <= c <= "z", "extracted": c or None, "correct": ok,
                "reward": float(ok)}

    def verify(self, r, s):
        return self.grade(r, s)["math_verify"]

    def reward(self, r, s):
        return float(self.verify(r, s))


SUITE = """task = "fake"
split = "test"
metric = "avg@4"
n = 4
temperature = 1.0
top_p = 1.0
top_k = 0
max_new_tokens = 6
seed = 0
"""


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-qwen3")
    return model, tok, Target("tiny-qwen3", "tiny-qwen3")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setattr(ev, "get_task", lambda name: FakeTask())
    p = tmp_path / "fake.toml"
    p.write_text(SUITE)
    return p


def test_results_schema_and_protocol(tiny, fake, tmp_path):
    doc, path = evaluate(str(fake), out=tmp_path / "o", loaded=tiny, batch_size=8, limit=3)
    assert path == tmp_path / "o" / "results.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    assert doc["schema"] == 1 and doc["model"] == "tiny-qwen3" and set(doc["benchmarks"]) == {"fake"}
    e = doc["benchmarks"]["fake"]
    assert e["metric"] == "avg@4" and e["n_problems"] == 3 and e["n_samples"] == 12
    assert 0.0 <= e["value"] <= 1.0 and e["value"] == e["metrics"]["avg@4"]
    assert set(e["metrics"]) == {"avg@4", "pass@1", "pass@2", "pass@4", "maj@4"}
    assert e["second_grader"]["name"] == "sympy" and e["second_grader"]["value"] >= e["value"]
    assert e["second_grader"]["disagreement_rate"] is not None
    p = e["protocol"]
    assert {k: p[k] for k in ("temperature", "top_p", "top_k", "n", "seed", "max_new_tokens", "grader",
                              "second_grader", "model", "backend", "limit", "task", "split")} == {
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "n": 4, "seed": 0, "max_new_tokens": 6,
        "grader": "math_verify", "second_grader": "sympy", "model": "tiny-qwen3", "backend": "hf",
        "limit": 3, "task": "fake", "split": "test"}
    assert doc["avg"]["value"] == e["value"]
    rows = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {(r["id"], r["sample"]) for r in rows} == {(f"p{i}", j) for i in range(3) for j in range(4)}
    r = rows[0]
    assert {"id", "sample", "response", "extracted", "correct", "verdicts", "reward", "finished"} <= set(r)
    assert set(r["verdicts"]) == {"math_verify", "sympy"} and r["extracted"] == (r["response"][:1] or None)
    assert (tmp_path / "o" / "protocol.json").is_file()


def test_resume_after_interruption(tiny, fake, tmp_path, monkeypatch):
    out = tmp_path / "o"
    doc1, _ = evaluate(str(fake), out=out, loaded=tiny, batch_size=4)
    sfile = out / "samples.jsonl"
    full = sfile.read_text()
    lines = full.splitlines(keepends=True)
    # interrupted while writing problem p2: p0, p1 complete, p2 has 2 samples + a torn line
    sfile.write_text("".join(lines[:10]) + lines[10][:15])
    calls = []
    real = gen.generate

    def counting(model, tok, prompts, **kw):
        calls.append(len(prompts))
        return real(model, tok, prompts, **kw)

    monkeypatch.setattr(gen, "generate", counting)
    doc2, _ = evaluate(str(fake), out=out, loaded=tiny, batch_size=4)
    assert sum(calls) == 3  # only p2, p3, p4 were generated again
    rows = [json.loads(x) for x in sfile.read_text().splitlines()]
    assert len(rows) == 20 and len({(r["id"], r["sample"]) for r in rows}) == 20
    key = lambda rs: sorted((r["id"], r["sample"], r["response"]) for r in rs)  # noqa: E731
    assert key(rows) == key(json.loads(x) for x in full.splitlines())  # per-row seeds: same draws
    assert doc2["benchmarks"]["fake"]["value"] == doc1["benchmarks"]["fake"]["value"]
    calls.clear()
    evaluate(str(fake), out=out, loaded=tiny, batch_size=4)  # complete: nothing to do
    assert calls == []
    with pytest.raises(EvalError, match="n=4, not 8"):
        evaluate(str(fake), out=out, loaded=tiny, overrides={"n": 8})


def test_group_layout_and_compare(tiny, fake, tmp_path):
    g = tmp_path / "grp.toml"
    g.write_text(f'suites = ["{fake}"]\nlabel = "G"\n')
    doc, path = evaluate(str(g), out=tmp_path / "a" / "eval" / "grp", loaded=tiny, limit=2)
    assert (tmp_path / "a" / "eval" / "grp" / "fake" / "samples.jsonl").is_file()
    evaluate(str(fake), out=tmp_path / "b" / "eval" / "fake", loaded=tiny, limit=2,
             overrides={"seed": 1})
    la, ra = collect_results(str(tmp_path / "a"))
    assert la == "a" and set(ra) == {"fake"}
    res = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "Δ" in res.output and "seed=0" in res.output and "seed=1" in res.output


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_eval_tiny_model(fake, tmp_path):
    out = tmp_path / "cli"
    res = runner.invoke(app, ["eval", str(fake), "--model", "tiny-qwen3", "--limit", "2",
                              "--max-new-tokens", "5", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["benchmarks"]["fake"]["n_problems"] == 2
    assert doc["benchmarks"]["fake"]["protocol"]["max_new_tokens"] == 5
    assert "avg@4" in res.output and "T=1 top-p=1 top-k=0" in res.output


def test_cli_eval_ckpt_run_dir(fake, tmp_path, monkeypatch, tiny):
    model, tok, _ = tiny
    run = tmp_path / "runs" / "x"
    model.save_pretrained(run / "checkpoints" / "final")
    tok.save_pretrained(run / "checkpoints" / "final")
    res = runner.invoke(app, ["eval", "aime24", "--ckpt", str(run), "--limit", "1", "--n", "2",
                              "--max-new-tokens", "4", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((run / "eval" / "aime24" / "results.json").read_text())
    e = doc["benchmarks"]["aime24"]
    assert doc["model"] == "x:final" and e["metric"] == "avg@2" and e["protocol"]["ckpt"].endswith("final")


def test_cli_errors_are_one_line():
    res = runner.invoke(app, ["eval", "nope", "--model", "tiny-qwen3"])
    assert res.exit_code == 1
    assert "unknown suite 'nope'" in res.output and "aime24" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["eval", "list"])
    assert res.exit_code == 0 and "paper-llama" in res.output


def _real_tasks():
    try:
        ev.get_task("math500")
        return True
    except Exception:  # noqa: BLE001
        return False


def _math500_fixture(root):
    """A 3-problem math500 file in the registry's layout (no benchmark files needed)."""
    (root / "math500").mkdir(parents=True)
    rows = [{"problem": f"What is {i} + {i}?", "solution": f"{i} + {i} = {2 * i}", "answer": str(2 * i),
             "subject": "Algebra", "level": 1, "unique_id": f"test/algebra/{i}.json"} for i in range(1, 4)]
    (root / "math500" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("data", ["fixture", pytest.param("real", marks=pytest.mark.needs_data)])
def test_cli_real_suite_math500(tmp_path, data):
    """The real math500 suite through the CLI, on a fixture file given by --data-root (or on
    the benchmark file): results.json records the file and its sha256."""
    out = tmp_path / "m"
    root = ["--data-root", str(_math500_fixture(tmp_path / "data"))] if data == "fixture" else []
    res = runner.invoke(app, ["eval", "math500", "--model", "tiny-qwen3", "--limit", "2",
                              "--max-new-tokens", "8", "--out", str(out), "-q", *root])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    e = doc["benchmarks"]["math500"]
    assert e["n_problems"] == 2 and e["protocol"]["grader"] in ("math_verify", "verify")
    assert e["data"]["source"] == "files" and len(e["data"]["files"]["test"]["sha256"]) == 64
    if data == "fixture":
        assert e["data"]["root"] == str(tmp_path / "data")
        ids = {json.loads(x)["id"] for x in (out / "samples.jsonl").read_text().splitlines()}
        assert ids == {"test/algebra/1.json", "test/algebra/2.json"}


def test_cli_missing_benchmark_file_is_one_line(tmp_path):
    res = runner.invoke(app, ["eval", "aime24", "--model", "tiny-qwen3", "--limit", "1", "-q",
                              "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "aime24/test.jsonl" in res.output and "ft data fetch aime24" in res.output


def test_grade_sample_fallbacks():
    b = load_suite("gsm8k").benchmarks[0]  # grader math_verify, second sympy

    class OnlyCorrect:  # like gsm8k: grade() has no math_verify / sympy
        def grade(self, r, s):
            return {"extracted": "4", "correct": True, "reward": 1.0}

    class NoExtracted:  # grade() names no answer: the answer span's text is recorded
        def grade(self, r, s):
            return {"extracted": None, "correct": False, "reward": 0.1}

        def answer_span(self, r):
            return (2, 3)

    class Crashes(OnlyCorrect):
        def grade(self, r, s):
            raise RuntimeError("boom")

    g = ev.grade_sample(OnlyCorrect(), b, "= 4", {})
    assert g["correct"] is True and g["verdicts"] == {"verify": True} and g["extracted"] == "4"
    assert ev.grader_names(OnlyCorrect(), b, {}) == ("verify", None)
    g = ev.grade_sample(NoExtracted(), b, "= 4", {})
    assert (g["correct"], g["extracted"], g["reward"]) == (False, "4", 0.1)
    g = ev.grade_sample(Crashes(), b, "x", {})
    assert g["correct"] is False and "boom" in g["grade_error"]
    assert ev.grader_names(FakeTask(), b, {}) == ("math_verify", "sympy")


# ---------------------------------------------------------------------------------------------
# issue 12: gold answers in the rows, grading timeouts, the extraction option
# ---------------------------------------------------------------------------------------------
class TimingOutTask(FakeTask):
    """Rows carry Countdown-like `numbers`; a response starting with a vowel times the
    math_verify grader out on CPU time, one starting with 'z' on the wall clock."""

    def load(self, split):
        return [{**s, "numbers": [i, i]} for i, s in enumerate(super().load(split))]

    def grade(self, r, s):
        g = super().grade(r, s)
        c = r[:1]
        g["timeouts"] = {"math_verify": "cpu"} if c in "aeiou" and c else {"sympy": "wall"} if c == "z" else {}
        return g


def test_rows_carry_the_gold_answer_and_timeouts_are_counted(tiny, fake, tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "get_task", lambda name: TimingOutTask())
    monkeypatch.setattr(ev, "sample_task", _scripted(["a", "z", "b", "e"]))
    doc, _ = evaluate(str(fake), out=tmp_path / "o", loaded=tiny, limit=3)
    rows = [json.loads(x) for x in (tmp_path / "o" / "samples.jsonl").read_text().splitlines()]
    for r in rows:
        i = int(r["id"][1:])
        assert r["answer"] == str(2 * i) and r["numbers"] == [i, i]  # auditable without the data file
    by = {r["response"]: r.get("timeouts") for r in rows}
    assert by == {"a": {"math_verify": "cpu"}, "z": {"sympy": "wall"}, "b": None, "e": {"math_verify": "cpu"}}
    e = doc["benchmarks"]["fake"]
    assert e["grading_timeouts"] == {"cpu": 6, "wall": 3, "samples": 9}  # 3 problems x (a, z, e)


def _scripted(responses):
    """A sample_task that answers every problem with `responses` (one per sample)."""
    from ftcli.generation import Rollout

    def sample_task(model, tok, task, problems, *, n, progress=None, **kw):
        groups = [[Rollout(prompt_text="", prompt_ids=[], response_text=t, response_ids=[1], response_offsets=[(0, 1)],
                           finished=True) for t in responses[:n]] for _ in problems]
        yield list(range(len(problems))), groups

    return sample_task


def test_extraction_option_is_in_every_math_protocol(tmp_path):
    root = str(_math500_fixture(tmp_path / "data"))
    common = ["--model", "tiny-qwen3", "--limit", "1", "--max-new-tokens", "4", "-q", "--data-root", root]
    out = tmp_path / "m"
    res = runner.invoke(app, ["eval", "math500", *common, "--out", str(out)])
    assert res.exit_code == 0, res.output
    p = json.loads((out / "results.json").read_text())["benchmarks"]["math500"]["protocol"]
    assert p["extraction"] == "boxed" and ev.protocol_str(p).endswith(" · boxed · first 1")
    # the same samples graded with another extraction would mix grades: refused
    res = runner.invoke(app, ["eval", "math500", *common, "--out", str(out), "--extraction", "boxed-or-last-math"])
    assert res.exit_code == 1 and "extraction='boxed'" in res.output
    out2 = tmp_path / "m2"
    res = runner.invoke(app, ["eval", "math500", *common, "--out", str(out2), "--extraction", "boxed-or-last-math"])
    assert res.exit_code == 0, res.output
    p = json.loads((out2 / "results.json").read_text())["benchmarks"]["math500"]["protocol"]
    assert p["extraction"] == "boxed-or-last-math" and " · boxed-or-last-math" in ev.protocol_str(p)
    res = runner.invoke(app, ["eval", "math500", *common, "--extraction", "anything"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "extraction must be one of boxed, boxed-or-last-math" in res.output
    res = runner.invoke(app, ["eval", "gsm8k", *common, "--extraction", "boxed-or-last-math"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "--extraction boxed-or-last-math is an option of the math tasks" in res.output
