"""Temporal grounding reward `tiou`: overlap of the predicted and true time segments of a video.

Column `solution`: [start, end] in seconds with 0 <= start <= end; optional column `duration` (seconds): when
given, the predicted segment is clipped to [0, duration] first. The answer is read by `parse_segment` ("[12.5,
30]", "12.5s - 30s", "00:12 - 00:30"; a reversed pair is swapped).
tIoU = |pred ∩ truth| / |pred ∪ truth| (lengths of 1-D intervals), in [0, 1]; 0.0 when the union has zero
length (e.g. both are the same instant: there is no overlap to measure) or the answer has no segment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import ColumnError, extract_answer, is_number, parse_segment, score_each


def check_segment(value: Any, name: str = "solution") -> tuple[float, float]:
    """(start, end) from a column value: two finite numbers with 0 <= start <= end, else ColumnError."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if all(is_number(v) and math.isfinite(v) for v in value):
            start, end = float(value[0]), float(value[1])
            if 0.0 <= start <= end:
                return (start, end)
    raise ColumnError(f"{name}: expected [start, end] seconds with 0 <= start <= end, got {value!r}")


def interval_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [start, end] intervals, in [0, 1]; 0.0 when their union has no length."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    if not union > 0 or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))


def predicted_segment(completion: str, duration: float | None = None) -> tuple[float, float] | None:
    """The completion's (start, end), clipped to [0, duration] when a duration is given; None when absent."""
    answer = extract_answer(completion)
    segment = None if answer is None else parse_segment(answer)
    if segment is None or duration is None:
        return segment
    return (min(segment[0], duration), min(segment[1], duration))


def _check_duration(value: Any) -> float | None:
    if value is None:
        return None
    if is_number(value) and math.isfinite(value) and value > 0:
        return float(value)
    raise ColumnError(f"duration: expected a positive number of seconds or None, got {value!r}")


def tiou_score(completion: str, solution: Any, duration: Any = None) -> float:
    """tIoU of the answered segment with the true one (module doc)."""
    truth, dur = check_segment(solution), _check_duration(duration)
    pred = predicted_segment(completion, dur)
    return 0.0 if pred is None else interval_iou(pred, truth)


def format_segment(start: float, end: float, digits: int = 1) -> str:
    """Answer text for a segment: "[12.5, 30.0]" (what `parse_segment` reads back)."""
    return f"[{start:.{digits}f}, {end:.{digits}f}]"


@register_reward("tiou")
def tiou_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`tiou_score` per completion. Columns: solution ([start, end] s), duration (optional)."""
    return score_each("tiou", completions, columns, tiou_score, optional={"duration": None})
