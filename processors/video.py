"""Video loading: frame sampling (decoded by `.decode`: PyAV, decord as fallback), per-frame resizing under a
total-pixel budget, and timestamps.

The rules are qwen-vl-utils' own, reused rather than re-derived: `smart_nframes` picks the frame count (from a
target fps within [min_frames, max_frames], or a fixed `nframes`, always a multiple of 2 because the vision encoder
folds 2 frames into one temporal patch), frames are taken at `linspace(0, total - 1, n).round()`, and each frame's
pixel cap is an even share of `total_pixels` (floored at 1.05 x min_pixels) before `smart_resize`. A `VideoClip`
keeps the sampled frame indices and rates so the HF processor can be told the true sampling rate (`metadata()`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from qwen_vl_utils.vision_process import (
    FPS,
    FRAME_FACTOR,
    VIDEO_MAX_TOKEN_NUM,
    round_by_factor,
    smart_nframes,
)
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from .decode import read_frames
from .errors import MediaError, check_media_file
from .images import FACTOR, _to_rgb, model_size_for

if TYPE_CHECKING:
    from mmreason.models.family import ModelFamily

FRAMES_SOURCE = "<frames>"
DEFAULT_TOTAL_PIXELS = FACTOR * FACTOR * 1024
# qwen-vl-utils' per-frame floor is 128 tokens; the tiny default keeps small videos small (4 tokens per frame pair).
DEFAULT_MIN_PIXELS = FACTOR * FACTOR * 4


@dataclass
class VideoClip:
    """Sampled, resized frames of one video and where they sit in time.

    fps: sampled frames per second (qwen-vl-utils' `sample_fps` = n / total_frames * source_fps).
    source_fps / duration / total_frames: of the source video. Sizes are (width, height).
    frame_indices: index of each sampled frame in the source; timestamps[i] = frame_indices[i] / source_fps.
    """

    frames: list[Image.Image]
    timestamps: list[float]
    fps: float
    source_fps: float
    duration: float
    original_size: tuple[int, int]
    model_size: tuple[int, int]
    frame_indices: list[int] = field(default_factory=list)
    total_frames: int = 0

    def metadata(self) -> dict:
        """The HF `video_metadata` for this clip: without it the Qwen2.5-VL processor assumes 24 fps and the
        model's temporal positions (second_per_grid_ts) are wrong."""
        return {
            "total_num_frames": self.total_frames,
            "fps": self.source_fps,
            "frames_indices": list(self.frame_indices),
            "duration": self.duration,
        }


def _check_sampling(fps: float | None, nframes: int | None, min_frames: int, max_frames: int) -> None:
    if nframes is not None and nframes < FRAME_FACTOR:
        raise ValueError(f"nframes must be >= {FRAME_FACTOR}, got {nframes}")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if min_frames < 1 or max_frames < max(min_frames, FRAME_FACTOR):
        raise ValueError(
            f"need 1 <= min_frames <= max_frames and max_frames >= {FRAME_FACTOR}, "
            f"got min_frames={min_frames}, max_frames={max_frames}"
        )


def sample_indices(
    total_frames: int,
    source_fps: float,
    *,
    fps: float | None = FPS,
    nframes: int | None = None,
    min_frames: int = 4,
    max_frames: int = 32,
    source: str = FRAMES_SOURCE,
) -> list[int]:
    """Indices of the frames to sample from a video of `total_frames` at `source_fps` (qwen-vl-utils' rules).

    `nframes`, when given, wins over `fps`; it is rounded to a multiple of 2 and must not exceed the video.
    """
    _check_sampling(fps, nframes, min_frames, max_frames)
    if total_frames < FRAME_FACTOR:
        raise MediaError(source, f"the video has {total_frames} frame(s); at least {FRAME_FACTOR} are needed")
    if nframes is not None:
        rounded = round_by_factor(nframes, FRAME_FACTOR)
        if rounded > total_frames:
            asked = f"{nframes} frames" + (f" ({rounded} once rounded to even)" if rounded != nframes else "")
            raise MediaError(source, f"asked for {asked} but the video has only {total_frames}")
        ele = {"nframes": nframes}
    else:
        ele = {"fps": FPS if fps is None else fps, "min_frames": min_frames, "max_frames": max_frames}
    n = smart_nframes(ele, total_frames=total_frames, video_fps=source_fps)
    # torch's float32 linspace + round-half-even, exactly as qwen-vl-utils picks them.
    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


def frame_pixel_budget(
    nframes: int,
    total_pixels: int,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int | None = None,
    factor: int = FACTOR,
) -> float:
    """Per-frame max pixels as qwen-vl-utils' fetch_video computes it: an even share of `total_pixels` per frame
    pair, capped at 768 tokens of `factor` x `factor` pixels, floored at 1.05 x min_pixels, and at most
    `max_pixels` when given."""
    if total_pixels <= 0:
        raise ValueError(f"total_pixels must be positive, got {total_pixels}")
    share = total_pixels / nframes * FRAME_FACTOR
    budget = max(min(VIDEO_MAX_TOKEN_NUM * factor * factor, share), int(min_pixels * 1.05))
    return budget if max_pixels is None else min(max_pixels, budget)


def _read_file(path: Path, source_fps: float | None, sampling: dict) -> tuple[np.ndarray, list[int], int, float]:
    """Decode the sampled frames of a video file: (frames NHWC uint8, indices, total frames, source fps)."""
    source = check_media_file(path, "video")
    return read_frames(path, source_fps, lambda total, rate: sample_indices(total, rate, source=source, **sampling))


def _frames_array(frames: list) -> np.ndarray:
    """Stack a list of PIL frames (all the same size) into NHWC uint8, or raise MediaError naming the frame."""
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise MediaError(FRAMES_SOURCE, "empty frame list")
    arrays = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, Image.Image):
            raise MediaError(FRAMES_SOURCE, f"frame {i} is a {type(frame).__name__}, expected a PIL image")
        if frame.width == 0 or frame.height == 0:
            raise MediaError(FRAMES_SOURCE, f"frame {i} has zero size ({frame.width}x{frame.height})")
        if frame.size != frames[0].size:
            raise MediaError(
                FRAMES_SOURCE,
                f"frame {i} is {frame.width}x{frame.height} but frame 0 is "
                f"{frames[0].width}x{frames[0].height}; all frames must have the same size",
            )
        arrays.append(np.asarray(_to_rgb(frame)))
    return np.stack(arrays)


