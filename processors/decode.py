"""Decoding the sampled frames of a video file: PyAV with keyframe-aware seeking, decord as the fallback.

Sampling takes a few dozen frames spread over the whole video, so what costs is decoding the frames in between.
The PyAV reader first demuxes the stream without decoding (cheap: packet headers only) to learn every frame's
presentation timestamp and where the keyframes are, then for each wanted frame decodes forward from the keyframe at
or before it, seeking only when that keyframe lies beyond what was already decoded. Only the groups of pictures
holding a sampled frame are decoded, which on long videos is several times less work than decord's `get_batch`
(see benchmarks/video_decode.py); on short clips, where consecutive samples share a group of pictures, it decodes the
same frames decord does.

Frame i is the i-th frame in presentation order, as in decord. Streams whose packets carry no timestamps (or a
PyAV that cannot be imported) go to decord. decord is optional (it has wheels for x86-64 Linux and Windows only):
where it is not installed, such streams are decoded by PyAV from the start in presentation order, without seeking.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MediaError

Frames = tuple[np.ndarray, list[int], int, float]  # (NHWC uint8 frames, indices, total frames, source fps)
Picker = Callable[[int, float], list[int]]  # (total frames, source fps) -> sorted frame indices to decode
# A seek is worth it when it skips more frames than this (measured in benchmarks/video_decode.py).
SEEK_SKIP_FRAMES = 8
# FFmpeg decoder threading ("AUTO": frame + slice threads, "SLICE", "FRAME"; None: PyAV's default).
THREAD_TYPE: str | None = "AUTO"


class _Unindexed(Exception):
    """The PyAV reader cannot serve this file exactly; decord reads it instead."""


def _first_line(e: Exception) -> str:
    text = str(e).splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def read_frames(path: Path, source_fps: float | None, pick: Picker) -> Frames:
    """The frames `pick` chooses from a video file (already checked to be a non-empty file)."""
    try:
        return _read_pyav(path, source_fps, pick)
    except _Unindexed:
        if not _has_decord():
            return _read_pyav_in_order(path, source_fps, pick)
        return _read_decord(path, source_fps, pick)


def _has_decord() -> bool:
    try:
        import decord  # noqa: F401  (imported here: its import is slow and it is only the fallback)
    except ImportError:  # not installed (aarch64, macOS: no wheel) or unloadable
        return False
    return True


def _rate(value: float | None, source: str) -> float:
    if value is None or not (value > 0 and math.isfinite(value)):
        raise MediaError(source, f"cannot determine the frame rate (got {value}); pass source_fps")
    return float(value)


def _index(container: Any, stream: Any) -> tuple[list[int], list[int]]:
    """Presentation timestamps of every frame (sorted) and of the keyframes, from the packets alone."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream flush packet
            continue
        if packet.pts is None:
            raise _Unindexed
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    pts.sort()
    keys.sort()
    if pts and (not keys or keys[0] > pts[0]):
        raise _Unindexed  # frames before the first keyframe: no exact seek target for them
    return pts, keys


def _decode_at(container: Any, stream: Any, targets: list[int], pts: list[int], keys: list[int]) -> Iterator[Any]:
    """Decoded frames at presentation timestamps `targets` (sorted), each decoded forward from its keyframe.

    Decoding goes on from the last decoded frame unless a seek skips more than SEEK_SKIP_FRAMES frames: a seek
    flushes the decoder's (frame-threaded) pipeline, which costs about as much as decoding a few frames.
    """
    frames: Iterator[Any] | None = None
    last = None  # pts of the last decoded frame
    for target in targets:
        key = keys[bisect.bisect_right(keys, target) - 1]
        skip = bisect.bisect_left(pts, key) - bisect.bisect_right(pts, last) if last is not None else 0
        if frames is None or last is None or last > target or skip > SEEK_SKIP_FRAMES:
            container.seek(key, stream=stream, backward=True, any_frame=False)
            frames, last = container.decode(stream), None
        for frame in frames:
            if frame.pts is None or (last is None and frame.pts > target):
                raise _Unindexed  # no timestamp, or the seek landed past the target: not exact
            last = frame.pts
            if last >= target:
                yield frame
                break
        else:
            raise _Unindexed  # the stream ended before the target


