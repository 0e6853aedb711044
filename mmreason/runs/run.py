"""The live state of a run (`Run`: config, folder, policy, data stream, held-out sets, rollout store, processes) and
how it is set up from a config: seeding, sample context, data checks, the training stream, metrics lines.

Stages (`mmreason.train`) read and update a `Run`; `Run.local` builds a single-process one around a policy for
library use, tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmreason.config import RunConfig, save_config
from mmreason.data.entries import check_disjoint, entry_context, entry_ref, read_entry, uses_stage
from mmreason.data.records import (
    DataError,
    Problem,
    build_samples,
    check_records,
    format_problems,
)
from mmreason.data.sample import Sample, SampleContext
from mmreason.data.stream import SampleStream, Source
from mmreason.models.policy import Policy
from mmreason.registry import get_task
from mmreason.rollout.scoring import RewardErrors
from mmreason.runs.store import RolloutStore

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


@dataclass
class Run:
    """The live state of one `mmreason train` invocation."""

    cfg: RunConfig
    run_dir: Path
    policy: Policy
    sample_ctx: SampleContext
    stream: SampleStream | None  # the current stage's training data (None: a `Run.local` that draws none)
    val: dict[str, list[Sample]]
    store: RolloutStore | None  # None: a `Run.local` that writes no rollouts
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
    # stage kind -> its training stream; kinds fed by the same data entries share one stream (one cursor)
    streams: dict[str, SampleStream] = field(default_factory=dict)

    def use_stage(self, kind: str) -> None:
        """Draw training samples from the stream of stage kind `kind` from now on."""
        if self.streams:
            self.stream = self.streams[kind]

    @classmethod
    def local(cls, policy: Policy, cfg: RunConfig | None = None, run_dir: str | Path | None = None) -> Run:
        """A single-process run around `policy` with no data stream; a rollout store only when `run_dir` is given."""
        cfg = cfg or RunConfig()
        folder = Path(run_dir) if run_dir is not None else cfg.run_dir
        store = RolloutStore(folder) if run_dir is not None else None
        ctx = sample_context(cfg, policy.family.name, Path.cwd())
        return cls(cfg, folder, policy, ctx, stream=None, val={}, store=store)

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
        dataset = read_entry(d, "val")
        samples, problems = build_samples(dataset, get_task(d.task), entry_context(d, ctx), limit=d.max_val)
        for problem in [*dataset.problems, *problems]:
            log.warning("skipping held-out record: %s", problem)
        val[d.task] = val.get(d.task, []) + samples
    return val


def data_problems(cfg: RunConfig, ctx: SampleContext) -> list[Problem]:
    """Every problem of every training and held-out data of the config, as `mmreason data check` lists them."""
    check_disjoint(cfg.data)
    problems: list[Problem] = []
    for d in cfg.data:
        for which in ("train", "val"):
            if entry_ref(d, which)[0]:
                problems += check_records(read_entry(d, which), get_task(d.task), entry_context(d, ctx))
    return problems


def require_clean_data(cfg: RunConfig, ctx: SampleContext) -> None:
    """With `data_errors: fatal`, raise a DataError listing all problems before anything is trained."""
    problems = data_problems(cfg, ctx)
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) in the data (data_errors: fatal; fix them, or set data_errors=skip to skip "
            "bad records during training):\n" + format_problems(problems)
        )


def build_streams(cfg: RunConfig, ctx: SampleContext, rank: int = 0, world_size: int = 1) -> dict[str, SampleStream]:
    """Stage kind -> the weighted task mixture of the entries that feed it (unreadable lines skipped and logged);
    kinds fed by the same entries share one stream. With several processes each rank takes every world_size-th
    position."""
    check_disjoint(cfg.data)
    datasets = {}
    for i, d in enumerate(cfg.data):
        datasets[i] = read_entry(d, "train")
        for problem in datasets[i].problems:
            log.warning("skipping training record: %s", problem)
    by_entries: dict[tuple[int, ...], SampleStream] = {}
    streams = {}
    for kind in dict.fromkeys(cfg.stages):
        chosen = tuple(i for i, d in enumerate(cfg.data) if uses_stage(d, kind))
        if chosen not in by_entries:
            sources = [Source(get_task(cfg.data[i].task), datasets[i], cfg.data[i].weight,
                              entry_context(cfg.data[i], ctx)) for i in chosen]
            by_entries[chosen] = SampleStream(sources, seed=cfg.seed, rank=rank, world_size=world_size)
        streams[kind] = by_entries[chosen]
    return streams


def take_samples(run: Run, n: int) -> list[Sample]:
    return [sample for _, sample in run.stream.take(n)]



def data_metrics(run: Run) -> dict[str, float]:
    """Run-so-far counts of what was skipped: bad records drawn, unreadable data lines, reward-function errors."""
    stream = run.stream
    return {
        "skipped_samples": float(stream.skipped if stream is not None else 0),
        "unreadable_lines": float(stream.unreadable_lines if stream is not None else 0),
        "reward_errors": float(run.reward_errors.total),
    }



def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The metrics lines a run folder holds (what `log_metrics` appended)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_metrics(run: Run, stage: str, step: int, metrics: dict[str, Any]) -> None:
    """Append one line to metrics.jsonl (flushed at once so it can be tailed while training runs)."""
    row = {"stage": stage, "step": step, "time": time.time(), **metrics}
    run.history.append(row)
    if not run.is_main:  # every rank keeps the history (same length everywhere); rank 0 alone writes it
        return
    with (run.run_dir / METRICS_FILE).open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")



def prepare_run_dir(cfg: RunConfig) -> Path:
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


