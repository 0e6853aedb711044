"""Grounding boxes: the box answer type's parser, ground-truth check, gold-answer formatter and rewards (`iou`,
`box_f1`), and the coordinate conventions of the model families.

Coordinate conventions (what a model writes, and what it is compared against) are a fact of the model family
(`mmreason.models.family.ModelFamily.box_convention` and `box_format`), asked for by the family's name:
- "absolute" (Qwen2.5-VL): absolute pixels of the RESIZED image the model was shown (`model_size` = the
  smart_resize output, [w, h]); the usual answer is JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]`.
- "relative_1000" (Qwen2-VL and the other families): integers normalised to 0-1000 on both axes, independent of
  any resize; Qwen2-VL writes `(x1,y1),(x2,y2)`.
Ground truth is stored in ORIGINAL image pixels (`image_size` = [w, h] of the file) and is converted to the model's
frame by `gt_to_model_coords`: absolute -> x * model_w / image_w, y * model_h / image_h; relative_1000 ->
x * 1000 / image_w, y * 1000 / image_h (floats; no rounding). Predictions are never converted: they are scored in
the model's frame ([0, model_w] x [0, model_h], or [0, 1000]^2). IoU is invariant under a per-axis scaling, so
scoring in the model frame equals scoring in original pixels.

Ground truth (`check_boxes`, the one rule for records and reward columns): a list of boxes [x1, y1, x2, y2] of
finite numbers with x1 <= x2 and y1 <= y2 ([] = the object is absent; a single flat box is accepted too). Reversed
corners are an error, not silently swapped: they usually mean [x, y, w, h] data. A record's boxes are also clipped
to its image, and a box left with no area inside it is an error.
Predictions (`parse_boxes`) are read leniently: swapped corners are put in order. An answer with a coordinate outside
the model's frame (a negative pixel, a pixel past the image's side, a relative value past 1000) is not a valid answer
and scores 0.0 on both rewards: it is not clipped into a box that covers the whole image.

Rewards: `iou` is the first box's IoU measured against the whole-image box's (`skill_over`: (IoU - IoU_whole) /
(1 - IoU_whole), floored at 0), so the hedge "the object is somewhere in the image" earns nothing while a perfect
box earns 1.0 (when the object fills the image the whole-image box is the right answer and the plain IoU is paid).
`box_f1` counts the boxes one-to-one matched to true boxes at IoU 0.5 and divides by the larger of the two counts,
TP / max(#pred, #gt) (`strict_f1_at_iou`): the usual F1, 2 TP / (#pred + #gt), when the answer has as many boxes as
the truth, but extra boxes never pay. With the usual F1, k random boxes for one object earn about 2k/(k+1) times
what one random box earns (spraying boxes is a better bet than guessing); with max, at most as much. The plain IoU
and the usual F1 (`iou_score` / `plain_iou`, `box_f1_score` / `plain_box_f1`) are what the task's metrics report.

Columns: `solution` (GT boxes in original pixels), `image_size` ([w, h] original), `model_size` ([w, h] resized),
and optional `coord_family` (a model family's name; "qwen2_5_vl" when absent).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from mmreason.models.family import ModelFamily, family_names, get_family
from mmreason.registry import register_reward

from .parse import (
    NUMBER_PATTERN,
    NUMBER_RE,
    ColumnError,
    bad_value,
    extract_answer,
    finite_float,
    format_number,
    is_finite_token,
    is_number,
    list_from_text,
    loads_or_none,
    score_each,
    skill_over,
    strip_code_fence,
)

QWEN2_5_VL = "qwen2_5_vl"
QWEN2_VL = "qwen2_vl"
RELATIVE_SCALE = 1000.0  # the side of the relative_1000 frame
MATCH_IOU = 0.5

Box = list[float]


def canonical_family(value: Any) -> str:
    """Canonical family name from loose spellings ("Qwen2.5-VL", "qwen2-vl", ...); ColumnError otherwise."""
    key = str(value).lower().replace(".", "_").replace("-", "_") if isinstance(value, str) else ""
    if key in family_names():
        return key
    raise ColumnError(f"coord_family: expected one of {family_names()}, got {value!r}")


def box_family(value: Any) -> ModelFamily:
    """The model family named by a `coord_family` value (see `canonical_family`)."""
    return get_family(canonical_family(value))


def check_size(value: Any, name: str) -> tuple[float, float]:
    """(w, h) from a [w, h] column value; both finite and > 0, else ColumnError naming `name`."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        w, h = (float(v) if is_number(v) else math.nan for v in value)
        if math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0:
            return (w, h)
    raise ColumnError(f"{name}: expected [width, height] with positive finite numbers, got {value!r}")


