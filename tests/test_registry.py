"""The registry: duplicates rejected, misses list known names, users' task/reward files, the shipped example task."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.data.sample import SampleContext
from mmreason.registry import (
    REWARDS,
    TASKS,
    Registry,
    RegistryError,
    get_reward,
    get_task,
    load_user_file,
    register_reward,
    resolve_reward,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "larger_shape.py"


def test_miss_lists_close_and_known_names():
    with pytest.raises(RegistryError) as err:
        get_task("grouding")
    msg = str(err.value)
    assert "unknown task 'grouding'" in msg and "Did you mean 'grounding'" in msg and "jigsaw" in msg
    with pytest.raises(RegistryError, match="Known rewards: .*box_f1"):
        get_reward("no_such_reward")


def test_duplicates_are_rejected_and_replace_is_explicit():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("a", 2)
    reg.add("a", 3, replace=True)
    assert reg.get("a") == 3
    with pytest.raises(RegistryError, match="non-empty"):
        reg.add("  ", 4)
    with pytest.raises(RegistryError, match="already registered"):

        @register_reward("iou")
        def other_iou(completions, **_):
            return [0.0] * len(completions)


def test_user_file_registers_task_and_reward(tmp_path):
    src = tmp_path / "my_task.py"
    src.write_text(
        "from mmreason import register_reward\n"
        "@register_reward('always_half_tmp')\n"
        "def half(completions, **_):\n"
        "    return [0.5] * len(completions)\n"
    )
    load_user_file(src)
    assert get_reward("always_half_tmp")(["x", "y"]) == [0.5, 0.5]
    assert resolve_reward(f"{src}:half")(["x"]) == [0.5]
    with pytest.raises(RegistryError, match="has no function 'nope'"):
        resolve_reward(f"{src}:nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_user_file(tmp_path / "missing.py")
    REWARDS.remove("always_half_tmp")


def _pair_image(path: Path, left: int, right: int) -> None:
    img = Image.new("RGB", (56, 56), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle((14 - left // 2, 28 - left // 2, 14 + left // 2, 28 + left // 2), fill="red")
    draw.rectangle((42 - right // 2, 28 - right // 2, 42 + right // 2, 28 + right // 2), fill="blue")
    img.save(path)


def test_shipped_example_task_file_works_end_to_end(tmp_path):
    load_user_file(EXAMPLE)
    task = get_task("larger_shape")
    _pair_image(tmp_path / "p.png", 20, 8)
    ctx = SampleContext(think=True, base_dir=tmp_path, min_pixels=3136, max_pixels=3136)
    sample = task.to_sample({"id": "p1", "image": "p.png", "solution": "left"}, ctx)
    assert len(sample.images) == 1 and sample.images[0].size == (56, 56)
    for name in task.reward_weights(True):
        assert get_reward(name)([sample.target], **{k: [v] for k, v in sample.columns.items()}) == [1.0]
    assert task.metrics(["<think>x</think><answer>right</answer>", sample.target], [sample, sample]) == {
        "accuracy": 0.5
    }
    assert task.visualize(sample, "<answer>left</answer>").mode == "RGB"
    with pytest.raises(ValueError, match="record 'p2': field 'solution'"):
        task.to_sample({"id": "p2", "image": "p.png", "solution": "up"}, ctx)
    result = CliRunner().invoke(app, ["tasks", "--task-file", str(EXAMPLE)])
    assert result.exit_code == 0 and "larger_shape" in result.output
    assert "larger_shape" in TASKS.names()
