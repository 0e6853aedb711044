"""Box rewards for visual grounding (`iou`, `box_f1`) and the coordinate conventions of the model families.

Coordinate conventions (what a model writes, and what it is compared against):
- "qwen2_5_vl" (Qwen2.5-VL): absolute pixels of the RESIZED image the model was shown (`model_size` = the
  smart_resize output, [w, h]); the usual answer is JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`.
- "qwen2_vl" (Qwen2-VL): integers normalised to 0-1000 on both axes, independent of any resize; the usual answer
  is `<|box_start|>(x1,y1),(x2,y2)<|box_end|>`.
Ground truth is stored in ORIGINAL image pixels (`image_size` = [w, h] of the file) and is converted to the model's
frame by `gt_to_model_coords`: qwen2_5_vl -> x * model_w / image_w, y * model_h / image_h; qwen2_vl ->
x * 1000 / image_w, y * 1000 / image_h (floats; no rounding). Predictions are never converted: they are clipped to
the model's frame ([0, model_w] x [0, model_h], or [0, 1000]^2) and scored there. IoU is invariant under a per-axis
scaling, so scoring in the model frame equals scoring in original pixels.

Columns: `solution` (list of GT boxes [x1, y1, x2, y2] in original pixels; [] = the object is absent; a single
flat box is accepted too), `image_size` ([w, h] original), `model_size` ([w, h] resized), and optional
`coord_family` ("qwen2_5_vl" when absent).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import ColumnError, clean_box, extract_answer, is_abstention, is_number, parse_boxes, score_each

QWEN2_5_VL = "qwen2_5_vl"
QWEN2_VL = "qwen2_vl"
COORD_FAMILIES = (QWEN2_5_VL, QWEN2_VL)
QWEN2_VL_SCALE = 1000.0
MATCH_IOU = 0.5

Box = list[float]


def canonical_family(value: Any) -> str:
    """Canonical family name from loose spellings ("Qwen2.5-VL", "qwen2-vl", ...); ColumnError otherwise."""
    key = str(value).lower().replace(".", "_").replace("-", "_") if isinstance(value, str) else ""
    if key in COORD_FAMILIES:
        return key
    raise ColumnError(f"coord_family: expected one of {COORD_FAMILIES}, got {value!r}")


def check_size(value: Any, name: str) -> tuple[float, float]:
    """(w, h) from a [w, h] column value; both finite and > 0, else ColumnError naming `name`."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        w, h = (float(v) if is_number(v) else math.nan for v in value)
        if math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0:
            return (w, h)
    raise ColumnError(f"{name}: expected [width, height] with positive finite numbers, got {value!r}")


def check_boxes(value: Any, name: str = "solution") -> list[Box]:
    """GT boxes from a column value: a list of [x1, y1, x2, y2] (or one flat box); corners ordered."""
    if not isinstance(value, (list, tuple)):
        raise ColumnError(f"{name}: expected a list of [x1, y1, x2, y2] boxes, got {value!r}")
    items = [value] if len(value) == 4 and all(is_number(v) for v in value) else value
    boxes = []
    for item in items:
        box = clean_box(item) if isinstance(item, (list, tuple)) else None
        if box is None:
            raise ColumnError(f"{name}: expected boxes [x1, y1, x2, y2] of finite numbers, got {item!r}")
        boxes.append(box)
    return boxes


def model_frame(model_size: Sequence[float], family: str) -> tuple[float, float]:
    """(width, height) of the frame a family's predictions live in: model_size, or 1000 x 1000 for qwen2_vl."""
    if canonical_family(family) == QWEN2_VL:
        return (QWEN2_VL_SCALE, QWEN2_VL_SCALE)
    return check_size(model_size, "model_size")


def gt_to_model_coords(
    box: Sequence[float], image_size: Sequence[float], model_size: Sequence[float], family: str
) -> Box:
    """An original-pixel box in the model's convention (see the module doc for both formulas)."""
    iw, ih = check_size(image_size, "image_size")
    fw, fh = model_frame(model_size, family)
    x1, y1, x2, y2 = box
    return [x1 * fw / iw, y1 * fh / ih, x2 * fw / iw, y2 * fh / ih]


def model_to_gt_coords(
    box: Sequence[float], image_size: Sequence[float], model_size: Sequence[float], family: str
) -> Box:
    """The inverse of `gt_to_model_coords`: a predicted box back in original pixels (for drawing)."""
    iw, ih = check_size(image_size, "image_size")
    fw, fh = model_frame(model_size, family)
    x1, y1, x2, y2 = box
    return [x1 * iw / fw, y1 * ih / fh, x2 * iw / fw, y2 * ih / fh]


def clip_box(box: Sequence[float], width: float, height: float) -> Box:
    """The box clipped to [0, width] x [0, height] (it may become zero-area)."""
    x1, y1, x2, y2 = box
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height)]


def box_area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes, in [0, 1]; 0.0 when the union has no area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = box_area(a) + box_area(b) - inter
    if not union > 0 or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))


