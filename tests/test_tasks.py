"""The built-in tasks, table-driven over all eight: records -> samples, gold targets that score 1.0 on every default
reward (the consistency check between prompts, targets and rewards), metrics, visualize, and record checks.

Media are generated in a temp folder: tiny images (32x48 and 48x32) and a 3-second 64x48 mpeg4 video (PyAV).
The visualize PNGs are also written to /tmp/viz/ for a look by eye.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from mmreason.processors import assemble_jigsaw, load_image, make_jigsaw
from PIL import Image

import mmreason.tasks  # noqa: F401  (registers the tasks)
from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import REWARDS, TASKS, get_reward, get_task
from mmreason.tasks import RecordError, Task

TASK_NAMES = ("grounding", "jigsaw", "geolocation", "classification", "counting", "multiple_choice", "math",
              "temporal_grounding")
VIZ_DIR = Path(os.environ.get("MMREASON_VIZ_DIR", "/tmp/viz"))  # visualize PNGs land here for a look by eye
GT_BOX = [8, 12, 24, 36]  # in the 32x48 picture; smart_resize makes it 56x84 (x1.75), so the gold box is exact


# ---------------------------------------------------------------- media


def picture(w: int = 32, h: int = 48) -> Image.Image:
    """A gradient with a white object at GT_BOX and four differently tinted quadrants (so jigsaw tiles differ)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    arr[: h // 2, : w // 2, 2] = 230
    arr[h // 2 :, w // 2 :, 2] = 10
    arr[GT_BOX[1] : GT_BOX[3], GT_BOX[0] : GT_BOX[2]] = (250, 250, 250)
    return Image.fromarray(arr)


def write_video(path: Path, n: int = 30, fps: int = 10) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            arr = np.zeros((48, 64, 3), np.uint8)
            arr[:, : 2 + i * 2] = (40, 200, 40) if 10 <= i < 20 else (60, 60, 200)  # the "moment" is 1-2 s
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("task_media")
    picture().save(root / "pic.png")
    picture(48, 32).save(root / "wide.png")
    shuffled, _ = make_jigsaw(picture(), 2, 2, seed=3)
    shuffled.save(root / "shuffled.png")
    write_video(root / "clip.mp4")
    return root


def jigsaw_solution() -> list[int]:
    return [o + 1 for o in make_jigsaw(picture(), 2, 2, seed=3)[1]]


# task -> (record, wrong answer, number of image placeholders, has video)
CASES = {
    "grounding": ({"id": "g1", "image": "pic.png", "problem": "the white square", "solution": [GT_BOX]},
                  "[[0, 0, 10, 10]]", 1, False),
    "jigsaw": ({"id": "j1", "image": "shuffled.png", "grid": [2, 2], "solution": jigsaw_solution(),
                "original": "pic.png"}, "[1, 2, 3, 4]", 1, False),
    "geolocation": ({"id": "geo1", "image": "pic.png",
                     "solution": {"lat": 48.8566, "lon": 2.3522, "country": "France", "city": "Paris"}},
                    "-33.8688, 151.2093", 1, False),
    "classification": ({"id": "c1", "image": "pic.png", "solution": "white square", "options": ["white square",
                        "blue circle"], "synonyms": ["snow square"]}, "blue circle", 1, False),
    "counting": ({"id": "n1", "image": "pic.png", "problem": "How many white squares are there?", "solution": 1},
                 "7", 1, False),
    "multiple_choice": ({"id": "m1", "images": ["pic.png", "wide.png"], "problem": "Which picture is wider?",
                         "options": ["the first", "the second"], "solution": "B"}, "A", 2, False),
    "math": ({"id": "x1", "image": "pic.png", "problem": "What fraction of 4 tiles is 3 tiles?",
              "solution": "\\frac{3}{4}"}, "0.5", 1, False),
    "temporal_grounding": ({"id": "t1", "video": "clip.mp4", "problem": "the bar turns green",
                            "solution": [1.0, 2.0]}, "2.2, 2.9", 0, True),
}
MALFORMED = "I am not sure, maybe the left one"


def ctx_for(data_dir: Path, think: bool = True, family: str = "qwen2_5_vl") -> SampleContext:
    return SampleContext(think=think, model_family=family, base_dir=data_dir)


def build(name: str, data_dir: Path, think: bool = True, **changes):
    record = {**CASES[name][0], **changes}
    return get_task(name).to_sample(record, ctx_for(data_dir, think))


def call_reward(reward: str, completion: str, columns: dict) -> float | None:
    return get_reward(reward)([completion], **{k: [v] for k, v in columns.items()})[0]


# ---------------------------------------------------------------- registry and contract


def test_all_tasks_registered_with_known_rewards():
    assert set(TASK_NAMES) <= set(TASKS.names())
    for name in TASK_NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert task.answer_format and task.metric_names and task.required_fields
        assert next(iter(task.rewards)) == "format" and task.rewards["format"] < max(task.rewards.values())
        for think in (True, False):
            for reward in task.reward_weights(think):
                assert reward in REWARDS, f"{name}: reward {reward!r} is not registered"


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("think", [True, False], ids=["think", "nothink"])
def test_sample_shape_and_gold_target_scores_one(name, think, data_dir):
    _, _, n_images, has_video = CASES[name]
    sample = build(name, data_dir, think)
    content = sample.messages[0]["content"]
    assert sample.messages[0]["role"] == "user" and content[-1]["type"] == "text"
    assert sum(c["type"] == "image" for c in content) == n_images == len(sample.images)
    assert sum(c["type"] == "video" for c in content) == int(has_video) and (sample.video is not None) == has_video
    assert all(im.mode == "RGB" for im in sample.images) and sample.media and sample.id == CASES[name][0]["id"]
    assert ("<think>" in sample.prompt_text) == think and "<answer>" in sample.prompt_text
    assert sample.target.startswith("<think>" if think else "<answer>")
    weights = get_task(name).reward_weights(think)
    assert ("format" in weights) == think and ("format_nothink" in weights) == (not think)
    for reward in weights:
        assert call_reward(reward, sample.target, sample.columns) == pytest.approx(1.0), (reward, sample.target)
    json.dumps(sample.columns)  # columns travel to the rollout store and to reward worker processes


@pytest.mark.parametrize("name", TASK_NAMES)
def test_metrics_perfect_and_wrong(name, data_dir):
    task, sample = get_task(name), build(name, data_dir)
    wrong = f"<think>hm</think><answer>{CASES[name][1]}</answer>"
    perfect = task.metrics([sample.target] * 2, [sample] * 2)
    assert tuple(perfect) == task.metric_names
    for key, value in perfect.items():
        assert value == pytest.approx({"median_km": 0.0, "geoguessr_score": 5000.0}.get(key, 1.0)), key
    bad = task.metrics([wrong, MALFORMED], [sample, sample])
    assert tuple(bad) == task.metric_names
    assert all(math.isfinite(v) for v in bad.values())
    headline = next(iter(task.metric_names)) if name != "geolocation" else "acc@25km"
    assert bad[headline] == 0.0
    with pytest.raises(ValueError, match="pair up"):
        task.metrics([sample.target], [sample, sample])
    empty = task.metrics([], [])
    assert tuple(empty) == task.metric_names and all(math.isnan(v) for v in empty.values())


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("kind", ["correct", "wrong", "malformed", "huge"])
def test_visualize_returns_rgb_image(name, kind, data_dir):
    sample = build(name, data_dir)
    completion = {"correct": sample.target, "wrong": f"<answer>{CASES[name][1]}</answer>",
                  "malformed": MALFORMED, "huge": "<answer>" + "9Ω, " * 20000 + "</answer>"}[kind]
    img = get_task(name).visualize(sample, completion)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert 200 <= img.width <= 2000 and 150 <= img.height <= 1500, img.size
    VIZ_DIR.mkdir(parents=True, exist_ok=True)
    img.save(VIZ_DIR / f"{name}_{kind}.png")


# ---------------------------------------------------------------- record checks


BAD_RECORDS = [
    ("grounding", {"solution": [[1, 2, 3]]}, "field 'solution' must be a list of [x1, y1, x2, y2] boxes"),
    ("grounding", {"solution": [[20, 12, 8, 36]]}, "x1 <= x2"),
    ("grounding", {"solution": [[100, 100, 120, 130]]}, "some area inside the 32x48 image"),
    ("grounding", {"solution": "8 12 24 36"}, "field 'solution'"),
    ("grounding", {"image": ["pic.png", "wide.png"]}, "one image path"),
    ("jigsaw", {"solution": [1, 2, 2, 3]}, "permutation of 1..4"),
    ("jigsaw", {"grid": [2]}, "field 'grid'"),
    ("jigsaw", {"grid": [1, 1]}, "field 'grid'"),
    ("jigsaw", {"original": "nope.png"}, "field 'original'"),
    ("geolocation", {"solution": {"lat": 91, "lon": 0}}, "field 'solution'"),
    ("geolocation", {"solution": [48.8, 2.3]}, "field 'solution'"),
    ("geolocation", {"solution": {"lat": 1, "lon": 2, "country": 3}}, "field 'solution.country'"),
    ("classification", {"solution": "green"}, "one of the options"),
    ("classification", {"solution": ""}, "non-empty string"),
    ("classification", {"synonyms": "crimson"}, "field 'synonyms'"),
    ("counting", {"solution": -1}, "whole number"),
    ("counting", {"solution": 2.5}, "whole number"),
    ("counting", {"solution": True}, "whole number"),
    ("multiple_choice", {"solution": "C"}, "option letter A-B"),
    ("multiple_choice", {"options": ["only one"]}, "field 'options'"),
    ("math", {"solution": ["3/4"]}, "field 'solution'"),
    ("math", {"problem": "   "}, "field 'problem'"),
    ("temporal_grounding", {"solution": [2.0, 1.0]}, "start < end"),
    ("temporal_grounding", {"solution": [1.0, 1.0]}, "start < end"),  # zero length
    ("grounding", {"solution": [["8", 12, 24, 36]]}, "field 'solution' must be a list of [x1, y1, x2, y2] boxes"),
    ("counting", {"solution": "three"}, "whole number"),
    ("multiple_choice", {"solution": "Madrid"}, "option letter A-B or one option's text"),
    ("multiple_choice", {"options": ["a", " "]}, "field 'options'"),
    ("classification", {"solution": "!!!"}, "field 'solution'"),
    ("classification", {"options": ["white square", ""]}, "field 'options'"),
    ("geolocation", {"solution": {"lat": 1, "lon": 2, "city": " "}}, "field 'solution.city' must be a non-empty"),
    ("math", {"solution": float("nan")}, "field 'solution'"),
    ("temporal_grounding", {"solution": [5.0, 6.0]}, "before the video's end"),
    ("temporal_grounding", {"solution": [1.0, float("nan")]}, "field 'solution'"),
    ("temporal_grounding", {"video": 3}, "field 'video'"),
]


@pytest.mark.parametrize(("name", "changes", "message"), BAD_RECORDS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_RECORDS)])
def test_bad_answer_fields_are_named(name, changes, message, data_dir):
    rid = CASES[name][0]["id"]
    with pytest.raises(RecordError, match=f"record '{rid}'") as info:
        build(name, data_dir, **changes)
    assert message in str(info.value)
    assert message in " ".join(get_task(name).check_record({**CASES[name][0], **changes}, ctx_for(data_dir)))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_check_record_missing_field_and_media(name, data_dir):
    task, record, ctx = get_task(name), CASES[name][0], ctx_for(data_dir)
    assert task.check_record(record, ctx) == []
    for field in task.required_fields:
        problems = task.check_record({k: v for k, v in record.items() if k != field}, ctx)
        assert problems and field in problems[0], (field, problems)
    media_field = "video" if name == "temporal_grounding" else ("images" if "images" in record else "image")
    missing = {**record, media_field: "missing.png" if media_field != "images" else ["missing.png"]}
    problems = task.check_record(missing, ctx)
    assert len(problems) == 1 and "missing.png" in problems[0] and f"field '{media_field}'" in problems[0]
    assert f"record '{record['id']}'" in problems[0]


