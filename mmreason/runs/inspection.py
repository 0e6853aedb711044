"""Rollout inspection: load a run directory (resolved config, metrics, rollout store), plot reward curves and the
spread of rewards within GRPO groups, pick the best / worst / most improved samples with filters (task, step range,
reward range, stage), and render a stored completion with its task's `visualize`.

The notebooks and `mmreason report` are built on these functions only. Everything reads the run through public
files: `metrics.jsonl`, `mmreason.runs.store.read` (safe while training writes) and the data files named in `run.json`,
from which a row's sample is rebuilt by its id to draw it.

Stage names follow the store: training rows are `grpo-<stage index>`, evaluations `eval-<label>`. A `stage`
argument matches a stage exactly or as a prefix before "-": "grpo" means every GRPO stage, "eval" every evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmreason.config import RunConfig, load_config
from mmreason.data.records import Dataset
from mmreason.data.sample import Sample
from mmreason.rewards import extract_answer, extract_think
from mmreason.runs import store
from mmreason.runs.samples import render_row, sample_for  # noqa: F401 (part of this module's API)

log = logging.getLogger(__name__)

KINDS = ("best", "worst", "most_improved")
TOTAL = "total"
TRAINING_METRICS = ("loss", "kl", "entropy", "clip_frac", "completion_len_mean", "truncated_rate")
Range = tuple[float | None, float | None]
# evaluation labels written by mmreason.train.stages / grpo / sft: "after-s01-grpo" (end of stage 1),
# "s01-grpo-step5" (periodic)
_STAGE_LABEL_RE = re.compile(r"^(after-)?s(\d{2})-")


@dataclass
class RunView:
    """One run directory, read: its config, `run.json`, metrics lines and rollout rows.

    metrics: one row per metrics.jsonl line, plus `stage_index` (the config stage a training line belongs to;
        evaluations keep the index of the stage they follow, or -1 before the first).
    rollouts: the rollout store (`mmreason.runs.store.read`), one row per completion, in training order.
    data_roots: extra folders that relative data paths of `run.json` are tried against (after the current folder
        and the run directory's ancestors).
    """

    run_dir: Path
    config: RunConfig
    info: dict[str, Any]
    metrics: pd.DataFrame
    rollouts: pd.DataFrame
    data_roots: list[Path] = field(default_factory=list)
    _datasets: dict[tuple[str, str], tuple[Dataset, dict[str, dict]]] = field(default_factory=dict, repr=False)
    _samples: dict[tuple[str, str, str], Sample] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def family(self) -> str:
        return str(self.info.get("family", "qwen2_5_vl"))

    @property
    def reward_names(self) -> list[str]:
        """Named rewards found in the store (the `reward_<name>` columns, without the total)."""
        return reward_names(self.rollouts)

    @property
    def stages(self) -> list[str]:
        """Stages of the store in training order."""
        return list(dict.fromkeys(self.rollouts["stage"]))

    @property
    def train_stages(self) -> list[str]:
        return [s for s in self.stages if not s.startswith("eval-")]

    @property
    def eval_stages(self) -> list[str]:
        return [s for s in self.stages if s.startswith("eval-")]

    @property
    def tasks(self) -> list[str]:
        return sorted(set(self.rollouts["task"].dropna()))


# ------------------------------------------------------------------------------------------------ loading


def load_run(run_dir: str | Path, data_roots: Sequence[str | Path] = ()) -> RunView:
    """Read a run directory (see `RunView`); safe while the run is still training."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    config = load_config(config_path, check_paths=False)  # the run exists: only read it
    info_path = run_dir / "run.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{info_path}: not valid JSON: {exc}") from None
    else:  # written by `mmreason train` since run.json exists; older runs fall back on the config
        family = config.model.family if config.model.family != "auto" else "qwen2_5_vl"
        info = {"family": family, "model": config.model.name, "data": [d.__dict__ for d in config.data]}
    return RunView(
        run_dir=run_dir,
        config=config,
        info=info,
        metrics=read_metrics(run_dir / "metrics.jsonl"),
        rollouts=_read_rollouts(run_dir),
        data_roots=[Path(p) for p in data_roots],
    )


