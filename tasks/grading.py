"""Sandboxed math grading: math-verify and the sympy grader, each under a hard deadline.

Model output is hostile input, and both graders can hang or eat memory on it (sympy will try
to expand `9^{9^{9^{9}}}`). math-verify's own timeout uses `signal.alarm`, which only works in
the main thread, so it is switched off (`parsing_timeout=None`, `timeout_seconds=None`) and
replaced by this mechanism, which works from any thread and any process:

1. A cheap screen (`screen`) refuses what no answer needs: more than `MAX_ANSWER_CHARS`
   characters, brackets nested deeper than `MAX_DEPTH`, numeric power towers, exponents
   of 100000 or more, factorials of 4-digit numbers and Python dunders. Verdict: False.
2. Everything else is graded in a persistent worker subprocess (`python -c ...`, so it also
   works inside daemonic multiprocessing workers), spoken to over a pipe one JSON line per
   request. The caller waits at most `timeout` seconds (`select` on the pipe); past the
   deadline the worker is killed (SIGKILL), a replacement is started at once, and the
   verdict is False. The worker also caps its address space (`FT_GRADER_MEM_MB`, 4096).
   Several threads share a pool of workers (`FT_GRADER_WORKERS`, default 1); a forked child
   process builds its own pool.

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
import subprocess
import sys
import threading
import time
from typing import Any

GRADERS = ("math_verify", "sympy")
DEFAULT_TIMEOUT_S = float(os.environ.get("FT_GRADE_TIMEOUT_S", "5"))
STARTUP_TIMEOUT_S = 120.0
MAX_ANSWER_CHARS = 2000
MAX_DEPTH = 64

_POWER_TOWER = re.compile(r"\d\s*(?:\^|\*\*)\s*[{(]?\s*[+-]?\d+\s*[})]?\s*(?:\^|\*\*)")
_HUGE_EXPONENT = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*[+-]?\d{6,}")
_HUGE_FACTORIAL = re.compile(r"\d{4,}\s*[})]?\s*!")
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)(?![\w.])")


class GraderError(RuntimeError):
    """The grading worker cannot start (a broken install), as opposed to a wrong answer."""


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
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
    if _HUGE_EXPONENT.search(text):
        return "huge exponent"
    if _HUGE_FACTORIAL.search(text):
        return "huge factorial"
    return None


def grade_answer(
    pred: str,
    gold: str,
    graders: tuple[str, ...] = GRADERS,
    timeout: float | None = None,
) -> dict[str, bool]:
    """`{grader: verdict}` for the extracted answer `pred` against `gold`.

    Each grader runs in the sandboxed worker with its own deadline (`timeout` seconds,
    default `$FT_GRADE_TIMEOUT_S` or 5); a refused, crashed or timed-out grade is False.
    """
    unknown = set(graders) - set(GRADERS)
    if unknown:
        raise ValueError(f"unknown grader(s) {sorted(unknown)}; known: {', '.join(GRADERS)}")
    if screen(pred) is not None or screen(gold) is not None:
        return {g: False for g in graders}
    deadline = DEFAULT_TIMEOUT_S if timeout is None else timeout
    pool = _pool()
    return {
        g: bool(pool.call({"op": g, "pred": pred, "gold": gold}, deadline).get("ok", False))
        for g in graders
    }


def grade_unscreened(op: str, pred: str, gold: str, timeout: float) -> dict[str, Any]:
    """Send one request to the worker without the screen (tests of the deadline use this)."""
    return _pool().call({"op": op, "pred": pred, "gold": gold}, timeout)


def shutdown() -> None:
    """Stop this process's grading workers (they also exit when this process exits)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL.owner == os.getpid():
            _POOL.close()
        _POOL = None


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
    """One grading subprocess: start, request with a deadline, kill and restart."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.ready = False

    def spawn(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CMD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("FT_DEBUG") else subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self.ready = False

    def ensure_ready(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
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
        self.ensure_ready()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.restart()
            return {"ok": False, "error": "worker died"}
        line = self._read_line(timeout)
        if line is None:
            self.restart()
            return {"ok": False, "error": f"timed out after {timeout:g}s"}
        return json.loads(line)

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
        self.workers = [_Worker() for _ in range(max(1, size))]
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
def worker_main() -> None:
    """Serve grading requests, one JSON line in, one JSON line out, until stdin closes."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    graders = _load_graders()
    _limit_memory()
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            ok = bool(graders[msg["op"]](msg["pred"], msg["gold"]))
            reply: dict[str, Any] = {"ok": ok}
        except BaseException as e:  # noqa: BLE001 - every failure is a False verdict
            reply = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        out.write(json.dumps(reply) + "\n")


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
