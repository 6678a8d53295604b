"""The second, independent math grader: normalised strings, then sympy equivalence.

It shares nothing with math-verify: LaTeX is normalised (Hendrycks-style), compared as
strings, and otherwise parsed by the small recursive-descent parser below straight into
sympy objects. Nothing is ever `eval`-ed or `sympify`-ed; the parser knows numbers, single
letters (with subscripts), `+ - * / ^`, implicit products, parentheses, `\\frac`, `\\sqrt`,
`\\pi`, `\\infty`, a few functions, `!` and `\\binom`, and refuses numeric powers that would
explode. Structures (tuples, intervals, sets, unions and bare comma lists) are compared
element by element. This module is imported only inside the sandboxed grading worker
(tasks/grading.py), which puts a deadline on every call.
"""

from __future__ import annotations

import math
import re

import sympy

REL_TOL = 1e-6
MAX_POW_BITS = 100_000  # refuse exact numeric powers larger than ~30k digits
MAX_FACTORIAL = 1000


class ParseError(ValueError):
    """Text outside the supported LaTeX subset."""


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------
_DROP = (
    r"\$",
    r"\left",
    r"\right",
    r"\displaystyle",
    r"\!",
    r"\,",
    r"\;",
    r"\:",
    r"\ ",
    "$",
    r"\bigl",
    r"\bigr",
    r"\Bigl",
    r"\Bigr",
    r"\big",
    r"\Big",
)
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf|operatorname)\s*\{([^{}]*)\}")
_UNIT_CMD = re.compile(
    r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{[\s~]*[a-zA-Z][a-zA-Z\s./~]*\}(?:\^\{?\d\}?)?\s*$"
)
_UNIT_WORDS = re.compile(r"^(-?[\d.,]+)\s+[a-zA-Z][a-zA-Z\s/]*(?:\^\{?\d\}?)?$")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d|[a-zA-Z])\s*(\d|[a-zA-Z])")
_FRAC_ONE = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d|[a-zA-Z])")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d+|[a-zA-Z])")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SCI = re.compile(r"(\d)\s*[eE]\s*([+-]?\d+)$")


