"""Math answers: the ground-truth check, gold-answer formatter and reward `math_verify` (is the answer
mathematically equal to the solution, judged by the math-verify library, which also parses the answers).

Column `solution`: the gold answer (`check_solution`, which the math task checks its records with too): a non-empty
string, e.g. "\\frac{1}{2}", "0.5", "x^2+1", or a finite number (written as text: 3.0 -> "3", 0.5 -> "0.5").
The answer-tag content and the solution are each parsed with `math_verify.parse` (as given when they contain LaTeX
delimiters `$`, `\\boxed`, `\\(` or `\\[`; otherwise wrapped as `$...$`, falling back to the bare text) and
compared with `math_verify.verify(gold, pred)`: numbers, fractions, LaTeX, sets, intervals and symbolic equality.
1.0 or 0.0; no answer tag, an answer over 1000 characters, a parse failure or a timeout -> 0.0.
Hostile answers are refused before math-verify sees them (`too_costly`): a power whose exponent is over
MAX_EXPONENT or is itself a power (`(x+1)^{1000000}`, `10^{10^{10}}`), a number of more than MAX_DIGITS digits, a
factorial or binomial of a number over MAX_FACTORIAL; sympy would expand them for seconds and gigabytes. Such an
answer (or gold answer) scores 1.0 only when it is written exactly as the other.
(This module is not named `math.py`, so it can never shadow the standard library.)

Timeouts without signals off the main thread: math-verify bounds its work with SIGALRM, which only the main thread
may use. So `math_equal` runs in-process with math-verify's own timeouts only when called on the main thread with
no interval timer already armed (someone else's alarm, e.g. pytest-timeout's, is left alone). Otherwise (reward
workers, async trainers) the comparison is sent to one long-lived helper process (`python -c ... serve()`, started
on first use, reused, shared under a lock) where math-verify runs on that process's main thread; if it does not
answer within the deadline it is killed, the comparison scores 0.0 and the next call starts a fresh helper.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import numbers
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from mmreason.registry import register_reward

from .parse import bad_value, extract_answer, is_number, score_each

DEFAULT_TIMEOUT_S = 2  # per math-verify step (each parse, each comparison); SIGALRM takes whole seconds
MAX_ANSWER_CHARS = 1000
MAX_EXPONENT = 100  # (x+1)^{100} already takes sympy about half a second to expand and compare
MAX_DIGITS = 100
MAX_FACTORIAL = 1000
_NUMBER_RE = re.compile(r"\d+")
_FACTORIAL_RE = re.compile(r"(\d+)\s*!")
_STARTUP_GRACE_S = 60.0  # a fresh helper imports sympy and the package before answering
_RETRY_AFTER_S = 60.0

log = logging.getLogger(__name__)


_DELIMITERS = ("$", "\\boxed", "\\(", "\\[")


@lru_cache(maxsize=4096)
def _parse(text: str, timeout_s: int) -> tuple[Any, ...]:
    """math_verify.parse of an answer: as given when it has LaTeX delimiters, else as `$text$` first.

    math-verify's plain-expression reader takes the first number it can ("(1, 2)" -> 2, "3\\sqrt{2}" -> 3,
    "1+x^2" -> 1), while inside `$...$` the whole answer is read as LaTeX (an interval, 3*sqrt(2), x**2 + 1).
    """
    import math_verify  # deferred: sympy takes a second to import and only this reward needs it

    candidates = (text,) if any(d in text for d in _DELIMITERS) else (f"${text}$", text)
    for candidate in candidates:
        parsed = math_verify.parse(candidate, parsing_timeout=timeout_s)
        if parsed:
            return tuple(parsed)
    return ()


def _verify_here(answer: str, solution: str, timeout_s: int) -> bool:
    """Parse and compare in this process with math-verify's SIGALRM timeouts (main thread only)."""
    import math_verify

    gold, pred = _parse(solution, timeout_s), _parse(answer, timeout_s)
    if not gold or not pred:
        return False
    return bool(math_verify.verify(list(gold), list(pred), timeout_seconds=timeout_s))


def _signals_usable() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.getitimer(signal.ITIMER_REAL)[0] == 0.0


