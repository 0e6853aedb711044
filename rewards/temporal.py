"""Temporal segments: the time-segment answer type's parser, ground-truth check, gold-answer formatter and reward
`tiou` (overlap of the predicted and true time segments of a video).

Ground truth (`check_segment`, the one rule for reward columns and for the temporal_grounding task's records):
[start, end] in seconds, two finite numbers with 0 <= start < end. A zero-length segment is invalid ground truth:
it marks no stretch of time that an answer could overlap. A record is also checked against its video's duration:
its segment must start before the video ends, and its end is clipped to the duration.

Predictions (`parse_segment`): "[12.5, 30]", "12.5s - 30s", "00:12 - 00:30"; a reversed pair is swapped. A
zero-length prediction ("15 - 15") is read as it is and scores 0.0 (it overlaps no length of time); it is not an
error. With the optional `duration` column (seconds), a segment ending after the video (beyond DURATION_SLACK_S, the
rounding of the duration the prompt states) is not a valid answer and scores 0.0: "0, 99999" is not clipped into
the whole video.

tIoU = |pred ∩ truth| / |pred ∪ truth| (lengths of 1-D intervals), in [0, 1]; 0.0 when the answer has no segment.
The `tiou` reward measures it against the whole video's tIoU when the duration is known (`skill_over`: (tIoU -
tIoU_whole) / (1 - tIoU_whole), floored at 0), so answering "the whole video" earns nothing; `tiou_score` (the plain
tIoU, `plain_tiou`) is what the task's metrics report.
Gold answers are written "start, end" in seconds (`format_segment`), as the task's prompt asks.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import (
    bad_value,
    extract_answer,
    finite_float,
    format_number,
    is_finite_token,
    is_number,
    list_from_text,
    score_each,
    skill_over,
)

SEGMENT_EXPECTED = "[start, end] in seconds with 0 <= start < end"
DURATION_SLACK_S = 0.05  # the prompt states the duration to 0.1 s: an answer ending at the stated value is valid


def check_duration(value: Any, name: str = "duration") -> float | None:
    """A video duration: a positive finite number of seconds, or None; else ColumnError."""
    if value is None:
        return None
    seconds = finite_float(value) if is_number(value) else None
    if seconds is None or seconds <= 0:
        raise bad_value(name, "a positive number of seconds or None", value)
    return seconds


def check_segment(value: Any, name: str = "solution", duration: float | None = None) -> tuple[float, float]:
    """(start, end) from a value: two finite numbers with 0 <= start < end, else ColumnError.

    With `duration` (a record's video length) the segment must also start before the video ends; its end is
    clipped to the duration.
    """
    value = list_from_text(value)
    items = list(value) if isinstance(value, (list, tuple)) else []
    nums = [finite_float(v) if is_number(v) else None for v in items]
    if len(nums) != 2 or None in nums or not 0.0 <= nums[0] < nums[1]:
        raise bad_value(name, SEGMENT_EXPECTED, value)
    start, end = nums
    seconds = check_duration(duration)
    if seconds is None:
        return (start, end)
    if start >= seconds:
        raise bad_value(name, f"a segment starting before the video's end ({format_number(seconds)} s)", value)
    return (start, min(end, seconds))


def interval_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [start, end] intervals, in [0, 1]; 0.0 when their union has no length."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    if not union > 0 or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))


_TIME_RE = re.compile(
    r"(?<![\w.:])(?:(?:(\d{1,4}):)?(\d{1,4}):(\d{1,2}(?:\.\d{1,9})?)(?![\d:])"
    r"|(\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})(?:[eE][-+]?\d{1,4})?(?!\d)(?![eE][-+]?\d)(?!\.\d))"
)


def _seconds(m: re.Match[str]) -> float | None:
    hours, minutes, secs, plain = m.groups()
    if plain is None:
        if float(secs) >= 60 or (hours is not None and int(minutes) >= 60):
            return None
        return int(hours or 0) * 3600.0 + int(minutes) * 60.0 + float(secs)
    return float(m.group(0)) if is_finite_token(m.group(0)) else None


def parse_segment(text: str) -> tuple[float, float] | None:
    """(start, end) seconds with start <= end (a reversed pair is swapped), else None.

    The text must state exactly two times: plain seconds ("[12.5, 30]", "12.5s - 30s", "from 12.5 to 30 seconds")
    or clock times ("00:12 - 01:05", "1:02:03.5"). Signs are not read (a dash is a range, not a minus); three or
    more times, an impossible clock time (1:75) or a non-finite value (1e400) -> None.
    """
    if not isinstance(text, str):
        return None
    body = unicodedata.normalize("NFKC", text)
    times = []
    for m in _TIME_RE.finditer(body):
        times.append(_seconds(m))
        if len(times) > 2:
            return None
    if len(times) != 2 or any(t is None for t in times):
        return None
    a, b = times  # type: ignore[misc]
    return (min(a, b), max(a, b))


def predicted_segment(completion: str, duration: float | None = None) -> tuple[float, float] | None:
    """The completion's (start, end); None when absent, or when it ends after the video (by more than
    DURATION_SLACK_S, the slack being clipped off)."""
    answer = extract_answer(completion)
    segment = None if answer is None else parse_segment(answer)
    if segment is None or duration is None:
        return segment
    if segment[1] > duration + DURATION_SLACK_S:
        return None
    return (min(segment[0], duration), min(segment[1], duration))


def tiou_score(completion: str, solution: Any, duration: Any = None) -> float:
    """Plain tIoU of the answered segment with the true one (module doc): the metric."""
    truth, dur = check_segment(solution), check_duration(duration)
    pred = predicted_segment(completion, dur)
    return 0.0 if pred is None else interval_iou(pred, truth)


def tiou_skill_score(completion: str, solution: Any, duration: Any = None) -> float:
    """The `tiou` reward: `tiou_score` measured against the whole video's tIoU when the duration is known."""
    value, dur = tiou_score(completion, solution, duration), check_duration(duration)
    return value if dur is None else skill_over(value, interval_iou((0.0, dur), check_segment(solution)))


def format_segment(start: float, end: float, digits: int = 2) -> str:
    """Answer text for a segment: "12.5, 30" (at most `digits` decimals; what `parse_segment` reads back)."""
    return f"{format_number(start, digits)}, {format_number(end, digits)}"


@register_reward("tiou")
def tiou_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`tiou_skill_score` per completion: tIoU beyond the whole video's. Columns: solution ([start, end] s),
    duration (optional)."""
    return score_each("tiou", completions, columns, tiou_skill_score, optional={"duration": None})


def plain_tiou(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`tiou_score` (the plain tIoU) per completion, with the `tiou` reward's columns: what metrics report."""
    return score_each("tiou", completions, columns, tiou_score, optional={"duration": None})