def normalize(text: str) -> str:
    """Canonical string form of an answer (what two equal answers most often share)."""
    s = text.strip()
    while s.startswith("\\boxed{") and s.endswith("}") and _balanced(s[7:-1]):
        s = s[7:-1].strip()
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\cfrac", "\\frac")):
        s = s.replace(old, new)
    for tok in _DROP:
        s = s.replace(tok, "")
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _strip_units(s)
    s = _TEXT_CMD.sub(r"\1", s)
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_ONE.sub(r"\\frac\1{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _SCI.sub(r"\1\\times10^{\2}", s)
    s = s.replace(" ", "").replace("~", "").rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return re.sub(r"(?<![\d])\.(\d)", r"0.\1", s)


def _strip_units(s: str) -> str:
    """Drop a trailing unit: `5 \\text{ cm}`, `5\\mbox{cm}^2`, `12 km/h` -> the number."""
    s = _UNIT_CMD.sub("", s)
    m = _UNIT_WORDS.match(s)
    return m.group(1) if m else s


# ---------------------------------------------------------------------------------------------
# Structure: tuples, intervals, sets, unions, comma lists
# ---------------------------------------------------------------------------------------------
def split_top(s: str, sep: str) -> list[str]:
    """Split on `sep` where no bracket (including `\\{ \\}`) is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _wrapped(s: str, left: str, right: str) -> bool:
    """Does one bracket pair `left ... right` enclose all of `s`?"""
    if not (s.startswith(left) and s.endswith(right)) or len(s) < len(left) + len(right):
        return False
    return _balanced(s[len(left) : len(s) - len(right)])


def _balanced(s: str) -> bool:
    depth = 0
    for c in s.replace("\\{", "(").replace("\\}", ")"):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _shape(s: str) -> tuple[str, list[str]]:
    """Classify an answer: ('union'|'set'|'interval'|'tuple'|'list'|'scalar', items)."""
    if len(union := split_top(s, "\\cup")) > 1:
        return "union", union
    if _wrapped(s, "\\{", "\\}"):
        return "set", split_top(s[2:-2], ",")
    for left, right in (("(", ")"), ("[", "]"), ("(", "]"), ("[", ")")):
        if _wrapped(s, left, right) and len(items := split_top(s[1:-1], ",")) > 1:
            kind = "tuple" if (left, right) == ("(", ")") else "interval"
            return kind + left + right if kind == "interval" else kind, items
    if len(items := split_top(s, ",")) > 1:
        return "list", items
    return "scalar", [s]


def equal(pred: str, gold: str) -> bool:
    """Verdict of this grader: is `pred` the same answer as `gold`?"""
    a, b = normalize(pred), normalize(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    return _equal_normalized(a, b)


def _equal_normalized(a: str, b: str) -> bool:
    (ka, ia), (kb, ib) = _shape(a), _shape(b)
    if ka != kb or len(ia) != len(ib):
        if ka == "scalar" and kb != "scalar" or kb == "scalar" and ka != "scalar":
            return False
        if {ka, kb} <= {"set", "list"} and len(ia) == len(ib):
            return _unordered(ia, ib)
        return False
    if ka == "scalar":
        return _scalar_equal(a, b)
    if ka in ("set", "list", "union"):
        return _unordered(ia, ib)
    return all(_item_equal(x, y) for x, y in zip(ia, ib, strict=True))


def _item_equal(x: str, y: str) -> bool:
    return x == y or _equal_normalized(x, y)


def _unordered(xs: list[str], ys: list[str]) -> bool:
    """Multiset equality under `_item_equal` (greedy matching)."""
    left = list(ys)
    for x in xs:
        hit = next((j for j, y in enumerate(left) if _item_equal(x, y)), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


def _scalar_equal(a: str, b: str) -> bool:
    ea, eb = _sides(a), _sides(b)
    if ea is None or eb is None:
        return _plain(a) == _plain(b)
    if len(ea) == 2 and len(eb) == 2:  # two equations: same up to sign
        da, db = ea[0] - ea[1], eb[0] - eb[1]
        return _close(da, db) or _close(da, -db)
    return _close(ea[-1], eb[-1])


def _plain(s: str) -> str:
    """Text answers: compare case-insensitively without braces and `\\text`."""
    return re.sub(r"[{}\\]|text", "", s).lower()


def _sides(s: str) -> list[sympy.Expr] | None:
    """Parse `s`; `x = 3` (a lone letter on the left) means `3`; other equations keep both sides."""
    parts = s.split("=")
    try:
        exprs = [parse_latex(p) for p in parts if p]
    except (ParseError, ValueError, TypeError, ZeroDivisionError, RecursionError, OverflowError):
        return None
    if len(exprs) != len(parts) or len(exprs) > 2:
        return None
    if len(exprs) == 2 and isinstance(exprs[0], sympy.Symbol):
        return [exprs[1]]
    return exprs


def _close(x: sympy.Expr, y: sympy.Expr) -> bool:
    """Numerically close (relative 1e-6) when both are numbers, else `simplify(x - y) == 0`."""
    if x.free_symbols or y.free_symbols:
        try:
            return sympy.simplify(x - y) == 0
        except (TypeError, ValueError, AttributeError):
            return False
    try:
        vx, vy = complex(sympy.N(x, 30)), complex(sympy.N(y, 30))
    except (TypeError, ValueError, OverflowError):
        return x == y
    if any(math.isinf(v.real) or math.isnan(v.real) for v in (vx, vy)):
        return x == y
    return abs(vx - vy) <= REL_TOL * max(1.0, abs(vy))


# ---------------------------------------------------------------------------------------------
# A small LaTeX parser (recursive descent, builds sympy objects; never evaluates text)
# ---------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+)|(?P<letter>[a-zA-Z])"
    r"|(?P<op>\*\*|[-+*/^_!(){}\[\]|]))"
)
_FUNCS = {
    "\\sin": sympy.sin,
    "\\cos": sympy.cos,
    "\\tan": sympy.tan,
    "\\cot": sympy.cot,
    "\\sec": sympy.sec,
    "\\csc": sympy.csc,
    "\\ln": sympy.log,
    "\\log": sympy.log,
    "\\exp": sympy.exp,
    "\\arcsin": sympy.asin,
    "\\arccos": sympy.acos,
    "\\arctan": sympy.atan,
}
_CONSTS = {"\\pi": sympy.pi, "\\infty": sympy.oo, "\\infinity": sympy.oo}
_TIMES = {"\\cdot", "\\times", "*"}


def tokenize(s: str) -> list[str]:
    """Tokens of `s`, or ParseError on any character outside the subset."""
    out, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise ParseError(f"unexpected {s[pos : pos + 10]!r}")
        out.append(m.group(m.lastgroup))
        pos = m.end()
    return out


def parse_latex(s: str) -> sympy.Expr:
    """Parse a normalised LaTeX expression into sympy (raises ParseError)."""
    p = _Parser(tokenize(s))
    expr = p.expr()
    if p.peek() is not None:
        raise ParseError(f"trailing {p.peek()!r}")
    return expr


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary ((op)? unary)*; unary := '-' unary | power."""

    def __init__(self, tokens: list[str]):
        self.toks, self.i = tokens, 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise ParseError(f"expected {want or 'more input'}, got {tok!r}")
        self.i += 1
        return tok

    def expr(self) -> sympy.Expr:
        out = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            out = out + rhs if op == "+" else out - rhs
        return out

    def term(self) -> sympy.Expr:
        out = self.unary()
        while (tok := self.peek()) is not None and tok not in ("+", "-", ")", "]", "}", "|"):
            if tok in _TIMES:
                self.take()
                out = out * self.unary()
            elif tok in ("/", "\\div"):
                self.take()
                out = out / self.unary()
            else:  # implicit product: 3\sqrt{2}, 2x, x(x+1)
                out = out * self.power()
        return out

    def unary(self) -> sympy.Expr:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix(self.atom())
        if self.peek() in ("^", "**"):
            self.take()
            exponent = self.group() if self.peek() == "{" else self.unary_atom()
            return safe_pow(base, exponent)
        return base

    def unary_atom(self) -> sympy.Expr:
        if self.peek() == "-":
            self.take()
            return -self.postfix(self.atom())
        return self.postfix(self.atom())

    def postfix(self, value: sympy.Expr) -> sympy.Expr:
        while self.peek() in ("!", "_"):
            if self.take() == "!":
                value = safe_factorial(value)
            else:
                sub = self.group() if self.peek() == "{" else self.atom()
                value = sympy.Symbol(f"{value}_{sub}")
        return value

    def group(self) -> sympy.Expr:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def atom(self) -> sympy.Expr:
        tok = self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return sympy.Rational(tok) if "." in tok else sympy.Integer(tok)
        if tok in ("(", "[", "{"):
            value = self.expr()
            self.take({"(": ")", "[": "]", "{": "}"}[tok])
            return value
        if tok == "|":
            value = self.expr()
            self.take("|")
            return sympy.Abs(value)
        if len(tok) == 1 and tok.isalpha():
            return sympy.E if tok == "e" else sympy.I if tok == "i" else sympy.Symbol(tok)
        return self.command(tok)

    def command(self, tok: str) -> sympy.Expr:
        if tok == "\\frac":
            num = self.group()
            return num / self.group()
        if tok == "\\binom":
            n, k = self.group(), self.group()
            return sympy.binomial(n, k)
        if tok == "\\sqrt":
            if self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
                return safe_pow(self.group(), 1 / index)
            return sympy.sqrt(self.group())
        if tok in _CONSTS:
            return _CONSTS[tok]
        if tok in _FUNCS:
            arg = self.group() if self.peek() == "{" else self.power()
            return _FUNCS[tok](arg)
        if re.fullmatch(r"\\[a-zA-Z]+", tok) and tok[1:] in _GREEK:
            return sympy.Symbol(tok[1:])
        raise ParseError(f"unsupported command {tok}")


_GREEK = {
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "theta",
    "lambda",
    "mu",
    "sigma",
    "phi",
    "omega",
    "rho",
    "tau",
    "eta",
    "kappa",
    "nu",
    "xi",
    "psi",
    "chi",
    "zeta",
}


def safe_pow(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """`base ** exponent`, refusing exact numeric powers too large to compute."""
    if base.is_Rational and exponent.is_Number and abs(base) != 1 and base != 0:
        size = max(abs(base.p), abs(base.q))
        if float(abs(exponent)) * math.log2(size) > MAX_POW_BITS:
            raise ParseError("power too large")
    elif exponent.is_Number and abs(exponent) > MAX_POW_BITS:
        raise ParseError("exponent too large")
    return sympy.Pow(base, exponent)


def safe_factorial(value: sympy.Expr) -> sympy.Expr:
    """`value!` for small non-negative integers only."""
    if not (value.is_Integer and 0 <= value <= MAX_FACTORIAL):
        raise ParseError("factorial out of range")
    return sympy.factorial(value)
