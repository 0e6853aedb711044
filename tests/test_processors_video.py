"""Video sampling: frame counts (fps / nframes, frame bounds), which frames, timestamps, per-frame pixel budget,
frame-list input, qwen-vl-utils parity, and every bad-input message. Videos are written with PyAV into tmp dirs."""

from __future__ import annotations

import numpy as np
import pytest
from mmreason.processors import MediaError, VideoClip, frame_pixel_budget, load_video, sample_indices
from PIL import Image
from qwen_vl_utils import fetch_video as qwen_fetch_video
from qwen_vl_utils.vision_process import smart_resize

av = pytest.importorskip("av")

F = 28 * 28
N_FRAMES, FPS, SIDE = 30, 10, 32  # a 3 s, 10 fps, 32x32 test video


def _level(i: int) -> int:
    """Gray level of source frame i: 8 apart, so a decoded frame identifies its index despite compression."""
    return 8 * i + 4


def _frame_index(frame: Image.Image) -> int:
    return round((float(np.asarray(frame).mean()) - 4) / 8)


def _write_mp4(path, n_frames: int = N_FRAMES, fps: int = FPS, side: int = SIDE) -> None:
    with av.open(str(path), "w") as container:
        # Lossless H.264 where the PyAV build has it; MPEG-4 part 2 (always bundled) is close enough otherwise.
        lossless = "libx264" in av.codecs_available
        stream = container.add_stream(
            "libx264" if lossless else "mpeg4", rate=fps, options={"crf": "0"} if lossless else {}
        )
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), _level(i), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "gray_ramp.mp4"
    _write_mp4(path)
    return path


# sampling arguments -> sampled source-frame indices (the same as qwen-vl-utils' fetch_video, checked below).
SAMPLING_CASES = {
    "fps2": (dict(fps=2.0), [0, 6, 12, 17, 23, 29]),
    "nframes10": (dict(nframes=10), [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]),
    "nframes5-rounds-to-4": (dict(nframes=5), [0, 10, 19, 29]),
    "nframes7-rounds-to-8": (dict(nframes=7), [0, 4, 8, 12, 17, 21, 25, 29]),
    "max-frames-caps-fps": (dict(fps=10.0, max_frames=8), [0, 4, 8, 12, 17, 21, 25, 29]),
    "min-frames-lifts-low-fps": (dict(fps=0.5, min_frames=4), [0, 10, 19, 29]),
    "odd-min-frames-rounds-up": (dict(fps=0.5, min_frames=5), [0, 6, 12, 17, 23, 29]),
    "fps-above-source-takes-all": (dict(fps=20.0, max_frames=64), list(range(30))),
    "nframes-equals-total": (dict(nframes=30), list(range(30))),
}


@pytest.mark.parametrize(("kwargs", "expected"), list(SAMPLING_CASES.values()), ids=list(SAMPLING_CASES))
def test_file_sampling(video_path, kwargs, expected):
    clip = load_video(video_path, **kwargs)
    assert isinstance(clip, VideoClip)
    assert clip.frame_indices == expected
    assert [_frame_index(f) for f in clip.frames] == expected, "the decoded frames are the sampled ones"
    assert clip.timestamps == pytest.approx([i / FPS for i in expected])
    assert clip.fps == pytest.approx(len(expected) / N_FRAMES * FPS)
    assert (clip.source_fps, clip.duration, clip.total_frames) == (pytest.approx(FPS), pytest.approx(3.0), N_FRAMES)
    assert clip.original_size == (SIDE, SIDE)
    assert all(f.size == clip.model_size and f.mode == "RGB" for f in clip.frames)
    assert len(clip.frames) % 2 == 0


@pytest.mark.parametrize("name", ["fps2", "nframes10", "max-frames-caps-fps", "min-frames-lifts-low-fps"])
def test_file_sampling_matches_qwen_vl_utils(video_path, name):
    kwargs, _ = SAMPLING_CASES[name]
    budget = dict(min_pixels=4 * F, total_pixels=64 * F)
    clip = load_video(video_path, **kwargs, **budget)
    ele = {"video": str(video_path), **budget, **kwargs}
    (video, metadata), sample_fps = qwen_fetch_video(ele, return_video_sample_fps=True, return_video_metadata=True)
    assert list(metadata["frames_indices"]) == clip.frame_indices
    assert sample_fps == pytest.approx(clip.fps)
    assert tuple(video.shape) == (len(clip.frames), 3, clip.model_size[1], clip.model_size[0])