BOXES_EXPECTED = (
    "a list of [x1, y1, x2, y2] boxes of finite numbers in original image pixels ([] when the object is absent)"
)


def check_boxes(value: Any, name: str = "solution", image_size: Sequence[float] | None = None) -> list[Box]:
    """GT boxes from a value: a list of [x1, y1, x2, y2] (or one flat box) with x1 <= x2 and y1 <= y2.

    With `image_size` ([w, h] of a record's image), each box is clipped to the image and one left with no area
    inside it is an error. Raises ColumnError (a ValueError) saying what was expected.
    """
    value = list_from_text(value)
    if not isinstance(value, (list, tuple)):
        raise bad_value(name, BOXES_EXPECTED, value)
    items = [value] if len(value) == 4 and all(is_number(v) for v in value) else value
    boxes = []
    for item in items:
        ok = isinstance(item, (list, tuple)) and len(item) == 4
        nums = [None if isinstance(v, str) else finite_float(v) for v in item] if ok else [None]
        if None in nums:
            raise bad_value(name, BOXES_EXPECTED, value)
        x1, y1, x2, y2 = nums
        if x2 < x1 or y2 < y1:
            raise bad_value(name, "boxes with x1 <= x2 and y1 <= y2", item)
        boxes.append([x1, y1, x2, y2] if image_size is None else _inside(item, nums, image_size, name))
    return boxes


def _inside(item: Any, box: Box, image_size: Sequence[float], name: str) -> Box:
    w, h = check_size(image_size, "image_size")
    clipped = clip_box(box, w, h)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise bad_value(name, f"boxes with some area inside the {format_number(w)}x{format_number(h)} image", item)
    return clipped


def model_frame(model_size: Sequence[float], family: str) -> tuple[float, float]:
    """(width, height) of the frame a family's predictions live in: model_size (absolute convention), or
    1000 x 1000 (relative_1000)."""
    if box_family(family).box_convention == "relative_1000":
        return (RELATIVE_SCALE, RELATIVE_SCALE)
    return check_size(model_size, "model_size")


def _rescale(box: Sequence[float], src: tuple[float, float], dst: tuple[float, float]) -> Box:
    """A box from a src (width, height) frame into a dst frame, scaled per axis."""
    (sw, sh), (dw, dh) = src, dst
    x1, y1, x2, y2 = box
    return [x1 * dw / sw, y1 * dh / sh, x2 * dw / sw, y2 * dh / sh]


def gt_to_model_coords(
    box: Sequence[float], image_size: Sequence[float], model_size: Sequence[float], family: str
) -> Box:
    """An original-pixel box in the model's convention (see the module doc for both formulas)."""
    return _rescale(box, check_size(image_size, "image_size"), model_frame(model_size, family))


def model_to_gt_coords(
    box: Sequence[float], image_size: Sequence[float], model_size: Sequence[float], family: str
) -> Box:
    """The inverse of `gt_to_model_coords`: a predicted box back in original pixels (for drawing)."""
    return _rescale(box, model_frame(model_size, family), check_size(image_size, "image_size"))


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


