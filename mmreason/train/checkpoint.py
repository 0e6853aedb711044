"""Checkpoints of a run: written whole or not at all, found by name order, rotated, and restored exactly.

Layout of `<run_dir>/checkpoints/<name>/`:
    model files       `model.save_pretrained` output (a transformers model: loadable with `from_pretrained`;
                      a peft model: the adapter, loadable with `PeftModel.from_pretrained(base, dir)`)
    processor files   `processor.save_pretrained` output, when a processor is given
    optimizer.pt      optimizer.state_dict() (torch.save)
    scheduler.pt      scheduler.state_dict() (torch.save)
    rng.pt            python / numpy / torch CPU / CUDA RNG states as tensors, ints and lists
    state.json        the trainer's `state` (stage index, step, data cursor, counters, per-prompt statistics; JSON)
    deepspeed/        under DeepSpeed only, instead of optimizer.pt: the engine's own checkpoint, one optimizer
                      shard per rank (written by every rank into the staging folder, see `staging_dir`)
    complete.json     written last: its presence is what makes a checkpoint complete; it records the run's
                      generation (`mmreason.runs.folder`) and each file's size and small files' sha256
                      (`mmreason.train.verify`), which `--resume` checks

A checkpoint is assembled in `checkpoints/.tmp-<name>-<pid>` and renamed into place, so a crash never leaves a
half checkpoint under a real name. Every `.pt` file written here loads with `torch.load(..., weights_only=True)`.
Names sort in training order: `checkpoint_name(0, "sft", 10) == "s00-sft-step000010"`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from mmreason.runs.files import fsync_dir, fsync_file, replace_text, write_synced
from mmreason.runs.folder import generation, left_behind, marker_generation, new_generation
from mmreason.runs.lock import pid_exists
from mmreason.runs.run import METRICS_FILE, Run
from mmreason.runs.store import position_of
from mmreason.train.dist import ENGINE_DIR
from mmreason.train.verify import DAMAGED_PREFIX, CheckpointDamaged, choose_checkpoint, file_checks, tensors_finite

log = logging.getLogger(__name__)
console = Console(stderr=True)

CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "complete.json"
STATE_FILE = "state.json"
RNG_FILE = "rng.pt"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"

# transient folders: assembling (.tmp), replaced (.old) and being deleted (.del), each tagged with the writer's pid
_TRANSIENT_RE = re.compile(r"^\.(tmp|old|del)-(.+)-(\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def checkpoint_name(stage_index: int, stage: str, step: int) -> str:
    """`s<stage_index:02d>-<stage>-step<step:06d>`: lexical order == training order."""
    if not 0 <= stage_index <= 99 or not 0 <= step <= 999_999:
        raise ValueError(
            f"checkpoint name: need 0 <= stage_index <= 99 and 0 <= step <= 999999, got {stage_index}, {step}"
        )
    if not _NAME_RE.fullmatch(stage):
        raise ValueError(f"checkpoint name: stage must be letters, digits, '_', '.', '-', got {stage!r}")
    return f"s{stage_index:02d}-{stage}-step{step:06d}"


def staging_dir(run_dir: str | Path, name: str, fresh: bool = True) -> Path:
    """The folder `<run_dir>/checkpoints/.tmp-<name>-<pid>` a checkpoint is assembled in (pid: this process's).

    With `fresh` it is (re)created empty. Several processes may write their part into it (DeepSpeed's optimizer
    shards) before the process that created it completes it with `save_checkpoint(..., staging=that folder)`.
    """
    _check_name(name)
    root = Path(run_dir) / CHECKPOINT_DIR
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if fresh:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    return tmp


def save_checkpoint(
    run_dir: str | Path,
    name: str,
    *,
    model: Any,
    processor: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    state: dict[str, Any],
    model_kwargs: dict[str, Any] | None = None,
    staging: Path | None = None,
    notes: dict[str, str] | None = None,
) -> Path:
    """Write `<run_dir>/checkpoints/<name>` atomically and return its path.

    `model` must have `save_pretrained` (pass the unwrapped model under DDP / accelerate); `model_kwargs` go to
    it (e.g. `state_dict=` gathered under ZeRO-3). Saving an existing name replaces that checkpoint. `staging`: a
    folder from this process's `staging_dir(run_dir, name)` that already holds other files of the checkpoint (kept,
    and published with it); by default a fresh one is used. `notes` go into complete.json (e.g. why a file is absent).
    """
    _check_name(name)
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"save_checkpoint: model must have save_pretrained (got {type(model).__name__})")
    state_text = _state_json(state)
    root = Path(run_dir) / CHECKPOINT_DIR
    if staging is None:
        tmp = staging_dir(run_dir, name)
    else:
        tmp = staging_dir(run_dir, name, fresh=False)
        if Path(staging) != tmp or not tmp.is_dir():
            raise ValueError(f"save_checkpoint: staging must be the existing folder {tmp}, got {staging}")
    try:
        model.save_pretrained(tmp, **(model_kwargs or {}))
        if processor is not None:
            processor.save_pretrained(tmp)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        torch.save(rng_state(), tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(state_text, encoding="utf-8")
        _fsync_tree(tmp)
        marker = {
            "name": name,
            "time": time.time(),
            "generation": generation(run_dir),
            "files": sorted(p.name for p in tmp.iterdir()),
            "checks": file_checks(tmp),
            **(notes or {}),
        }
        write_synced(tmp / COMPLETE_MARKER, json.dumps(marker, indent=1))
        final = _move_into_place(tmp, root, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def latest_checkpoint(run_dir: str | Path, cleanup: bool = True) -> Path | None:
    """The last complete checkpoint of the run folder's current generation by name, or None.

    With `cleanup`, transient folders left by dead processes are tidied first (see `_remove_stale`); pass
    cleanup=False on processes other than the one that saves (their pids mean nothing to each other across nodes).
    """
    done = run_checkpoints(run_dir, cleanup)
    return done[-1] if done else None


def run_checkpoints(run_dir: str | Path, cleanup: bool = True) -> list[Path]:
    """Complete checkpoints written under the folder's current generation (`mmreason.runs.folder`), in training
    order: those of a run that a fresh start replaced never count, even when the fresh start was cut short."""
    if cleanup:
        _remove_stale(Path(run_dir) / CHECKPOINT_DIR)
    current = generation(run_dir)
    return [p for p in complete_checkpoints(run_dir) if marker_generation(p) == current]


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with complete.json, not transient), in training (= name) order."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if not p.name.startswith(".") and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def load_training_state(
    ckpt_dir: str | Path, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG states from a checkpoint; return its `state` dict.

    The model is not touched: load it with `from_pretrained` (or `PeftModel.from_pretrained(base, ckpt_dir,
    is_trainable=True)`) and build the optimizer over its parameters, in the same order, before calling this.
    """
    ckpt = Path(ckpt_dir)
    if not (ckpt / COMPLETE_MARKER).is_file():
        raise ValueError(f"{ckpt}: not a complete checkpoint (no {COMPLETE_MARKER}); use latest_checkpoint()")
    for obj, filename in ((optimizer, OPTIMIZER_FILE), (scheduler, SCHEDULER_FILE)):
        if obj is None:
            continue
        if not (ckpt / filename).is_file():
            raise FileNotFoundError(f"{ckpt}: has no {filename}, but a {type(obj).__name__} was given to restore")
        obj.load_state_dict(torch.load(ckpt / filename, map_location="cpu", weights_only=True))
    set_rng_state(torch.load(ckpt / RNG_FILE, map_location="cpu", weights_only=True))
    return json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))


