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
from mmreason.data.budget import Budget
from mmreason.data.entries import check_disjoint, entry_context, entry_ref, read_entry, stage_entries
from mmreason.data.prepare import record_limits
from mmreason.data.records import (
    DataError,
    Problem,
    build_samples,
    check_records,
    format_problems,
)
from mmreason.data.sample import Sample, SampleContext
from mmreason.data.schedule import Schedule
from mmreason.data.stream import SampleStream, Source
from mmreason.models.policy import Policy, unwrap_model
from mmreason.registry import get_task
from mmreason.rollout.scoring import RewardErrors
from mmreason.runs.store import RolloutStore
from mmreason.runs.trackers import metrics_line
from mmreason.train.prompt_stats import PromptStats

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
    prompt_stats: PromptStats = field(default_factory=PromptStats)  # per-prompt pass rates of the GRPO stages
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
    trackers: Any = None  # mmreason.runs.trackers.Trackers of the config's report_to (rank 0 only; None: none)

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
        ctx = sample_context(cfg, policy.family.name, Path.cwd(), policy)
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


def sample_context(cfg: RunConfig, family: str, base_dir: Path, policy: Policy | None = None) -> SampleContext:
    """The context the run's records become samples in; with `policy`, the record limits follow its context length
    and prompt text is counted with its tokenizer (`mmreason.data.prepare.record_limits`)."""
    sampled = [getattr(cfg, kind).max_new_tokens for kind in ("grpo", "rejection_sft") if kind in cfg.stages]
    completion = max([*sampled, cfg.eval.max_new_tokens])
    tokenizer = getattr(policy.processor, "tokenizer", None) if policy is not None else None
    return SampleContext(
        think=cfg.think,
        model_family=family,
        base_dir=base_dir,
        min_pixels=cfg.model.min_pixels,
        max_pixels=cfg.model.max_pixels,
        limits=record_limits(cfg.model, family, context_length(policy), completion, tokenizer),
        budget=run_budget(cfg),
    )


def run_budget(cfg: RunConfig) -> Budget | None:
    """The reasoning budget the run's prompts ask for (`budget` config), None when off."""
    if not cfg.budget.enabled:
        return None
    levels = {name.strip().lower(): words for name, words in cfg.budget.levels.items()}
    return Budget(levels, cfg.budget.force.strip().lower() if cfg.budget.force else None)