def test_corrupt_image_and_record_without_id(data_dir, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    record = {"image": "broken.png", "problem": "How many?", "solution": 2}
    task = get_task("counting")
    problems = task.check_record(record, ctx_for(tmp_path))
    assert len(problems) == 1 and "field 'image'" in problems[0] and "broken.png" in problems[0]
    # without an "id" the sample id is a stable content hash, used in messages too
    ok = {"image": str(data_dir / "pic.png"), "problem": "How many?", "solution": 2}
    a, b = task.to_sample(ok, ctx_for(tmp_path)), task.to_sample(dict(ok), ctx_for(tmp_path))
    assert a.id == b.id and a.id.startswith("counting-")
    assert task.check_record({**ok, "solution": -3}, ctx_for(tmp_path))[0].startswith("record 'counting-")


# ---------------------------------------------------------------- task specifics


@pytest.mark.parametrize(("family", "expected"), [
    ("qwen2_5_vl", '[{"bbox_2d": [14, 21, 42, 63]}]'),  # absolute pixels of the 56x84 model image
    ("qwen2_vl", "(250,250),(750,750)"),                  # 0-1000 of the image, the Qwen2-VL box syntax
])
def test_grounding_target_in_the_model_family_convention(family, expected, data_dir):
    task = get_task("grounding")
    sample = task.to_sample(CASES["grounding"][0], ctx_for(data_dir, think=False, family=family))
    assert sample.target == f"<answer>{expected}</answer>"
    assert sample.columns == {"solution": [GT_BOX], "image_size": [32, 48], "model_size": [56, 84],
                              "coord_family": family}
    assert ("56x84" in sample.prompt_text) == (family == "qwen2_5_vl") and ("0-1000" in sample.prompt_text) == (
        family == "qwen2_vl")
    for reward in task.reward_weights(False):
        assert call_reward(reward, sample.target, sample.columns) == pytest.approx(1.0)


@pytest.mark.parametrize(("solution", "target"), [
    ([], "[]"),                                  # absent object: the gold answer abstains
    (GT_BOX, '[{"bbox_2d": [14, 21, 42, 63]}]'),              # one flat box is accepted
    ([[-5, -5, 8, 12]], '[{"bbox_2d": [0, 0, 14, 21]}]'),     # clipped to the image
    ([[0, 0, 16, 24], GT_BOX], '[{"bbox_2d": [0, 0, 28, 42]}, {"bbox_2d": [14, 21, 42, 63]}]'),
])
def test_grounding_solution_forms(solution, target, data_dir):
    sample = build("grounding", data_dir, think=False, solution=solution)
    assert sample.target == f"<answer>{target}</answer>"
    for reward in ("iou", "box_f1"):
        assert call_reward(reward, sample.target, sample.columns) == pytest.approx(1.0)


def test_grounding_rejects_unknown_model_family(data_dir):
    with pytest.raises(ValueError, match="model_family"):
        get_task("grounding").to_sample(CASES["grounding"][0], ctx_for(data_dir, family="llava"))


def test_jigsaw_gold_order_reassembles_the_original(data_dir):
    sample = build("jigsaw", data_dir)
    order = json.loads(sample.target.split("<answer>")[1].split("</answer>")[0])
    restored = assemble_jigsaw(load_image(data_dir / "shuffled.png"), 2, 2, [p - 1 for p in order])
    assert np.array_equal(np.asarray(restored), np.asarray(picture()))
    assert "1 to 4" in sample.prompt_text and "reading order" in sample.prompt_text


@pytest.mark.parametrize("grid", [(2, 2), (2, 3)])
def test_jigsaw_dataset_round_trip(grid, data_dir, tmp_path):
    """Puzzles made from an image folder (`make_jigsaw_dataset`, the one maker) load as jigsaw samples whose gold
    answer scores 1 and whose shuffled tiles, put back in the solution's order, give the saved original."""
    import shutil

    from mmreason.data.records import load_records
    from mmreason.data.synthetic import make_jigsaw_dataset

    images = tmp_path / "images-in"
    images.mkdir()
    for name in ("pic.png", "wide.png"):
        shutil.copy(data_dir / name, images / name)
    make_jigsaw_dataset(images, tmp_path / "a", grid=grid, seed=5, val_fraction=0.0, max_side=None)
    make_jigsaw_dataset(images, tmp_path / "b", grid=grid, seed=5, val_fraction=0.0, max_side=None)
    records = load_records(tmp_path / "a" / "train.jsonl")
    assert len(records) == 2
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    task, rows, cols = get_task("jigsaw"), *grid
    for record in records:
        sample = task.to_sample(record, ctx_for(tmp_path / "a"))
        assert call_reward("jigsaw_exact", sample.target, sample.columns) == 1.0
        order = [p - 1 for p in record["solution"]]
        restored = assemble_jigsaw(load_image(tmp_path / "a" / record["image"]), rows, cols, order)
        original = load_image(tmp_path / "a" / record["original"])  # cropped to the grid (32 / 3 columns)
        assert np.array_equal(np.asarray(restored), np.asarray(original)[: restored.height, : restored.width])
        assert task.visualize(sample, sample.target).mode == "RGB"  # model image does not divide: cropped


def test_temporal_prompt_gives_duration_and_frame_times(data_dir):
    sample = build("temporal_grounding", data_dir)
    clip = sample.video
    assert clip.duration == pytest.approx(3.0) and sample.columns == {"solution": [1.0, 2.0], "duration": 3.0}
    assert "lasts 3 seconds" in sample.prompt_text
    assert ", ".join(f"{t:.1f}".rstrip("0").rstrip(".") for t in clip.timestamps) in sample.prompt_text
    clipped = build("temporal_grounding", data_dir, solution=[2.5, 9.0])
    assert clipped.columns["solution"] == [2.5, 3.0]


def test_fixed_size_families_see_square_images_and_frames(data_dir):
    grounding = get_task("grounding").to_sample(CASES["grounding"][0], ctx_for(data_dir, think=False,
                                                                               family="internvl"))
    assert grounding.images[0].size == (448, 448) and grounding.columns["model_size"] == [448, 448]
    assert grounding.target == "<answer><box>[[250, 250, 750, 750]]</box></answer>"
    assert call_reward("iou", grounding.target, grounding.columns) == pytest.approx(1.0)
    clip = get_task("temporal_grounding").to_sample(CASES["temporal_grounding"][0], ctx_for(data_dir,
                                                                                           family="internvl")).video
    assert {frame.size for frame in clip.frames} == {(448, 448)}
    with pytest.raises(ValueError, match="Gemma 3 model family .* takes no video"):
        get_task("temporal_grounding").to_sample(CASES["temporal_grounding"][0], ctx_for(data_dir, family="gemma3"))


def test_multiple_choice_renders_lettered_options(data_dir):
    sample = build("multiple_choice", data_dir, solution="the second")
    assert "A. the first\nB. the second" in sample.prompt_text and sample.target.endswith("<answer>B</answer>")
    assert build("multiple_choice", data_dir, solution="(b)").columns["solution"] == "B"


def test_classification_nothink_variant_and_default_question(data_dir):
    sample = build("classification", data_dir, think=False, options=None, synonyms=None)
    assert sample.target == "<answer>white square</answer>" and sample.columns["synonyms"] == []
    assert "category" in sample.prompt_text and "<think>" not in sample.prompt_text
    assert get_task("classification").reward_weights(False) == {"format_nothink": 0.5, "cls_match": 1.0}


def test_math_without_image_and_numeric_solution(data_dir):
    sample = build("math", data_dir, image=None, solution=42)
    assert sample.images == [] and [c["type"] for c in sample.messages[0]["content"]] == ["text"]
    assert sample.columns == {"solution": "42"}
    assert call_reward("math_verify", sample.target, sample.columns) == 1.0
    img = get_task("math").visualize(sample, sample.target)
    assert img.mode == "RGB" and img.width >= 200


# ---------------------------------------------------------------- tasks and rewards agree on ground truth

# multiple choice: (solution, options, gold letter or None when both the task and the reward reject it)
CHOICE_GOLD = [
    ("B", ["the first", "the second"], "B"),
    ("(b)", ["the first", "the second"], "B"),
    ("b.", ["the first", "the second"], "B"),
    ("the second", ["the first", "the second"], "B"),  # one option's text
    ("The Second!", ["the first", "the second"], "B"),  # compared after normalize_text
    ("B. the second", ["the first", "the second"], "B"),
    ("B. the first", ["the first", "the second"], "B"),  # the letter wins over contradicting text
    ("Answer: A", ["the first", "the second"], "A"),
    ("a", ["B", "a"], "A"),  # a letter is a letter even when it is also an option's text
    ("2", [1, 2], "B"),  # numeric options are text
    ("C", ["the first", "the second"], None),  # past the last option
    ("the third", ["the first", "the second"], None),
    ("same", ["same", "same"], None),  # ambiguous text
    ("first", ["the first", "the second"], None),  # text must equal an option, not be part of one
    ("", ["the first", "the second"], None),
    (2, ["the first", "the second"], None),
]


@pytest.mark.parametrize(("solution", "options", "letter"), CHOICE_GOLD)
def test_multiple_choice_task_and_reward_read_the_gold_alike(solution, options, letter, data_dir):
    reward = get_reward("choice_match")
    if letter is None:
        with pytest.raises(RecordError, match="record 'm1': field 'solution'"):
            build("multiple_choice", data_dir, solution=solution, options=options)
        with pytest.raises(ValueError, match="choice_match.*solution"):
            reward(["<answer>A</answer>"], solution=[solution], options=[[str(o) for o in options]])
        return
    sample = build("multiple_choice", data_dir, solution=solution, options=options)
    assert sample.columns["solution"] == letter and sample.target.endswith(f"<answer>{letter}</answer>")
    # the raw record value is accepted by the reward too, and names the same option
    assert reward([sample.target], solution=[solution], options=[sample.columns["options"]]) == [1.0]
    assert reward([sample.target], **{k: [v] for k, v in sample.columns.items()}) == [1.0]


# temporal segments, in the 3-second test video: (solution, segment in the columns or None when both reject it)
SEGMENT_GOLD = [
    ([1.0, 2.0], [1.0, 2.0]),
    ([0, 0.5], [0.0, 0.5]),
    ([2.5, 9.0], [2.5, 3.0]),  # the end is clipped to the video
    ([1.0, 1.0], None),  # zero length
    ([0.0, 0.0], None),
    ([2.0, 1.0], None),
    ([-0.5, 1.0], None),
    ([1.0, float("inf")], None),
    ([True, 2.0], None),
    (["1", "2"], None),
    ([1.0, 2.0, 3.0], None),
]


@pytest.mark.parametrize(("solution", "segment"), SEGMENT_GOLD)
def test_temporal_task_and_reward_check_segments_alike(solution, segment, data_dir):
    reward = get_reward("tiou")
    if segment is None:
        with pytest.raises(RecordError, match="record 't1': field 'solution' must be .*start < end"):
            build("temporal_grounding", data_dir, solution=solution)
        with pytest.raises(ValueError, match="tiou.*solution: expected .*start < end"):
            reward(["<answer>1, 2</answer>"], solution=[solution])
        return
    sample = build("temporal_grounding", data_dir, solution=solution)
    assert sample.columns["solution"] == segment
    assert reward([sample.target], **{k: [v] for k, v in sample.columns.items()}) == [pytest.approx(1.0)]
    # the raw record value is valid reward ground truth too (the reward does not clip it to the video)
    assert 0.0 < reward([sample.target], solution=[solution])[0] <= 1.0


@pytest.mark.parametrize("answers, expected", [
    (["48.85341, 2.3488"] * 2, 5000.0),  # on the spot, twice
    (["48.85341, 2.3488", "no idea"], 2500.0 + 5000.0 * math.exp(-math.pi * 6371.0088 / 1492.7) / 2),
    (["-33.86785, 151.20732"], 5000.0 * math.exp(-16958.0 / 1492.7)),  # Sydney for Paris: ~16,958 km off
])
def test_geoguessr_score_is_the_mean_of_the_world_curve(answers, expected):
    sample = Sample(id="g", task="geolocation", messages=[], images=[], target="",
                    columns={"solution": {"lat": 48.85341, "lon": 2.3488}})
    got = get_task("geolocation").metrics([f"<answer>{a}</answer>" for a in answers], [sample] * len(answers))
    assert got["geoguessr_score"] == pytest.approx(expected, rel=2e-3)