def _read_pyav(path: Path, source_fps: float | None, pick: Picker) -> Frames:
    try:
        import av
    except ImportError as e:
        raise _Unindexed from e
    source = str(path)
    try:
        container = av.open(source)
    except Exception as e:  # PyAV raises an FFmpeg error subclass per cause; all mean "cannot read this"
        raise MediaError(source, f"not a readable video ({_first_line(e)})") from e
    with container:
        if not container.streams.video:
            raise MediaError(source, "not a readable video (no video stream)")
        stream = container.streams.video[0]
        try:
            pts, keys = _index(container, stream)
        except av.FFmpegError as e:
            raise MediaError(source, f"not a readable video ({_first_line(e)})") from e
        if not pts:
            raise MediaError(source, "not a readable video (no video frames)")
        rate = _rate(source_fps if source_fps is not None else _stream_rate(stream), source)
        indices = pick(len(pts), rate)
        pass  # stream.thread_type
        wanted = sorted(set(indices))
        decoded = {}
        try:
            frames = _decode_at(container, stream, [pts[i] for i in wanted], pts, keys)
            for i, frame in zip(wanted, frames, strict=False):
                decoded[i] = frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise MediaError(source, f"failed to decode frames {indices} ({_first_line(e)})") from e
    return np.stack([decoded[i] for i in indices]), indices, len(pts), rate


def _stream_rate(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _open_pyav(source: str) -> tuple[Any, Any, Any]:
    """(the av module, the open container, its first video stream); MediaError when either cannot be had."""
    try:
        import av
    except ImportError as e:
        raise MediaError(source, "cannot read videos: neither PyAV (pip install av) nor decord is installed") from e
    try:
        container = av.open(source)
    except Exception as e:  # PyAV raises an FFmpeg error subclass per cause; all mean "cannot read this"
        raise MediaError(source, f"not a readable video ({_first_line(e)})") from e
    if not container.streams.video:
        container.close()
        raise MediaError(source, "not a readable video (no video stream)")
    return av, container, container.streams.video[0]


def _read_pyav_in_order(path: Path, source_fps: float | None, pick: Picker) -> Frames:
    """Frames decoded from the start in presentation order (a decoder's output order), counted where the container
    does not say how many there are: exact for streams without timestamps, where decord is not installed."""
    source = str(path)
    av, container, stream = _open_pyav(source)
    try:
        total = stream.frames
        if not total:  # raw streams carry no frame count: one pass to count them, then a fresh one to pick
            total = sum(1 for _ in container.decode(stream))
            container.close()
            av, container, stream = _open_pyav(source)
        rate = _rate(source_fps if source_fps is not None else _stream_rate(stream), source)
        indices = pick(total, rate) if total else []
        wanted, decoded = set(indices), {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                decoded[i] = frame.to_ndarray(format="rgb24")
            if len(decoded) == len(wanted):
                break
    except av.FFmpegError as e:
        raise MediaError(source, f"failed to decode frames ({_first_line(e)})") from e
    finally:
        container.close()
    if not total:
        raise MediaError(source, "not a readable video (no video frames)")
    if len(decoded) < len(wanted):
        raise MediaError(source, f"the stream ended before frames {sorted(wanted - set(decoded))}")
    return np.stack([decoded[i] for i in indices]), indices, total, rate


def _read_decord(path: Path, source_fps: float | None, pick: Picker) -> Frames:
    import decord  # imported here: its import is slow and it is only the fallback

    source = str(path)
    try:
        reader = decord.VideoReader(source)
        total, avg_fps = len(reader), float(reader.get_avg_fps())
    except Exception as e:  # decord raises a bare RuntimeError subclass for any bad input
        raise MediaError(source, f"not a readable video ({_first_line(e)})") from e
    rate = _rate(avg_fps if source_fps is None else source_fps, source)
    indices = pick(total, rate)
    try:
        frames = reader.get_batch(indices).asnumpy()
    except Exception as e:  # same: decord's errors carry no finer type
        raise MediaError(source, f"failed to decode frames {indices} ({_first_line(e)})") from e
    return frames, indices, total, rate
