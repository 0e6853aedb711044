"""Durable file writes shared by the run folder's writers (checkpoints, rollout shards, metrics): fsync a file or a
folder, write a file whole and synced, replace a file atomically."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable; some platforms cannot open a folder, which is fine to skip there."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's written bytes to disk (nothing when it does not exist)."""
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def replace_text(path: Path, text: str) -> None:
    """Replace `path` by a file holding `text`, atomically: a reader or a crash sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_synced(tmp, text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