def strict_f1_at_iou(
    preds: Sequence[Sequence[float]], gts: Sequence[Sequence[float]], threshold: float = MATCH_IOU
) -> float:
    """matches / max(#pred, #gt) (min of precision and recall): F1 when the counts agree, never more; 1.0 when both
    are empty. The reward's form: a longer list of guesses cannot raise its expectation (module doc)."""
    if not preds and not gts:
        return 1.0
    return count_matches(preds, gts, threshold) / max(len(preds), len(gts))


MAX_BOXES = 100  # more boxes than any referring expression needs; bounds matching cost on spammed answers
_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_SP = r"\s{0,20}"
_N = f"({NUMBER_PATTERN})"
_QWEN2_BOX_RE = re.compile(rf"\({_SP}{_N}{_SP},{_SP}{_N}{_SP}\){_SP},?{_SP}\({_SP}{_N}{_SP},{_SP}{_N}{_SP}\)")
_BRACKET_BOX_RE = re.compile(rf"[\[(]{_SP}{_N}{_SP},{_SP}{_N}{_SP},{_SP}{_N}{_SP},{_SP}{_N}{_SP}[\])]")
_BARE_BOX_RE = re.compile(rf"{_SP}{_N}(?:{_SP}[,\s]{_SP}{_N}){{3}}{_SP}\.?{_SP}")
_ABSTAIN_RE = re.compile(
    r"(?:none|null|nothing|n/?a|no|\[\s*\]|\{\s*\}"
    r"|(?:there\s+is\s+|there\s+are\s+)?no(?:\s+(?:such|matching|valid|target|relevant|corresponding))?"
    r"\s+(?:objects?|targets?|box(?:es)?|matche?s?|bounding\s+box(?:es)?|regions?)"
    r"(?:\s+(?:is\s+|are\s+)?(?:found|present|exists?|detected|visible|in\s+(?:the\s+)?image))?"
    r"|(?:the\s+)?(?:object|target)\s+(?:is\s+)?(?:not\s+(?:found|present|visible|in\s+(?:the\s+)?image)|absent))",
    re.IGNORECASE,
)


def clean_box(values: Sequence[Any]) -> list[float] | None:
    """[x1, y1, x2, y2] as finite floats with x1 <= x2 and y1 <= y2 (swapped corners are swapped back), else None."""
    if len(values) != 4:
        return None
    nums = [finite_float(v) if not isinstance(v, str) else None for v in values]
    if any(v is None for v in nums):
        return None
    x1, y1, x2, y2 = nums  # type: ignore[misc]
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def _boxes_from_json(obj: Any, depth: int = 0) -> list[list[float]]:
    """Boxes from a parsed JSON value: a 4-number list, a list of those, or dicts holding one under a box key."""
    if depth > 3:
        return []
    if isinstance(obj, dict):
        for key in _BOX_KEYS:
            if key in obj:
                return _boxes_from_json(obj[key], depth + 1)
        return []
    if not isinstance(obj, list):
        return []
    if len(obj) == 4 and all(is_number(v) for v in obj):
        box = clean_box(obj)
        return [box] if box else []
    out: list[list[float]] = []
    for item in obj[:MAX_BOXES]:
        out.extend(_boxes_from_json(item, depth + 1))
    return out


def _boxes_from_matches(pattern: re.Pattern[str], text: str) -> list[list[float]]:
    out = []
    for m in pattern.finditer(text):
        box = clean_box([float(g) if is_finite_token(g) else None for g in m.groups()])
        if box:
            out.append(box)
        if len(out) >= MAX_BOXES:
            break
    return out