def _read_rollouts(run_dir: Path) -> pd.DataFrame:
    """The rollout store; a shard that cannot be read (corrupt, cut short) is left out with a warning."""
    unreadable: list[str] = []
    rows = store.read(run_dir, unreadable=unreadable)
    for message in unreadable:
        log.warning("skipping %s", message)
    return rows


def read_metrics(path: str | Path) -> pd.DataFrame:
    """metrics.jsonl as a frame with a `stage_index` column; a missing file gives an empty frame.

    A partial last line (the run is writing it) is skipped silently; any other line that is not a JSON object with
    a "stage" (cut by a crash, or damaged) is skipped with a warning naming it.
    """
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=["stage", "step", "stage_index"])
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            if number == len(lines):
                break
            log.warning("skipping %s:%d: not a JSON object: %s", path, number, str(exc)[:200])
            continue
        if not isinstance(row, dict) or "stage" not in row:
            log.warning("skipping %s:%d: expected a JSON object with a 'stage' field", path, number)
            continue
        rows.append(row)
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["stage", "step"])
    frame["stage_index"] = _stage_indices(frame)
    return frame


def _stage_indices(frame: pd.DataFrame) -> list[int]:
    """Which config stage each line belongs to: the evaluation labelled `after-s<NN>-...` closes stage NN.

    The metrics' own "stage" is only "sft" / "grpo", which repeats when a config has two GRPO stages.
    """
    indices, current = [], 0
    labels = frame["label"] if "label" in frame else pd.Series([None] * len(frame))
    for stage, label in zip(frame["stage"], labels, strict=True):
        if not str(stage).startswith("eval-"):
            indices.append(current)
            continue
        text = label if isinstance(label, str) else str(stage).removeprefix("eval-")
        match = _STAGE_LABEL_RE.match(text)
        if match is None:  # "before", or a label of a user's own evaluation
            indices.append(current - 1)
            continue
        indices.append(int(match.group(2)))
        if match.group(1):  # after-sNN-...: stage NN is done
            current = int(match.group(2)) + 1
    return indices


# ------------------------------------------------------------------------------------------------ frames


def reward_names(rows: pd.DataFrame) -> list[str]:
    return sorted(c.removeprefix("reward_") for c in rows.columns if c.startswith("reward_") and c != "reward_total")


def reward_column(reward: str) -> str:
    return "reward_total" if reward == TOTAL else f"reward_{reward}"


def stage_matches(stage: str, pattern: str | None) -> bool:
    """`pattern` None matches all; else the stage itself or a prefix before "-" ("grpo" matches "grpo-1")."""
    return pattern is None or stage == pattern or stage.startswith(pattern + "-")


def filter_rows(
    rows: pd.DataFrame,
    *,
    task: str | Sequence[str] | None = None,
    steps: Range | None = None,
    reward_range: Range | None = None,
    stage: str | None = None,
    reward: str = TOTAL,
) -> pd.DataFrame:
    """Rows of the given task(s), stage, inclusive step range and inclusive range of `reward` (None = open end)."""
    keep = pd.Series(True, index=rows.index)
    if task is not None:
        keep &= rows["task"].isin([task] if isinstance(task, str) else list(task))
    if stage is not None:
        keep &= rows["stage"].map(lambda s: stage_matches(str(s), stage))
    if steps is not None:
        keep &= _in_range(rows["step"], steps, "steps")
    if reward_range is not None:
        keep &= _in_range(rows[_column(rows, reward)], reward_range, "reward_range")
    return rows[keep]


def _in_range(values: pd.Series, bounds: Range, name: str) -> pd.Series:
    if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
        raise ValueError(f"{name} must be a (low, high) pair with None for an open end, got {bounds!r}")
    low, high = bounds
    keep = values.notna()
    if low is not None:
        keep &= values >= low
    if high is not None:
        keep &= values <= high
    return keep


