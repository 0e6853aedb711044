"""Everything a training stage shares: the run directory, policy, data stream, held-out sets, optimizer and
scheduler construction, metrics logging and checkpoint save/restore.

A stage (SFT or GRPO) is one readable loop in its own module that calls into this one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmreason.train.checkpoint import (
    OPTIMIZER_FILE,
    checkpoint_name,
    keep_last,
    load_training_state,
    save_checkpoint,
    staging_dir,
)
from mmreason.config import RunConfig, save_config
from mmreason.data.records import (
    DataError,
    Problem,
    build_samples,
    check_records,
    format_problems,
    read_dataset,
)
from mmreason.data.stream import SampleStream, Source
from mmreason.train.dist import ENGINE_DIR
from mmreason.models.policy import Policy
from mmreason.registry import get_task
from mmreason.data.sample import Sample, SampleContext
from mmreason.rollout.scoring import RewardErrors
from mmreason.runs.store import RolloutStore

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training cannot usefully go on (e.g. too many non-finite updates in a row); the message says why."""


@dataclass
class Run:
    """The live state of one `mmreason train` invocation."""

    cfg: RunConfig
    run_dir: Path
    policy: Policy
    sample_ctx: SampleContext
    stream: SampleStream
    val: dict[str, list[Sample]]
    store: RolloutStore
    reward_errors: RewardErrors = field(default_factory=RewardErrors)
    history: list[dict[str, Any]] = field(default_factory=list)
    dist: Any = None  # mmreason.train.dist.Dist (None: one plain process, e.g. in unit tests)
    # the model the loss goes through: DDP / DeepSpeed / FSDP-wrapped under accelerate, else policy.model. Generation,
    # evaluation and checkpoints always use the unwrapped policy.model.
    train_model: Any = None
    # DeepSpeed resume: the checkpoint whose engine state `prepare_training` loads into the next engine, and whether
    # with the optimizer shards (mid-stage) or the weights only (a new stage starts after a finished one)
    engine_resume: tuple[Path, bool] | None = None
    rollout_engine: Any = None  # the vLLM engine of grpo.rollout: vllm, built at the first rollout

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    @property
    def world_size(self) -> int:
        return 1 if self.dist is None else self.dist.world_size

    @property
    def rank(self) -> int:
        return 0 if self.dist is None else self.dist.rank

    @property
    def model(self) -> Any:
        """The model to run the training forward/backward through."""
        return self.train_model if self.train_model is not None else self.policy.model

    def sum(self, value: float | torch.Tensor) -> float:
        """Sum over ranks (the value itself in one process)."""
        return float(value) if self.dist is None else self.dist.sum(value)

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's items concatenated in rank order."""
        return list(items) if self.dist is None else self.dist.gather_objects(items)

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    @property
    def shards_params(self) -> bool:
        """Whether the weights are sharded across ranks (ZeRO-3, FSDP): every rank must then take part in each
        forward, generation and evaluation included."""
        return self.dist is not None and self.dist.world_size > 1 and self.dist.shards_state and not self._zero2

    @property
    def _zero2(self) -> bool:
        return self.dist.distributed_type == "DEEPSPEED" and not self.dist.zero3

    def generation_context(self) -> Any:
        """Generate with the unwrapped policy inside this (gathers ZeRO-3 shards; a no-op otherwise)."""
        if self.dist is None:
            return contextlib.nullcontext()
        # the policy itself before `prepare_training`: ZeRO-3 (zero.Init) loads it partitioned already
        return self.dist.generation_context(self.model)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA): rollout sampling and LoRA init then depend on the seed only."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sample_context(cfg: RunConfig, family: str, base_dir: Path) -> SampleContext:
    return SampleContext(
        think=cfg.think,
        model_family=family,
        base_dir=base_dir,
        min_pixels=cfg.model.min_pixels,
        max_pixels=cfg.model.max_pixels,
    )


