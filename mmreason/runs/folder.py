"""Which run a run folder's files belong to, and what an earlier run left there.

Every fresh start writes a new generation id into `<run_dir>/generation.json` *before* it deletes anything of an
earlier run, and every checkpoint records the generation it was written under (in its `complete.json`). `--resume`
only considers checkpoints of the folder's current generation, so a fresh start cut short while it deletes the old
run's files can never hand the old run's state to a later `--resume`. A folder without the file (written before
generations existed) has the empty generation, which its checkpoints, recording none, share.

`left_behind` counts what an earlier run left (checkpoints, rollout shards, metrics lines): `mmreason train` into a
folder holding any of it needs `--resume` or `--overwrite`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mmreason.runs.files import replace_text

GENERATION_FILE = "generation.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
ROLLOUT_DIR = "rollouts"
COMPLETE_MARKER = "complete.json"


def generation(run_dir: str | Path) -> str:
    """The folder's current generation id ('' when it has none, or the file cannot be read)."""
    try:
        return str(json.loads((Path(run_dir) / GENERATION_FILE).read_text(encoding="utf-8"))["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def new_generation(run_dir: str | Path) -> str:
    """Record a fresh start (durably, by atomic replace) and return its id; call before deleting an old run."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    gen = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    replace_text(run_dir / GENERATION_FILE, json.dumps({"id": gen, "started": time.time(), "pid": os.getpid()}))
    return gen


def marker_generation(ckpt: Path) -> str | None:
    """The generation a complete checkpoint was written under ('' for one from before generations; None when its
    marker cannot be read)."""
    try:
        return str(json.loads((ckpt / COMPLETE_MARKER).read_text(encoding="utf-8")).get("generation", ""))
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class LeftBehind:
    """What a run folder holds of an earlier run."""

    checkpoints: int = 0
    rollout_shards: int = 0
    metrics_lines: int = 0

    def __bool__(self) -> bool:
        return bool(self.checkpoints or self.rollout_shards or self.metrics_lines)

    def describe(self) -> str:
        return (
            f"{self.checkpoints} checkpoint(s), {self.rollout_shards} rollout shard(s), "
            f"{self.metrics_lines} metrics line(s)"
        )


def left_behind(run_dir: str | Path) -> LeftBehind:
    """Count the checkpoints (complete or not), rollout shards and metrics lines in `run_dir`."""
    run_dir = Path(run_dir)
    found = LeftBehind()
    ckpts = run_dir / CHECKPOINT_DIR
    if ckpts.is_dir():
        found.checkpoints = sum(1 for p in ckpts.iterdir() if p.is_dir())
    rollouts = run_dir / ROLLOUT_DIR
    if rollouts.is_dir():
        found.rollout_shards = sum(1 for _ in rollouts.glob("*.parquet"))
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        with open(metrics, "rb") as f:
            found.metrics_lines = sum(1 for line in f if line.strip())
    return found
