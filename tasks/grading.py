"""Sandboxed math grading: math-verify and the sympy grader, each under a CPU-time budget.

Model output is hostile input, and both graders can hang or eat memory on it (sympy will try
to expand `9^{9^{9^{9}}}`). math-verify's own timeout uses `signal.alarm`, which only works in
the main thread, so it is switched off (`parsing_timeout=None`, `timeout_seconds=None`) and
replaced by this mechanism, which works from any thread and any process:

1. `prepare` rewrites what no grader reads right: a final period (`284.`, `\\text{Evelyn}.`)
   is dropped and repeating decimals (`0.\\overline{3}`) become fractions.
2. A cheap screen (`screen`) refuses what no answer needs: more than `MAX_ANSWER_CHARS`
   characters, brackets nested deeper than `MAX_DEPTH`, numeric power towers, exponents
   of 100000 or more (also `1e99999999999`), factorials of 4-digit numbers or of factorials,
   nested exponentials, functions of huge numbers (`\\sin(10^{99999})`), brackets holding
   a variable raised to 100 or more and Python dunders. Verdict: False.
3. Everything else is graded in a persistent worker subprocess (`python -c ...`, so it also
   works inside daemonic multiprocessing workers), spoken to over a pipe one JSON line per
   request. Each grader gets a budget of CPU time (`cpu_s`, default `$FT_GRADE_CPU_S` or
   1.5 s; a profiling timer in the worker), so a verdict does not depend on the machine's
   load: an answer that needs more CPU than that is a "cpu" timeout on any machine. Past a
   wall-clock cap for the whole request (`$FT_GRADE_WALL_S`, default 5.5 s, raised to fit
   larger CPU budgets) the worker is killed (SIGKILL), a replacement is started at once and
   the verdict is False: a "wall" timeout, which only a starved machine or a grader stuck in
   C code gives. Both kinds are counted (`timeout_counts`) for results.json. The worker
   also caps its address space (`FT_GRADER_MEM_MB`, 4096) and dies with its parent (Linux
   `PR_SET_PDEATHSIG`, plus a thread that polls the parent pid). Several threads share a
   pool of workers (`FT_GRADER_WORKERS`, default 1); a forked child process builds its own.

Neither grader ever evaluates text: math-verify runs with LaTeX extraction only (its
expression extractor calls sympy's `parse_expr`, which uses `eval`, so it is not enabled), and
the sympy grader has its own parser (tasks/sympy_grader.py).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

GRADERS = ("math_verify", "sympy")
DEFAULT_CPU_S = float(os.environ.get("FT_GRADE_CPU_S", "1.5"))  # CPU seconds per grader
DEFAULT_WALL_S = float(os.environ.get("FT_GRADE_WALL_S", "5.5"))  # wall cap per request
STARTUP_TIMEOUT_S = 120.0
MAX_ANSWER_CHARS = 1000  # 5x the longest gold of the math benchmarks (210)
MAX_DEPTH = 10  # math-verify's parser is exponential in brace depth (12 deep: ~1.5 s)
MAX_SYMBOLIC_POWER = 100  # (x+1)^{500} costs seconds of expansion
MAX_REPEATING_DIGITS = 30

_POWER_TOWER = re.compile(
    r"\d[\s)}\]]*(?:\^|\*\*)[\s{(\[]*[+-]?\d+[\s)}\]]*(?:\^|\*\*)"
    r"|(?:\^|\*\*)[\s{(\[]*[+-]?\d+[\s)}\]]*(?:\^|\*\*)"
)
_HUGE_EXPONENT = re.compile(r"(?:\^|\*\*)[\s{(\[]*[+-]?\d{6,}")
_HUGE_SCIENTIFIC = re.compile(r"\d\s*[eE]\s*[+-]?\d{6,}")
_HUGE_FACTORIAL = re.compile(r"\d{4,}[\s})\]]*!|![\s})\]]*!")
_BRACKET_POWER = re.compile(r"[)\]]\s*\^[\s{(]*(\d+)")
_COMMAND = re.compile(r"\\[a-zA-Z]+")
_FUNCTION_OF_HUGE = re.compile(  # sin(10^{99999}) needs 100k digits of precision
    r"\\(?:sin|cos|tan|cot|sec|csc|log|ln|exp|arc[a-z]+)\b[^=,]{0,30}?"
    r"(?:\^[\s{(\[]*[+-]?\d{4,}|\d\s*[eE]\s*[+-]?\d{4,})"
)
_NESTED_EXP = re.compile(r"(?:\\exp|e\s*\^)[\s{(\[]*(?:\\exp|e\s*\^)[\s{(\[]*(?:\\exp|e\s*\^)")
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)(?![\w.])")
_FINAL_PERIOD = re.compile(r"(?<!\\)\.((?:\s*\})*)\s*$")
_REPEATING = re.compile(
    rf"(\d*)\.(\d*)\\overline\s*(?:\{{\s*(\d{{1,{MAX_REPEATING_DIGITS}}})\s*\}}|(\d))"
)


class GraderError(RuntimeError):
    """The grading worker cannot start (a broken install), as opposed to a wrong answer."""


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def prepare(text: str) -> str:
    """An answer rewritten for the graders: no final period (`284.` -> `284`,
    `\\text{Evelyn}.` -> `\\text{Evelyn}`) and repeating decimals as fractions
    (`0.\\overline{3}` -> `\\frac{1}{3}`, `0.1\\overline{6}` -> `\\frac{1}{6}`)."""
    if len(text) > MAX_ANSWER_CHARS:  # refused by the screen; do no work on it
        return text
    return _REPEATING.sub(_repeating_to_fraction, _FINAL_PERIOD.sub(r"\1", text.strip()))


def repeating_decimal(integer: str, fixed: str, repeat: str) -> Fraction:
    """Value of `integer.fixed(repeat)(repeat)...`, e.g. ("0", "1", "6") -> 1/6."""
    head = Fraction(int(integer or "0")) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    return head + Fraction(int(repeat), (10 ** len(repeat) - 1) * 10 ** len(fixed))


def _repeating_to_fraction(m: re.Match[str]) -> str:
    value = repeating_decimal(m.group(1), m.group(2), m.group(3) or m.group(4))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def screen(text: str) -> str | None:
    """Why `text` is refused before parsing (None when it may be parsed)."""
    if len(text) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} characters"
    if _max_depth(text) > MAX_DEPTH:
        return f"brackets nested deeper than {MAX_DEPTH}"
    if "__" in text:
        return "python dunder"
    if _POWER_TOWER.search(text):
        return "numeric power tower"
    if _HUGE_EXPONENT.search(text) or _HUGE_SCIENTIFIC.search(text):
        return "huge exponent"
    if _HUGE_FACTORIAL.search(text):
        return "huge factorial"
    if _NESTED_EXP.search(text):
        return "nested exponentials"
    if _FUNCTION_OF_HUGE.search(text):
        return "function of a huge number"
    if _large_symbolic_power(text):
        return f"symbolic power of {MAX_SYMBOLIC_POWER} or more"
    return None


def _large_symbolic_power(text: str) -> bool:
    """Is a bracket holding a variable raised to `MAX_SYMBOLIC_POWER` or more (`(x+1)^{500}`)?"""
    for m in _BRACKET_POWER.finditer(text):
        if int(m.group(1)[:6]) < MAX_SYMBOLIC_POWER:
            continue
        depth, i = 0, m.start()
        while i >= 0:  # back to the matching opening bracket (the text is <= 2000 chars)
            depth += text[i] in ")]"
            depth -= text[i] in "(["
            if depth == 0:
                break
            i -= 1
        if re.search(r"[a-zA-Z]", _COMMAND.sub("", text[max(i, 0) : m.start()])):
            return True
    return False


def grade_answer(
    pred: str,
    gold: str,
    graders: tuple[str, ...] = GRADERS,
    timeout: float | None = None,
) -> dict[str, bool]:
    """`{grader: verdict}` for the extracted answer `pred` against `gold`.

    Each grader gets `timeout` CPU seconds (default `$FT_GRADE_CPU_S` or 1.5) in the sandboxed
    worker; a refused, crashed or timed-out grade is False. `grade_answer_detailed` also
    says which graders timed out.
    """
    return grade_answer_detailed(pred, gold, graders, timeout)["verdicts"]


def grade_answer_detailed(
    pred: str,
    gold: str,
    graders: tuple[str, ...] = GRADERS,
    timeout: float | None = None,
) -> dict[str, Any]:
    """`{"verdicts": {grader: bool}, "timeouts": {grader: "cpu" | "wall"}, "refused": why}`.

    One request to the worker for all `graders`, each with `timeout` CPU seconds; the whole
    request has a wall cap of `max($FT_GRADE_WALL_S, len(graders) * timeout + 1.5)` seconds.
    """
    unknown = set(graders) - set(GRADERS)
    if unknown:
        raise ValueError(f"unknown grader(s) {sorted(unknown)}; known: {', '.join(GRADERS)}")
    pred, gold = prepare(pred), prepare(gold)
    refused = screen(pred) or screen(gold)
    if refused is not None:
        return {"verdicts": {g: False for g in graders}, "timeouts": {}, "refused": refused}
    cpu = DEFAULT_CPU_S if timeout is None else float(timeout)
    wall = max(DEFAULT_WALL_S, len(graders) * cpu + 1.5)
    msg = {"op": "grade", "graders": list(graders), "pred": pred, "gold": gold, "cpu": cpu}
    reply = _pool().call(msg, wall)
    if "error" in reply:  # wall timeout or a dead worker: every grader of the request failed
        kind = "wall" if reply.get("timeout") else None
        timeouts = {g: kind for g in graders} if kind else {}
        verdicts = {g: False for g in graders}
    else:
        verdicts = {g: bool(reply["verdicts"].get(g, False)) for g in graders}
        timeouts = {g: "cpu" for g in reply.get("cpu_timeouts", [])}
    _count_timeouts(timeouts)
    return {"verdicts": verdicts, "timeouts": timeouts, "refused": None}


def grade_unscreened(
    op: str, pred: str, gold: str, timeout: float, cpu: float | None = None
) -> dict[str, Any]:
    """Send one request to the worker without the screen (tests of the budgets use this):
    `timeout` is the wall cap, `cpu` the grader's CPU budget (default: `timeout`)."""
    msg = {"op": op, "pred": pred, "gold": gold, "cpu": timeout if cpu is None else cpu}
    return _pool().call(msg, timeout)


