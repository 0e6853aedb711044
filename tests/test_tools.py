"""Tools and multi-turn rollouts: the call protocol, every error path, the loss mask over the policy's own tokens,
and scripted (forced-token) trajectories through the real processor, tools and tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from mmreason.data.sample import Sample
from mmreason.registry import get_reward
from mmreason.rollout import multiturn
from mmreason.rollout.tools import ToolBudget, ToolCall, ToolError, parse_tool_call, run_tool
from mmreason.rollout.types import SamplingParams

ALL = ("zoom_in", "crop_video", "select_frames")


def _image_sample(n: int = 1) -> Sample:
    content = [{"type": "image"}] * n + [{"type": "text", "text": "How many shapes are in the image?"}]
    images = [Image.new("RGB", (56, 56), (200, 30 * i, 30)) for i in range(n)]
    return Sample("s", "counting", [{"role": "user", "content": content}], images, columns={"solution": 2})


@pytest.mark.parametrize(
    ("segment", "name", "error"),
    [
        ('<tool_call>{"name": "zoom_in", "arguments": {"bbox": [0, 0, 9, 9]}}</tool_call>', "zoom_in", None),
        ('think <tool_call> {"name": "a"} </tool_call>', "a", None),
        ('<tool_call>{"name": "a"}</tool_call><tool_call>{"name": "b"}</tool_call>', "b", None),
        ("<tool_call>{bad json</tool_call>", None, "not valid JSON"),
        ('<tool_call>["zoom_in"]</tool_call>', None, "JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', None, "JSON object"),
        ('<tool_call>{"name": "x", "arguments": [1]}</tool_call>', None, "'arguments' must be"),
        ('<tool_call>{"name": "x"}', None, "no complete"),
        ("", None, "no complete"),
        ("<tool_call>" + "[" * 100000 + "</tool_call>", None, "not valid JSON"),
    ],
)
def test_parse_tool_call(segment, name, error):
    if error:
        with pytest.raises(ToolError, match=error):
            parse_tool_call(segment)
    else:
        assert parse_tool_call(segment).name == name


@pytest.mark.parametrize(
    ("args", "ok", "text"),
    [
        ({"bbox": [0, 0, 28, 28]}, True, "zoomed into [0, 0, 28, 28] of image 1"),
        ({"bbox": [28, 28, 0, 0]}, True, "zoomed into [0, 0, 28, 28]"),  # swapped corners
        ({"bbox": [-10, -10, 20, 20]}, True, "zoomed into [0, 0, 20, 20]"),  # clipped to the image
        ({"bbox": [60, 60, 90, 90]}, False, "outside the 56x56 image"),
        ({"bbox": [10, 10, 10, 30]}, False, "zero area"),
        ({"bbox": [0, 0, 1]}, False, "must be [x1, y1, x2, y2]"),
        ({"bbox": [0, 0, "a", 3]}, False, "must be a number"),
        ({"bbox": [0, 0, float("nan"), 3]}, False, "must be a number"),
        ({"bbox": [0, 0, 9, 9], "image": 3}, False, "between 1 and 1"),
    ],
)
def test_zoom_in_and_its_errors(args, ok, text):
    result = run_tool(ToolCall("zoom_in", args), _image_sample(), ALL, ToolBudget())
    assert result.ok is ok and text in result.text
    if ok:
        assert len(result.images) == 1 and result.images[0].width % 28 == 0 and result.images[0].height % 28 == 0


def test_unknown_disallowed_and_no_video_tools_return_errors():
    sample = _image_sample()
    assert "unknown tool 'draw'" in run_tool(ToolCall("draw", {}), sample, ALL, ToolBudget()).text
    assert "unknown tool 'zoom_in'" in run_tool(ToolCall("zoom_in", {}), sample, ("select_frames",), ToolBudget()).text
    assert "has no video" in run_tool(ToolCall("select_frames", {"frames": [1]}), sample, ALL, ToolBudget()).text
    assert "no video file" in run_tool(ToolCall("crop_video", {"start": 0, "end": 1}), sample, ALL, ToolBudget()).text


@pytest.fixture(scope="module")
def video_sample(tmp_path_factory) -> Sample:
    import av
    import numpy as np
    from mmreason.processors import load_video

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 8, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    clip = load_video(path, fps=2.0)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When?"}]}]
    return Sample("v", "temporal_grounding", msgs, video=clip, meta={"video_path": str(path)})


@pytest.mark.parametrize(
    ("name", "args", "ok", "text"),
    [
        ("select_frames", {"frames": [1, 2]}, True, "frames [1, 2] at"),
        ("select_frames", {"frames": [0]}, False, "out of range"),
        ("select_frames", {"frames": []}, False, "non-empty list"),
        ("crop_video", {"start": 1.0, "end": 2.0}, True, "of [1.00, 2.00]s"),
        ("crop_video", {"start": 2.5, "end": 99}, True, "of [2.50, 3.00]s"),  # end clipped to the video
        ("crop_video", {"start": 5.0, "end": 6.0}, False, "past the video's end"),
        ("crop_video", {"start": 2.0, "end": 1.0}, False, "start < end"),
    ],
)
def test_video_tools_and_their_errors(video_sample, name, args, ok, text):
    result = run_tool(ToolCall(name, args), video_sample, ALL, ToolBudget())
    assert result.ok is ok and text in result.text, result.text
    assert bool(result.images) is ok


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


def _scripted(monkeypatch, processor, script: list[str]) -> None:
    """Replace sampling with forced segments (turn by turn, the same for every active row)."""
    turns = iter(script)
    tok = processor.tokenizer

    def fake_generate_turn(model, processor, trajs, **_):
        ids = tok.encode(next(turns), add_special_tokens=False)
        stops = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("</tool_call>")}
        return [(list(ids), ids[-1] in stops) for _ in trajs]

    monkeypatch.setattr(multiturn, "generate_turn", fake_generate_turn)


def test_scripted_zoom_trajectory_masks_tool_tokens(monkeypatch, model, tiny_processor):
    call = (
        '<think>look closer</think><tool_call>{"name": "zoom_in", "arguments": {"bbox": [0, 0, 28, 28]}}</tool_call>'
    )
    answer = "<think>two</think><answer>2</answer><|im_end|>"
    _scripted(monkeypatch, tiny_processor, [call, answer])
    params = SamplingParams(2, 64)
    trajs = multiturn.sample_trajectories(model, tiny_processor, [_image_sample()], ("zoom_in",), params)
    t = trajs[0]
    assert len(trajs) == 2 and t.done and t.tool_calls == 1 and t.tool_errors == 0 and not t.budget_exceeded
    assert [turn["role"] for turn in t.turns] == ["assistant", "tool", "assistant"]
    assert t.answer == "<think>two</think><answer>2</answer>"
    tok = tiny_processor.tokenizer
    policy_ids = [i for i, m in zip(t.ids, t.policy, strict=True) if m]
    assert policy_ids == tok.encode(call, add_special_tokens=False) + tok.encode(answer, add_special_tokens=False)
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert t.ids.count(image_pad) == 4 + 4  # prompt image (56x56) + zoomed crop (56x56 after resize)
    assert all(m == 0 for i, m in zip(t.ids, t.policy, strict=True) if i == image_pad)
    batch = multiturn.scoring_batch(trajs, tok.pad_token_id, torch.device("cpu"))
    logp, _ = multiturn.trajectory_logprobs(model, batch)
    mask = batch["policy_mask"][:, 1:].bool()
    assert logp.shape == mask.shape and torch.isfinite(logp[mask]).all()
    assert int(mask.sum()) == 2 * len(policy_ids)
    cols = multiturn.trajectory_columns(trajs)
    assert get_reward("tool_success")([x.answer for x in trajs], **cols) == [1.0, 1.0]
    assert get_reward("tool_discipline")([x.answer for x in trajs], **cols) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("script", "max_turns", "errors", "exceeded", "tool_text"),
    [
        (["<tool_call>{bad</tool_call>", "<answer>1</answer><|im_end|>"], 3, 1, False, "not valid JSON"),
        (['<tool_call>{"name": "paint"}</tool_call>', "<answer>1</answer><|im_end|>"], 3, 1, False, "unknown tool"),
        (
            [
                '<tool_call>{"name": "zoom_in", "arguments": {"bbox": [90, 90, 99, 99]}}</tool_call>',
                "<answer>1</answer><|im_end|>",
            ],
            3,
            1,
            False,
            "outside",
        ),
        (
            ['<tool_call>{"name": "zoom_in", "arguments": {"bbox": [0, 0, 9, 9]}}</tool_call>'] * 2,
            1,
            0,
            True,
            "zoomed",
        ),
    ],
)
def test_scripted_error_paths_reach_the_model_as_tool_turns(
    monkeypatch, model, tiny_processor, script, max_turns, errors, exceeded, tool_text
):
    _scripted(monkeypatch, tiny_processor, script)
    params = SamplingParams(1, 64)
    sample = _image_sample()
    (t,) = multiturn.sample_trajectories(model, tiny_processor, [sample], ("zoom_in",), params, max_turns=max_turns)
    assert t.tool_errors == errors and t.budget_exceeded is exceeded and t.done
    assert tool_text in t.turns[1]["text"]
    assert get_reward("tool_discipline")([t.answer], **multiturn.trajectory_columns([t])) == [0.0]


def test_tool_rewards_do_not_apply_to_single_turn_rows():
    assert get_reward("tool_success")(["a", "b"]) == [None, None]
    assert get_reward("tool_discipline")(["a"], tool_errors=[None], budget_exceeded=[None]) == [None]


def test_real_sampling_rollout_runs_and_masks_only_generated_tokens(model, tiny_processor):
    torch.manual_seed(0)
    samples = [_image_sample(), _image_sample(2)]
    trajs = multiturn.sample_trajectories(model, tiny_processor, samples, ALL, SamplingParams(2, 6))
    assert len(trajs) == 4 and all(t.done for t in trajs)
    for t in trajs:
        assert t.policy.index(1) == len(multiturn.start(tiny_processor, t.sample, ALL).ids)  # no loss on the prompt
        assert 1 <= sum(t.policy) <= 6 * 4
    batch = multiturn.scoring_batch(trajs, tiny_processor.tokenizer.pad_token_id, torch.device("cpu"))
    assert batch["input_ids"].shape == batch["policy_mask"].shape


def test_tool_rollout_is_seeded_per_prompt(model, tiny_processor):
    """Every turn of a prompt's trajectories samples from that prompt's generator only: its trajectories are the
    same alone, first or second in the batch, whatever the global RNG, and however many turns the other prompt's
    trajectories take (the random tiny model is nudged towards `</tool_call>` so that turn counts vary)."""
    a, b = _image_sample(1), _image_sample(2)
    a.meta.update(epoch=0, position=0)
    b.meta.update(epoch=0, position=1)
    end = tiny_processor.tokenizer.convert_tokens_to_ids("</tool_call>")

    def nudge(module, inputs, logits):
        logits[..., end] += 6.0
        return logits

    def roll(samples: list[Sample], seed: int = 7, global_seed: int = 0) -> list[tuple]:
        torch.manual_seed(global_seed)  # must play no part
        params = SamplingParams(3, 6, seed=seed)
        out = multiturn.tool_rollout(model, tiny_processor, samples, ALL, params, torch.device("cpu"), max_turns=2)
        return [(tuple(t.ids), tuple(t.segments), json.dumps(t.turns), t.tool_errors) for t in out.trajectories]

    handle = model.lm_head.register_forward_hook(nudge)
    try:
        ab, b_alone, ba = roll([a, b]), roll([b], global_seed=1), roll([b, a], global_seed=2)
        again, other_seed = roll([a, b], global_seed=3), roll([a, b], seed=8)
    finally:
        handle.remove()
    turn_counts = [len(t[1]) for t in ab]
    assert len(set(turn_counts[:3] + turn_counts[3:])) > 1 and max(turn_counts) > 1, turn_counts  # a real test
    assert ab[3:] == b_alone == ba[:3]
    assert ab[:3] == ba[3:]
    assert again == ab
    assert other_seed != ab
    assert len({t[0] for t in ab[3:]}) == 3  # the G trajectories of a prompt still differ


def test_tool_instructions_are_added_to_the_prompt_text():
    sample = _image_sample()
    messages = multiturn.with_tools(sample.messages, ("zoom_in",))
    text = messages[0]["content"][-1]["text"]
    assert text.startswith("How many shapes") and "<tool_call>" in text and "zoom_in" in text
    assert "tool_call" not in sample.messages[0]["content"][-1]["text"]  # the sample itself is untouched


@pytest.fixture(scope="module")
def grounding_data(tmp_path_factory):
    from mmreason.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("grounding")
    make_synthetic("grounding", out, n=24, seed=0)
    return out


def _tool_config(tmp_path, data, share_prefix: bool = True) -> list[str]:
    """share_prefix: False takes the re-encoding rollout, whose turn sampler (`generate_turn`) a test can script."""
    import json as _json

    cfg = {
        "name": "tools",
        "output_dir": str(tmp_path / "runs"),
        "think": True,
        "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [
            {"task": "grounding", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"), "max_val": 2}
        ],
        "grpo": {
            "steps": 2,
            "prompts_per_step": 2,
            "group_size": 2,
            "max_new_tokens": 48,
            "tools": {"enabled": True, "max_turns": 1},
            "share_prefix": share_prefix,
        },
        "eval": {"max_new_tokens": 4, "batch_size": 2, "at_start": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(_json.dumps(cfg))
    return [str(path)]


def _train(args):
    from typer.testing import CliRunner

    from mmreason.cli import app

    result = CliRunner().invoke(app, ["train", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_grpo_with_tools_scripted_zoom_reaches_store_with_images(tmp_path, grounding_data, monkeypatch):
    import json as _json
    from pathlib import Path

    from mmreason.runs import store
    call = '<think>zoom</think><tool_call>{"name": "zoom_in", "arguments": {"bbox": [0, 0, 28, 28]}}</tool_call>'
    answer = '<think>here</think><answer>[{"bbox_2d": [0, 0, 20, 20]}]</answer><|im_end|>'
    real = multiturn.generate_turn

    def scripted(model, processor, trajs, **kw):
        tok = processor.tokenizer
        text = call if not trajs[0].tool_calls and not trajs[0].tool_errors else answer
        ids = tok.encode(text, add_special_tokens=False)
        return [(list(ids), True) for _ in trajs]

    monkeypatch.setattr(multiturn, "generate_turn", scripted)
    _train(_tool_config(tmp_path, grounding_data, share_prefix=False))
    monkeypatch.setattr(multiturn, "generate_turn", real)
    run_dir = tmp_path / "runs" / "tools"
    df = store.read(run_dir, stage="grpo-0")
    assert len(df) == 2 * 2 * 2 and (df["reward_tool_success"] == 1.0).all()
    assert (df["reward_tool_discipline"] == 1.0).all() and (df["reward_format"] == 1.0).all()
    turns = _json.loads(df["turns"].iloc[0])
    assert [t["role"] for t in turns] == ["assistant", "tool", "assistant"]
    assert Path(turns[1]["images"][0]).is_file()
    metrics = [_json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grpo = [m for m in metrics if m["stage"] == "grpo"]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in grpo)


@pytest.mark.parametrize(("share_prefix", "path"), [(True, "shared_trajectory"), (False, "trajectory")])
def test_grpo_with_tools_real_sampling_two_steps(tmp_path, grounding_data, share_prefix, path):
    from mmreason.runs import store
    _train(_tool_config(tmp_path, grounding_data, share_prefix))
    df = store.read(tmp_path / "runs" / "tools", stage="grpo-0")
    assert len(df) == 8 and "turns" in df and "reward_tool_success" in df
    log = (tmp_path / "runs" / "tools" / "train.log").read_text()
    assert f"grpo scoring: loss on {path}, old/reference log-probs on {path}" in log


def test_report_shows_every_turn_with_tool_images(tmp_path, grounding_data, monkeypatch):
    from mmreason.runs.report import write_report

    test_grpo_with_tools_scripted_zoom_reaches_store_with_images(tmp_path, grounding_data, monkeypatch)
    page = write_report(tmp_path / "runs" / "tools").read_text()
    assert "turn 2: tool" in page and "zoomed into [0, 0, 28, 28]" in page and 'alt="tool output"' in page
