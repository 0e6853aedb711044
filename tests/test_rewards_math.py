"""`math_verify`: math-verify equality, on the main thread (SIGALRM timeouts) and off it (helper process)."""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time

import pytest
from mmreason.rewards import math_answer
from mmreason.rewards.math_answer import check_solution, format_math_answer, math_equal
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward


@pytest.mark.parametrize(
    "text, solution, expected",
    [
        ("<answer>\\frac{1}{2}</answer>", "0.5", 1.0),
        ("<answer>0.5</answer>", "\\frac{1}{2}", 1.0),
        ("<answer>1/2</answer>", "0.5", 1.0),
        ("<think>2+2</think><answer>4</answer>", "4", 1.0),
        ("<answer>$\\boxed{4}$</answer>", "4", 1.0),
        ("<answer>The answer is 4</answer>", "4", 1.0),
        ("<answer>x^2+1</answer>", "1+x^2", 1.0),  # bare expressions are read as LaTeX
        ("<answer>3\\sqrt{2}</answer>", "\\sqrt{18}", 1.0),
        ("<answer>(1, 2)</answer>", "(1,2)", 1.0),
        ("<answer>[0, 1)</answer>", "(0, 1)", 0.0),
        ("<answer>1/3</answer>", "0.5", 0.0),
        ("<answer>5</answer>", 5, 1.0),  # numeric solutions are turned into strings
        ("<answer>2.50</answer>", 2.5, 1.0),
        ("<answer>abc</answer>", "4", 0.0),
        ("<answer></answer>", "4", 0.0),
        ("<answer>1e400</answer>", "4", 0.0),
        ("4", "4", 0.0),  # no answer tag
        ("<answer>" + "4" * 2000 + "</answer>", "4", 0.0),  # over MAX_ANSWER_CHARS
        ("<answer><script>alert(4)</script></answer>", "4", 0.0),
        ("<answer>4</answer><answer>5</answer>", "5", 1.0),  # the last answer counts
    ],
)
def test_math_verify_reward(text, solution, expected):
    assert get_reward("math_verify")([text], solution=[solution]) == [expected]


@pytest.mark.parametrize("solution", ["", "   ", [1], {"a": 1}, True])
def test_bad_solution(solution):
    with pytest.raises(ColumnError, match="math_verify.*solution"):
        get_reward("math_verify")(["<answer>1</answer>"], solution=[solution])


def _in_thread(fn, *args):
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("out", fn(*args)))
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    return box["out"]


def test_off_main_thread_uses_the_helper_process_and_times_out():
    # (100!)! cannot finish: inside the helper process, math-verify's own alarm ends it after timeout_s
    start = time.perf_counter()
    assert _in_thread(math_equal, "\\frac{1}{2}", "0.5", 1) is True
    assert _in_thread(math_equal, "(100!)!", "5", 1) is False
    reward = get_reward("math_verify")
    texts = ["<answer>1/2</answer>", "<answer>3</answer>"]
    assert _in_thread(lambda: reward(texts, solution=["0.5", "4"])) == [1.0, 0.0]
    assert time.perf_counter() - start < 90
    assert math_answer._HELPER._proc is not None and math_answer._HELPER._proc.poll() is None


def test_a_helper_that_misses_its_deadline_is_killed_and_replaced():
    helper = math_answer._HELPER
    assert helper.verify("2", "2", 1) is True  # (re)uses the shared helper
    first = helper._proc
    assert helper.verify("(100!)!", "5", 1, deadline_s=0.05) is False  # the parent gives up first
    assert first.poll() is not None  # killed
    assert helper.verify("3", "3", 1) is True  # a fresh helper
    assert helper._proc is not first


def test_an_armed_timer_is_left_alone():
    # someone else's alarm (e.g. pytest-timeout's) must survive: the comparison goes to the helper instead
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        assert math_equal("\\frac{2}{4}", "0.5") is True
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0.0 < remaining <= 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not fired


@pytest.mark.parametrize("executable", ["/nonexistent/python", shutil.which("false") or "/bin/false"])
def test_a_helper_that_cannot_run_scores_zero_and_backs_off(monkeypatch, executable):
    helper = math_answer._Helper()
    monkeypatch.setattr(sys, "executable", executable)
    try:
        assert helper.verify("2", "2", 1) is False
        assert helper._retry_at > time.monotonic()
        start = time.perf_counter()
        assert helper.verify("2", "2", 1) is False  # no new spawn while backing off
        assert time.perf_counter() - start < 0.1
    finally:
        helper.stop()


@pytest.mark.parametrize(
    "value, expected",
    [
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("  x^2+1 ", "x^2+1"),
        (42, "42"),
        (3.0, "3"),
        (0.5, "0.5"),
        (-2, "-2"),
        (10**30, str(10**30)),
    ],
)
def test_check_solution(value, expected):
    assert check_solution(value) == expected == format_math_answer(value)


@pytest.mark.parametrize("value", ["", " ", None, True, float("nan"), float("inf"), [1], {"a": 1}])
def test_check_solution_rejects(value):
    with pytest.raises(ColumnError, match="solution: expected the final answer"):
        check_solution(value)
