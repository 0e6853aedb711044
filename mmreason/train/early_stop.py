"""Held-out targets that end a stage early (`<stage>.stop_at`, `mmreason.config_schedule.StopAt`): the config's
checks and the decision at each of the stage's periodic evaluations.

A stage with a target evaluates every `eval_every` steps as usual; at the first evaluation where the metric reaches
the target the stage ends, and the run goes on as after a stage's last step (its end evaluation and its final
checkpoint, at the step reached). The learning-rate schedule still spans the stage's `steps`.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console

from mmreason.config import ConfigError, RunConfig, StopAt, show_value

console = Console(stderr=True)  # also written to the run's train.log (mmreason.runs.trackers)

TARGETS = ("at_least", "at_most")


def check_stop_at(cfg: RunConfig) -> None:
    """ConfigError naming the key: a target without a metric, a metric with no target or both, a metric that is not
    "<task>/<name>" of a task some data entry evaluates (one with a `val` file), or a stage that never evaluates
    before its end. Stages not in `stages` are not checked (their settings are unused)."""
    evaluated = sorted({d.task for d in cfg.data if d.val})
    for stage in dict.fromkeys(cfg.stages):
        stop, where = getattr(cfg, stage).stop_at, f"{stage}.stop_at"
        targets = [key for key in TARGETS if getattr(stop, key) is not None]
        if stop.metric is None:
            if targets:
                raise ConfigError(f"{where}.{targets[0]} needs {where}.metric: the held-out metric it is a target "
                                  "for, e.g. grounding/mean_iou")
            continue
        if len(targets) != 1:
            raise ConfigError(f"{where} needs one target, at_least (higher is better) or at_most (lower is "
                              f"better); got {'both' if targets else 'neither'}")
        task, _, name = stop.metric.partition("/")
        if not task or not name:
            raise ConfigError(f"{where}.metric is '<task>/<metric>' (e.g. grounding/mean_iou), got "
                              f"{show_value(stop.metric)}")
        if task not in evaluated:
            raise ConfigError(f"{where}.metric names task {task!r}, which no data entry evaluates (an entry with a "
                              f"`val` file): {', '.join(evaluated) or 'none has one'}")
        if not getattr(cfg, stage).eval_every:
            raise ConfigError(f"{where} needs {stage}.eval_every > 0: the stage can only stop at one of its "
                              "periodic evaluations")


def stop_metric_names(cfg: RunConfig, task_name: str) -> list[str]:
    """What an evaluation logs for the task, by the name `stop_at.metric` gives after "<task>/": the task's metrics,
    each reward's mean (`reward/<name>`) and `reward_total`."""
    from mmreason.registry import get_task
    from mmreason.runs.run import config_reward_weights

    rewards = [f"reward/{name}" for name in config_reward_weights(cfg, task_name)]
    return [*get_task(task_name).metric_names, *rewards, "reward_total"]


def check_stop_metrics(cfg: RunConfig) -> None:
    """ConfigError when a stage's `stop_at.metric` is not one its task's evaluations log (the tasks are registered
    by now: `mmreason.train.dryrun.check_sources` calls this)."""
    for stage in dict.fromkeys(cfg.stages):
        metric = getattr(cfg, stage).stop_at.metric
        if metric is None:
            continue
        task, _, name = metric.partition("/")
        names = stop_metric_names(cfg, task)
        if name not in names:
            raise ConfigError(f"{stage}.stop_at.metric: {task} reports no {name!r}; it reports "
                              f"{', '.join(names)}")


def target_text(stop: StopAt) -> str:
    """The target in words, e.g. "grounding/mean_iou >= 0.35"."""
    return f"{stop.metric} >= {stop.at_least}" if stop.at_least is not None else f"{stop.metric} <= {stop.at_most}"


def target_reached(stop: StopAt, results: dict[str, dict[str, float]]) -> float | None:
    """The metric's value when `results` (`evaluate`'s: task -> metric -> value) reach the target, else None (also
    when this process evaluated nothing, or the value is NaN)."""
    task, _, name = (stop.metric or "").partition("/")
    value = results.get(task, {}).get(name)
    if value is None or math.isnan(value):
        return None
    if stop.at_least is not None:
        return value if value >= stop.at_least else None
    return value if stop.at_most is not None and value <= stop.at_most else None


def should_stop(run: Any, stop: StopAt, results: dict[str, dict[str, float]], stage: str, step: int) -> bool:
    """Whether the stage ends at this evaluation, the same answer on every process (rank 0 alone may have
    evaluated); says so, with the value, in the console and train.log."""
    if stop.metric is None:
        return False
    value = target_reached(stop, results)
    if not run.sum(0.0 if value is None else 1.0) > 0:
        return False
    if value is not None and run.is_main:
        console.print(f"{stage}: held-out {stop.metric} is {value:.4g} (target: {target_text(stop)}) at step {step}: "
                      "the stage ends here")
    return True
