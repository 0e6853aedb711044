"""The allowed range of every number of the run config, and the checks of its names, paths and pairs of keys that
must agree: `check_values` runs inside `mmreason.config.validate`, before anything is built, so an out-of-range
value is one ConfigError line naming the key, never a traceback from deep inside a stage (or a stage that silently
trains nothing).

`RANGES` holds one entry per int and float field of the schema (optional ones too: null is always allowed), by
dotted key (a data entry's as `data[].key`); `tests/test_config_ranges.py` checks that no numeric field is missing
from it. NaN and infinities are outside every range.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmreason.config import ConfigError, RunConfig, show_value


@dataclass(frozen=True)
class Range:
    """low <= value <= high (None: no end; `above` / `below` exclude low / high); `why` is added to the message."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False
    why: str = ""

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or (value < self.high if self.below else value <= self.high)

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "a finite number"
        if self.high is None:
            return f"{'>' if self.above else '>='} {self.low}"
        return f"in {'(' if self.above else '['}{self.low}, {self.high}{')' if self.below else ']'}"


ONE_OR_MORE = Range(1)
ZERO_OR_MORE = Range(0)
POSITIVE = Range(0, above=True)
RATIO = Range(0, 1)
EVERY = Range(0, why="0: only at the end of the stage")
DERIVED = Range(0, why="0: derived from the model's context length")
BAD_UPDATES = Range(1)
FINITE = Range()

RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1, why="numpy and torch take a 32-bit seed"),
    "keep_checkpoints": Range(1, why="the latest checkpoint is what --resume continues from"),
    "model.min_pixels": ONE_OR_MORE,
    "model.max_pixels": ONE_OR_MORE,
    "model.max_prompt_tokens": DERIVED,
    "model.max_vision_tokens": DERIVED,
    "model.max_images": DERIVED,
    "model.max_target_tokens": DERIVED,
    "model.lora.r": ONE_OR_MORE,
    "model.lora.alpha": POSITIVE,
    "model.lora.dropout": Range(0, 1, below=True),
    "model.tiny.hidden_size": Range(8),
    "model.tiny.layers": ONE_OR_MORE,
    "model.tiny.vision_depth": ONE_OR_MORE,
    "data[].weight": POSITIVE,
    "data[].max_val": ONE_OR_MORE,
    "schedule.prior": Range(0, 1, why="a difficulty: 0 easiest, 1 hardest"),
    "schedule.start": Range(0, 1, why="a difficulty: 0 easiest, 1 hardest"),
    "schedule.end": Range(0, 1, why="a difficulty: 0 easiest, 1 hardest"),
    "schedule.width": Range(0, why="0: the target alone"),
    "schedule.floor": Range(0, 1, why="the least weight, relative to a prompt on target"),
    "sft.steps": Range(1, why="leave the stage out of `stages` to skip it"),
    "sft.batch_size": ONE_OR_MORE,
    "sft.grad_accum": Range(1, why="micro-batches per update"),
    "sft.lr": POSITIVE,
    "sft.weight_decay": ZERO_OR_MORE,
    "sft.warmup_ratio": RATIO,
    "sft.max_grad_norm": POSITIVE,
    "sft.eval_every": EVERY,
    "sft.save_every": EVERY,
    "sft.stop_at.at_least": FINITE,
    "sft.stop_at.at_most": FINITE,
    "sft.max_bad_updates": BAD_UPDATES,
    "grpo.steps": Range(1, why="leave the stage out of `stages` to skip it"),
    "grpo.prompts_per_step": ONE_OR_MORE,
    "grpo.group_size": Range(2, why="advantages are relative to the group"),
    "grpo.temperature": Range(0, above=True, why="sampling divides the logits by it"),
    "grpo.top_p": Range(0, 1, above=True),
    "grpo.max_new_tokens": ONE_OR_MORE,
    "grpo.lr": POSITIVE,
    "grpo.weight_decay": ZERO_OR_MORE,
    "grpo.warmup_ratio": RATIO,
    "grpo.max_grad_norm": POSITIVE,
    "grpo.num_iterations": Range(1, why="updates per rollout batch"),
    "grpo.eps_low": Range(0, 1, below=True, why="the ratio is clipped below at 1 - eps_low"),
    "grpo.eps_high": ZERO_OR_MORE,
    "grpo.beta": Range(0, why="0: no KL term"),
    "grpo.eval_every": EVERY,
    "grpo.save_every": EVERY,
    "grpo.stop_at.at_least": FINITE,
    "grpo.stop_at.at_most": FINITE,
    "grpo.max_bad_updates": BAD_UPDATES,
    "grpo.filter.low": FINITE,
    "grpo.filter.high": FINITE,
    "grpo.filter.max_extra_prompts": Range(0, why="0: no refill"),
    "grpo.vllm.gpu_memory_utilization": Range(0, 1, above=True),
    "grpo.vllm.max_model_len": ONE_OR_MORE,
    "grpo.vllm.max_images": ONE_OR_MORE,
    "grpo.vllm.importance_cap": Range(0, why="0: no correction"),
    "grpo.tools.max_turns": ONE_OR_MORE,
    "grpo.tools.max_pixels": ONE_OR_MORE,
    "rejection_sft.steps": Range(1, why="leave the stage out of `stages` to skip it"),
    "rejection_sft.prompts_per_step": ONE_OR_MORE,
    "rejection_sft.samples_per_prompt": ONE_OR_MORE,
    "rejection_sft.min_reward": Range(why="or null: each task's best total"),
    "rejection_sft.temperature": Range(0, above=True, why="sampling divides the logits by it"),
    "rejection_sft.top_p": Range(0, 1, above=True),
    "rejection_sft.max_new_tokens": ONE_OR_MORE,
    "rejection_sft.batch_size": ONE_OR_MORE,
    "rejection_sft.lr": POSITIVE,
    "rejection_sft.weight_decay": ZERO_OR_MORE,
    "rejection_sft.warmup_ratio": RATIO,
    "rejection_sft.max_grad_norm": POSITIVE,
    "rejection_sft.eval_every": EVERY,
    "rejection_sft.save_every": EVERY,
    "rejection_sft.stop_at.at_least": FINITE,
    "rejection_sft.stop_at.at_most": FINITE,
    "rejection_sft.max_bad_updates": BAD_UPDATES,
    "budget.length_weight": FINITE,
    "budget.difficulty_weight": FINITE,
    "eval.max_new_tokens": ONE_OR_MORE,
    "eval.batch_size": ONE_OR_MORE,
}