def context_length(policy: Policy | None) -> int | None:
    """Tokens the policy's language model attends over (its config's max_position_embeddings), None if unknown."""
    if policy is None:
        return None
    config = getattr(unwrap_model(policy.model), "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None) or getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def reward_weights(run: Run, task_name: str) -> dict[str, float]:
    """The task's default rewards for the prompt style, unless the config overrides them."""
    return config_reward_weights(run.cfg, task_name)


def config_reward_weights(cfg: RunConfig, task_name: str) -> dict[str, float]:
    """`reward_weights` of a config: its first entry of the task with `rewards`, else the task's defaults."""
    weights = next((dict(d.rewards) for d in cfg.data if d.task == task_name and d.rewards), None)
    if weights is None:
        weights = get_task(task_name).reward_weights(cfg.think)
    if cfg.budget.enabled:  # every task keeps to its reasoning budget (an entry's own weights for them win)
        weights = {"budget_length": cfg.budget.length_weight, "budget_difficulty": cfg.budget.difficulty_weight,
                   **weights}
    return weights


def run_reward_names(cfg: RunConfig) -> list[str]:
    """Every reward any task of the config is scored with: the rollout store's reward columns for the whole run."""
    from mmreason.train.reward_schedule import scheduled_reward_names

    tasks = dict.fromkeys(d.task for d in cfg.data)
    return sorted({name for task in tasks for name in config_reward_weights(cfg, task)} | scheduled_reward_names(cfg))


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
        chosen = tuple(stage_entries(cfg.data, kind))
        if chosen not in by_entries:
            sources = [Source(get_task(cfg.data[i].task), datasets[i], cfg.data[i].weight,
                              entry_context(cfg.data[i], ctx)) for i in chosen]
            by_entries[chosen] = SampleStream(sources, seed=cfg.seed, rank=rank, world_size=world_size)
        streams[kind] = by_entries[chosen]
    if cfg.schedule.enabled and "grpo" in streams:  # the GRPO stages draw by difficulty and per-stage task weights
        streams["grpo"].schedule = Schedule(cfg.schedule, streams["grpo"].sources)
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
    """The metrics lines a run folder holds (what `log_metrics` appended); a line that is not a JSON object (cut by a
    crash, or damaged) is skipped with a warning."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            row = exc
        if isinstance(row, dict):
            rows.append(row)
        elif row is not None:
            log.warning("skipping %s:%d: not a JSON object (%s)", path, number, str(row)[:200])
    return rows


def log_metrics(run: Run, stage: str, step: int, metrics: dict[str, Any]) -> None:
    """Append one line to metrics.jsonl (flushed at once so it can be tailed while training runs), the one place a
    metrics line goes out: the run's trackers get it too, and train.log one INFO line of it."""
    row = {"stage": stage, "step": step, "time": time.time(), **metrics}
    run.history.append(row)
    if not run.is_main:  # every rank keeps the history (same length everywhere); rank 0 alone writes it
        return
    with (run.run_dir / METRICS_FILE).open("a") as f:
        f.write(json.dumps(row, default=float) + "\n")
    if run.trackers is not None:
        run.trackers.log(row)
    if log.isEnabledFor(logging.INFO):
        log.info("%s", metrics_line(row))



def prepare_run_dir(cfg: RunConfig) -> Path:
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir




# ------------------------------------------------------------------------------------------------ the user's files

RUN_INFO = "run.json"
FILES_DIR = "files"  # copies of the task / reward files a run used, as they were when it started


def reward_files(cfg: RunConfig) -> list[Path]:
    """The files of the config's `path/to/file.py:function` rewards (data[i].rewards), resolved."""
    found: dict[Path, None] = {}
    for d in cfg.data:
        for spec in d.rewards or {}:
            if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
                found.setdefault(Path(spec.rsplit(":", 1)[0]).expanduser().resolve())
    return list(found)


def user_files_info(run_dir: Path, cfg: RunConfig, task_files: list[str | Path] | tuple = ()) -> dict[str, Any]:
    """What run.json records of the user's files: the task files (`--task-file`) and reward files, as absolute paths,
    each copied into `<run_dir>/files/` (`file_copies`: path -> copy relative to the run folder)."""
    tasks = list(dict.fromkeys(Path(f).expanduser().resolve() for f in task_files))
    rewards = reward_files(cfg)
    copies: dict[str, str] = {}
    for path in dict.fromkeys([*tasks, *rewards]):
        if path.is_file():
            name = path.name
            while f"{FILES_DIR}/{name}" in copies.values():  # two files of one name from different folders
                name = f"_{name}"
            (run_dir / FILES_DIR).mkdir(parents=True, exist_ok=True)
            (run_dir / FILES_DIR / name).write_bytes(path.read_bytes())
            copies[str(path)] = f"{FILES_DIR}/{name}"
    return {"task_files": [str(p) for p in tasks], "reward_files": [str(p) for p in rewards], "file_copies": copies}


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The run folder's run.json ({} when there is none or it is unreadable)."""
    path = Path(run_dir) / RUN_INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def recorded_task_files(run_dir: Path) -> list[Path]:
    """The task files a run recorded, each where it was when the run started, else the run folder's copy of it
    (a file found in neither place is left out with a warning)."""
    info = read_run_info(run_dir)
    files = []
    for given in info.get("task_files", []):
        path, copy = Path(given), info.get("file_copies", {}).get(given)
        if path.is_file():
            files.append(path)
        elif copy and (Path(run_dir) / copy).is_file():
            files.append(Path(run_dir) / copy)
        else:
            log.warning("task file %s recorded in %s is gone (and no copy is left)", given, Path(run_dir) / RUN_INFO)
    return files


def load_run_files(run_dir: Path) -> list[Path]:
    """Import the task files a run recorded (`recorded_task_files`) so its tasks are registered; returns them."""
    from mmreason.registry import load_user_file

    files = recorded_task_files(run_dir)
    for path in files:
        load_user_file(path)
    return files


def open_store(cfg: RunConfig, run_dir: Path) -> RolloutStore:
    """The run's rollout store, its columns fixed when the run starts: every reward of the config's tasks, each GRPO
    row's prompt pass rate before its draw (`mmreason.train.online_filter`), and the turns of multi-turn tool
    rollouts (`mmreason.runs.store`: one schema per run)."""
    extras: dict[str, str] = {"prompt_pass_rate": "double"} if "grpo" in cfg.stages else {}
    if "grpo" in cfg.stages and cfg.grpo.tools.enabled:
        extras["turns"] = "string"
    return RolloutStore(run_dir, reward_names=run_reward_names(cfg), extra_columns=extras)
