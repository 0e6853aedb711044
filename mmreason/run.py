"""Everything a training stage shares: the run directory, policy, data stream, held-out sets, optimizer and
scheduler construction, metrics logging and checkpoint save/restore.

A stage (SFT or GRPO) is one readable loop in its own module that calls into this one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmreason.checkpoint import keep_last, save_checkpoint
from mmreason.config import RunConfig, save_config
from mmreason.data import SampleStream, Source, build_samples, read_dataset
from mmreason.policy import Policy
from mmreason.registry import get_task
from mmreason.sample import Sample, SampleContext
from mmreason.scoring import RewardErrors
from mmreason.store import RolloutStore

log = logging.getLogger(__name__)


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

    @property
    def device(self) -> torch.device:
        return self.policy.device


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


def build_stream(cfg: RunConfig, ctx: SampleContext) -> SampleStream:
    """The weighted task mixture of the config's training files (unreadable lines skipped and logged)."""
    sources = []
    for d in cfg.data:
        ds = read_dataset(d.train, strict=False)
        for problem in ds.problems:
            log.warning("skipping training record: %s", problem)
        sources.append(Source(get_task(d.task), ds, d.weight, ctx))
    return SampleStream(sources, seed=cfg.seed)


def take_samples(run: Run, n: int) -> list[Sample]:
    return [sample for _, sample in run.stream.take(n)]


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_ratio: float, total: int) -> Any:
    from transformers import get_scheduler

    warmup = int(math.ceil(warmup_ratio * total))
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=max(total, 1))


def log_metrics(run: Run, stage: str, step: int, metrics: dict[str, Any]) -> None:
    """Append one line to metrics.jsonl (flushed at once so it can be tailed while training runs)."""
    row = {"stage": stage, "step": step, "time": time.time(), **metrics}
    run.history.append(row)
    with (run.run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")


def checkpoint(run: Run, stage_index: int, stage: str, step: int, optimizer: Any, scheduler: Any, done: bool) -> Path:
    """Atomic checkpoint of weights + optimizer/scheduler/RNG/data cursor; old ones rotated away."""
    state = {
        "stage_index": stage_index,
        "stage": stage,
        "step": step,
        "stage_done": done,
        "stream": run.stream.state_dict(),
        "history_len": len(run.history),
        # shards present now; on resume every other shard (written after this checkpoint) is dropped
        "store_shards": sorted(p.name for p in run.store.dir.glob("*.parquet")),
    }
    name = f"s{stage_index:02d}-{stage}-step{step:06d}"
    path = save_checkpoint(
        run.run_dir,
        name,
        model=run.policy.model,
        processor=run.policy.processor,
        optimizer=optimizer,
        scheduler=scheduler,
        state=state,
    )
    keep_last(run.run_dir, run.cfg.keep_checkpoints)
    return path


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
