"""A dataset with 10% bad records, planted in every way the processors and tasks can see, for the reliability tests.

100 lines in two files of one task mixture: `counting.jsonl` (80 lines: 72 good, 8 bad) and `temporal.jsonl` (20
lines: 18 good, 2 bad), plus `val.jsonl` (8 counting records, 1 bad). `BAD` maps each bad training line to the words
its problem report must contain; two of them (not UTF-8, cut JSON) are unreadable lines found at load time, the other
eight are records that fail when a task turns them into a sample.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmreason.data.synthetic import make_synthetic


@dataclass
class BadData:
    root: Path
    counting: Path
    temporal: Path
    val: Path
    # (file name, 1-based line) -> words its problem message contains
    bad: dict[tuple[str, int], str] = field(default_factory=dict)
    bad_ids: set[str] = field(default_factory=set)
    unreadable: int = 0

    @property
    def lines(self) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in (self.counting, self.temporal))


def write_mp4(path: Path, n_frames: int, fps: int = 4, side: int = 56) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = np.full((side, side, 3), 30 * i % 255, np.uint8)
            frame[:, : side * (i + 1) // n_frames] = 250  # a bar that grows: something to localise in time
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: len(data) // 2]


def _line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _bad(obj: dict, words: str) -> tuple[bytes, str, str]:
    """A bad record: its line, the words its problem report contains, its id."""
    return _line(obj), words, obj["id"]


def make_bad_data(root: Path) -> BadData:
    """Write the dataset under `root` (images/, videos/, counting.jsonl, temporal.jsonl, val.jsonl)."""
    make_synthetic("counting", root, n=80, seed=0, val_fraction=0.1)
    good = [json.loads(x) for x in (root / "train.jsonl").read_text().splitlines()]
    good_val = [json.loads(x) for x in (root / "val.jsonl").read_text().splitlines()]
    media = root / "media"
    media.mkdir()
    (media / "truncated.jpg").write_bytes(_truncated_jpeg())
    (media / "empty.png").write_bytes(b"")
    (media / "text.png").write_bytes(b"this is not an image\n")
    base = {"problem": "How many shapes are there?", "solution": 2}
    bad_counting = [
        _bad({**base, "id": "bad-missing", "image": "media/missing.png"}, "file not found"),
        _bad({**base, "id": "bad-truncated", "image": "media/truncated.jpg"}, "truncated"),
        _bad({**base, "id": "bad-empty", "image": "media/empty.png"}, "0 bytes"),
        _bad({**base, "id": "bad-notimage", "image": "media/text.png"}, "not a readable image"),
        _bad({**base, "id": "bad-answer", "image": good[0]["image"], "solution": "three"}, "solution"),
        _bad({**base, "id": "bad-negative", "image": good[0]["image"], "solution": -1}, "solution"),
        # unreadable lines: never records, so they have no id
        (b'{"id": "bad-latin1", "problem": "caf\xe9", "image": "x.png", "solution": 1}\n', "not valid UTF-8", None),
        (b'{"id": "bad-cut", "image": \n', "invalid JSON", None),
    ]
    out = BadData(root, root / "counting.jsonl", root / "temporal.jsonl", root / "val.jsonl", unreadable=2)
    _interleave(out, out.counting, [_line(r) for r in good], bad_counting)

    for n in (8, 12):
        write_mp4(media / f"clip{n}.mp4", n)
    write_mp4(media / "one-frame.mp4", 1)
    (media / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(2048))
    clips = [_line({"id": f"clip-{i:02d}", "video": f"media/clip{8 + 4 * (i % 2)}.mp4",
                    "problem": "the bar covers the frame", "solution": [1.0, 2.0]}) for i in range(18)]
    tbase = {"problem": "the bar covers the frame", "solution": [0.0, 0.2]}
    bad_temporal = [
        _bad({**tbase, "id": "bad-short-video", "video": "media/one-frame.mp4"}, "at least 2"),
        _bad({**tbase, "id": "bad-video", "video": "media/garbage.mp4"}, "not a readable video"),
    ]
    _interleave(out, out.temporal, clips, bad_temporal)
    val = [_line(r) for r in good_val]
    val[3] = _line({**base, "id": "bad-val-missing", "image": "media/gone.png"})
    out.val.write_bytes(b"".join(val))
    out.bad[("val.jsonl", 4)] = "file not found"
    return out


def _interleave(out: BadData, path: Path, good: list[bytes], bad: list[tuple[bytes, str, str | None]]) -> None:
    """Spread the bad lines evenly among the good ones and note where each one landed."""
    lines = list(good)
    step = len(good) // len(bad)
    for k, (line, words, rid) in enumerate(bad):
        at = k * (step + 1) + step // 2
        lines.insert(at, line)
        out.bad[(path.name, at + 1)] = words
        if rid is not None:
            out.bad_ids.add(rid)
    path.write_bytes(b"".join(lines))
