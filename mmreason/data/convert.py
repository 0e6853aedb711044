"""`mmreason data convert`: any data entry (a peer format, a column mapping, a split, a media root) written out as
mmreason's own JSONL, with media as files beside it, so the converted set trains with no mapping at all.

Records go through exactly what training applies (`mmreason.data.entries.read_entry`), then each is checked
against the task; a record that fails is left out and reported, never written half right. Media paths become
relative to the output file's folder; media stored inside the data (bytes, as hub parquet holds them) are written
to `<out stem>_media/`.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmreason.data.entries import read_entry
from mmreason.data.prepare import MEDIA_FIELDS
from mmreason.data.records import Problem, check_records, write_jsonl
from mmreason.data.sample import SampleContext
from mmreason.registry import get_task

URI_PREFIXES = ("data:", "http://", "https://", "file://")


@dataclass
class Converted:
    """What a conversion wrote: the output file, how many records, the media files written, what was left out."""

    out: Path
    written: int = 0
    media_files: int = 0
    problems: list[Problem] = field(default_factory=list)


def convert(entry: dict[str, Any], out: str | Path, ctx: SampleContext | None = None) -> Converted:
    """Read `entry` (a data entry's fields: task, train, split, format, columns, media_dir) and write its valid
    records to `out` as JSONL; returns what was written and the problems of the records left out."""
    out = Path(out)
    task = get_task(entry["task"])
    dataset = read_entry(entry, "train")
    problems = check_records(dataset, task, dataset.context(ctx))
    bad = {(p.line, p.id) for p in problems}
    result = Converted(out=out, problems=problems)
    media_dir = media_folder(out)
    kept = []
    for record in dataset.records:
        if (record["_line"], record["id"]) in bad:
            continue
        portable, written = portable_media(record, dataset.base_dir, out.parent, media_dir)
        result.media_files += written
        kept.append(portable)
    write_jsonl(kept, out)
    result.written = len(kept)
    return result


def media_folder(out: Path) -> Path:
    """Where media stored inside the data go when records are written to `out`: `<out stem>_media/` beside it."""
    return out.parent / f"{out.stem}_media"


def portable_media(record: dict[str, Any], base_dir: Path, out_dir: Path, media_dir: Path) -> tuple[dict, int]:
    """The record with every media value made valid beside `out_dir`: paths relative to it, embedded bytes
    written as files under `media_dir`. Returns (record, number of files written)."""
    out = dict(record)
    written = 0
    for name in MEDIA_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        moved = []
        for k, item in enumerate(items):
            path, new = _portable(item, base_dir, out_dir, media_dir, f"{_safe(record['id'])}-{name}{k}")
            moved.append(path)
            written += new
        out[name] = moved if isinstance(value, (list, tuple)) else moved[0]
    return out, written


def _portable(item: Any, base_dir: Path, out_dir: Path, media_dir: Path, stem: str) -> tuple[Any, int]:
    if isinstance(item, dict) and ("bytes" in item or "path" in item):
        item = item["bytes"] if item.get("bytes") is not None else item.get("path")
    if isinstance(item, (bytes, bytearray)):
        return _write_bytes(bytes(item), out_dir, media_dir, stem), 1
    if isinstance(item, Image.Image):
        buf = io.BytesIO()
        item.save(buf, format="PNG")
        return _write_bytes(buf.getvalue(), out_dir, media_dir, stem), 1
    if isinstance(item, str) and not item.startswith(URI_PREFIXES):
        path = (base_dir / Path(item).expanduser()).resolve()
        return os.path.relpath(path, out_dir.resolve()), 0
    return item, 0


def _write_bytes(data: bytes, out_dir: Path, media_dir: Path, stem: str) -> str:
    """Write embedded media under `media_dir` named by content (the same bytes are written once)."""
    try:
        suffix = "." + (Image.open(io.BytesIO(data)).format or "bin").lower().replace("jpeg", "jpg")
    except Exception:  # not an image (a video, or unreadable: the record check already judged it)
        suffix = ".mp4"
    media_dir.mkdir(parents=True, exist_ok=True)
    path = media_dir / f"{stem}-{hashlib.sha1(data).hexdigest()[:8]}{suffix}"
    if not path.exists():
        path.write_bytes(data)
    return os.path.relpath(path, out_dir)


def _safe(text: str) -> str:
    """A file-name-safe form of a record id."""
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))[:60]
    return kept or "record"
