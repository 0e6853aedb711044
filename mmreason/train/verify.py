"""What keeps a broken state out of a run: the record of a checkpoint's files and its check on resume, finite-weight
checks, and the choice of the checkpoint `--resume` continues from.

A checkpoint's `complete.json` records every file's size, and the sha256 of each file up to `HASH_MAX_BYTES` (its
configs, tokenizer, state, RNG and scheduler files, a LoRA adapter, the optimizer of a small model; the weights and
optimizer of a large model by size alone: hashing gigabytes at every save would cost more than it finds). On resume
the newest checkpoint of the run is checked against that record and then loaded; when anything fails (a file
missing, cut short or changed, weights that do not fit the model, non-finite weights) the message names the file or
cause and the next older one is tried; once one is usable, the damaged ones are moved aside to
`checkpoints/.damaged-<name>` (kept; a fresh start deletes them). When there were checkpoints and none is usable the
run stops with one line, and nothing is moved or deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from mmreason.runs.lock import RunFolderError

log = logging.getLogger(__name__)

HASH_MAX_BYTES = 64 * 2**20
COMPLETE_MARKER = "complete.json"
STATE_FILE = "state.json"
DAMAGED_PREFIX = ".damaged-"


class CheckpointDamaged(Exception):
    """A checkpoint that loaded but must not be resumed; the message says why."""


def file_checks(folder: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {"size": bytes[, "sha256": hex]} of every file under `folder` (see the module doc)."""
    checks: dict[str, dict[str, Any]] = {}
    for dirpath, _, filenames in os.walk(folder):
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            size = path.stat().st_size
            record: dict[str, Any] = {"size": size}
            if size <= HASH_MAX_BYTES:
                record["sha256"] = _sha256(path)
            checks[path.relative_to(folder).as_posix()] = record
    return dict(sorted(checks.items()))


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is wrong with a complete checkpoint's files against its `complete.json` (None: nothing found).

    A checkpoint written before sizes were recorded is checked for the presence of the files it lists."""
    try:
        marker = json.loads((ckpt / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{COMPLETE_MARKER} cannot be read ({type(exc).__name__})"
    for name in marker.get("files", []):
        if not (ckpt / name).exists():
            return f"{name} is missing (complete.json lists it)"
    for rel, record in (marker.get("checks") or {}).items():
        path = ckpt / rel
        if not path.is_file():
            return f"{rel} is missing (complete.json lists it)"
        size = path.stat().st_size
        if size != record.get("size"):
            return f"{rel} is {size} bytes, {record.get('size')} when written (cut short or replaced)"
        if "sha256" in record and _sha256(path) != record["sha256"]:
            return f"{rel} does not match the checksum recorded when it was written"
    try:
        json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{STATE_FILE} cannot be read ({type(exc).__name__}: {exc})"
    return None


def tensors_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite: one fused 2-norm per tensor and one host sync (a NaN or inf
    value makes its norm non-finite). A norm can overflow on finite values (large fp16 tensors): only then are the
    tensors with a non-finite norm checked value by value."""
    present = [t.detach() for t in tensors if t.numel()]
    if not present:
        return True
    norms = torch.stack(torch._foreach_norm(present))
    if bool(norms.isfinite().all()):
        return True
    return all(bool(present[i].isfinite().all()) for i in (~norms.isfinite()).nonzero().flatten().tolist())


def load_problem(exc: BaseException) -> str:
    """A one-line cause of a failed checkpoint load (a shape mismatch says that the model differs)."""
    text = str(exc)
    if isinstance(exc, CheckpointDamaged):
        return text
    for line in text.splitlines():
        if "size mismatch" in line:
            return f"its weights do not fit this model (another model size?): {line.strip()[:240]}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"it cannot be loaded: {type(exc).__name__}: {first[:240]}"


def choose_checkpoint(
    run: Any,
    names: list[str],
    load: Callable[[Path], dict[str, Any]],
    say: Callable[[str], None],
) -> tuple[Path, dict[str, Any]] | None:
    """The newest of the run's complete checkpoints `names` (in training order, the same on every rank) whose files
    pass `checkpoint_problem` (checked by rank 0) and which `load` (called on every rank) loads; its path and the
    state `load` returned. The ranks agree on every verdict. Damaged ones are said, and once an older one is
    chosen, moved aside by rank 0 (so that they never outrank what the run writes next). None when `names` is empty;
    RunFolderError when none of them is usable (then nothing is moved: a later --resume says the same)."""
    root = run.run_dir / "checkpoints"
    skipped: list[str] = []
    problems: list[str] = []
    for name in reversed(names):
        ckpt = root / name
        problem = run.gather([checkpoint_problem(ckpt)] if run.is_main else [])[0]
        state: dict[str, Any] = {}
        if problem is None:
            mine = None
            try:
                state = load(ckpt)
            except Exception as exc:  # any load failure is reported and the next older checkpoint tried
                mine = load_problem(exc)
            problem = next((p for p in run.gather([mine]) if p), None)
        if problem is None:
            for damaged in skipped if run.is_main else []:
                aside = _move_aside(root / damaged)
                say(f"checkpoint {damaged} kept as checkpoints/{aside.name}")
            return ckpt, state
        skipped.append(name)
        problems.append(f"{name}: {problem}")
        if run.is_main:
            say(f"checkpoint {name} is damaged: {problem}; skipped")
    if skipped:
        raise RunFolderError(
            f"no usable checkpoint in {root} ({'; '.join(problems)}); start again with --overwrite (deletes them)"
        )
    return None


def _move_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint out of the run's checkpoints (hidden: never listed, never resumed, kept)."""
    aside = ckpt.with_name(f"{DAMAGED_PREFIX}{ckpt.name}")
    if aside.exists():
        aside = ckpt.with_name(f"{DAMAGED_PREFIX}{ckpt.name}-{os.getpid()}")
    os.replace(ckpt, aside)
    return aside


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