def parse_boxes(text: str) -> list[list[float]]:
    """Boxes [x1, y1, x2, y2] (floats, corners ordered) stated by `text`, at most MAX_BOXES of them.

    Tried in order, the first form that yields a box wins: JSON (optionally in a ```json fence) -- `[x1,y1,x2,y2]`,
    a list of those, `{"bbox_2d": [...]}` or a list of such dicts (Qwen2.5-VL; keys bbox_2d/bbox/box_2d/box);
    Qwen2-VL pairs `(x1,y1),(x2,y2)` (with or without <|box_start|>); bracketed 4-tuples anywhere in prose
    ("the box is [1, 2, 3, 4]."); four bare numbers "1, 2, 3, 4". Boxes with NaN/inf/huge values are dropped.
    Returns [] both for an abstention ("none", "no object", "[]") and for text without boxes; use
    `is_abstention` to tell them apart.
    """
    if not isinstance(text, str):
        return []
    body = strip_code_fence(text).strip()
    if body.startswith(("[", "{")):
        boxes = _boxes_from_json(loads_or_none(body))
        if boxes:
            return boxes[:MAX_BOXES]
    for pattern in (_QWEN2_BOX_RE, _BRACKET_BOX_RE):
        boxes = _boxes_from_matches(pattern, body)
        if boxes:
            return boxes
    if len(body) <= 400 and _BARE_BOX_RE.fullmatch(body):
        box = clean_box(_numbers_in(body))
        return [box] if box else []
    return []


def _numbers_in(text: str) -> list[float | None]:
    return [float(t) if is_finite_token(t) else None for t in (m.group(0) for m in NUMBER_RE.finditer(text))]


def is_abstention(text: str) -> bool:
    """True when the whole answer says there is nothing to box: "none", "No object found.", "[]", "null", ..."""
    if not isinstance(text, str):
        return False
    body = strip_code_fence(text).strip().rstrip(".!").strip()
    return len(body) <= 200 and _ABSTAIN_RE.fullmatch(body) is not None


def inside_frame(box: Sequence[float], frame: tuple[float, float]) -> bool:
    """Every coordinate of the box lies in [0, width] x [0, height]."""
    width, height = frame
    x1, y1, x2, y2 = box
    return all(0.0 <= x <= width for x in (x1, x2)) and all(0.0 <= y <= height for y in (y1, y2))


def predicted_boxes(completion: str, frame: tuple[float, float]) -> list[Box] | None:
    """The completion's boxes; [] for an explicit abstention; None when there is no answer, no box, or a box with a
    coordinate outside `frame` (not a valid answer: clipping it would turn [-1e9, -1e9, 1e9, 1e9] into the whole
    image)."""
    answer = extract_answer(completion)
    if answer is None:
        return None
    boxes = parse_boxes(answer)
    if boxes:
        return boxes if all(inside_frame(b, frame) for b in boxes) else None
    return [] if is_abstention(answer) else None


def _prepare(completion: str, solution: Any, image_size: Any, model_size: Any, family: Any):
    family = canonical_family(family)
    # both sizes are checked even when unused (empty GT, qwen2_vl), so a bad row never passes silently
    check_size(image_size, "image_size")
    check_size(model_size, "model_size")
    frame = model_frame(model_size, family)
    gts = [gt_to_model_coords(b, image_size, model_size, family) for b in check_boxes(solution)]
    return predicted_boxes(completion, frame), gts, frame


def iou_score(
    completion: str, solution: Any, image_size: Any, model_size: Any, coord_family: str = QWEN2_5_VL
) -> float:
    """Plain IoU of the FIRST predicted box with its best-matching GT box (in the model frame): the metric.

    Abstention: an explicit "none"/"[]" answer scores 1.0 when the GT is [] and 0.0 otherwise; any box scores 0.0
    against an empty GT. No answer tag, an answer without boxes that is not an abstention, or a box outside the
    frame -> 0.0.
    """
    preds, gts, _ = _prepare(completion, solution, image_size, model_size, coord_family)
    return _first_box_iou(preds, gts)


def _first_box_iou(preds: list[Box] | None, gts: list[Box]) -> float:
    if preds is None:
        return 0.0
    if not preds or not gts:
        return 1.0 if not preds and not gts else 0.0
    return best_iou(preds[0], gts)


