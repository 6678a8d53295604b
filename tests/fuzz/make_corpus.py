"""Build `hostile_outputs.jsonl`, the committed corpus of hostile model outputs (issue 12).

    python tests/fuzz/make_corpus.py          # rewrites tests/fuzz/hostile_outputs.jsonl

Deterministic (fixed seed). One JSON object per line:

    {"id": ..., "kind": ..., "task": "math" | "gsm8k" | "crossthinkqa" | "countdown",
     "response": ..., "gold": ..., "must_reject": bool}

`task` and `gold` say which verifier the row targets (countdown golds are
`{"numbers": [...], "target": n}`); a `must_reject` row is wrong for that gold by
construction, so a True verdict is a false accept. Every row is also run through every other
verifier (with a fixed sample) for the time bound and the no-execution check. `CANARY` in a
response is replaced at test time by a path that must not be created.

Inputs too big to store (`'}' * 10**7`, 10 MB of text) are built at test time by
`huge_outputs()`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).with_name("hostile_outputs.jsonl")

INJECTIONS = [
    "__import__('os').system('touch CANARY')",
    '__import__("os").system("touch CANARY")',
    "os.system('touch CANARY')",
    "exec(\"open('CANARY', 'w')\")",
    "eval(\"open('CANARY', 'w')\")",
    "open('CANARY', 'w').write('x')",
    "subprocess.run(['touch', 'CANARY'])",
    "().__class__.__bases__[0].__subclasses__()",
    "lambda: __import__('os').system('touch CANARY')",
    "\\write18{touch CANARY}",
    "\\immediate\\write18{touch CANARY}",
    "\\input{/etc/passwd}",
    "\\include{CANARY}",
    "\\openout1=CANARY",
    "$(touch CANARY)",
    "`touch CANARY`",
    "{{7*6}}",
    "${jndi:ldap://x/a}",
    "'; DROP TABLE results; --",
    "import os; os.system('touch CANARY')",
    "sympy.sympify(\"__import__('os').system('touch CANARY')\")",
    "getattr(__builtins__, 'exec')('1')",
    "\\def\\x{\\x}\\x",
    "\\newcommand{\\a}{\\a}\\a",
    "\\catcode`\\{=12",
]

WRAPPERS = [
    "{}",
    "\\boxed{{{}}}",
    "The answer is {}.",
    "<answer>{}</answer>",
    "\\boxed{{\\text{{{}}}}}",
    "#### {}",
    "$${}$$",
    "</think> \\boxed{{{}}}",
]

# GSM8K: not one number (gold in the row); `{g}` is the gold, `{h}` another number
GSM8K_WRONG = [
    "\\boxed{{1e{g}}}",
    "\\boxed{{2^{{{g}}}}}",
    "\\boxed{{\\frac{{1}}{{{g}}}}}",
    "\\boxed{{{h} \\text{{ or }} {g}}}",
    "\\boxed{{{h} or {g}}}",
    "\\boxed{{{h} and {g}}}",
    "\\boxed{{{h}, {g}}}",
    "\\write{g}{{x}}",
    "The answer is 1/{g}.",
    "The ratio is 3:{g}",
    "So the answer is {h}:{g}.",
    "\\boxed{{x^{{{g}}}}}",
    "\\boxed{{{g}!}}",
    "\\boxed{{\\sqrt{{{g}}}}}",
    "\\boxed{{{h}/{g}}}",
    "\\boxed{{{g}^2}}",
    "\\boxed{{10^{{{g}}}}}",
    "\\boxed{{{g}e5}}",
    "\\boxed{{{h}{g}}}",
    "\\boxed{{{g}{h}}}",
    "\\boxed{{-{g}}}",
    "#### {h}\nThen {g} more.",
    "#### 1/{g}",
    "Total = {g}_{h}",
    "costs ${h} or ${g}",
    "\\boxed{{{g}}} wait, no: \\boxed{{{h}}}",
    "The answer is {g}.\n\\boxed{{{h}}}",
    "\\boxed{{\\{{{g}\\}}}}",
    "\\boxed{{[{h}, {g}]}}",
    "\\boxed{{{g} \\pm {h}}}",
]

CHOICE_WRONG = [
    "\\boxed{{{g} and {o}}}",
    "\\boxed{{{g}, {o}}}",
    "\\boxed{{{g} or {o}}}",
    "\\boxed{{{g}/{o}}}",
    "\\boxed{{{g} {o}}}",
    "\\boxed{{{g} \\text{{ and }} {o}}}",
    "\\boxed{{{g}&{o}}}",
    "The answer is not {g}, it is {o}.",
    "The answer is {g} or {o}.",
    "The answer is {g} and {o}.",
    "The answer is {o}.",
    "\\boxed{{{o}}}",
    "\\boxed{{{g}}} ... no, \\boxed{{{o}}}",
    "<think>\\boxed{{{g}}}</think> \\boxed{{{o}}}",
    "\\boxed{{({g}) and ({o})}}",
    "\\boxed{{{g}+{o}}}",
    "The answer is either {g} or {o}",
]

MATH_HOSTILE = [
    "\\exp(\\exp(\\exp(\\exp(100))))",
    "e^{{e^{{e^{{{n}}}}}}}",
    "9^{{(9)^{{(9)^{{(9)}}}}}}",
    "{n}^{{{n}^{{{n}}}}}",
    "{n}**{n}**{n}",
    "1e99999999999",
    "{n}e{big}",
    "{n}\\times 10^{{{big}}}",
    "(({n})!)!",
    "{big}!",
    "{n}!!",
    "(x+1)^{{{big}}}",
    "\\left(x+{n}\\right)^{{{n}00}}",
    "10^{{{big}}}",
    "\\binom{{{big}}}{{{n}}}",
    "\\sqrt[{big}]{{{n}}}",
    "{n}^{{{n}^{{{n}^{{{n}}}}}}}",
    "\\frac{{1}}{{0}}",
    "\\infty - \\infty",
    "0^0",
    "\\log(0)",
    "\\sin(10^{{{big}}})",
    "x_{{{n}}}^{{{big}}}",
    "\\sum_{{k=1}}^{{10^{{{big}}}}} k",
    "\\prod_{{k=1}}^{{{big}}} k",
    "\\int_0^{{{big}}} e^{{x^2}} dx",
    "\\lim_{{x\\to\\infty}} x^{{{big}}}",
    "{n}\\overline{{{n}}}",
    "0.\\overline{{{digits}}}",
    "\\underbrace{{{n}+{n}}}_{{{big}}}",
]

UNICODE = [
    "\\boxed{{\uff11\uff18}}",  # fullwidth digits
    "\\boxed{{\u0661\u0668}}",  # Arabic-Indic digits
    "\\boxed{{\u00b9\u2078}}",  # superscripts
    "\\boxed{{1\u200b8}}",  # zero-width space
    "\\boxed{{\u202e81\u202c}}",  # right-to-left override
    "\\boxed{{\u2212{n}}}",  # unicode minus
    "\\boxed{{{n}\u0301}}",  # combining accent
    "\\boxed{{\U0001d7cf\U0001d7d6}}",  # mathematical bold digits
    "\\boxed{{\u2460\u2467}}",  # circled digits
    "\\boxed{{\ufeff{n}}}",  # BOM
    "\\boxed{{{n}\u00a0000}}",  # no-break space as a separator
    "\\boxed{{\u221e}}",
    "\\boxed{{\u03c0}}",
    "\\boxed{{\u00bd}}",
    "\ud800",  # lone surrogate (escaped in JSON)
    "\\boxed{{\u0000{n}}}",
    "\\boxed{{{n}\x1b[2J}}",
    "\\boxed{{\\text{{\u4e09\u5341}}}}",
]

STRUCTURE = [
    "\\boxed{{" + "{{" * 64 + "{n}" + "}}" * 64 + "}}",
    "\\boxed{{" + "(" * 64 + "{n}" + ")" * 64 + "}}",
    "\\boxed{{" + "[" * 40 + "{n}" + "]" * 40 + "}}",
    "\\boxed{{" + "\\frac{{1}}{{" * 30 + "{n}" + "}}" * 30 + "}}",
    "\\boxed{{" + "\\sqrt{{" * 30 + "{n}" + "}}" * 30 + "}}",
    "\\boxed{{" + "{n}+" * 500 + "{n}}}",
    "\\boxed{{" + "x" * 1990 + "}}",
    "\\boxed{{" + "x" * 995 + "}}",
    "\\boxed{{" + "x y " * 248 + "}}",
    "\\boxed{{" + "{n}+" * 240 + "{n}}}",
    "\\boxed{{" + "\\frac{{x}}{{y}}" * 70 + "}}",
    "\\boxed{{" + "1" * 3000 + "}}",
    "\\boxed{{\\boxed{{\\boxed{{{n}}}}}}}",
    "\\boxed{{{n}" + "}}" * 50,
    "\\boxed{{" * 50 + "{n}",
    "\\boxed{{{n}\\}}",
    "\\boxed{{\\{{{n}}}",
    "\\fbox{{{n}}}" * 20,
    "\\boxed {{ {n} }}" * 30,
    "\\boxed{{\\left( {n} \\right.}}",
    "\\boxed{{ }}",
    "\\boxed{{}}",
    "\\boxed",
    "\\boxed{{\\\\}}",
    "<answer>" * 20 + "{n}",
    "</answer>" * 20,
    "#### " * 20,
    "answer is " * 50,
]


def _rows() -> list[dict]:
    rng = random.Random(12)
    rows: list[dict] = []

    def add(kind: str, task: str, response: str, gold, must_reject: bool) -> None:
        rows.append(
            {
                "id": f"{kind}-{len(rows)}",
                "kind": kind,
                "task": task,
                "response": response,
                "gold": gold,
                "must_reject": must_reject,
            }
        )

    # injections, in every wrapper, against every task (gold 7: no 7 in any payload)
    for payload in INJECTIONS:
        for wrap in WRAPPERS:
            text = wrap.format(payload)
            add("injection", "math", text, "7", True)
            add("injection", "gsm8k", text, "7", True)
            add("injection", "countdown", text, {"numbers": [1, 6], "target": 7}, True)
    add("injection", "gsm8k", "\\write18{x}", "18", True)
    add("injection", "gsm8k", "\\immediate\\write18{touch CANARY}", "18", True)
    # GSM8K: not one number
    for g in (18, 24, 7, 100, 1000, 36, 5):
        for h in (17, 3, 2, 99):
            for template in GSM8K_WRONG:
                add("gsm8k_not_one_number", "gsm8k", template.format(g=g, h=h), str(g), True)
    # CrossThinkQA: several options, or another option
    letters = "ABCDEFGHIJ"
    for g in letters:
        for o in rng.sample([c for c in letters if c != g], 3):
            for template in CHOICE_WRONG:
                add("choice_multi", "crossthinkqa", template.format(g=g, o=o), g, True)
    # math: explosive inputs (gold 7 is never their value: checked by construction)
    for n in (9, 99, 12, 1000):
        for big in (99999, 10**6, 99999999999):
            for template in MATH_HOSTILE:
                text = template.format(n=n, big=big, digits="1" * 40)
                for wrap in ("\\boxed{{{}}}", "The answer is ${}$.", "{}"):
                    add("math_explosive", "math", wrap.format(text), "7", True)
    # unicode
    for n in (3, 18):
        for template in UNICODE:
            text = template.format(n=n)
            add("unicode", "math", text, "7", True)
            add("unicode", "gsm8k", text, "7", True)
    # structure: nesting, unbalanced boxes, repeated markers
    for n in (3, 18, 42):
        for template in STRUCTURE:
            text = template.format(n=n)
            add("structure", "math", text, "7", True)
            add("structure", "gsm8k", text, "7", True)
            add("structure", "crossthinkqa", text, "G", True)
    # countdown: hostile answer tags
    for expr in (
        "2**100000",
        "(" * 500 + "1+6" + ")" * 500,
        "9" * 5000,
        "1+6; 0",
        "(1).__class__",
        "7",
        "1+6+0",
        "6+1+1",
        "1/0+6",
        "1e1-3",
        "0x7",
        "1_6",
        "6+1 ",
        "\u0661+6",
    ):
        for wrap in (
            "<answer>{}</answer>",
            "<answer>{}",
            "{}</answer>",
            "<answer><answer>{}</answer>",
        ):
            text = wrap.format(expr)
            gold = {"numbers": [1, 6], "target": 7}
            # only the well-formed "6+1 " (both numbers once, value 7) may be accepted
            add("countdown_tag", "countdown", text, gold, expr != "6+1 " or "<answer>" not in text)
    # random mutations of plain answers (timing only: a mutation may be right by chance)
    pieces = [
        "\\boxed{",
        "}",
        "{",
        "\\frac",
        "^",
        "_",
        "\\sqrt",
        "(",
        ")",
        "18",
        "7",
        "!",
        "\\text{",
        "$",
        "####",
        "answer is",
        "\\left(",
        "\\right)",
        ",",
        ".",
        "e",
        "x",
    ]
    for i in range(600):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 60)))
        add(
            "random",
            ("math", "gsm8k", "crossthinkqa")[i % 3],
            text,
            "7" if i % 3 < 2 else "A",
            False,
        )
    return rows


def huge_outputs() -> dict[str, Callable[[], str]]:
    """Hostile outputs too big to store: name -> a function that builds it at test time."""
    return {
        "close_braces_1e7": lambda: "}" * 10**7,
        "open_braces_1e7": lambda: "{" * 10**7,
        "boxed_open_1e6": lambda: "\\boxed{" * 10**6,
        "boxed_then_close_1e7": lambda: "\\boxed{" + "}" * 10**7,
        "close_then_box": lambda: "}" * 10**7 + "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
        "digits_1e7": lambda: "1" * 10**7,
        "numbers_1e6": lambda: "1 " * 10**6,
        "boxed_digits_1e6": lambda: "\\boxed{" + "9" * 10**6 + "}",
        "hashes_1e6": lambda: "#### " * 10**6,
        "answer_is_1e6": lambda: "The answer is " * 10**6,
        "dollars_1e6": lambda: "$" * 10**6,
        "answer_tags_1e6": lambda: "<answer>" * 10**6 + "6-1" + "</answer>",
        "think_1e6": lambda: "</think>" * 10**6 + "\\boxed{A}",
        "nested_parens_in_box": lambda: "\\boxed{" + "(" * 40000 + "1" + ")" * 40000 + "}",
        "nested_boxes": lambda: "\\boxed{" * 20000 + "1" + "}" * 20000,
        "text_10mb": lambda: "lorem ipsum dolor sit amet 12 " * 350_000,
        "boxed_digits_in_window": lambda: "\\boxed{" + "9" * 90_000 + "}",
        "boxed_decimal_in_window": lambda: "\\boxed{0." + "3" * 90_000 + "\\overline{3}}",
        "boxed_dots_in_window": lambda: "\\boxed{" + "." * 90_000 + "}",
        "boxed_spaces_in_window": lambda: "\\boxed{" + " " * 90_000 + "3}",
        "inline_math_in_window": lambda: "$" + "x" * 250 + "$ " + "answer is $" * 9000,
    }


def main() -> None:
    rows = _rows()
    with open(CORPUS, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=True) + "\n")
    must = sum(r["must_reject"] for r in rows)
    print(f"{CORPUS}: {len(rows)} rows, {must} must-reject")


if __name__ == "__main__":
    main()