def reward_weights(run: Run, task_name: str) -> dict[str, float]:
    """The task's default rewards for the prompt style, unless the config overrides them."""
    for d in run.cfg.data:
        if d.task == task_name and d.rewards:
            return dict(d.rewards)
    return get_task(task_name).reward_weights(run.cfg.think)


def load_val(cfg: RunConfig, ctx: SampleContext) -> dict[str, list[Sample]]:
    """Held-out samples per task (records that fail to load are skipped with a warning)."""
    val: dict[str, list[Sample]] = {}
    for d in cfg.data:
        if not d.val:
            continue
        samples, problems = build_samples(read_dataset(d.val, strict=False), get_task(d.task), ctx, limit=d.max_val)
        for problem in problems:
            log.warning("skipping held-out record: %s", problem)
        val[d.task] = val.get(d.task, []) + samples
    return val


def data_problems(cfg: RunConfig, ctx: SampleContext) -> list[Problem]:
    """Every problem of every training and held-out file of the config, as `mmreason data check` lists them."""
    problems: list[Problem] = []
    for d in cfg.data:
        for path in (d.train, d.val):
            if path:
                problems += check_records(read_dataset(path, strict=False), get_task(d.task), ctx)
    return problems


def require_clean_data(cfg: RunConfig, ctx: SampleContext) -> None:
    """With `data_errors: fatal`, raise a DataError listing all problems before anything is trained."""
    problems = data_problems(cfg, ctx)
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) in the data (data_errors: fatal; fix them, or set data_errors=skip to skip "
            "bad records during training):\n" + format_problems(problems)
        )


def build_stream(cfg: RunConfig, ctx: SampleContext, rank: int = 0, world_size: int = 1) -> SampleStream:
    """The weighted task mixture of the config's training files (unreadable lines skipped and logged); with several
    processes each rank takes every world_size-th position."""
    sources = []
    for d in cfg.data:
        ds = read_dataset(d.train, strict=False)
        for problem in ds.problems:
            log.warning("skipping training record: %s", problem)
        sources.append(Source(get_task(d.task), ds, d.weight, ctx))
    return SampleStream(sources, seed=cfg.seed, rank=rank, world_size=world_size)


def take_samples(run: Run, n: int) -> list[Sample]:
    return [sample for _, sample in run.stream.take(n)]


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_ratio: float, total: int) -> Any:
    from transformers import get_scheduler

    warmup = int(math.ceil(warmup_ratio * total))
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=max(total, 1))


def data_metrics(run: Run) -> dict[str, float]:
    """Run-so-far counts of what was skipped: bad records drawn, unreadable data lines, reward-function errors."""
    return {
        "skipped_samples": float(run.stream.skipped),
        "unreadable_lines": float(run.stream.unreadable_lines),
        "reward_errors": float(run.reward_errors.total),
    }


def stop_if_diverging(bad_updates: int, limit: int, stage: str, step: int) -> None:
    """Raise TrainingStopped once `limit` updates in a row were skipped for a non-finite loss or gradient."""
    if bad_updates >= limit:
        raise TrainingStopped(
            f"{stage} stopped at step {step}: {bad_updates} updates in a row were skipped for a non-finite loss or "
            f"gradient ({stage}.max_bad_updates={limit}). The last checkpoint is intact; lower {stage}.lr or check "
            "the data and rewards, then continue with --resume."
        )


