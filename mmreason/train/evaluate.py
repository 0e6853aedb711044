"""Held-out evaluation: greedy generations on each task's validation samples, the task's metrics, and the
generations written to the rollout store (stage `eval-<label>`) so reports can show them; a few of them drawn by the
task's `visualize` go to the run's experiment trackers.

`mmreason eval` (`eval_checkpoint`) evaluates a checkpoint the way its run was set up: prompt style, pixel budget,
generation length, rewards and task files come from the run's config.yaml / run.json, a command-line flag overrides
one, and a checkpoint outside any run falls back on the defaults (`eval_settings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmreason.config import ConfigError
from mmreason.data.sample import Sample
from mmreason.registry import get_task
from mmreason.rollout.engine import encode_prompts, generate
from mmreason.rollout.scoring import score_completions
from mmreason.rollout.types import SamplingParams
from mmreason.runs.run import Run, log_metrics
from mmreason.runs.store import completion_row
from mmreason.runs.trackers import eval_pictures

log = logging.getLogger(__name__)


@dataclass
class Generations:
    """Greedy generations of samples, one per sample, with their token counts."""

    texts: list[str] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)


def generate_greedy(
    policy: Any, samples: list[Sample], max_new_tokens: int, batch_size: int, desc: str = "eval"
) -> Generations:
    """Greedy completions of `samples` in batches; `desc` labels the progress bar (e.g. "eval counting")."""
    out = Generations()
    greedy = SamplingParams(1, max_new_tokens, greedy=True)
    for i in tqdm(range(0, len(samples), batch_size), desc=desc, leave=False):
        chunk = samples[i : i + batch_size]
        prompts = encode_prompts(policy.processor, chunk, policy.device)
        rollout = generate(policy.model, policy.processor, prompts, greedy)
        out.texts += rollout.texts
        out.prompt_lengths += [int(n) for n in rollout.prompt_lengths]
        out.completion_lengths += [int(n) for n in rollout.completion_mask.sum(-1).tolist()]
        out.truncated += [bool(t) for t in rollout.truncated.tolist()]
    return out


def eval_rows(
    run_name: str, stage: str, samples: list[Sample], gens: Generations, named: dict, total: list, step: int = 0
) -> list[dict]:
    """Store rows of greedy generations: one per sample, its own group, no advantage."""
    return [
        completion_row(
            s,
            text,
            run=run_name,
            stage=stage,
            step=step,
            group_id=i,
            completion_index=0,
            reward_total=total[i],
            rewards={n: v[i] for n, v in named.items()},
            advantage=0.0,
            prompt_len=gens.prompt_lengths[i],
            completion_len=gens.completion_lengths[i],
            truncated=gens.truncated[i],
        )
        for i, (s, text) in enumerate(zip(samples, gens.texts, strict=True))
    ]


@torch.no_grad()
def evaluate_samples(
    policy: Any,
    task_name: str,
    samples: list[Sample],
    weights: dict[str, float],
    max_new_tokens: int,
    batch_size: int,
    errors: Any,
) -> tuple[dict[str, float], Generations, dict, list]:
    """Task metrics (plus each reward's mean) of greedy generations on `samples`."""
    task = get_task(task_name)
    gens = generate_greedy(policy, samples, max_new_tokens, batch_size, desc=f"eval {task_name}")
    metrics = dict(task.metrics(gens.texts, samples))
    named, total = score_completions(weights, samples, gens.texts, 1, errors)
    for name, scores in named.items():
        vals = [v for v in scores if v is not None]
        metrics[f"reward/{name}"] = sum(vals) / len(vals) if vals else float("nan")
    metrics["reward_total"] = sum(total) / max(len(total), 1)
    return metrics, gens, named, total


def evaluate(run: Run, label: str, step: int = 0) -> dict[str, dict[str, float]]:
    """Evaluate every task with a held-out split; log `eval/<task>/<metric>` and store the generations.

    The generations go to the rollout store as stage `eval-<label>` at `step`. A stage's periodic evaluations pass
    its name and their training step (logged with the label `<label>-step<step>`): they share one store stage, so a
    run with any number of them never runs out of the store's 100 stage indices.
    With several processes rank 0 alone evaluates (greedy generation on the unwrapped model needs no collective);
    the others log an empty row so every rank's history keeps the same length, then all meet at a barrier.
    """
    from mmreason.runs.run import reward_weights

    results: dict[str, dict[str, float]] = {}
    store_stage = f"eval-{label}"
    label = f"{label}-step{step}" if step else label
    stage = f"eval-{label}"
    if not run.is_main and not run.shards_params:
        log_metrics(run, stage, 0, {"label": label})
        run.barrier()
        return results
    rows: list[dict] = []
    pictures: dict[str, Any] = {}
    for task_name, samples in run.val.items():
        if not samples:
            continue
        with run.generation_context():  # ZeRO-3 / FSDP: every rank evaluates, rank 0 alone writes
            metrics, gens, named, total = evaluate_samples(
                run.policy,
                task_name,
                samples,
                reward_weights(run, task_name),
                run.cfg.eval.max_new_tokens,
                run.cfg.eval.batch_size,
                run.reward_errors,
            )
        results[task_name] = metrics
        rows += eval_rows(run.cfg.name, store_stage, samples, gens, named, total, step)
        if run.trackers is not None:
            pictures.update(eval_pictures(get_task(task_name), task_name, samples, gens.texts))
    if rows and run.is_main:
        run.store.append(rows, store_stage, step)
    flat = {f"eval/{t}/{k}": v for t, m in results.items() for k, v in m.items()}
    log_metrics(run, stage, 0, {"label": label, **flat})
    if run.trackers is not None:
        run.trackers.log_images(pictures)  # at the step of the metrics line just logged
    run.barrier()
    return results


# ------------------------------------------------------------------------------------------------ mmreason eval


@dataclass
class EvalSettings:
    """How `mmreason eval` evaluates, and where each setting came from ("flag", "run" or "default")."""

    think: bool
    min_pixels: int
    max_pixels: int
    max_new_tokens: int
    batch_size: int
    budget: str | None = None  # the reasoning-budget level every prompt names (None: the run's budget setting)
    rewards: dict[str, float] = field(default_factory=dict)
    task_files: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line per setting group, e.g. `think: False (run)`."""
        o = self.origin
        return "\n".join(
            [
                f"think: {self.think} ({o.get('think')})",
                f"pixels: {self.min_pixels}..{self.max_pixels} ({o.get('min_pixels')}/{o.get('max_pixels')})",
                f"max_new_tokens: {self.max_new_tokens} ({o.get('max_new_tokens')}), batch_size: {self.batch_size}"
                f" ({o.get('batch_size')})",
                *([f"budget: {self.budget} ({o.get('budget')})"] if self.budget else []),
                f"rewards: {', '.join(f'{k}={v:g}' for k, v in self.rewards.items())} ({o.get('rewards')})",
                f"task files: {', '.join(self.task_files) or 'none'} ({o.get('task_files')})",
            ]
        )


@dataclass
class EvalResult:
    metrics: dict[str, float]
    run_dir: Path
    stage: str  # the store stage the generations went to
    settings: EvalSettings
    task: str


def eval_target(target: str | Path) -> tuple[Path, Path, Any]:
    """(checkpoint, the folder whose store gets the generations, the run's RunConfig or None) of a run directory
    (its latest checkpoint), or a checkpoint folder (its run's config when it lies in one)."""
    from mmreason.config import load_config
    from mmreason.train.checkpoint import latest_checkpoint

    target = Path(target)
    ckpt = latest_checkpoint(target) if (target / "checkpoints").is_dir() else target
    if ckpt is None or not (ckpt / "config.json").is_file() and not (ckpt / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{target} is neither a run directory with a checkpoint nor a checkpoint folder")
    run_dir = target if ckpt != target else ckpt.parent.parent
    config = run_dir / "config.yaml"
    return ckpt, run_dir, load_config(config) if config.is_file() else None


def eval_settings(
    run_cfg: Any, task_name: str, flags: dict[str, Any], task_files: list[str], task_files_origin: str
) -> EvalSettings:
    """Each setting from its flag when given (not None), else from the run's config, else the default."""
    from mmreason.config import RunConfig
    from mmreason.runs.run import config_reward_weights

    cfg = run_cfg if run_cfg is not None else RunConfig()
    from_run = {
        "think": cfg.think,
        "min_pixels": cfg.model.min_pixels,
        "max_pixels": cfg.model.max_pixels,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "batch_size": cfg.eval.batch_size,
        "budget": cfg.budget.force if cfg.budget.enabled else None,
    }
    values, origin = {}, {}
    for key, value in from_run.items():
        given = flags.get(key)
        values[key] = value if given is None else given
        origin[key] = "flag" if given is not None else ("run" if run_cfg is not None else "default")
    think_cfg = dataclasses.replace(cfg, think=values["think"], budget=forced_budget(cfg, values["budget"]))
    rewards = config_reward_weights(think_cfg, task_name)
    own = run_cfg is not None and any(d.task == task_name and d.rewards for d in cfg.data)
    origin["rewards"] = "run" if own else "task defaults"
    origin["task_files"] = task_files_origin
    return EvalSettings(**values, rewards=rewards, task_files=task_files, origin=origin)


def forced_budget(cfg: Any, level: str | None) -> Any:
    """The run's budget config with every prompt naming `level` (None: unchanged); a level the run's budget does
    not have is a ConfigError."""
    if level is None:
        return cfg.budget
    levels = {name.strip().lower() for name in cfg.budget.levels}
    if level.strip().lower() not in levels:
        raise ConfigError(f"--budget {level!r} is not a level of the run's budget ({', '.join(cfg.budget.levels)})")
    return dataclasses.replace(cfg.budget, enabled=True, force=level.strip().lower())


def run_entry(run_cfg: Any, task_name: str) -> dict[str, Any]:
    """The held-out data of the run's entry for `task_name` (what `mmreason eval` reads without --data)."""
    for d in run_cfg.data if run_cfg is not None else []:
        if d.task == task_name and d.val:
            return dataclasses.asdict(d)
    raise ConfigError(f"the run has no held-out data (`val`) for task {task_name!r}: pass --data")


def eval_task(run_cfg: Any, task: str | None) -> str:
    """--task, or the run's only task."""
    if task:
        return task
    tasks = list(dict.fromkeys(d.task for d in run_cfg.data)) if run_cfg is not None else []
    if len(tasks) != 1:
        raise ConfigError(f"pass --task ({'the run has tasks ' + ', '.join(tasks) if tasks else 'no run config'})")
    return tasks[0]


def eval_stage(ckpt: Path, source: str, settings: EvalSettings, entry: dict[str, Any], limit: int) -> str:
    """The store stage of one evaluation: checkpoint, data name and a digest of the data reference and every
    setting, so evaluations of two files of one name (or of one file with other settings) keep their own rows and
    only the very same evaluation run again replaces its own."""
    chosen = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("origin", "task_files")}
    key = {"source": source, "limit": limit, "settings": chosen,
           **{k: entry.get(k) for k in ("val", "val_split", "format", "columns", "media_dir")}}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.split("@")[0]).stem)[:40]
    return f"eval-{ckpt.name[:40]}-{stem}-{digest}"


def eval_checkpoint(
    target: str | Path,
    task_name: str | None,
    data: str | Path | dict | None = None,
    limit: int = 0,
    *,
    flags: dict[str, Any] | None = None,
    task_files: list[str | Path] | None = None,
) -> EvalResult:
    """`mmreason eval`: metrics of a run's latest checkpoint (or a checkpoint folder) on held-out data.

    data: a data reference, a data entry's fields (`val`, `val_split`, `format`, `columns`, `media_dir`), or None
        for the run's own held-out data of the task. flags: think, min_pixels, max_pixels, max_new_tokens,
        batch_size; None (or left out) takes the run's value. task_files: the caller's own task files, already
        loaded; None: import those the run recorded in run.json.

    Generations go to the run directory's rollout store under the stage `eval_stage` names.
    """
    from mmreason.data.entries import entry_context, read_entry
    from mmreason.data.records import build_samples
    from mmreason.models.policy import load_checkpoint_policy
    from mmreason.rollout.scoring import RewardErrors
    from mmreason.runs.run import load_run_files, sample_context
    from mmreason.runs.store import RolloutStore

    ckpt, run_dir, run_cfg = eval_target(target)
    if task_files is None:
        files, origin = [str(p) for p in load_run_files(run_dir)], "run"
    else:
        files, origin = [str(p) for p in task_files], "flag"
    task_name = eval_task(run_cfg, task_name)
    task = get_task(task_name)
    settings = eval_settings(run_cfg, task_name, flags or {}, files, origin if files else "none")
    cfg = effective_config(run_cfg, settings)
    policy = load_checkpoint_policy(ckpt, cfg.model)
    entry = run_entry(run_cfg, task_name) if data is None else data if isinstance(data, dict) else {"val": str(data)}
    dataset = read_entry(entry, "val")
    ctx = sample_context(cfg, policy.family.name, Path.cwd(), policy)
    samples, problems = build_samples(dataset, task, entry_context(entry, ctx), limit=limit or None)
    for problem in [*dataset.problems, *problems]:
        log.warning("skipping record: %s", problem)
    if not samples:
        raise ValueError(f"no usable records in {dataset.source} for task {task_name!r}")
    metrics, gens, named, total = evaluate_samples(
        policy, task_name, samples, settings.rewards, settings.max_new_tokens, settings.batch_size, RewardErrors()
    )
    stage = eval_stage(ckpt, dataset.source, settings, entry, limit)
    RolloutStore(run_dir).append(eval_rows(run_dir.name, stage, samples, gens, named, total), stage, 0)
    return EvalResult(metrics, run_dir, stage, settings, task_name)


def effective_config(run_cfg: Any, settings: EvalSettings) -> Any:
    """The run's config (or the defaults) with the evaluation's settings in it."""
    from mmreason.config import RunConfig

    cfg = run_cfg if run_cfg is not None else RunConfig()
    model = dataclasses.replace(cfg.model, min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)
    evaluation = dataclasses.replace(cfg.eval, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    return dataclasses.replace(cfg, think=settings.think, model=model, eval=evaluation,
                               budget=forced_budget(cfg, settings.budget))