def test_metadata_carries_the_true_sampling_rate(video_path):
    clip = load_video(video_path, fps=2.0)
    meta = clip.metadata()
    assert meta == {"total_num_frames": 30, "fps": 10.0, "frames_indices": clip.frame_indices, "duration": 3.0}
    # transformers derives the sampled fps from these exactly this way.
    assert len(meta["frames_indices"]) / meta["total_num_frames"] * meta["fps"] == pytest.approx(clip.fps)


def test_source_fps_overrides_the_container_rate(video_path):
    clip = load_video(video_path, fps=2.0, source_fps=5.0)
    assert clip.duration == pytest.approx(6.0)
    assert clip.frame_indices == [0, 3, 5, 8, 11, 13, 16, 18, 21, 24, 26, 29]  # 6 s at 2 fps = 12 frames
    assert clip.timestamps[-1] == pytest.approx(29 / 5)


# (frame w, h, n frames), total_pixels, min_pixels, max_pixels -> per-frame model (w, h).
BUDGET_CASES = {
    "budget-binds": ((224, 224, 8), 64 * F, 4 * F, None, (112, 112)),  # 64 tokens / 4 frame pairs = 16 each
    "roomy-budget": ((224, 224, 8), 1024 * F, 4 * F, None, (224, 224)),
    "floor-1.05-min": ((224, 224, 8), F, 4 * F, None, (56, 56)),  # share < min: floored at 1.05 x min_pixels
    "max-pixels-cap": ((224, 224, 4), 1024 * F, F, 4 * F, (56, 56)),
    "wide-frames": ((300, 100, 6), 96 * F, 4 * F, None, (252, 84)),
    "small-upscaled": ((32, 32, 4), 1024 * F, 4 * F, None, (56, 56)),
}


@pytest.mark.parametrize(
    ("shape", "total", "min_pixels", "max_pixels", "expected"), list(BUDGET_CASES.values()), ids=list(BUDGET_CASES)
)
def test_total_pixel_budget(shape, total, min_pixels, max_pixels, expected):
    width, height, n = shape
    frames = [Image.new("RGB", (width, height), (i, i, i)) for i in range(n)]
    clip = load_video(frames, nframes=n, total_pixels=total, min_pixels=min_pixels, max_pixels=max_pixels)
    budget = frame_pixel_budget(n, total, min_pixels, max_pixels)
    qwen_h, qwen_w = smart_resize(height, width, 28, min_pixels, budget)
    assert clip.model_size == expected == (qwen_w, qwen_h)
    assert all(f.size == expected for f in clip.frames)


@pytest.mark.parametrize(
    ("nframes", "total", "min_pixels", "max_pixels", "expected"),
    [
        (8, 64 * F, 4 * F, None, 16 * F),  # total / n * 2
        (2, 10_000 * F, 4 * F, None, 768 * F),  # capped at 768 tokens per frame
        (8, F, 4 * F, None, int(4 * F * 1.05)),  # floored at 1.05 x min_pixels
        (8, 64 * F, 4 * F, 8 * F, 8 * F),  # explicit max_pixels wins when smaller
    ],
)
def test_frame_pixel_budget(nframes, total, min_pixels, max_pixels, expected):
    assert frame_pixel_budget(nframes, total, min_pixels, max_pixels) == pytest.approx(expected)


def _colored(n: int, size=(28, 28)) -> list[Image.Image]:
    return [Image.new("RGB", size, (10 * i, 255 - 10 * i, 0)) for i in range(n)]


def test_frame_list_sampling_and_timestamps():
    frames = _colored(12)
    clip = load_video(frames, fps=2.0, source_fps=4.0, min_pixels=F)
    assert clip.frame_indices == [0, 2, 4, 7, 9, 11]
    assert [np.asarray(f)[0, 0, 0] for f in clip.frames] == [10 * i for i in clip.frame_indices]
    assert clip.timestamps == pytest.approx([i / 4 for i in clip.frame_indices])
    assert (clip.fps, clip.source_fps, clip.duration) == (pytest.approx(2.0), 4.0, 3.0)
    assert clip.model_size == (28, 28) and clip.original_size == (28, 28)