class _Helper:
    """One child process serving JSON-line comparison requests; restarted after a crash or a missed deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._fresh = False
        # after a helper fails to start or dies twice in a row, calls score 0 at once until this time (monotonic s)
        self._retry_at = 0.0

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from mmreason.rewards.math_answer import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,  # a Ctrl-C meant for the trainer does not kill it mid-request
        )
        self._fresh = True
        return self._proc

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def verify(self, answer: str, solution: str, timeout_s: int, deadline_s: float | None = None) -> bool:
        request = json.dumps({"answer": answer, "solution": solution, "timeout": timeout_s}) + "\n"
        with self._lock:
            if time.monotonic() < self._retry_at:
                return False
            for _ in range(2):  # a helper found dead is restarted once
                try:
                    proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
                    proc.stdin.write(request)  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                except (OSError, ValueError):  # cannot spawn, or the pipe broke
                    self.stop()
                    continue
                wait = deadline_s if deadline_s is not None else 5.0 * timeout_s + 1.0
                wait += _STARTUP_GRACE_S if self._fresh else 0.0
                if not select.select([proc.stdout], [], [], wait)[0]:
                    log.warning("math_verify helper missed its %.0f s deadline; restarting it", wait)
                    self.stop()
                    return False
                line = proc.stdout.readline()  # type: ignore[union-attr]
                self._fresh = False
                try:
                    return bool(json.loads(line)["equal"])
                except (ValueError, KeyError, TypeError):  # EOF (it died) or a line that is not its reply
                    self.stop()
            self._retry_at = time.monotonic() + _RETRY_AFTER_S
            log.error(
                "math_verify helper process cannot run (try: %s -c 'import mmreason.rewards'); scoring 0 for %.0f s",
                sys.executable,
                _RETRY_AFTER_S,
            )
            return False


_HELPER = _Helper()
atexit.register(_HELPER.stop)


def serve() -> None:
    """Helper-process loop: one JSON request per stdin line, one {"equal": bool} per stdout line, until EOF."""
    for line in sys.stdin:
        try:
            req = json.loads(line)
            equal = _verify_here(str(req["answer"]), str(req["solution"]), int(req["timeout"]))
        except BaseException:  # noqa: B036 - math-verify's TimeoutException is a BaseException; never die here
            equal = False
        sys.stdout.write(json.dumps({"equal": equal}) + "\n")
        sys.stdout.flush()


def too_costly(text: str) -> bool:
    """Whether comparing `text` symbolically could take seconds and gigabytes (see the module docstring)."""
    if any(len(n) > MAX_DIGITS for n in _NUMBER_RE.findall(text)):
        return True
    if any(int(n) > MAX_FACTORIAL for n in _FACTORIAL_RE.findall(text)):
        return True
    if ("binom" in text or "choose" in text) and any(int(n) > MAX_FACTORIAL for n in _NUMBER_RE.findall(text)):
        return True
    return any(_exponent_too_large(text, m.end()) for m in re.finditer(r"\^|\*\*", text))


def _exponent_too_large(text: str, start: int) -> bool:
    """Whether the exponent written at text[start:] (`{...}`, `(...)` or a bare token) is a power itself, a
    factorial, or holds a number over MAX_EXPONENT."""
    rest = text[start:].lstrip()
    if rest[:1] in ("{", "("):
        close = "}" if rest[0] == "{" else ")"
        depth, end = 0, len(rest)
        for i, char in enumerate(rest):
            depth += (char == rest[0]) - (char == close)
            if depth == 0:
                end = i + 1
                break
        exponent = rest[:end]
    else:
        exponent = re.match(r"[\w.]*", rest).group()
    if "^" in exponent or "**" in exponent or "!" in exponent:
        return True
    return any(int(n) > MAX_EXPONENT for n in _NUMBER_RE.findall(exponent))


def math_equal(answer: str, solution: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Is `answer` mathematically equal to `solution`? Thread-safe; never raises on any answer string."""
    if not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return False
    if too_costly(answer) or too_costly(solution):  # never handed to sympy: equal only as written
        return answer.split() == solution.split()
    if os.name != "posix":  # math-verify times out with processes there, not signals: safe on any thread
        return _verify_here(answer, solution, timeout_s)
    if _signals_usable():
        try:
            return _verify_here(answer, solution, timeout_s)
        except ValueError:  # math-verify's "signal only works in main thread" (e.g. a sub-interpreter)
            pass
    return _HELPER.verify(answer, solution, timeout_s)


SOLUTION_EXPECTED = "the final answer as a non-empty string (plain or LaTeX) or a finite number"


def check_solution(value: Any, name: str = "solution") -> str:
    """The gold answer as a stripped non-empty string, else ColumnError.

    A number is written as text: integers and integral floats without a decimal point (42, 3.0 -> "3"), other
    floats by repr (0.5 -> "0.5"); NaN and infinities are errors.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if is_number(value):
        number = float(value)
        if math.isfinite(number):
            return str(int(number)) if number.is_integer() else repr(number)
    elif isinstance(value, str) and value.strip():
        return value.strip()
    raise bad_value(name, SOLUTION_EXPECTED, value)


def format_math_answer(solution: Any) -> str:
    """Answer text for a gold answer: the checked solution string (`check_solution`)."""
    return check_solution(solution)


def math_score(completion: str, solution: Any) -> float:
    """1.0 when the completion's answer tag is mathematically equal to the solution, else 0.0."""
    gold = check_solution(solution)
    answer = extract_answer(completion)
    return 1.0 if answer is not None and math_equal(answer, gold) else 0.0


@register_reward("math_verify")
def math_verify_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`math_score` per completion. Column: solution (gold answer string)."""
    return score_each("math_verify", completions, columns, math_score)
