"""Synthetic clips for the temporal_grounding task (registered in `mmreason.data.synthetic.MAKERS`) and writing
them as MP4 files.

What a small model can learn: when a coloured square is on screen. Each clip lasts 4-8 s at a few frames per second
on a plain grey background with faint static noise; the square named by the problem ("the red square is on screen")
appears at its window's start and is gone at its end, so the solution [start_s, end_s] is read off which frames
show it. Windows last from 1 s to half the clip and start and end on the half second (at an even fps; on any frame
otherwise), the grid that the processors' default 2 fps sampling sees. `distractors` adds squares of other
colours, each with its own window, so that the colour in the problem decides which window is asked for.
Clips are encoded as MPEG-4 Part 2 in .mp4 (PyAV), which every FFmpeg build can write and the processors read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmreason.data.drawing import COLORS, free_box

EVENT_PROBLEM = "the {color} square is on screen"
MAX_FPS = 30
MAX_SECONDS = 60
MIN_FRAMES = 4  # the processors sample at least 4 frames of a clip


@dataclass(frozen=True)
class Clip:
    """A synthetic video: frames (n, height, width, 3) uint8 shown at `fps` frames per second."""

    frames: np.ndarray
    fps: int

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps


def write_clip(clip: Clip, path: str | Path) -> Path:
    """Encode the clip as MPEG-4 in an .mp4 file at a high bitrate (small frames: colours stay close to the drawn
    ones) and return the path."""
    import av  # only video makers need it

    n, h, w, _ = clip.frames.shape
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=clip.fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = max(200_000, 400 * w * h)
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(clip.frames[i], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def temporal_grounding_item(rng: np.random.Generator, size: tuple[int, int], *, fps: int = 4, min_seconds: int = 4,
                            max_seconds: int = 8, distractors: int = 0) -> tuple[dict[str, Clip], dict[str, Any]]:
    """A clip of min_seconds..max_seconds whole seconds with frames of `size` (rounded down to even sides, as the
    encoder needs); one square per colour, each on screen during its own window. The problem names the first
    square's colour and the solution is its window [start_s, end_s]."""
    _check_options(fps, min_seconds, max_seconds, distractors)
    w, h = size[0] - size[0] % 2, size[1] - size[1] % 2
    n = int(rng.integers(min_seconds, max_seconds + 1)) * fps
    grey = float(rng.integers(110, 150))
    background = np.clip(grey + rng.normal(0.0, 4.0, (h, w, 1)), 0, 255).round().astype(np.uint8)
    frames = np.repeat(np.repeat(background, 3, axis=2)[None], n, axis=0)
    names = list(COLORS)
    colors = [names[i] for i in rng.permutation(len(names))[: 1 + distractors].tolist()]
    taken: list[tuple[int, int, int, int]] = []
    windows = []
    for color in colors:
        box = free_box(rng, (w, h), taken, 0.25, 0.45 if not distractors else 0.35)
        if box is None:  # no room left: fewer distractors rather than overlapping squares
            continue
        taken.append(box)
        start, end = _window(rng, n, fps)
        x1, y1, x2, y2 = box
        frames[start:end, y1:y2, x1:x2] = COLORS[color]
        windows.append((start, end))
    start, end = windows[0]  # the first colour always fits: nothing is taken yet
    record = {"problem": EVENT_PROBLEM.format(color=colors[0]), "solution": [start / fps, end / fps]}
    return {"video": Clip(frames, fps)}, record


def _window(rng: np.random.Generator, n: int, fps: int) -> tuple[int, int]:
    """Frames [start, end) of an event lasting 1 s to half the clip, starting and ending on a multiple of
    fps // 2 frames (the half second at an even fps)."""
    step = max(1, fps // 2)
    units = n // step
    shortest = math.ceil(fps / step)  # one second
    length = int(rng.integers(shortest, max(shortest, units // 2) + 1))
    first = int(rng.integers(0, units - length + 1))
    return first * step, (first + length) * step


def _check_options(fps: int, min_seconds: int, max_seconds: int, distractors: int) -> None:
    if not (isinstance(fps, int) and 1 <= fps <= MAX_FPS):
        raise ValueError(f"temporal_grounding: fps must be a whole number in 1..{MAX_FPS}, got {fps!r}")
    if not 1 <= min_seconds <= max_seconds <= MAX_SECONDS:
        raise ValueError(f"temporal_grounding: need 1 <= min_seconds <= max_seconds <= {MAX_SECONDS}, "
                         f"got {min_seconds}, {max_seconds}")
    if min_seconds * fps < MIN_FRAMES:
        raise ValueError(f"temporal_grounding: a clip needs at least {MIN_FRAMES} frames, "
                         f"got min_seconds * fps = {min_seconds * fps}")
    if not 0 <= distractors < len(COLORS):
        raise ValueError(f"temporal_grounding: distractors must be in 0..{len(COLORS) - 1}, got {distractors}")
