"""Tools a policy can call inside its reasoning (multi-turn rollouts), and the tool-call protocol.

Protocol: the policy writes `<tool_call>{"name": "zoom_in", "arguments": {...}}</tool_call>`; generation stops at
`</tool_call>`, the tool runs on the sample's media, and its result (text and/or new images) is appended as a tool
turn before generation resumes. A tool is a plain function `fn(sample, arguments: dict, budget: ToolBudget) ->
ToolResult`, registered with `@register_tool(name)`; a task lists the tools it allows in `Task.tools`.

Bad calls never crash a rollout: malformed JSON, an unknown or disallowed tool, boxes outside the image, zero-area
crops and windows past the video's end all come back to the model as an error message in the tool turn.

Built-in tools:
- `zoom_in(image=1, bbox=[x1, y1, x2, y2])`: crop a region of input image `image` (1-based), in the coordinates the
  model sees (pixels of the resized image), and resize the crop to the pixel budget (or the family's fixed square).
- `crop_video(start, end)`: re-sample the window [start, end] seconds of the input video at a higher frame rate.
- `select_frames(frames=[i, ...])`: return sampled video frames (1-based indices into the prompt's frames) as images.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from mmreason.data.sample import Sample
from mmreason.models.family import ModelFamily
from mmreason.registry import TOOLS, register_tool

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
MAX_FRAMES_PER_CALL = 8


class ToolError(ValueError):
    """A bad tool call; its message is shown to the model as the tool's answer."""


@dataclass
class ToolBudget:
    """Limits of one trajectory: tool turns, and pixels of tool images added to the context; and the model family
    tool images are resized for (None: smart_resize to multiples of 28, as Qwen2-VL / Qwen2.5-VL take them)."""

    max_turns: int = 3
    max_pixels: int = 28 * 28 * 256
    min_pixels: int = 28 * 28 * 4
    used_turns: int = 0
    used_pixels: int = 0
    family: ModelFamily | None = None

    def cost(self, image: Image.Image) -> int:
        """Pixels an image takes from the budget. A fixed-size family's image costs one full image (max_pixels)
        whatever its square's side: the budget is in the smart-resized families' pixels, and such an image is
        always the same number of tokens."""
        if self.family is not None and self.family.fixed_image_size:
            return self.max_pixels
        return image.width * image.height


@dataclass
class ToolResult:
    text: str
    images: list[Image.Image] = field(default_factory=list)
    ok: bool = True


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