def timeout_counts() -> dict[str, int]:
    """Grader timeouts in this process since the last reset: `{"cpu": n, "wall": m}`.

    "cpu": the answer needed more than its CPU budget (the same on any machine); "wall": the
    request hit the wall cap (a starved machine or a grader stuck in C code): the verdict may
    depend on load. Each grader of a request counts once.
    """
    with _COUNT_LOCK:
        return dict(_COUNTS)


def reset_timeout_counts() -> None:
    """Set both timeout counters of this process to 0."""
    with _COUNT_LOCK:
        _COUNTS.update(cpu=0, wall=0)


def shutdown() -> None:
    """Stop this process's grading workers (they also exit when this process exits)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.owner == os.getpid():
            _POOL.close()
        _POOL = None


_COUNTS = {"cpu": 0, "wall": 0}
_COUNT_LOCK = threading.Lock()


def _count_timeouts(timeouts: dict[str, str]) -> None:
    with _COUNT_LOCK:
        for kind in timeouts.values():
            _COUNTS[kind] += 1


def _max_depth(text: str) -> int:
    depth = best = 0
    for c in text:
        if c in "([{":
            depth += 1
            best = max(best, depth)
        elif c in ")]}":
            depth = max(depth - 1, 0)
    return best


# ---------------------------------------------------------------------------------------------
# Parent side: a pool of persistent worker subprocesses
# ---------------------------------------------------------------------------------------------
_WORKER_CMD = "from ftcli.tasks.grading import worker_main; worker_main()"


class _Worker:
    """One grading subprocess: start, request with a deadline, kill and restart.

    Workers are started from the pool's keeper thread, which lives as long as the process:
    `PR_SET_PDEATHSIG` fires when the THREAD that started the child ends, so a worker started
    from a short-lived caller thread would die with that thread.
    """

    def __init__(self, keeper: ThreadPoolExecutor) -> None:
        self.keeper = keeper
        self.proc: subprocess.Popen | None = None
        self.ready = False

    def spawn(self) -> None:
        env = dict(
            os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FT_GRADER_PARENT=str(os.getpid())
        )
        self.proc = self.keeper.submit(
            subprocess.Popen,
            [sys.executable, "-c", _WORKER_CMD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("FT_DEBUG") else subprocess.DEVNULL,
            env=env,
            close_fds=True,
        ).result()
        self.ready = False

    def ensure_ready(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self.spawn()
        if not self.ready:
            line = self._read_line(STARTUP_TIMEOUT_S)
            if line is None or json.loads(line).get("ready") is not True:
                self.kill()
                raise GraderError(
                    "the math grading worker did not start; run "
                    f"`{sys.executable} -c '{_WORKER_CMD}'` to see why"
                )
            self.ready = True

    def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The worker's reply, or `{"ok": False, "error": ..., "timeout": bool}`. A worker
        found dead (not killed by us) is replaced and the request sent once more."""
        for attempt in range(2):
            self.ensure_ready()
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write((json.dumps(msg) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.restart()
                continue
            line = self._read_line(timeout)
            if line is not None:
                return json.loads(line)
            died = self.proc.poll() is not None
            self.restart()
            if not died:
                return {"ok": False, "error": f"timed out after {timeout:g}s", "timeout": True}
            if attempt == 1:
                break
        return {"ok": False, "error": "worker died", "timeout": False}

    def _read_line(self, timeout: float) -> str | None:
        """One line from the worker's stdout within `timeout` seconds (None: timeout/EOF)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not buf.endswith(b"\n"):
                left = end - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    if self.proc.poll() is None:
                        try:
                            self.proc.wait(0.5)  # EOF: let a dying worker finish dying
                        except subprocess.TimeoutExpired:
                            pass
                    return None
                buf += chunk
        return buf.decode()

    def restart(self) -> None:
        """Kill the worker and start its replacement now (it imports while we carry on)."""
        self.kill()
        self.spawn()

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
        self.proc, self.ready = None, False


class _Pool:
    """Workers shared by threads: each call borrows one worker (blocking when all are busy)."""

    def __init__(self, size: int) -> None:
        self.owner = os.getpid()
        self.keeper = ThreadPoolExecutor(1, thread_name_prefix="ft-grader-keeper")
        self.workers = [_Worker(self.keeper) for _ in range(max(1, size))]
        self.free: queue.Queue[_Worker] = queue.Queue()
        for w in self.workers:
            self.free.put(w)

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        worker = self.free.get()
        try:
            return worker.request(msg, timeout)
        finally:
            self.free.put(worker)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.keeper.shutdown(wait=False)


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    """This process's pool (a forked child never reuses its parent's pipes)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.owner != os.getpid():
            _POOL = _Pool(int(os.environ.get("FT_GRADER_WORKERS", "1")))
        return _POOL


atexit.register(shutdown)


# ---------------------------------------------------------------------------------------------
# Worker side (runs in the subprocess)
# ---------------------------------------------------------------------------------------------
class CpuBudgetExceeded(BaseException):
    """Raised in the worker when a grader used up its CPU budget (a BaseException, so that
    the graders' own `except Exception` blocks cannot swallow it)."""


def worker_main() -> None:
    """Serve grading requests, one JSON line in, one JSON line out, until stdin closes."""
    _die_with_parent(int(os.environ.get("FT_GRADER_PARENT", os.getppid())))
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    graders = _load_graders()
    _limit_memory()
    signal.signal(signal.SIGPROF, _on_cpu_budget)
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            cpu = float(msg.get("cpu", DEFAULT_CPU_S))
            if msg["op"] == "grade":
                reply = _grade_all(graders, msg["graders"], msg["pred"], msg["gold"], cpu)
            else:
                ok, timed_out = _run_budgeted(graders[msg["op"]], msg["pred"], msg["gold"], cpu)
                reply = {"ok": ok}
                if timed_out:
                    reply["error"] = f"cpu budget of {cpu:g}s exceeded"
        except BaseException as e:  # noqa: BLE001 - every failure is a False verdict
            reply = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        out.write(json.dumps(reply) + "\n")


def _grade_all(
    graders: dict[str, Any], names: list[str], pred: str, gold: str, cpu: float
) -> dict[str, Any]:
    verdicts, cpu_timeouts = {}, []
    for name in names:
        verdicts[name], timed_out = _run_budgeted(graders[name], pred, gold, cpu)
        if timed_out:
            cpu_timeouts.append(name)
    return {"verdicts": verdicts, "cpu_timeouts": cpu_timeouts}


def _run_budgeted(grader: Any, pred: str, gold: str, cpu: float) -> tuple[bool, bool]:
    """(verdict, timed out?) of one grader call limited to `cpu` seconds of CPU time
    (ITIMER_PROF counts user + system time of this process: machine load does not count)."""
    try:
        signal.setitimer(signal.ITIMER_PROF, max(cpu, 0.01))
        try:
            return bool(grader(pred, gold)), False
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    except CpuBudgetExceeded:
        return False, True
    except Exception:  # noqa: BLE001 - a grader crash is a False verdict
        return False, False


def _on_cpu_budget(signum: int, frame: Any) -> None:
    raise CpuBudgetExceeded


def _die_with_parent(parent: int) -> None:
    """Exit when the parent process dies, even by SIGKILL: Linux's PR_SET_PDEATHSIG, and a
    daemon thread polling the parent pid (other systems; and a check for a parent that died
    before the prctl)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # optional: only for prctl

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def _load_graders() -> dict[str, Any]:
    import logging

    logging.disable(logging.WARNING)  # math-verify warns that its timeout is disabled
    from ftcli.tasks import sympy_grader

    return {"math_verify": _math_verify_equal, "sympy": sympy_grader.equal}


def _limit_memory() -> None:
    try:
        import resource

        limit = int(os.environ.get("FT_GRADER_MEM_MB", "4096")) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify on the extracted answer (both sides re-wrapped in `\\boxed{}`)."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]

    def _parse(text: str):
        text = _SCIENTIFIC.sub(r"\1\\times 10^{\2}", text)
        return parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=None)

    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return verify(gold_parsed, pred_parsed, timeout_seconds=None)
