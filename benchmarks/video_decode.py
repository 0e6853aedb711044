"""Sampled-frame video decoding: decord vs PyAV vs torchvision vs mmreason's `load_video`, on generated clips.

Every reader returns the same frames: qwen-vl-utils' sampling (2 fps, at most 32 frames, `sample_indices`) of an
H.264 clip written here with PyAV (672x364, 30 fps, a keyframe every 2 s, B-frames, a moving pattern), as RGB uint8
arrays. The readers run interleaved (one call of each per round, in a rotating order) and the table gives medians.

- decord: `VideoReader(path).get_batch(indices)` (mmreason's reader before; default threads), and with 1 thread;
- pyav-sequential: decode every frame in order, keep the sampled ones;
- pyav-seek-each: seek to each sampled frame's keyframe and decode forward to it;
- torchvision: `torchvision.io.read_video`, when the installed torchvision still has a video reader;
- mmreason: `mmreason.processors.load_video` (PyAV, keyframe-aware seeking, see processors/decode.py), with a pixel
  budget that keeps the frames at their size (no resize, like the others) and, as `mmreason+resize`, with the
  default budget (resized frames, the path training takes).

    .venv/bin/python benchmarks/video_decode.py [--seconds 10 60 300] [--reps 5] [--workdir runs/bench/video]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mmreason.processors import load_video, sample_indices

WIDTH, HEIGHT, FPS, GOP = 672, 364, 30, 60  # both sides multiples of 28: the no-resize budget keeps them
SAMPLING = dict(fps=2.0, min_frames=4, max_frames=32)
SETTLE_S = 0.2


def write_clip(path: Path, seconds: int) -> None:
    """A moving gradient, H.264 (x264 `veryfast`: B-frames), a keyframe every GOP frames."""
    import av

    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([x % 256, y % 256, ((x + y) // 2) % 256], -1).astype(np.uint8)
    options = {"preset": "veryfast", "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"}
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(seconds * FPS):
            frame = av.VideoFrame.from_ndarray(np.roll(base, (2 * i, 3 * i), axis=(0, 1)), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _indices(total: int, rate: float) -> list[int]:
    return sample_indices(total, rate, **SAMPLING)


def read_decord(path: Path, threads: int = 0) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), num_threads=threads)
    return reader.get_batch(_indices(len(reader), reader.get_avg_fps())).asnumpy()


def read_pyav_sequential(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        wanted = _indices(stream.frames, float(stream.average_rate))
        keep, out = set(wanted), []
        for i, frame in enumerate(container.decode(stream)):
            if i in keep:
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == len(wanted):
                    break
        return np.stack(out)


def read_pyav_seek_each(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, tb = stream.average_rate, stream.time_base
        out = []
        for i in _indices(stream.frames, float(rate)):
            target = (stream.start_time or 0) + round(i / rate / tb)
            container.seek(target, stream=stream, backward=True)
            out.append(next(f for f in container.decode(stream) if f.pts >= target).to_ndarray(format="rgb24"))
        return np.stack(out)


def torchvision_reader() -> Callable[[Path], np.ndarray] | str:
    """torchvision's reader, or why there is none."""
    import torchvision
    import torchvision.io as tio

    if not hasattr(tio, "read_video"):
        return f"torchvision {torchvision.__version__} has no video reader (removed in favour of TorchCodec)"

    def read(path: Path) -> np.ndarray:
        video, _, info = tio.read_video(str(path), pts_unit="sec", output_format="THWC")
        return video[_indices(video.shape[0], info["video_fps"])].numpy()

    return read


def read_mmreason(path: Path) -> list:
    """The clip's frames: PIL images at the video's size (a budget with room enough: no resize)."""
    return load_video(path, **SAMPLING, total_pixels=10**9, min_pixels=28 * 28).frames


def read_mmreason_resized(path: Path) -> list:
    return load_video(path, **SAMPLING).frames


def readers() -> tuple[dict[str, Callable[[Path], Any]], dict[str, str]]:
    found = {
        "decord": read_decord,
        "decord-1-thread": lambda p: read_decord(p, threads=1),
        "pyav-sequential": read_pyav_sequential,
        "pyav-seek-each": read_pyav_seek_each,
        "mmreason": read_mmreason,
        "mmreason+resize": read_mmreason_resized,
    }
    missing = {}
    tv = torchvision_reader()
    if isinstance(tv, str):
        missing["torchvision"] = tv
    else:
        found["torchvision"] = tv
    return found, missing


def settle() -> None:
    """Let a reader's decoder threads wind down (decord's keep spinning a while after a call and would slow the
    next reader down), so that each call is timed alone."""
    gc.collect()
    time.sleep(SETTLE_S)


def bench(clips: dict[int, Path], fns: dict[str, Callable[[Path], Any]], reps: int) -> dict:
    """Medians (s) per clip and reader, after one untimed call of each (file cache, imports); frames checked
    against decord's."""
    times: dict[int, dict[str, list[float]]] = {s: {n: [] for n in fns} for s in clips}
    for path in clips.values():
        ref = fns["decord"](path)
        for name, fn in fns.items():
            frames = np.stack([np.asarray(f) for f in fn(path)])
            if name != "mmreason+resize" and (frames.shape != ref.shape or np.abs(frames - ref.astype(int)).max()):
                raise AssertionError(f"{name} decoded other frames than decord from {path}")
    names = list(fns)
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no reader always runs first
        for seconds, path in clips.items():
            for name in order:
                t0 = time.perf_counter()
                fns[name](path)
                times[seconds][name].append(time.perf_counter() - t0)
                settle()
    return {s: {n: statistics.median(v) for n, v in by.items()} for s, by in times.items()}


def table(medians: dict, clips: dict[int, Path], frames: dict[int, int]) -> str:
    names = list(next(iter(medians.values())))
    lines = ["| clip | sampled frames | " + " | ".join(f"{n} ms" for n in names) + " |"]
    lines.append("|" + " --- |" * (len(names) + 2))
    for seconds in clips:
        best = min(v for n, v in medians[seconds].items() if n != "mmreason+resize")
        cells = [f"**{v * 1e3:.0f}**" if v == best else f"{v * 1e3:.0f}" for v in medians[seconds].values()]
        lines.append(f"| {seconds} s | {frames[seconds]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, nargs="+", default=[10, 60, 300])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--workdir", default="runs/bench/video")
    p.add_argument("--out", default=None, help="write the medians as JSON here")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    clips = {}
    for seconds in args.seconds:
        clips[seconds] = work / f"clip-{seconds}s-{WIDTH}x{HEIGHT}-gop{GOP}.mp4"
        if not clips[seconds].is_file():
            write_clip(clips[seconds], seconds)
    fns, missing = readers()
    medians = bench(clips, fns, args.reps)
    frames = {s: len(_indices(s * FPS, FPS)) for s in clips}
    print(table(medians, clips, frames))
    for name, why in missing.items():
        print(f"{name}: not measured: {why}")
    if args.out:
        Path(args.out).write_text(json.dumps({"medians_s": medians, "missing": missing}, indent=2))


if __name__ == "__main__":
    main()