def keep_last(run_dir: str | Path, n: int) -> list[Path]:
    """Delete all but the last `n` complete checkpoints (never the latest); return the deleted paths."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"keep_last: n must be an int >= 1 (the latest checkpoint is always kept), got {n!r}")
    done = complete_checkpoints(run_dir)
    doomed = done[:-n] if len(done) > n else []
    for path in doomed:
        _remove_dir(path)
    return doomed


def delete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Delete every complete checkpoint of a run (each renamed out of sight first); return the deleted paths."""
    done = complete_checkpoints(run_dir)
    for path in done:
        _remove_dir(path)
    return done


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop draws from, as tensors / ints / lists (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state`. CUDA states are restored when saved and a matching number of devices is present."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"checkpoint name must be letters, digits, '_', '.', '-' (no leading '.'), got {name!r}")


def _state_json(state: dict[str, Any]) -> str:
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    try:
        return json.dumps(state, indent=1, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_checkpoint: state must be JSON-serialisable (numbers, str, lists, dicts): {e}") from e


def _move_into_place(tmp: Path, root: Path, name: str) -> Path:
    """Rename tmp -> root/name. An existing checkpoint of that name is moved aside first, then deleted."""
    final = root / name
    if final.exists():
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        fsync_dir(root)
    return final


def _remove_dir(path: Path) -> None:
    """Rename out of sight first, so a crash mid-delete never leaves a gutted folder under a real name."""
    hidden = path.with_name(f".del-{path.name}-{os.getpid()}")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_stale(root: Path) -> None:
    """Tidy transient folders whose writer process is gone (a crash mid-save, mid-replace or mid-delete).

    A complete `.tmp` (crash between the marker and the rename) or `.old` (crash while replacing a checkpoint of
    the same name) is put back under its name when that name is free; everything else is deleted.
    """
    if not root.is_dir():
        return
    stale = []
    for path in root.iterdir():
        match = _TRANSIENT_RE.fullmatch(path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(3))):
            stale.append((("tmp", "old", "del").index(match.group(1)), match.group(2), path))
    for kind, name, path in sorted(stale):
        final = root / name
        if kind < 2 and (path / COMPLETE_MARKER).is_file() and not final.exists():
            os.replace(path, final)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        # saving is synchronous: a folder of ours that outlived its save is from an earlier failure
        return False
    return pid_exists(pid)


def _fsync_tree(folder: Path) -> None:
    """Flush every file (and folder) to disk before the marker claims the checkpoint complete."""
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            with open(os.path.join(dirpath, filename), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


# ------------------------------------------------------------------------------------------------ a run's checkpoints


def checkpoint(
    run: Run, stage_index: int, stage: str, step: int, optimizer: Any, scheduler: Any, done: bool
) -> Path | None:
    """Atomic checkpoint of weights + optimizer/scheduler/RNG/data cursor; old ones rotated away.

    Call on every rank: the data cursors (and, under ZeRO-3 / FSDP, the weights) are gathered first. Rank 0 writes
    the unwrapped model and the rest; under DeepSpeed every rank first writes its optimizer shard into rank 0's
    staging folder (a barrier then, so none is missing when rank 0 publishes it). A barrier at the end keeps the
    other ranks from running ahead of a half-written checkpoint. Returns the checkpoint path on rank 0, None elsewhere.
    """
    streams = run.gather([run.stream.state_dict()])  # each rank's own cursor, restored per rank on resume
    # every stage kind's cursor too (entries may feed only some stages), so a later stage resumes its own data
    stage_streams = run.gather([{kind: s.state_dict() for kind, s in run.streams.items()}])
    model_state = run.dist.model_state(run.model) if run.dist is not None else None
    name = checkpoint_name(stage_index, stage, step)
    refuse_non_finite(run, name, model_state)
    sharded = run.dist is not None and run.dist.shards_state
    engine = sharded and run.dist.deepspeed and run.train_model is not None
    if sharded and not engine and run.is_main:
        log.warning("FSDP: optimizer states are sharded and not saved; a resume restarts them")
    staging = _stage_engine_state(run, name) if engine else None
    path = None
    if run.is_main:
        optimizer = None if sharded else optimizer  # sharded: in the engine's folder (DeepSpeed) or not saved (FSDP)
        path = _write_checkpoint(
            run, name, stage_index, stage, step, optimizer, scheduler, done, (streams, stage_streams), model_state,
            staging, _optimizer_note(sharded, engine),
        )
    run.barrier()
    return path


def refuse_non_finite(run: Run, name: str, model_state: dict[str, Any] | None) -> None:
    """Stop (on every rank) rather than write checkpoint `name` with a non-finite weight: the gathered state under
    ZeRO-3 / FSDP (on the ranks that hold it), else the trainable parameters (the only ones training changes)."""
    from mmreason.train.step import TrainingStopped

    tensors = model_state.values() if model_state is not None else run.policy.trainable_parameters()
    finite = tensors_finite(t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point())
    if run.sum(float(not finite)) > 0:
        raise TrainingStopped(
            f"checkpoint {name} not written: the weights hold non-finite values. The last checkpoint is intact; "
            "lower the learning rate, then continue with --resume."
        )


def _optimizer_note(sharded: bool, engine: bool) -> dict[str, str]:
    """Why a checkpoint holds no optimizer.pt (read by `restore_training_state`)."""
    if engine:
        return {"optimizer": f"in {ENGINE_DIR}/ (DeepSpeed shards)"}
    if sharded:
        return {"optimizer": "not saved: FSDP shards the optimizer states"}
    return {}


def _stage_engine_state(run: Run, name: str) -> Path | None:
    """DeepSpeed: rank 0 creates the checkpoint's staging folder, every rank writes its engine state (optimizer
    shard) into it, and all wait until every shard is written. The folder on rank 0, None elsewhere."""
    mine = [str(staging_dir(run.run_dir, name))] if run.is_main else []
    folder = Path(run.gather(mine)[0])  # rank 0's path (its pid in the name), now on every rank
    run.dist.save_engine_state(run.train_model, folder / ENGINE_DIR)
    run.barrier()
    return folder if run.is_main else None


def _write_checkpoint(
    run: Run,
    name: str,
    stage_index: int,
    stage: str,
    step: int,
    optimizer: Any,
    scheduler: Any,
    done: bool,
    cursors: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    model_state: dict[str, Any] | None,
    staging: Path | None,
    notes: dict[str, str] | None = None,
) -> Path:
    streams, stage_streams = cursors
    state = {
        "stage_index": stage_index,
        "stage": stage,
        "step": step,
        "stage_done": done,
        "stream": run.stream.state_dict(),
        "streams": streams,  # one cursor per rank
        "stage_streams": stage_streams,  # per rank: stage kind -> cursor
        "history_len": len(run.history),
        "reward_errors": run.reward_errors.state_dict(),
        "prompt_stats": run.prompt_stats.state_dict(),  # the same on every rank (mmreason.train.online_filter)
        # the rollout shards now (and the latest's position); on resume every other shard is dropped
        "store_position": list(run.store.position()),
        "store_shards": sorted(p.name for p in run.store.dir.glob("*.parquet")),
    }
    fsync_file(run.run_dir / METRICS_FILE)  # the lines this checkpoint counts are on disk before it is
    with _default_key_names(run.policy.model, run.dist is not None and run.dist.zero3):
        path = save_checkpoint(
            run.run_dir,
            name,
            model=run.policy.model,
            processor=run.policy.processor,
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
            model_kwargs={"state_dict": model_state} if model_state is not None else None,
            staging=staging,
            notes=notes,
        )
    keep_last(run.run_dir, run.cfg.keep_checkpoints)
    return path


@contextlib.contextmanager
def _default_key_names(model: Any, zero3: bool) -> Iterator[None]:
    """Under ZeRO-3, save with the model class's default key renamings.

    transformers (5.x) records on the model the key renamings its load applied and reverts them on save; a ZeRO-3
    (zero.Init) load records its legacy renamings too, whose reverse writes `model.model.*` keys that no load maps
    back. Without a record save_pretrained reverts the class's default renamings: the same file as any other run's.
    """
    recorded = model.__dict__.pop("_weight_conversions", None) if zero3 else None
    try:
        yield
    finally:
        if recorded is not None:
            model._weight_conversions = recorded


def restore_training_state(run: Run, ckpt: Path, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Optimizer, scheduler and RNG states of `ckpt` for the stage being resumed, before `prepare_training`.

    A checkpoint without optimizer.pt leaves the optimizer as built: under DeepSpeed `prepare_training` loads the
    optimizer shards into the engine; otherwise a warning gives the reason complete.json records (FSDP does not
    save them) and says the optimizer restarts. (A checkpoint whose complete.json lists an optimizer.pt that is gone
    never gets here: `mmreason.train.verify` finds it damaged on resume.)
    """
    if not (ckpt / OPTIMIZER_FILE).is_file():
        if run.engine_resume is None and run.is_main:
            reason = _marker(ckpt).get("optimizer") or "it was saved without them"
            log.warning("%s holds no optimizer states (%s): the optimizer restarts", ckpt.name, reason)
        optimizer = None
    try:
        return load_training_state(ckpt, optimizer, scheduler)
    except Exception as exc:  # files the resume checks passed (a checkpoint from before sizes were recorded)
        from mmreason.runs.lock import RunFolderError
        from mmreason.train.verify import load_problem

        raise RunFolderError(
            f"checkpoint {ckpt.name}: its optimizer or scheduler state {load_problem(exc).removeprefix('it ')}; "
            f"move {ckpt} away to continue from the checkpoint before it, or start again with --overwrite"
        ) from exc


def _marker(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def find_resume_point(run: Run) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint `--resume` continues from and its state, its weights loaded: the newest complete one of the
    run's generation that passes its file checks and loads, older ones in turn (`mmreason.train.verify`). Rank 0
    tidies what a killed writer left and lists the candidates for every rank. None when the run has none."""
    listed = [[p.name for p in run_checkpoints(run.run_dir, cleanup=True)]] if run.is_main else []
    names = run.gather(listed)[0]
    return choose_checkpoint(run, names, lambda ckpt: load_resume_weights(run, ckpt), _say)


def load_resume_weights(run: Run, ckpt: Path) -> dict[str, Any]:
    """Weights and RNG of `ckpt`, the weights checked finite; its state. Nothing else is touched, so a checkpoint
    that fails here can be skipped for an older one.

    Under DeepSpeed the weights come from the checkpoint's engine state once the next stage has prepared its engine
    (`prepare_training`): under ZeRO-3 the live weights are partitioned, so that is the only way into them, and
    mid-stage the optimizer shards come along."""
    from mmreason.models.policy import restore_weights

    state = load_training_state(ckpt, None, None)
    if run.dist is not None and run.dist.deepspeed and (ckpt / ENGINE_DIR).is_dir():
        run.engine_resume = (ckpt, not state["stage_done"])
    else:
        restore_weights(run.policy, ckpt)
        if not tensors_finite(p for p in run.policy.model.parameters() if p.is_floating_point()):
            raise CheckpointDamaged("its weights hold non-finite values")
    return state


def resume_from(run: Run, ckpt: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Weights (unless `state` says they are loaded: `load_resume_weights`), RNG, data cursor and counters of
    `ckpt`; metrics lines and rollout shards written after it are dropped (by rank 0; each rank restores its own
    data cursor)."""
    if state is None:
        state = load_resume_weights(run, ckpt)
    run.use_stage(state["stage"])
    per_kind = state.get("stage_streams") or []
    if len(per_kind) == run.world_size and per_kind[run.rank]:
        for kind, stream in run.streams.items():
            if kind in per_kind[run.rank]:
                stream.load_state_dict(per_kind[run.rank][kind])
    else:  # a checkpoint that saved the current stage's cursor only
        streams = state.get("streams") or [state["stream"]]
        run.stream.load_state_dict(streams[run.rank] if len(streams) == run.world_size else state["stream"])
    run.reward_errors.load_state_dict(state.get("reward_errors", []))
    run.prompt_stats.load_state_dict(state.get("prompt_stats"))
    if run.is_main:
        truncate_metrics(run.run_dir, state["history_len"])
        shards = state.get("store_shards", [])
        run.store.delete_after(*(state.get("store_position") or position_of(shards)), keep=set(shards))
        console.print(f"resuming from {ckpt.name}")
    return state


def truncate_metrics(run_dir: Path, keep: int) -> None:
    """Keep the first `keep` lines of metrics.jsonl (those the resumed checkpoint counts; later ones are written
    again) and remove the temp files of a metrics write a crash cut short. The shorter file replaces the old one
    by rename: a crash here must not cost the lines the checkpoint counts."""
    path = run_dir / METRICS_FILE
    for tmp in run_dir.glob(f".{METRICS_FILE}.*.tmp"):
        tmp.unlink(missing_ok=True)
    if path.is_file():
        replace_text(path, "".join(path.read_text().splitlines(keepends=True)[:keep]))


def clear_previous_run(run: Run) -> None:
    """A fresh start. A new generation is recorded first (`mmreason.runs.folder`): from then on nothing of an
    earlier run can be resumed, even if what follows is cut short. Then what an earlier run of the same name left
    is deleted, saying how much: its metrics, rollout shards and checkpoints (damaged ones kept aside included)."""
    run_dir = run.run_dir
    new_generation(run_dir)
    _remove_stale(run_dir / CHECKPOINT_DIR)  # the transient folders a killed writer left
    left = left_behind(run_dir)
    if left:
        _say(f"overwriting {run_dir}: deleting {left.describe()}")
    truncate_metrics(run_dir, 0)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    delete_checkpoints(run_dir)
    for damaged in (run_dir / CHECKPOINT_DIR).glob(f"{DAMAGED_PREFIX}*"):
        shutil.rmtree(damaged, ignore_errors=True)
    run.store.delete_after(-1, 0)


def _say(message: str) -> None:
    """One plain line on stderr (no rich markup: messages quote file names and tensor shapes)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)