_DEVICE_RE = re.compile(r"^(auto|[a-z]+(:\d+)?)$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_values(cfg: RunConfig, check_paths: bool = True) -> None:
    """Every range of `RANGES`, then names, pairs of keys, and (with check_paths) the output folder."""
    for key, allowed in RANGES.items():
        for name, value in _values(cfg, key):
            if value is not None and not allowed.holds(value):  # None: an optional number left unset
                why = f" ({allowed.why})" if allowed.why else ""
                raise ConfigError(f"{name} must be {allowed}{why}, got {show_value(value)}")
    _check_strings(cfg)
    _check_pairs(cfg)
    for i, d in enumerate(cfg.data):
        _check_weights(d.rewards or {}, f"data[{i}].rewards")
    _check_weights(cfg.grpo.tools.rewards, "grpo.tools.rewards")
    for i, phase in enumerate(cfg.grpo.reward_schedule):
        if not (math.isfinite(phase.start) and phase.start >= 0):
            raise ConfigError(f"grpo.reward_schedule[{i}].start must be >= 0 (below 1: a share of the stage's steps; "
                              f"else a step number), got {show_value(phase.start)}")
        if not phase.rewards:
            raise ConfigError(f"grpo.reward_schedule[{i}].rewards is empty: give task -> reward -> weight")
        for task, weights in phase.rewards.items():
            _check_weights(weights, f"grpo.reward_schedule[{i}].rewards.{task}")
    _check_budget(cfg)
    if check_paths:
        check_output_dir(cfg)


def _values(cfg: RunConfig, key: str) -> list[tuple[str, Any]]:
    """(printed key, value) of a RANGES key: one per data entry for `data[].x`."""
    if key.startswith("data[]."):
        field = key.removeprefix("data[].")
        return [(f"data[{i}].{field}", getattr(d, field)) for i, d in enumerate(cfg.data)]
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return [(key, node)]


def _check_strings(cfg: RunConfig) -> None:
    name = cfg.name
    bad = not name.strip() or name.startswith(".") or len(name) > 200 or "/" in name or "\\" in name
    if bad or _CONTROL_RE.search(name):  # the run folder is output_dir/name, its lock file .name.lock beside it
        raise ConfigError(f"name must be one folder name (1-200 characters, no '/', '\\', control characters or "
                          f"leading '.'), got {show_value(name)}")
    if not cfg.output_dir:
        raise ConfigError("output_dir is empty: give the folder that holds run folders (default: runs)")
    if not _DEVICE_RE.match(cfg.device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N (a torch device), got {show_value(cfg.device)}")
    if not cfg.stages:
        raise ConfigError("stages is empty: a run needs at least one of sft, grpo, rejection_sft")
    for key in ("name", "attn_implementation"):
        if not getattr(cfg.model, key).strip():
            raise ConfigError(f"model.{key} is empty")
    targets = cfg.model.lora.target_modules
    if not targets or (isinstance(targets, list) and not all(isinstance(t, str) and t for t in targets)):
        raise ConfigError(f"model.lora.target_modules must be all-linear, a module name pattern or a list of module "
                          f"names, got {show_value(targets)}")


def _check_pairs(cfg: RunConfig) -> None:
    """Keys that are each in range but must agree with each other."""
    model = cfg.model
    if model.min_pixels > model.max_pixels:
        raise ConfigError(f"model.min_pixels ({model.min_pixels}) must be <= model.max_pixels ({model.max_pixels})")
    if cfg.grpo.tools.max_pixels < model.min_pixels:
        raise ConfigError(f"grpo.tools.max_pixels ({cfg.grpo.tools.max_pixels}) must be >= model.min_pixels "
                          f"({model.min_pixels}): a tool's image is resized into both")
    if model.tiny.hidden_size % 8:
        raise ConfigError(f"model.tiny.hidden_size must be a multiple of 8 (4 heads with an even head size), got "
                          f"{model.tiny.hidden_size}")
    grpo = cfg.grpo
    if grpo.filter.low >= grpo.filter.high:
        raise ConfigError(f"grpo.filter.low ({grpo.filter.low}) must be < grpo.filter.high ({grpo.filter.high}): a "
                          "group is kept when low < its mean accuracy < high")
    if grpo.filter.reward is not None and not grpo.filter.reward.strip():
        raise ConfigError("grpo.filter.reward is empty: give a reward name, total, or leave it out (accuracy)")
    if grpo.rollout == "vllm" and grpo.vllm.max_model_len <= grpo.max_new_tokens:
        raise ConfigError(f"grpo.vllm.max_model_len ({grpo.vllm.max_model_len}) must exceed grpo.max_new_tokens "
                          f"({grpo.max_new_tokens}): it holds the prompt and the completion")


def _check_weights(weights: dict[str, Any], where: str) -> None:
    for name, weight in weights.items():
        number = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not (isinstance(name, str) and name and number and math.isfinite(weight)):
            raise ConfigError(f"{where} maps reward names to finite weights, got {show_value(name)}: "
                              f"{show_value(weight)}")


def _check_budget(cfg: RunConfig) -> None:
    budget = cfg.budget
    levels = budget.levels
    ok = isinstance(levels, dict) and levels and all(
        isinstance(k, str) and k.strip() and isinstance(v, int) and not isinstance(v, bool) and v >= 1
        for k, v in levels.items())
    if not ok:
        raise ConfigError(f"budget.levels maps level names (easiest first) to word budgets >= 1, e.g. {{easy: 32, "
                          f"hard: 256}}; got {show_value(levels)}")
    if budget.force is not None and budget.force not in levels:
        raise ConfigError(f"budget.force must be one of the levels ({', '.join(levels)}), got "
                          f"{show_value(budget.force)}")
    if budget.enabled and not cfg.think:
        raise ConfigError("budget.enabled needs think: true (the tag opens the <think> part)")


def check_output_dir(cfg: RunConfig) -> None:
    """The run folder can be made and written: output_dir and the run folder are folders (or do not exist yet) and
    the nearest existing one is writable."""
    try:
        for what, path in (("output_dir", Path(cfg.output_dir)), ("the run folder", cfg.run_dir)):
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{what} {path} is a file, not a folder")
        existing = next((p for p in (cfg.run_dir, *cfg.run_dir.absolute().parents) if p.exists()), None)
    except OSError as exc:  # a name too long for the file system, and the like
        raise ConfigError(f"output_dir {show_value(cfg.output_dir)}: {exc.strerror}") from None
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing} is not writable: the run folder {cfg.run_dir} cannot be written (choose "
                          "another output_dir)")
