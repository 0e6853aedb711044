"""Grounding rewards (`iou`, `box_f1`), box geometry and the Qwen2.5-VL / Qwen2-VL coordinate conventions."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmreason.rewards.grounding import (
    box_iou,
    canonical_family,
    check_boxes,
    clip_box,
    count_matches,
    f1_at_iou,
    format_boxes,
    gt_to_model_coords,
    iou_score,
    is_abstention,
    model_frame,
    model_to_gt_coords,
    parse_boxes,
    predicted_boxes,
)
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([0, 0, 10, 10], [2, 2, 8, 8], 36 / 100),  # containment
        ([0, 0, 0, 10], [0, 0, 0, 10], 0.0),  # zero-area union: no overlap to measure
        ([0, 0, 1e308, 1e308], [0, 0, 1e308, 1e308], 0.0),  # overflowing area
    ],
)
def test_box_iou(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)


coord = st.floats(-1e6, 1e6, allow_nan=False)
box = st.tuples(coord, coord, coord, coord).map(
    lambda t: [min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3])]
)
positive_box = st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(1e-2, 1e4), st.floats(1e-2, 1e4)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(box, box)
def test_iou_is_symmetric_and_bounded(a, b):
    assert box_iou(a, b) == box_iou(b, a)
    assert 0.0 <= box_iou(a, b) <= 1.0


@settings(max_examples=200, deadline=None, derandomize=True)
@given(positive_box)
def test_iou_of_a_box_with_itself_is_one(b):
    assert box_iou(b, b) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "family, image_size, model_size, gt, expected",
    [
        # Qwen2.5-VL: absolute pixels of the resized image the model saw
        ("qwen2_5_vl", [1000, 500], [500, 250], [100, 50, 300, 250], [50, 25, 150, 125]),
        ("qwen2_5_vl", [640, 480], [644, 476], [64, 48, 640, 480], [64.4, 47.6, 644, 476]),
        ("qwen2_5_vl", [100, 100], [100, 100], [1, 2, 3, 4], [1, 2, 3, 4]),
        # Qwen2-VL: 0-1000 on both axes, whatever the resize
        ("qwen2_vl", [1000, 500], [500, 250], [100, 50, 300, 250], [100, 100, 300, 500]),
        ("qwen2_vl", [640, 480], [644, 476], [64, 48, 640, 480], [100, 100, 1000, 1000]),
        ("Qwen2-VL", [200, 400], [28, 56], [0, 0, 100, 100], [0, 0, 500, 250]),
    ],
)
def test_gt_to_model_coords_both_families(family, image_size, model_size, gt, expected):
    got = gt_to_model_coords(gt, image_size, model_size, family)
    assert got == pytest.approx(expected)
    assert model_to_gt_coords(got, image_size, model_size, family) == pytest.approx(gt)


@pytest.mark.parametrize(
    "value, expected",
    [("qwen2_5_vl", "qwen2_5_vl"), ("Qwen2.5-VL", "qwen2_5_vl"), ("qwen2-vl", "qwen2_vl"), ("QWEN2_VL", "qwen2_vl")],
)
def test_canonical_family(value, expected):
    assert canonical_family(value) == expected


@pytest.mark.parametrize("value", ["qwen3", "", None, 2])
def test_unknown_family_is_a_column_error(value):
    with pytest.raises(ColumnError, match="coord_family"):
        canonical_family(value)


def test_model_frame_and_clip():
    assert model_frame([644, 476], "qwen2_5_vl") == (644.0, 476.0)
    assert model_frame([644, 476], "qwen2_vl") == (1000.0, 1000.0)
    assert clip_box([-10, 5, 2000, 3000], 100, 200) == [0, 5, 100, 200]


@pytest.mark.parametrize(
    "boxes, family, expected",
    [
        ([[10.4, 20.6, 30, 40]], "qwen2_5_vl", '[{"bbox_2d": [10, 21, 30, 40]}]'),
        ([[1, 2, 3, 4], [5, 6, 7, 8]], "qwen2_vl", "(1,2),(3,4), (5,6),(7,8)"),
        ([[-3, 0, 1003, 10]], "qwen2_vl", "(0,0),(1000,10)"),
        ([], "qwen2_5_vl", "[]"),
        ([[1, 2, 3, 4], [5, 6, 7, 8]], "internvl", "<box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>"),
        ([[1, 2, 3, 4]], "gemma3", '[{"bbox_2d": [1, 2, 3, 4]}]'),
    ],
)
def test_format_boxes_round_trips_through_parse_boxes(boxes, family, expected):
    text = format_boxes(boxes, family)
    assert text == expected
    assert parse_boxes(text) == [[float(v) for v in b] for b in parse_boxes(expected)]


def test_format_boxes_with_label():
    assert format_boxes([[1, 2, 3, 4]], "qwen2_5_vl", label="dog") == '[{"bbox_2d": [1, 2, 3, 4], "label": "dog"}]'


def test_count_matches_is_a_maximum_matching():
    gts = [[0, 0, 10, 10], [0, 0, 10, 12]]
    # pred 0 overlaps both GT boxes best with gts[1]; greedy-by-IoU would pair them and leave pred 1 unmatched
    preds = [[0, 0, 10, 11.5], [0, 0, 10, 9]]
    assert count_matches(preds, gts) == 2
    assert f1_at_iou(preds, gts) == 1.0
    assert f1_at_iou([], []) == 1.0
    assert f1_at_iou([[0, 0, 1, 1]], []) == 0.0


SIZES = {"image_size": [200, 100], "model_size": [100, 50]}  # model sees the image at half size


def _iou(text: str, solution, family="qwen2_5_vl", **sizes) -> float:
    cols = {**SIZES, **sizes}
    return get_reward("iou")(
        [text],
        solution=[solution],
        image_size=[cols["image_size"]],
        model_size=[cols["model_size"]],
        coord_family=[family],
    )[0]


def _f1(text: str, solution, family="qwen2_5_vl") -> float:
    return get_reward("box_f1")(
        [text],
        solution=[solution],
        image_size=[SIZES["image_size"]],
        model_size=[SIZES["model_size"]],
        coord_family=[family],
    )[0]


GT = [[20, 20, 100, 60]]  # original pixels; in Qwen2.5-VL model pixels [10, 10, 50, 30]; Qwen2-VL [100, 200, 500, 600]


@pytest.mark.parametrize(
    "text, family, expected",
    [
        ('<answer>[{"bbox_2d": [10, 10, 50, 30]}]</answer>', "qwen2_5_vl", 1.0),
        ("<answer>[10, 10, 50, 30]</answer>", "qwen2_5_vl", 1.0),
        ("<answer>[20, 20, 100, 60]</answer>", "qwen2_5_vl", 0.0),  # original pixels: y 60 is past the 50-pixel frame
        # IoU 1/3, measured against the whole image's 800 / 5000 = 0.16: (1/3 - 0.16) / (1 - 0.16)
        ("<answer>[30, 10, 70, 30]</answer>", "qwen2_5_vl", pytest.approx((1 / 3 - 0.16) / 0.84)),
        ("<answer>[0, 0, 100, 50]</answer>", "qwen2_5_vl", 0.0),  # the whole image: the hedge earns nothing
        ("<answer>[0, 0, 60, 40]</answer>", "qwen2_5_vl", pytest.approx((1 / 3 - 0.16) / 0.84)),  # loose: 800/2400
        ("<answer>[40, 20, 100, 50]</answer>", "qwen2_5_vl", 0.0),  # IoU 100 / 2500, below the whole image's
        ("<answer>(100,200),(500,600)</answer>", "qwen2_vl", 1.0),
        ("<answer><|box_start|>(100,200),(500,600)<|box_end|></answer>", "qwen2_vl", 1.0),
        ("<answer>[50, 30, 10, 10]</answer>", "qwen2_5_vl", 1.0),  # swapped corners
        ("<answer>[10, 10, 50, 30], [0, 0, 5, 5]</answer>", "qwen2_5_vl", 1.0),  # first box counts
        ("<answer>[0, 0, 5, 5], [10, 10, 50, 30]</answer>", "qwen2_5_vl", 0.0),
        ("<answer>[-100, -100, 50, 30]</answer>", "qwen2_5_vl", 0.0),  # outside the frame: not a valid answer
        ("<answer>[-1e9, -1e9, 1e9, 1e9]</answer>", "qwen2_5_vl", 0.0),  # not clipped into the whole image
        ("<answer>(0,0),(1001,500)</answer>", "qwen2_vl", 0.0),  # past the 0-1000 range
        ("<answer>[60, 40, 90, 45]</answer>", "qwen2_5_vl", 0.0),  # outside the frame -> empty after clipping
        ("<answer>none</answer>", "qwen2_5_vl", 0.0),  # abstaining while the object is there
        ("<answer>the dog</answer>", "qwen2_5_vl", 0.0),
        ("<answer>[NaN, 1, 2, 3]</answer>", "qwen2_5_vl", 0.0),
        ("[10, 10, 50, 30]", "qwen2_5_vl", 0.0),  # no answer tag
        ("", "qwen2_5_vl", 0.0),
        ("<answer>" + "[10, 10, 50, 30]" * 10_000 + "</answer>", "qwen2_5_vl", 1.0),
    ],
)
def test_iou_reward(text, family, expected):
    assert _iou(text, GT, family) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>none</answer>", 1.0),
        ("<answer>[]</answer>", 1.0),
        ("<answer>No object found.</answer>", 1.0),
        ("<answer>[1, 2, 3, 4]</answer>", 0.0),
        ("<answer>the dog</answer>", 0.0),  # not an abstention, just no boxes
        ("no tag", 0.0),
    ],
)
def test_iou_reward_abstention(text, expected):
    assert _iou(text, []) == expected
    assert _f1(text, []) == expected


@pytest.mark.parametrize(
    "text, solution, expected",
    [
        ("<answer>[[10, 10, 50, 30]]</answer>", GT, 1.0),
        # matches / max(#pred, #gt): an extra box costs more than in the usual F1 (2/3 here), so it never pays
        ("<answer>[[10, 10, 50, 30], [0, 0, 5, 5]]</answer>", GT, 0.5),
        ("<answer>[[10, 10, 50, 30], [10, 10, 50, 30]]</answer>", GT, 0.5),  # a duplicate is a FP
        ("<answer>[[10, 10, 50, 30]]</answer>", GT + [[0, 0, 20, 20]], 0.5),
        ("<answer>[[0, 0, 10, 10], [10, 10, 50, 30]]</answer>", GT + [[0, 0, 20, 20]], 1.0),  # order-free
        ("<answer>[[30, 10, 70, 30]]</answer>", GT, 0.0),  # IoU 1/3 < 0.5
        ("<answer>none</answer>", GT, 0.0),
        ("<answer>oops</answer>", GT, 0.0),
    ],
)
def test_box_f1_reward(text, solution, expected):
    assert _f1(text, solution) == expected


def test_single_flat_gt_box_is_accepted():
    assert _iou("<answer>[10, 10, 50, 30]</answer>", [20, 20, 100, 60]) == 1.0


def test_coord_family_defaults_to_qwen2_5_vl_and_none_solution_is_not_applicable():
    reward = get_reward("iou")
    texts = ["<answer>[10, 10, 50, 30]</answer>"] * 2
    got = reward(texts, solution=[GT, None], image_size=[[200, 100]] * 2, model_size=[[100, 50]] * 2)
    assert got == [1.0, None]


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"solution": [[[0, 0, 1]]], "image_size": [[1, 1]], "model_size": [[1, 1]]}, "solution"),
        ({"solution": [[["a", 0, 1, 1]]], "image_size": [[1, 1]], "model_size": [[1, 1]]}, "solution"),
        ({"solution": ["box"], "image_size": [[1, 1]], "model_size": [[1, 1]]}, "solution"),
        ({"solution": [[]], "image_size": [[0, 1]], "model_size": [[1, 1]]}, "image_size"),
        ({"solution": [[]], "image_size": [[1, 1]], "model_size": [None]}, "model_size"),
        ({"solution": [[]], "image_size": [[1, 1]]}, "needs column"),
        ({"solution": [[]], "image_size": [[1, 1]], "model_size": [[1, 1]], "coord_family": ["yolo"]}, "coord_family"),
    ],
)
def test_bad_columns_raise_column_errors(columns, message):
    with pytest.raises(ColumnError, match=message):
        get_reward("iou")(["<answer>[0, 0, 1, 1]</answer>"], **columns)


def test_single_item_helpers():
    assert iou_score("<answer>[10, 10, 50, 30]</answer>", GT, [200, 100], [100, 50]) == 1.0
    assert predicted_boxes("<answer>[-5, 0, 500, 20]</answer>", (100.0, 50.0)) is None  # outside the frame
    assert predicted_boxes("<answer>[0, 0, 100, 50]</answer>", (100.0, 50.0)) == [[0, 0, 100, 50]]
    assert predicted_boxes("<answer>none</answer>", (100.0, 50.0)) == []
    assert predicted_boxes("<answer>dog</answer>", (100.0, 50.0)) is None
    assert predicted_boxes("nothing", (100.0, 50.0)) is None


def test_numpy_columns_are_accepted():
    got = get_reward("iou")(
        ["<answer>[10, 10, 50, 30]</answer>"],
        solution=[np.array([[20, 20, 100, 60]], dtype=np.float32)],
        image_size=np.array([[200, 100]]),
        model_size=[np.array([100, 50], dtype=np.int64)],
        coord_family=np.array(["qwen2_5_vl"]),
    )
    assert got == [1.0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[10, 20, 30, 40]", [[10, 20, 30, 40]]),
        ("[10.5, 20, 30, 40.25]", [[10.5, 20, 30, 40.25]]),
        ("[[1, 2, 3, 4], [5, 6, 7, 8]]", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ('[{"bbox_2d": [30, 40, 10, 20], "label": "dog"}]', [[10, 20, 30, 40]]),  # swapped corners ordered
        ('{"bbox_2d": [1, 2, 3, 4]}', [[1, 2, 3, 4]]),
        ('[{"bbox": [1, 2, 3, 4]}, {"box_2d": [5, 6, 7, 8]}]', [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```', [[1, 2, 3, 4]]),
        ("(100,200),(300,400)", [[100, 200, 300, 400]]),
        ("<|box_start|>(100, 200), (300, 400)<|box_end|>", [[100, 200, 300, 400]]),
        ("<ref>the dog</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>", [[1, 2, 3, 4], [5, 6, 7, 8]]),  # InternVL
        ("the dog[[1, 2, 3, 4]]", [[1, 2, 3, 4]]),  # InternVL's, decoded without its special-token tags
        ("(1,2),(3,4), (5,6),(7,8)", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ("the box is [1, 2, 3, 4].", [[1, 2, 3, 4]]),
        ("[{'bbox_2d': [1, 2, 3, 4]}]", [[1, 2, 3, 4]]),  # python-style quotes: not JSON, found by the fallback
        ("1, 2, 3, 4", [[1, 2, 3, 4]]),
        ("1 2 3 4", [[1, 2, 3, 4]]),
        ("[-5, -5, 10, 10]", [[-5, -5, 10, 10]]),
        ("[NaN, 1, 2, 3]", []),
        ("[Infinity, 1, 2, 3]", []),
        ("[1e400, 1, 2, 3]", []),
        ("[1, 2, 3]", []),
        ("[true, 1, 2, 3]", []),
        ("[" + "9" * 5000 + ", 1, 2, 3]", []),  # an int json cannot read, and a digit run the regexes skip
        ("[[1, 2, 3, 4], [NaN, 0, 1, 1]]", [[1, 2, 3, 4]]),
        ("none", []),
        ("[]", []),
        ("", []),
        ("the dog on the left", []),
        ("[" * 50_000 + "]" * 50_000, []),
        ("<script>[1,2,3,4]</script>", [[1, 2, 3, 4]]),
    ],
)
def test_parse_boxes(text, expected):
    assert parse_boxes(text) == expected


def test_parse_boxes_caps_the_number_of_boxes():
    assert len(parse_boxes(str([[1, 2, 3, 4]] * 1000))) == 100


@pytest.mark.parametrize(
    "text, expected",
    [
        ("none", True),
        ("None.", True),
        ("[]", True),
        ("null", True),
        ("No object found", True),
        ("There is no such object in the image.", True),
        ("The object is not present", True),
        ("n/a", True),
        ("[1, 2, 3, 4]", False),
        ("the dog", False),
        ("none of the boxes is the dog but [1,2,3,4]", False),
        ("", False),
        ("none " * 1000, False),
    ],
)
def test_is_abstention(text, expected):
    assert is_abstention(text) is expected


# The ground-truth rule, for reward columns and grounding records alike: (value, image_size, boxes or error).
BOXES_RULE = [
    ([], None, []),
    ([1, 2, 3, 4], None, [[1, 2, 3, 4]]),  # one flat box
    ([[1, 2, 3, 4], [0, 0, 5, 5]], None, [[1, 2, 3, 4], [0, 0, 5, 5]]),
    ([[1, 2, 1, 2]], None, [[1, 2, 1, 2]]),  # zero area is allowed without an image to check against
    ([np.float32(1.5), 2, 3, np.int64(4)], None, [[1.5, 2, 3, 4]]),
    ([[-5, -5, 8, 12]], [32, 48], [[0, 0, 8, 12]]),  # clipped to the image
    ([[20, 40, 40, 60]], [32, 48], [[20, 40, 32, 48]]),
    ([[3, 1, 1, 4]], None, "boxes with x1 <= x2 and y1 <= y2"),  # reversed corners: often [x, y, w, h] data
    ([[1, 4, 3, 2]], None, "boxes with x1 <= x2 and y1 <= y2"),
    ([[100, 100, 120, 130]], [32, 48], "boxes with some area inside the 32x48 image"),
    ([[32, 0, 40, 10]], [32, 48], "boxes with some area inside the 32x48 image"),  # touches the edge only
    ([[1, 2, 1, 2]], [32, 48], "boxes with some area inside the 32x48 image"),
    ([[1, 2, 3]], None, "a list of [x1, y1, x2, y2] boxes"),
    ([["1", 2, 3, 4]], None, "a list of [x1, y1, x2, y2] boxes"),  # numbers, not numeric strings
    ([[True, 2, 3, 4]], None, "a list of [x1, y1, x2, y2] boxes"),
    ([[float("nan"), 2, 3, 4]], None, "a list of [x1, y1, x2, y2] boxes"),
    ([1, 2, 3, float("inf")], None, "a list of [x1, y1, x2, y2] boxes"),
    ("1 2 3 4", None, "a list of [x1, y1, x2, y2] boxes"),
    ({"bbox_2d": [1, 2, 3, 4]}, None, "a list of [x1, y1, x2, y2] boxes"),
    (None, None, "a list of [x1, y1, x2, y2] boxes"),
]


@pytest.mark.parametrize("value, image_size, expected", BOXES_RULE)
def test_check_boxes(value, image_size, expected):
    if isinstance(expected, str):
        with pytest.raises(ColumnError, match=f"solution: expected {re.escape(expected)}"):
            check_boxes(value, image_size=image_size)
    else:
        assert check_boxes(value, image_size=image_size) == expected


@pytest.mark.parametrize("value, image_size, expected", [r for r in BOXES_RULE if r[0] is not None and r[1] is None])
def test_box_rewards_check_their_column_by_the_same_rule(value, image_size, expected):
    columns = {"solution": [value], "image_size": [[200, 100]], "model_size": [[200, 100]]}
    for name in ("iou", "box_f1"):
        if isinstance(expected, str):
            with pytest.raises(ColumnError, match=f"{name}.*solution: expected {re.escape(expected)}"):
                get_reward(name)(["<answer>[]</answer>"], **columns)
        else:
            target = format_boxes(expected, "qwen2_5_vl")
            assert get_reward(name)([f"<answer>{target}</answer>"], **columns)[0] >= 0.0