def iou_skill_score(
    completion: str, solution: Any, image_size: Any, model_size: Any, coord_family: str = QWEN2_5_VL
) -> float:
    """The `iou` reward: `iou_score` measured against the whole-image box's IoU (`skill_over`; module doc)."""
    preds, gts, (width, height) = _prepare(completion, solution, image_size, model_size, coord_family)
    iou = _first_box_iou(preds, gts)
    return skill_over(iou, best_iou([0.0, 0.0, width, height], gts)) if gts else iou


def box_f1_score(
    completion: str, solution: Any, image_size: Any, model_size: Any, coord_family: str = QWEN2_5_VL
) -> float:
    """The usual F1 of all predicted boxes vs all GT boxes, one-to-one matched at IoU >= 0.5 (`f1_at_iou`): the
    metric. An explicit abstention against an empty GT -> 1.0; no answer / unparseable / a box outside the frame
    -> 0.0; duplicates count as false positives.
    """
    preds, gts, _ = _prepare(completion, solution, image_size, model_size, coord_family)
    return 0.0 if preds is None else f1_at_iou(preds, gts)


def box_match_score(
    completion: str, solution: Any, image_size: Any, model_size: Any, coord_family: str = QWEN2_5_VL
) -> float:
    """The `box_f1` reward: matches / max(#pred, #gt) at IoU >= 0.5 (`strict_f1_at_iou`), otherwise as
    `box_f1_score`."""
    preds, gts, _ = _prepare(completion, solution, image_size, model_size, coord_family)
    return 0.0 if preds is None else strict_f1_at_iou(preds, gts)


def format_boxes(boxes: Sequence[Sequence[float]], family: str, label: str | None = None) -> str:
    """Answer text for boxes already in the model's frame (e.g. an SFT target), rounded to integers, in the family's
    box format (relative_1000 coordinates clamped to 0..1000). No boxes -> "[]" (an abstention).

    json_bbox_2d -> `[{"bbox_2d": [x1, y1, x2, y2], "label": label}]` (label omitted when None);
    point_pairs -> `(x1,y1),(x2,y2)` per box, joined by ", ";
    ref_box -> `<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>` (the ref omitted when label is None).
    """
    fam = box_family(family)
    ints = [[int(round(v)) for v in b] for b in boxes]
    if not ints:
        return "[]"
    if fam.box_convention == "relative_1000":
        ints = [[min(max(v, 0), int(RELATIVE_SCALE)) for v in b] for b in ints]
    if fam.box_format == "point_pairs":
        return ", ".join(f"({x1},{y1}),({x2},{y2})" for x1, y1, x2, y2 in ints)
    if fam.box_format == "ref_box":
        return (f"<ref>{label}</ref>" if label is not None else "") + f"<box>{json.dumps(ints)}</box>"
    items = [{"bbox_2d": b, **({"label": label} if label is not None else {})} for b in ints]
    return json.dumps(items, ensure_ascii=False)


_COLUMNS = {"required": ("solution", "image_size", "model_size"), "optional": {"coord_family": QWEN2_5_VL}}


@register_reward("iou")
def iou_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`iou_skill_score` per completion: IoU beyond the whole-image box's. Columns: solution, image_size,
    model_size, coord_family (optional)."""
    return score_each("iou", completions, columns, iou_skill_score, **_COLUMNS)


def plain_iou(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`iou_score` (the plain IoU) per completion, with the `iou` reward's columns: what metrics report."""
    return score_each("iou", completions, columns, iou_score, **_COLUMNS)


@register_reward("box_f1")
def box_f1_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`box_match_score` per completion: F1 at IoU 0.5 with max(#pred, #gt) as its denominator, so extra boxes
    never pay. Columns as for `iou`."""
    return score_each("box_f1", completions, columns, box_match_score, **_COLUMNS)


def plain_box_f1(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`box_f1_score` (the usual F1 at IoU 0.5) per completion, with the `box_f1` reward's columns: the metric."""
    return score_each("box_f1", completions, columns, box_f1_score, **_COLUMNS)
