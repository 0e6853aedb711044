"""Synthetic makers of every built-in task: records the task accepts, seeded output, a learnable signal that is
really in the media (the label, the option, the expression's value, the event window), the `data make synthetic`
command line, and `mmreason new-task` end to end."""

from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.data.drawing import COLORS
from mmreason.data.records import check_records, load_records, read_dataset
from mmreason.data.synthetic import MAKERS, make_synthetic

runner = CliRunner()
N = 10


def _make(task: str, out: Path, n: int = N, seed: int = 0, **options) -> list[dict]:
    make_synthetic(task, out, n=n, seed=seed, val_fraction=0.0, **options)
    return _written(out)


def _written(out: Path) -> list[dict]:
    """The train records as written (without the reader's _line / _source bookkeeping)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in load_records(out)]


def _media(record: dict) -> str:
    return record.get("image") or record["video"]


def _ink(img: Image.Image) -> np.ndarray:
    """Pixels that are not the white background."""
    return (np.asarray(img.convert("RGB")) < 250).any(axis=2)


def _shape_kind(mask: np.ndarray) -> str:
    """square, circle or triangle from how much of its bounding box a filled shape covers (1, pi/4, 1/2)."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.93 else "circle" if fill > 0.68 else "triangle"


def _colour_of(img: Image.Image) -> str:
    """The palette colour of the shape's pixels."""
    arr = np.asarray(img.convert("RGB")).astype(int)
    pixel = arr[_ink(img)].mean(axis=0)
    return min(COLORS, key=lambda c: np.abs(pixel - COLORS[c]).sum())


# ------------------------------------------------------------------------------------------------ every maker


def test_every_builtin_task_has_a_maker():
    from mmreason.registry import TASKS

    builtin = {n for n in TASKS.names() if type(TASKS.get(n)).__module__.startswith("mmreason.tasks.")}
    assert builtin == set(MAKERS)


@pytest.mark.parametrize("task", list(MAKERS))
def test_maker_writes_records_the_task_accepts(tmp_path, task):
    out = make_synthetic(task, tmp_path, n=N, seed=3)
    train, val = read_dataset(out), read_dataset(out, "val")
    assert (len(train), len(val)) == (N - 1, 1)
    assert check_records(train, task) == [] and check_records(val, task) == []
    assert all((out / _media(r)).is_file() for r in [*train, *val])


@pytest.mark.parametrize("task", list(MAKERS))
def test_maker_is_seeded(tmp_path, task):
    a, b, c = _make(task, tmp_path / "a"), _make(task, tmp_path / "b"), _make(task, tmp_path / "c", seed=1)
    assert a == b
    assert [(tmp_path / "a" / _media(r)).read_bytes() for r in a] == [(tmp_path / "b" / _media(r)).read_bytes()
                                                                        for r in b]
    assert [(tmp_path / "a" / _media(r)).read_bytes() for r in a] != [(tmp_path / "c" / _media(r)).read_bytes()
                                                                        for r in c]
    strip = [{k: v for k, v in r.items() if k not in ("image", "video", "original")} for r in a]
    assert strip != [{k: v for k, v in r.items() if k not in ("image", "video", "original")} for r in c]


# ------------------------------------------------------------------------------------------------ learnable signal


def test_classification_label_is_the_drawn_shape_or_colour(tmp_path):
    records = _make("classification", tmp_path / "shape", n=30)
    assert {r["solution"] for r in records} == {"square", "circle", "triangle"}
    for r in records:
        assert r["options"] == ["square", "circle", "triangle"]
        assert _shape_kind(_ink(Image.open(tmp_path / "shape" / r["image"]))) == r["solution"], r["id"]
    colours = _make("classification", tmp_path / "color", n=20, label="color")
    assert len({r["solution"] for r in colours}) >= 4
    for r in colours:
        assert _colour_of(Image.open(tmp_path / "color" / r["image"])) == r["solution"], r["id"]


def test_multiple_choice_right_option_matches_the_picture(tmp_path):
    records = _make("multiple_choice", tmp_path, n=30)
    assert {r["problem"].split()[1] for r in records} == {"colour", "kind", "which"}  # all three questions
    assert len({r["solution"] for r in records}) >= 3  # the right letter moves
    for r in records:
        truth = r["options"]["ABCD".index(r["solution"])]
        img = Image.open(tmp_path / r["image"])
        mask = _ink(img)
        if "colour" in r["problem"]:
            assert _colour_of(img) == truth, r["id"]
        elif "kind" in r["problem"]:
            assert _shape_kind(mask) == truth, r["id"]
        else:
            ys, xs = np.nonzero(mask)
            h, w = mask.shape
            quarter = ("bottom " if ys.mean() >= h / 2 else "top ") + ("right" if xs.mean() >= w / 2 else "left")
            assert quarter == truth, r["id"]
    fixed = _make("multiple_choice", tmp_path / "fixed", n=6, shuffle=False, questions=("shape",))
    assert all(r["options"] == ["square", "circle", "triangle"] for r in fixed)