def best_iou(pred: Sequence[float], gts: Sequence[Sequence[float]]) -> float:
    """IoU of `pred` with its best-matching GT box (0.0 when there is none)."""
    return max((box_iou(pred, g) for g in gts), default=0.0)


def count_matches(
    preds: Sequence[Sequence[float]], gts: Sequence[Sequence[float]], threshold: float = MATCH_IOU
) -> int:
    """Size of a maximum one-to-one matching between predicted and GT boxes where a pair needs IoU >= threshold.

    Augmenting paths (Kuhn's algorithm) rather than greedy-by-IoU, so the count is the largest possible: a greedy
    pick can take a GT box that a second prediction needed.
    """
    edges = [[j for j, g in enumerate(gts) if box_iou(p, g) >= threshold] for p in preds]
    owner: dict[int, int] = {}

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(preds)))


def f1_at_iou(preds: Sequence[Sequence[float]], gts: Sequence[Sequence[float]], threshold: float = MATCH_IOU) -> float:
    """F1 = 2 * matches / (#pred + #gt) with one-to-one matching at IoU >= threshold; 1.0 when both are empty."""
    if not preds and not gts:
        return 1.0
    return 2.0 * count_matches(preds, gts, threshold) / (len(preds) + len(gts))


def predicted_boxes(completion: str, frame: tuple[float, float]) -> list[Box] | None:
    """The completion's boxes clipped to `frame`; [] for an explicit abstention; None when no answer/no boxes."""
    answer = extract_answer(completion)
    if answer is None:
        return None
    boxes = parse_boxes(answer)
    if boxes:
        return [clip_box(b, *frame) for b in boxes]
    return [] if is_abstention(answer) else None


def _prepare(completion: str, solution: Any, image_size: Any, model_size: Any, family: Any):
    family = canonical_family(family)
    # both sizes are checked even when unused (empty GT, qwen2_vl), so a bad row never passes silently
    check_size(image_size, "image_size")
    check_size(model_size, "model_size")
    frame = model_frame(model_size, family)
    gts = [gt_to_model_coords(b, image_size, model_size, family) for b in check_boxes(solution)]
    return predicted_boxes(completion, frame), gts


def iou_score(
    completion: str, solution: Any, image_size: Any, model_size: Any, coord_family: str = QWEN2_5_VL
) -> float:
    """IoU of the FIRST predicted box with its best-matching GT box (in the model frame).

    Abstention: an explicit "none"/"[]" answer scores 1.0 when the GT is [] and 0.0 otherwise; any box scores 0.0
    against an empty GT. No answer tag, or an answer without boxes that is not an abstention -> 0.0.
    """
    preds, gts = _prepare(completion, solution, image_size, model_size, coord_family)
    if preds is None:
        return 0.0
    if not preds or not gts:
        return 1.0 if not preds and not gts else 0.0
    return best_iou(preds[0], gts)


def box_f1_score(
    completion: str, solution: Any, image_size: Any, model_size: Any, coord_family: str = QWEN2_5_VL
) -> float:
    """F1 of all predicted boxes vs all GT boxes, one-to-one matched at IoU >= 0.5 (`f1_at_iou`).

    An explicit abstention against an empty GT -> 1.0; no answer / unparseable -> 0.0; duplicates count as false
    positives.
    """
    preds, gts = _prepare(completion, solution, image_size, model_size, coord_family)
    return 0.0 if preds is None else f1_at_iou(preds, gts)


def format_boxes(boxes: Sequence[Sequence[float]], family: str, label: str | None = None) -> str:
    """Answer text for boxes already in the model's frame (e.g. an SFT target), rounded to integers.

    qwen2_5_vl -> `[{"bbox_2d": [x1, y1, x2, y2], "label": label}]` (label omitted when None);
    qwen2_vl -> `(x1,y1),(x2,y2)` per box, joined by ", " and clamped to 0..1000. No boxes -> "[]" (an abstention).
    """
    family = canonical_family(family)
    ints = [[int(round(v)) for v in b] for b in boxes]
    if not ints:
        return "[]"
    if family == QWEN2_VL:
        ints = [[min(max(v, 0), int(QWEN2_VL_SCALE)) for v in b] for b in ints]
        return ", ".join(f"({x1},{y1}),({x2},{y2})" for x1, y1, x2, y2 in ints)
    items = [{"bbox_2d": b, **({"label": label} if label is not None else {})} for b in ints]
    return json.dumps(items, ensure_ascii=False)


_COLUMNS = {"required": ("solution", "image_size", "model_size"), "optional": {"coord_family": QWEN2_5_VL}}


@register_reward("iou")
def iou_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`iou_score` per completion. Columns: solution, image_size, model_size, coord_family (optional)."""
    return score_each("iou", completions, columns, iou_score, **_COLUMNS)


@register_reward("box_f1")
def box_f1_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`box_f1_score` per completion (F1 at IoU 0.5). Columns as for `iou`."""
    return score_each("box_f1", completions, columns, box_f1_score, **_COLUMNS)