def parse_tool_call(segment: str) -> ToolCall:
    """The last `<tool_call>{json}</tool_call>` of a generated segment -> ToolCall (ToolError when malformed)."""
    found = TOOL_CALL_RE.findall(segment)
    if not found:
        raise ToolError("no complete <tool_call>...</tool_call> found")
    try:
        payload = json.loads(found[-1].strip())
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ToolError(f"tool call is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        raise ToolError('tool call must be a JSON object like {"name": "zoom_in", "arguments": {...}}')
    args = payload.get("arguments", {})
    if not isinstance(args, dict):
        raise ToolError("tool call 'arguments' must be a JSON object")
    return ToolCall(payload["name"], args)


def run_tool(call: ToolCall, sample: Sample, allowed: tuple[str, ...], budget: ToolBudget) -> ToolResult:
    """Run one call; every failure (unknown tool, bad arguments, over budget) becomes an error result."""
    if call.name not in allowed:
        return ToolResult(f"error: unknown tool {call.name!r}; available: {', '.join(allowed) or 'none'}", ok=False)
    try:
        result = TOOLS.get(call.name)(sample, call.arguments, budget)
    except ToolError as exc:
        return ToolResult(f"error: {exc}", ok=False)
    except Exception as exc:  # a tool bug must not end the rollout; the model sees a generic error
        return ToolResult(f"error: tool {call.name!r} failed ({type(exc).__name__})", ok=False)
    pixels = sum(budget.cost(im) for im in result.images)
    if budget.used_pixels + pixels > budget.max_pixels * budget.max_turns:
        return ToolResult("error: image budget of this conversation exhausted", ok=False)
    budget.used_pixels += pixels
    return result


def _number(args: dict[str, Any], key: str, default: float | None = None) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ToolError(f"argument {key!r} must be a number, got {value!r}")
    return float(value)


def _resize(image: Image.Image, budget: ToolBudget) -> Image.Image:
    """A tool image as the budget's model family takes it, within the budget's pixels."""
    from mmreason.processors import resize_image

    return resize_image(image, min_pixels=budget.min_pixels, max_pixels=budget.max_pixels, family=budget.family).image


def _box(args: dict[str, Any], width: int, height: int) -> tuple[int, int, int, int]:
    box = args.get("bbox")
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise ToolError(f"'bbox' must be [x1, y1, x2, y2], got {box!r}")
    x1, y1, x2, y2 = (_number({"v": v}, "v") for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise ToolError(f"bbox {box} is outside the {width}x{height} image")
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise ToolError(f"bbox {box} has zero area")
    return int(x1), int(y1), int(math.ceil(x2)), int(math.ceil(y2))


@register_tool("zoom_in")
def zoom_in(sample: Sample, args: dict[str, Any], budget: ToolBudget) -> ToolResult:
    index = int(_number(args, "image", 1))
    if not 1 <= index <= len(sample.images):
        raise ToolError(f"'image' must be between 1 and {len(sample.images)}, got {index}")
    image = sample.images[index - 1]
    box = _box(args, *image.size)
    crop = _resize(image.crop(box), budget)
    return ToolResult(f"zoomed into {list(box)} of image {index}", [crop])


@register_tool("select_frames")
def select_frames(sample: Sample, args: dict[str, Any], budget: ToolBudget) -> ToolResult:
    if sample.video is None:
        raise ToolError("this question has no video")
    picks = args.get("frames")
    if not isinstance(picks, list) or not picks or not all(isinstance(i, int) for i in picks):
        raise ToolError(f"'frames' must be a non-empty list of frame numbers, got {picks!r}")
    n = len(sample.video.frames)
    bad = [i for i in picks if not 1 <= i <= n]
    if bad:
        raise ToolError(f"frame numbers {bad} are out of range 1..{n}")
    picks = picks[:MAX_FRAMES_PER_CALL]
    times = ", ".join(f"{sample.video.timestamps[i - 1]:.1f}s" for i in picks)
    return ToolResult(f"frames {picks} at {times}", [_resize(sample.video.frames[i - 1], budget) for i in picks])


@register_tool("crop_video")
def crop_video(sample: Sample, args: dict[str, Any], budget: ToolBudget) -> ToolResult:
    from mmreason.processors import load_video

    video = sample.video
    path = sample.meta.get("video_path")
    if video is None or not path:
        raise ToolError("this question has no video file to crop")
    start, end = _number(args, "start"), _number(args, "end")
    if not 0 <= start < end:
        raise ToolError(f"need 0 <= start < end, got start={start}, end={end}")
    if start >= video.duration:
        raise ToolError(f"start {start:.2f}s is past the video's end ({video.duration:.2f}s)")
    end = min(end, video.duration)
    # sample densely, then keep the window: up to MAX_FRAMES_PER_CALL frames inside [start, end]
    dense = load_video(path, fps=None, nframes=min(video.total_frames - video.total_frames % 2, 64) or None)
    inside = [i for i, t in enumerate(dense.timestamps) if start <= t <= end]
    if not inside:
        raise ToolError(f"no frame falls inside [{start:.2f}, {end:.2f}]s")
    step = max(1, math.ceil(len(inside) / MAX_FRAMES_PER_CALL))
    keep = inside[::step][:MAX_FRAMES_PER_CALL]
    times = ", ".join(f"{dense.timestamps[i]:.2f}s" for i in keep)
    return ToolResult(
        f"{len(keep)} frames of [{start:.2f}, {end:.2f}]s at {times}", [_resize(dense.frames[i], budget) for i in keep]
    )