def test_frame_list_defaults_to_already_sampled_frames():
    clip = load_video(_colored(5), fps=2.0)  # 5 frames at 2 fps: 4 kept (an even count), 2 fps spacing
    assert clip.frame_indices == [0, 1, 3, 4]
    assert clip.source_fps == 2.0 and clip.timestamps == [0.0, 0.5, 1.5, 2.0]


def test_frame_list_accepts_other_modes():
    frames = [Image.new("L", (28, 28), 100), Image.new("RGBA", (28, 28), (0, 0, 0, 0))]
    clip = load_video(frames, nframes=2)
    assert [np.asarray(f)[0, 0].tolist() for f in clip.frames] == [[100, 100, 100], [255, 255, 255]]


def test_sample_indices_direct():
    assert sample_indices(30, 10.0, fps=2.0) == [0, 6, 12, 17, 23, 29]
    assert sample_indices(3, 10.0, fps=2.0) == [0, 2]  # fewer frames than min_frames: all it can, even
    assert sample_indices(2, 30.0, nframes=2) == [0, 1]


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# (source factory given tmp_path and the test video, extra kwargs, expected message pattern)
BAD_VIDEOS = {
    "missing-file": (lambda d, v: d / "missing.mp4", {}, r"missing\.mp4: file not found"),
    "directory": (lambda d, v: d, {}, r": not a file"),
    "zero-byte-file": (lambda d, v: _write(d, "empty.mp4", b""), {}, r"empty\.mp4: empty file \(0 bytes\)"),
    "garbage-file": (lambda d, v: _write(d, "junk.mp4", b"not a video at all"), {}, r"junk\.mp4: not a readable"),
    "truncated-file": (lambda d, v: _write(d, "cut.mp4", v.read_bytes()[:300]), {}, r"cut\.mp4: not a readable video"),
    "more-frames-than-the-video": (lambda d, v: v, {"nframes": 40}, r"asked for 40 frames but the video has only 30"),
    "rounded-up-past-the-list": (
        lambda d, v: _colored(7),
        {"nframes": 7},
        r"^<frames>: asked for 7 frames \(8 once rounded to even\) but the video has only 7",
    ),
    "empty-list": (lambda d, v: [], {}, r"^<frames>: empty frame list"),
    "one-frame": (lambda d, v: _colored(1), {}, r"^<frames>: the video has 1 frame\(s\); at least 2"),
    "non-pil-frame": (lambda d, v: [_colored(1)[0], 3], {}, r"^<frames>: frame 1 is a int, expected a PIL image"),
    "mixed-sizes": (lambda d, v: _colored(1) + _colored(1, (56, 28)), {}, r"frame 1 is 56x28 but frame 0 is 28x28"),
    "zero-size-frame": (lambda d, v: [Image.new("RGB", (0, 4))] * 2, {}, r"frame 0 has zero size"),
    "int": (lambda d, v: 7, {}, r"^<int>: unsupported video source of type int"),
    "extreme-aspect": (lambda d, v: [Image.new("RGB", (402, 2))] * 2, {}, r"^<frames>: aspect ratio 402x2"),
}


@pytest.mark.parametrize(("make", "kwargs", "pattern"), list(BAD_VIDEOS.values()), ids=list(BAD_VIDEOS))
def test_bad_videos_raise_media_error(tmp_path, video_path, make, kwargs, pattern):
    with pytest.raises(MediaError, match=pattern):
        load_video(make(tmp_path, video_path), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"fps": 0.0}, r"fps must be a positive number"),
        ({"fps": float("nan")}, r"fps must be a positive number"),
        ({"nframes": 1}, r"nframes must be >= 2"),
        ({"min_frames": 8, "max_frames": 4}, r"min_frames <= max_frames"),
        ({"min_frames": 1, "max_frames": 1}, r"max_frames >= 2"),
        ({"total_pixels": 0}, r"total_pixels must be positive"),
        ({"source_fps": -1.0}, r"source_fps must be a positive number"),
    ],
)
def test_bad_sampling_arguments_raise_value_error(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_video(_colored(8), **kwargs)