def _column(rows: pd.DataFrame, reward: str) -> str:
    col = reward_column(reward)
    if col not in rows.columns:
        raise KeyError(f"no reward {reward!r} in the rollouts (known: {', '.join([TOTAL, *reward_names(rows)])})")
    return col


def reward_table(view: RunView, *, task: str | Sequence[str] | None = None, stage: str | None = None) -> pd.DataFrame:
    """Mean of every named reward and the total per (stage, step) of the training stages (the curves' data).

    NaN means the reward did not apply at that step (a task mixture logs each task's rewards on its own rows).
    """
    rows = filter_rows(view.rollouts, task=task, stage=stage)
    rows = rows[~rows["stage"].str.startswith("eval-")]
    cols = [reward_column(n) for n in reward_names(rows)] + ["reward_total"]
    table = rows.groupby(["stage", "step"], sort=False)[cols].mean().reset_index()
    return table.rename(columns={c: c.removeprefix("reward_") for c in cols})


def group_stats(view: RunView, *, stage: str | None = None, reward: str = TOTAL) -> pd.DataFrame:
    """One row per training group: stage, step, group_id, sample_id, task, n, mean, std (population), min, max."""
    rows = filter_rows(view.rollouts, stage=stage)
    rows = rows[~rows["stage"].str.startswith("eval-")]
    col = _column(view.rollouts, reward)
    grouped = rows.groupby(["stage", "step", "group_id"], sort=False)
    stats = grouped[col].agg(
        n="count", mean="mean", std=lambda x: float(np.std(x)) if len(x) else math.nan, min="min", max="max"
    )
    ids = grouped[["sample_id", "task"]].first()
    return ids.join(stats).reset_index()


def eval_table(view: RunView) -> pd.DataFrame:
    """Held-out metrics: one row per evaluation (label), one column per `<task>/<metric>` (rewards left out)."""
    return eval_metrics_table(view.metrics)