def _resize_frames(frames: np.ndarray, size: tuple[int, int]) -> list[Image.Image]:
    """Resize NHWC uint8 frames to size = (width, height) with qwen-vl-utils' bicubic antialiased resize."""
    width, height = size
    if frames.shape[1:3] != (height, width):
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        video = tvf.resize(video, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        frames = video.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(frame) for frame in frames]


def load_video(
    src: str | Path | list[Image.Image],
    *,
    fps: float | None = FPS,
    nframes: int | None = None,
    min_frames: int = 4,
    max_frames: int = 32,
    total_pixels: int = DEFAULT_TOTAL_PIXELS,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int | None = None,
    source_fps: float | None = None,
    factor: int = FACTOR,
    family: ModelFamily | None = None,
) -> VideoClip:
    """Sample and resize the frames of a video file (decoded by `.decode.read_frames`) or of a list of PIL frames.

    A frame list is treated as a video at `source_fps` (default: `fps`, i.e. frames already sampled at the target
    rate), and sampled by the same rules as a file. For a file, `source_fps` overrides the container's rate.
    Frame sides are multiples of `factor` (the model family's patch size x merge size); with `family`, frames have
    the size its processor takes (`images.model_size_for`: its fixed square, or multiples of its image factor).
    Raises MediaError for a missing/empty/unreadable file, an empty or inconsistent frame list, a video with fewer
    than 2 frames, or `nframes` larger than the video.
    """
    sampling = {"fps": fps, "nframes": nframes, "min_frames": min_frames, "max_frames": max_frames}
    if isinstance(src, (list, tuple)):
        source = FRAMES_SOURCE
        every = _frames_array(src)
        rate = source_fps if source_fps is not None else (FPS if fps is None else fps)
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"source_fps must be a positive number, got {rate}")
        total = len(every)
        indices = sample_indices(total, rate, source=source, **sampling)
        frames = every[indices]
    elif isinstance(src, (str, Path)):
        source = str(src)
        frames, indices, total, rate = _read_file(Path(src), source_fps, sampling)
    else:
        raise MediaError(
            f"<{type(src).__name__}>",
            f"unsupported video source of type {type(src).__name__}; "
            "expected a path (str or Path) or a list of PIL frames",
        )
    original_size = (int(frames.shape[2]), int(frames.shape[1]))
    if family is not None:
        factor = family.image_factor
    budget = frame_pixel_budget(len(indices), total_pixels, min_pixels, max_pixels, factor)
    model_size = model_size_for(original_size, min_pixels, budget, factor, source, family=family)
    return VideoClip(
        frames=_resize_frames(frames, model_size),
        timestamps=[i / rate for i in indices],
        fps=len(indices) / total * rate,
        source_fps=rate,
        duration=total / rate,
        original_size=original_size,
        model_size=model_size,
        frame_indices=list(indices),
        total_frames=total,
    )