def test_math_solution_is_the_rendered_expressions_value(tmp_path):
    from mmreason.rewards.math_answer import math_score

    ops = {"+": operator.add, "-": operator.sub, "x": operator.mul}
    records = _make("math", tmp_path, n=30, reasoning=True)
    assert {r["expression"].split()[1] for r in records} == set(ops)
    for r in records:
        a, op, b = r["expression"].split()
        assert r["solution"] == ops[op](int(a), int(b)) >= 0, r["id"]
        assert str(r["solution"]) in r["reasoning"]
        assert _ink(Image.open(tmp_path / r["image"])).sum() > 20  # the text is drawn
    assert math_score(f"<answer>{records[0]['solution']}</answer>", records[0]["solution"]) == 1.0
    by_text: dict[str, bytes] = {}
    for r in records:  # the pixels depend on the expression (not only on the place and ink)
        by_text.setdefault(r["expression"], np.asarray(Image.open(tmp_path / r["image"])).tobytes())
    assert len(set(by_text.values())) == len(by_text)


def test_math_slots_draw_each_part_large_in_its_own_place(tmp_path):
    def iou(x: np.ndarray, y: np.ndarray) -> float:
        return (x & y).sum() / (x | y).sum()

    records = _make("math", tmp_path, n=40, ops="+", max_operand=4, slots=True)
    places: dict[str, dict[str, np.ndarray]] = {"top_left": {}, "top_right": {}, "bottom": {}}
    for r in records:
        a, op, b = r["expression"].split()
        assert op == "+" and r["solution"] == int(a) + int(b) <= 8
        pixels = np.asarray(Image.open(tmp_path / r["image"]).convert("RGB")).astype(int)
        ink = np.abs(pixels - pixels[0, 0]).sum(axis=2) > 60  # the corner is background: glyphs stay in the middle
        h, w = ink.shape
        parts = {"top_left": (a, ink[: h // 2, : w // 2]), "top_right": (b, ink[: h // 2, w // 2:]),
                 "bottom": (op, ink[h // 2:])}
        for place, (glyph, mask) in parts.items():
            rows = np.flatnonzero(mask.any(axis=1))
            if place != "bottom":  # a digit is as tall as its place allows ("+" is shorter than its font's digits)
                assert rows[-1] - rows[0] + 1 >= 0.6 * (h // 2), (r["id"], place)
            seen = places[place].setdefault(glyph, mask)
            assert iou(seen, mask) > 0.8, (r["id"], place)  # a place shows its glyph the same way (inks differ)
    for place in ("top_left", "top_right"):  # and a different digit looks different there
        masks = list(places[place].values())
        assert len(masks) >= 4
        assert all(iou(x, y) < 0.8 for i, x in enumerate(masks) for y in masks[i + 1:]), place


@pytest.mark.parametrize("distractors", [0, 2])
def test_temporal_square_is_on_screen_exactly_in_the_window(tmp_path, distractors):
    from mmreason.processors import load_video

    records = _make("temporal_grounding", tmp_path, n=6, distractors=distractors)
    assert len({tuple(r["solution"]) for r in records}) > 1
    for r in records:
        start, end = r["solution"]
        colour = np.array(COLORS[r["problem"].split()[1]])
        clip = load_video(tmp_path / r["video"], fps=4.0, max_frames=64)
        assert 4 <= clip.duration <= 8 and 1.0 <= end - start <= clip.duration / 2 and end <= clip.duration
        assert len(clip.frames) == clip.total_frames  # every frame checked
        for frame, t in zip(clip.frames, clip.timestamps, strict=True):
            near = (np.abs(np.asarray(frame).astype(int) - colour).sum(axis=2) < 60).sum()
            assert (near > 50) == (start <= t < end), (r["id"], t, near)


@pytest.mark.parametrize("task, options, match", [
    ("classification", {"label": "size"}, "label must be one of shape, color"),
    ("multiple_choice", {"questions": ("where",)}, "questions must be"),
    ("multiple_choice", {"questions": "color"}, "option questions"),
    ("math", {"ops": "/"}, "ops must be made of"),
    ("math", {"max_operand": 0}, "max_operand"),
    ("temporal_grounding", {"fps": 0}, "fps"),
    ("temporal_grounding", {"min_seconds": 5, "max_seconds": 4}, "min_seconds"),
    ("temporal_grounding", {"distractors": 6}, "distractors"),
    ("temporal_grounding", {"colour": "red"}, "unknown option"),
])
def test_new_makers_refuse_bad_options(tmp_path, task, options, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(task, tmp_path, n=2, **options)


# ------------------------------------------------------------------------------------------------ command line


def test_data_make_synthetic_help_lists_every_maker():
    result = runner.invoke(app, ["data", "make", "synthetic", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert all(task in result.output for task in MAKERS)


def test_data_make_synthetic_unknown_task_is_one_error_line(tmp_path):
    result = runner.invoke(app, ["data", "make", "synthetic", "--task", "sorting", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "temporal_grounding" in lines[0]
    assert not (tmp_path / "x").exists()


def test_data_make_synthetic_writes_a_video_task(tmp_path):
    result = runner.invoke(app, ["data", "make", "synthetic", "--task", "temporal_grounding", "--out",
                                 str(tmp_path), "--n", "3"])
    assert result.exit_code == 0, result.output
    assert len(load_records(tmp_path)) == 2 and len(list((tmp_path / "videos").glob("*.mp4"))) == 3


@pytest.fixture
def user_task():
    """The name of a task that `new-task` writes; unregistered afterwards, so other tests see the built-ins only."""
    import sys

    from mmreason.registry import REWARDS, TASKS

    name = "probe_colour"
    yield name
    TASKS.remove(name)
    REWARDS.remove(f"{name}_match")
    for module in [m for m in sys.modules if m.startswith(f"mmreason_user_{name}_")]:
        del sys.modules[module]


def test_new_task_end_to_end(tmp_path, user_task):
    from mmreason.registry import load_user_file

    result = runner.invoke(app, ["new-task", user_task, "--out", str(tmp_path / "tasks")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "tasks" / f"{user_task}.py"
    assert path.is_file()
    module = load_user_file(path)
    module.main(["make-data", str(tmp_path / "data"), "--n", "12", "--seed", "1"])
    records = _written(tmp_path / "data")
    assert len(records) == 11 and len({r["solution"] for r in records}) > 1
    check = runner.invoke(app, ["data", "check", str(tmp_path / "data" / "train.jsonl"), "--task", user_task,
                                "--task-file", str(path)])
    assert check.exit_code == 0 and "ok" in check.output, check.output
    listed = runner.invoke(app, ["tasks", "--task-file", str(path)], terminal_width=200)
    assert listed.exit_code == 0 and user_task in listed.output
    again = module.make_data(tmp_path / "again", n=12, seed=1)
    assert _written(again) == records  # seeded
    bad = tmp_path / "data" / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "image": records[0]["image"], "solution": "purple"}) + "\n")
    wrong = runner.invoke(app, ["data", "check", str(bad), "--task", user_task, "--task-file", str(path)])
    assert wrong.exit_code != 0 and "must be one of red, green, blue" in wrong.output

    before = path.read_text()
    refused = runner.invoke(app, ["new-task", user_task, "--out", str(tmp_path / "tasks")])
    assert refused.exit_code == 2 and refused.output.startswith("error:") and "exists" in refused.output
    assert path.read_text() == before


@pytest.mark.parametrize("name", ["1task", "my-task", "class", "json", "counting", "cls"])
def test_new_task_refuses_bad_names(tmp_path, name):
    result = runner.invoke(app, ["new-task", name, "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.output.startswith("error:"), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_data_make_synthetic_passes_maker_options(tmp_path):
    result = runner.invoke(app, ["data", "make", "synthetic", "--task", "grounding", "--out", str(tmp_path),
                                 "--n", "4", "-o", "cells=2", "--option", "distractors=1"])
    assert result.exit_code == 0, result.output
    for record in load_records(tmp_path):
        [(x1, y1, x2, y2)] = record["solution"]
        assert x1 // 28 == (x2 - 1) // 28 and y1 // 28 == (y2 - 1) // 28  # within one cell of the 2 x 2 grid
    math_out = tmp_path / "math"
    result = runner.invoke(app, ["data", "make", "synthetic", "--task", "math", "--out", str(math_out), "--n", "3",
                                 "-o", "ops=+", "-o", "max_operand=3"])
    assert result.exit_code == 0, result.output
    assert all("+" in r["expression"] and r["solution"] <= 6 for r in load_records(math_out))


@pytest.mark.parametrize("option, match", [
    ("cells", "key=value"),
    ("=2", "key=value"),
    ("colour=red", "unknown option"),
    ("cells=-1", "cells"),
    ("cells=two", "option cells"),
    ("absent_rate=true", "option absent_rate"),
])
def test_data_make_synthetic_bad_option_is_one_error_line(tmp_path, option, match):
    result = runner.invoke(app, ["data", "make", "synthetic", "--task", "grounding", "--out", str(tmp_path / "x"),
                                 "-o", option])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.output