def eval_metrics_table(metrics: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """`eval_table` of metrics lines: a frame of metrics.jsonl (`read_metrics`), or the lines as dicts (a training
    run's history). Empty when no line is an evaluation's; NaN where an evaluation has no value for a column."""
    m = metrics if isinstance(metrics, pd.DataFrame) else pd.DataFrame(list(metrics))
    if m.empty or "stage" not in m:
        return pd.DataFrame()
    rows = m[m["stage"].astype(str).str.startswith("eval-")]
    keys = sorted(k for k in m.columns if k.startswith("eval/") and "/reward/" not in k and rows[k].notna().any())
    labels = rows["label"] if "label" in rows else rows["stage"].str.removeprefix("eval-")
    table = rows[keys].rename(columns=lambda k: k.removeprefix("eval/"))
    table.index = pd.Index(labels.fillna(rows["stage"]).tolist(), name="evaluation")
    return table


def split_completion(text: str) -> tuple[str | None, str | None]:
    """(reasoning inside <think>, answer inside the last <answer>); None for a part that is not there."""
    return extract_think(text), extract_answer(text)


# ------------------------------------------------------------------------------------------------ selection


def select_samples(
    view: RunView,
    kind: str = "best",
    n: int = 5,
    *,
    task: str | Sequence[str] | None = None,
    steps: Range | None = None,
    reward_range: Range | None = None,
    stage: str | None = None,
    reward: str = TOTAL,
    per_sample: bool = False,
) -> pd.DataFrame:
    """The n best / worst completions by `reward`, or the n samples that improved most.

    best / worst: rows of view.rollouts (index kept, so `view.rollouts.loc[i]` works), ties in training order;
        rows where `reward` does not apply are left out; per_sample keeps only each sample's best (worst) row.
    most_improved: one row per (task, sample_id) seen at two or more (stage, step) points after the filters: the
        best completion of its last appearance, with first_stage, first_step, first_reward, last_reward (the mean
        `reward` of the sample's completions there), improvement = last - first and first_row (index of the best
        completion of the first appearance). Sorted by improvement, largest first; reward_range applies to
        last_reward.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    col = _column(view.rollouts, reward)
    rows = filter_rows(view.rollouts, task=task, steps=steps, stage=stage)
    rows = rows[rows[col].notna()]
    if kind == "most_improved":
        table = _improvements(rows, view.stages, col)
        if reward_range is not None:
            table = table[_in_range(table["last_reward"], reward_range, "reward_range")]
        return table.head(n)
    if reward_range is not None:
        rows = rows[_in_range(rows[col], reward_range, "reward_range")]
    rows = rows.sort_values(col, ascending=(kind == "worst"), kind="stable")
    if per_sample:
        rows = rows.drop_duplicates(["task", "sample_id"], keep="first")
    return rows.head(n)


def _improvements(rows: pd.DataFrame, stage_order: list[str], col: str) -> pd.DataFrame:
    rank = {s: i for i, s in enumerate(stage_order)}
    rows = rows.assign(_when=[(rank[s], int(t)) for s, t in zip(rows["stage"], rows["step"], strict=True)])
    points = rows.groupby(["task", "sample_id", "_when"], sort=True)[col].agg(["mean", "idxmax"]).reset_index()
    picked = []
    for _, seen in points.groupby(["task", "sample_id"], sort=False):
        if len(seen) < 2:
            continue
        first, last = seen.iloc[0], seen.iloc[-1]
        picked.append(
            {
                "row": last["idxmax"],
                "first_row": first["idxmax"],
                "first_reward": first["mean"],
                "last_reward": last["mean"],
                "improvement": last["mean"] - first["mean"],
            }
        )
    columns = [
        *rows.columns.drop("_when"),
        "first_stage",
        "first_step",
        "first_reward",
        "last_reward",
        "improvement",
        "first_row",
    ]
    if not picked:
        return pd.DataFrame(columns=columns)
    meta = pd.DataFrame(picked).set_index("row")
    table = rows.drop(columns="_when").loc[meta.index].join(meta)
    table["first_stage"] = rows.loc[table["first_row"], "stage"].to_numpy()
    table["first_step"] = rows.loc[table["first_row"], "step"].to_numpy()
    return table[columns].sort_values("improvement", ascending=False, kind="stable")


# ------------------------------------------------------------------------------------------------ figures


def reward_curves(view: RunView, *, task: str | Sequence[str] | None = None, stage: str | None = None) -> Figure:
    """Mean reward per step: one line per named reward and one for the total, one panel per training stage."""
    table = reward_table(view, task=task, stage=stage)
    stages = list(dict.fromkeys(table["stage"]))
    fig = Figure(figsize=(7.6 * max(1, len(stages)), 3.8), layout="constrained")
    if not stages:
        return _empty(fig, "no training rollouts to plot")
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    names = [c for c in table.columns if c not in ("stage", "step", TOTAL)]
    for ax, name in zip(axes, stages, strict=True):
        part = table[table["stage"] == name]
        for reward in names:
            series = part[["step", reward]].dropna()
            if len(series):
                ax.plot(series["step"], series[reward], marker="o", markersize=3, linewidth=1.2, label=reward)
        series = part[["step", TOTAL]].dropna()
        ax.plot(series["step"], series[TOTAL], marker="o", markersize=4, linewidth=2.4, color="black", label=TOTAL)
        ax.set_title(f"{name}: mean reward per step" + (f" ({_describe(task)})" if task else ""), fontsize=10)
        _step_axis(ax)
        _reward_ylim(ax)
        ax.set_ylabel("mean reward")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a curve
    return fig


def group_reward_distribution(
    view: RunView, step: int | None = None, *, stage: str | None = None, reward: str = TOTAL, max_groups: int = 32
) -> Figure:
    """Left: each group's rewards at one step (box + points; default the last step of the last training stage);
    right: mean within-group std and the share of zero-spread groups (no learning signal) over the steps."""
    stats = group_stats(view, stage=stage, reward=reward)
    fig = Figure(figsize=(12.8, 4.0), layout="constrained")
    if stats.empty:
        return _empty(fig, "no training groups to plot")
    name = stage if stage in set(stats["stage"]) else list(dict.fromkeys(stats["stage"]))[-1]
    stats = stats[stats["stage"] == name]
    step = int(stats["step"].max()) if step is None else int(step)
    if step not in set(stats["step"]):
        raise ValueError(f"stage {name!r} has no step {step} (steps: {sorted(set(stats['step']))})")
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1.0])
    _group_boxes(left, view, name, step, reward, max_groups)
    per_step = stats.groupby("step").agg(mean_std=("std", "mean"), zero=("std", lambda s: float((s < 1e-9).mean())))
    right.plot(per_step.index, per_step["mean_std"], marker="o", label="mean within-group std")
    right.plot(per_step.index, per_step["zero"], marker="s", linestyle="--", label="share of groups with zero spread")
    right.axvline(step, color="grey", linewidth=0.8, linestyle=":")
    right.set_title(f"{name}: spread of {reward_column(reward)} within groups", fontsize=10)
    _step_axis(right)
    _reward_ylim(right)
    right.legend(fontsize=8)
    return fig


def _group_boxes(ax: Any, view: RunView, stage: str, step: int, reward: str, max_groups: int) -> None:
    rows = view.rollouts[(view.rollouts["stage"] == stage) & (view.rollouts["step"] == step)]
    col = reward_column(reward)
    groups = [(gid, part) for gid, part in rows.groupby("group_id", sort=True)][:max_groups]
    values = [part[col].dropna().to_numpy() for _, part in groups]
    ax.boxplot(values, positions=range(len(groups)), widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same run always gives the same picture
    for i, v in enumerate(values):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=14, alpha=0.7, zorder=3)
    labels = [f"{part['sample_id'].iloc[0]}" for _, part in groups]
    ax.set_xticks(range(len(groups)), [_short(x, 18) for x in labels], rotation=30, ha="right", fontsize=7)
    g = max((len(v) for v in values), default=0)
    ax.set_title(f"{stage} step {step}: {col} of each group (G={g})", fontsize=10)
    ax.set_ylabel(col)
    ax.grid(True, axis="y", alpha=0.3)
    _reward_ylim(ax)


def training_curves(view: RunView, keys: Sequence[str] = TRAINING_METRICS) -> Figure:
    """Loss, KL, entropy, clip fraction, completion length... of the GRPO metrics, per step and stage."""
    m = view.metrics
    rows = m[m["stage"] == "grpo"] if "stage" in m else m
    keys = [k for k in keys if k in rows and rows[k].notna().any()]
    fig = Figure(figsize=(3.2 * max(1, len(keys)), 3.0), layout="constrained")
    if rows.empty or not keys:
        return _empty(fig, "no GRPO metrics to plot")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        for index, part in rows.groupby("stage_index", sort=True):
            ax.plot(part["step"], part[key], marker="o", markersize=3, label=f"grpo-{index}")
        ax.set_title(key, fontsize=10)
        _step_axis(ax)
    if rows["stage_index"].nunique() > 1:
        axes[0].legend(fontsize=8)
    return fig


def _step_axis(ax: Any) -> None:
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def _reward_ylim(ax: Any) -> None:
    """Show at least [0, 1], where rewards live: a flat line at 0 then reads as "no reward", not as noise."""
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, -0.05), max(high, 1.05))


def _empty(fig: Figure, message: str) -> Figure:
    ax = fig.subplots()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    return fig


def _describe(task: str | Sequence[str] | None) -> str:
    return task if isinstance(task, str) else ", ".join(task or [])


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
