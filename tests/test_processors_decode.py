"""Frame decoding (mmreason.processors.decode): the PyAV reader seeks by keyframe and must return exactly the frames
decord returns, with B-frames (decode order != display order) and across many groups of pictures; files it cannot
index go to decord."""

from __future__ import annotations

import numpy as np
import pytest
from mmreason.processors import decode, load_video, sample_indices

av = pytest.importorskip("av")
pytestmark = pytest.mark.skipif("libx264" not in av.codecs_available, reason="needs PyAV's libx264 encoder")

N_FRAMES, FPS, SIDE = 60, 10, 32


def _write(path, preset: str, gop: int) -> None:
    """A gray ramp: frame i has level 4 i + 4 (yuv420p shifts it by 1 or 2), so a decoded frame tells its index."""
    with av.open(str(path), "w") as container:
        options = {"crf": "0", "preset": preset, "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(N_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.full((SIDE, SIDE, 3), 4 * i + 4, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module", params=[("ultrafast", 10), ("medium", 25)], ids=["no-bframes-gop10", "bframes-gop25"])
def video(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("decode") / f"{request.param[0]}.mp4"
    _write(path, *request.param)
    return path


def _pick(n: int):
    return lambda total, rate: sample_indices(total, rate, nframes=n)


@pytest.mark.parametrize("n", [4, 8, 30, 60])
def test_pyav_reader_returns_decords_frames(video, n, monkeypatch):
    pytest.importorskip("decord")  # installed on x86-64 Linux and Windows only
    monkeypatch.setattr(decode, "_read_decord", lambda *a: pytest.fail("the PyAV reader fell back to decord"))
    frames, indices, total, rate = decode.read_frames(video, None, _pick(n))
    assert (total, rate) == (N_FRAMES, FPS)
    levels = [round((float(f.mean()) - 4) / 4) for f in frames]
    assert levels == indices == sample_indices(N_FRAMES, FPS, nframes=n)
    monkeypatch.undo()
    ref, ref_indices, ref_total, ref_rate = decode._read_decord(video, None, _pick(n))
    assert (ref_indices, ref_total, ref_rate) == (indices, total, rate)
    assert np.array_equal(frames, ref)


def test_unindexable_files_go_to_decord(video, monkeypatch):
    pytest.importorskip("decord")
    def unindexed(*args):
        raise decode._Unindexed

    monkeypatch.setattr(decode, "_read_pyav", unindexed)
    clip = load_video(video, nframes=6, min_pixels=28 * 28)
    assert clip.frame_indices == sample_indices(N_FRAMES, FPS, nframes=6)
    assert clip.total_frames == N_FRAMES