def log_metrics(run: Run, stage: str, step: int, metrics: dict[str, Any]) -> None:
    """Append one line to metrics.jsonl (flushed at once so it can be tailed while training runs)."""
    row = {"stage": stage, "step": step, "time": time.time(), **metrics}
    run.history.append(row)
    if not run.is_main:  # every rank keeps the history (same length everywhere); rank 0 alone writes it
        return
    with (run.run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")


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
    model_state = run.dist.model_state(run.model) if run.dist is not None else None
    sharded = run.dist is not None and run.dist.shards_state
    engine = sharded and run.dist.deepspeed and run.train_model is not None
    if sharded and not engine and run.is_main:
        log.warning("FSDP: optimizer states are sharded and not saved; a resume restarts them")
    name = checkpoint_name(stage_index, stage, step)
    staging = _stage_engine_state(run, name) if engine else None
    path = None
    if run.is_main:
        optimizer = None if sharded else optimizer  # sharded: in the engine's folder (DeepSpeed) or not saved (FSDP)
        path = _write_checkpoint(
            run, name, stage_index, stage, step, optimizer, scheduler, done, streams, model_state, staging
        )
    run.barrier()
    return path


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
    streams: list[dict[str, Any]],
    model_state: dict[str, Any] | None,
    staging: Path | None,
) -> Path:
    state = {
        "stage_index": stage_index,
        "stage": stage,
        "step": step,
        "stage_done": done,
        "stream": run.stream.state_dict(),
        "streams": streams,  # one cursor per rank
        "history_len": len(run.history),
        "reward_errors": run.reward_errors.state_dict(),
        # shards present now; on resume every other shard (written after this checkpoint) is dropped
        "store_shards": sorted(p.name for p in run.store.dir.glob("*.parquet")),
    }
    _fsync(run.run_dir / "metrics.jsonl")  # the lines this checkpoint counts are on disk before it is
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
        )
    keep_last(run.run_dir, run.cfg.keep_checkpoints)
    return path


def restore_training_state(run: Run, ckpt: Path, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Optimizer, scheduler and RNG states of `ckpt` for the stage being resumed, before `prepare_training`.

    A checkpoint without optimizer.pt leaves the optimizer as built: under DeepSpeed `prepare_training` loads the
    optimizer shards into the engine; FSDP does not save them (a warning says the optimizer restarts).
    """
    if not (ckpt / OPTIMIZER_FILE).is_file():
        if run.engine_resume is None and run.is_main:
            log.warning("%s holds no optimizer states (not saved under FSDP): the optimizer restarts", ckpt.name)
        optimizer = None
    return load_training_state(ckpt, optimizer, scheduler)


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


def _fsync(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def prepare_run_dir(cfg: RunConfig) -> Path:
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # resource is POSIX-only
        return float("nan")


def prepare_training(run: Run, optimizer: Any, max_grad_norm: float | None = None) -> Any:
    """Wrap the policy and its optimizer for this launch (DDP / DeepSpeed / FSDP through accelerate; unchanged in
    one process): sets `run.train_model` (the model the loss goes through) and returns the optimizer to step.
    A DeepSpeed resume (`Run.engine_resume`) loads the checkpoint's engine state into the new engine.

    The LR scheduler is not prepared: accelerate would step it once per process and a step, not once a step.
    """
    plain = run.dist is None or (
        run.world_size == 1 and not run.dist.shards_state and run.dist.acc.mixed_precision == "no"
    )
    if plain:
        run.train_model = None
        return optimizer
    if run.train_model is not None and run.dist.deepspeed:  # a previous stage's engine
        run.dist.release(run.train_model)
    run.train_model, optimizer = run.dist.prepare(run.policy.model, optimizer, max_grad_norm=max_grad_norm)
    if run.engine_resume is not None:  # DeepSpeed resume: weights (+ optimizer shards) go into the engine itself
        ckpt, with_optimizer = run.engine_resume
        run.engine_resume = None  # once: a later stage starts from its own fresh optimizer
        run.dist.load_engine_state(run.train_model, ckpt / ENGINE_DIR, with_optimizer)
    return optimizer


def step_bar(run: Run, stage: str, stage_index: int, start_step: int, steps: int) -> Any:
    """The stage's progress bar over steps start_step..steps (shown by rank 0 only)."""
    from tqdm.auto import tqdm

    return tqdm(
        range(start_step, steps),
        desc=f"{stage} [{stage_index}]",
        initial=start_step,
        total=steps,
        disable=not run.is_main,
    )
