"""Run configuration: typed dataclasses, overlaid by YAML, overlaid by `key.sub=value` overrides.

Unknown keys fail with the closest valid name suggested; the resolved config is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

STAGES = ("sft", "grpo")
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
DATA_ERRORS = ("skip", "fatal")
ROLLOUT_BACKENDS = ("hf", "vllm")


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what was expected."""


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class TinyConfig:
    """Shape of the embedded default model (used when model.name == "tiny")."""

    arch: str = "qwen2_5_vl"
    hidden_size: int = 64
    layers: int = 2
    vision_depth: int = 2


@dataclass
class ModelConfig:
    name: str = "tiny"  # "tiny" (built offline), a hub id, or a local path
    dtype: str = "float32"  # float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    gradient_checkpointing: bool = False
    family: str = "auto"  # coordinate convention: auto (from the config's model_type) | qwen2_5_vl | qwen2_vl
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 256
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class DataConfig:
    """One task of the mixture: its train file, optional held-out file and mixture weight."""

    task: str = "counting"
    train: str = ""
    val: str | None = None
    weight: float = 1.0
    rewards: dict[str, float] | None = None  # override the task's default reward weights
    max_val: int = 64


@dataclass
class SFTConfig:
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    eval_every: int = 0  # 0 = only at the end of the stage
    save_every: int = 0  # 0 = only at the end of the stage
    max_bad_updates: int = 5  # stop after this many updates in a row skipped for a non-finite loss or gradient


@dataclass
class ToolsConfig:
    """Multi-turn rollouts where the policy may call its task's tools (zoom_in, crop_video, select_frames)."""

    enabled: bool = False
    max_turns: int = 2  # tool calls per trajectory; one more call ends it as over budget
    max_pixels: int = 28 * 28 * 256  # per tool image
    rewards: dict[str, float] = field(default_factory=lambda: {"tool_success": 0.1, "tool_discipline": 0.1})


@dataclass
class VLLMConfig:
    """The vLLM rollout engine (grpo.rollout: vllm): one engine per process, colocated with the trainer on its GPU."""

    # share of the GPU the engine takes (its weights + KV cache); the trainer keeps the rest
    gpu_memory_utilization: float = 0.3
    max_model_len: int = 4096  # prompt (with image tokens) + completion
    max_images: int = 4  # the most images one prompt may carry (the engine reserves memory for them)
    enable_sleep_mode: bool = False  # free the engine's weights and KV cache during the update (level-2 sleep)
    # truncated importance sampling of the sampler / trainer mismatch (vLLM's kernels are not the trainer's):
    # per-token weights min(pi_train / pi_vllm, cap) on the policy-gradient term; 0 turns the correction off
    importance_cap: float = 2.0


@dataclass
class GRPOConfig:
    steps: int = 100
    prompts_per_step: int = 4
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "constant"
    max_grad_norm: float = 1.0
    num_iterations: int = 1
    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.0
    loss_agg: str = "token_mean"
    scale_std: bool = True
    dynamic_sampling: bool = False
    mask_truncated: bool = False
    # encode each prompt (and its images) once per group in rollouts and in the loss (mmreason.rollout.prefix); false:
    # the prompt rows are repeated G times (HF generate, full-sequence scoring), the reference path
    share_prefix: bool = True
    # the rollout engine: "hf" (the policy itself, shared-prefix sampling) or "vllm" (pip install vllm; GPUs only;
    # weights synced to it before every rollout)
    rollout: str = "hf"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    eval_every: int = 0
    save_every: int = 0
    max_bad_updates: int = 5  # stop after this many updates in a row skipped for a non-finite loss or gradient
    tools: ToolsConfig = field(default_factory=ToolsConfig)


@dataclass
class EvalConfig:
    max_new_tokens: int = 64
    batch_size: int = 16
    at_start: bool = True  # evaluate before the first stage (the "before" row of the metrics table)


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["sft", "grpo"])
    think: bool = True
    strict_rewards: bool = False
    # a record that cannot become a sample: "skip" it during training (counted and logged), or "fatal": check every
    # record before training starts and stop with the list of all problems
    data_errors: str = "skip"
    keep_checkpoints: int = 2
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: list[DataConfig] = field(default_factory=list)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'{hint} (valid keys: {', '.join(sorted(valid))})")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field type (recursing into dataclasses and lists)."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"bad value for {where!r}: {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}].") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-3" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a number, got {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {where.rstrip('.')!r} must be true or false, got {value!r}")
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"config key {where.rstrip('.')!r} must be an integer, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"config key {where.rstrip('.')!r} must be a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(key, names, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}.")
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings (values parsed as YAML: numbers, bools, lists) to a config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return tree


def shipped_config_path(name: str) -> Path | None:
    """Path of a config shipped in mmreason/configs by bare name (e.g. "quickstart"), or None."""
    candidate = resources.files("mmreason.configs") / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def shipped_config_names() -> list[str]:
    root = resources.files("mmreason.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (or a shipped config's name) + overrides -> validated RunConfig."""
    p = Path(path)
    if not p.is_file():
        shipped = shipped_config_path(str(path))
        if shipped is None:
            raise ConfigError(
                f"config {str(path)!r} is neither a file nor a shipped config ({', '.join(shipped_config_names())})"
            )
        p = shipped
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of config keys")
    tree = apply_overrides(tree, list(overrides or []))
    cfg = from_dict(RunConfig, tree)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    for stage in cfg.stages:
        if stage not in STAGES:
            raise _unknown_key(stage, list(STAGES), "in stages: ")
    if cfg.grpo.loss_agg not in LOSS_AGGREGATIONS:
        raise ConfigError(f"grpo.loss_agg must be one of {', '.join(LOSS_AGGREGATIONS)}, got {cfg.grpo.loss_agg!r}")
    if cfg.grpo.group_size < 2 and "grpo" in cfg.stages:
        raise ConfigError(
            f"grpo.group_size must be >= 2 (advantages are relative to the group), got {cfg.grpo.group_size}"
        )
    if not cfg.data:
        raise ConfigError("config has no `data`: give at least one {task, train} entry")
    for i, d in enumerate(cfg.data):
        if not d.train:
            raise ConfigError(f"data[{i}].train is empty: give the path of the task's training file")
        if d.weight <= 0:
            raise ConfigError(f"data[{i}].weight must be > 0, got {d.weight}")
    if cfg.data_errors not in DATA_ERRORS:
        raise ConfigError(f"data_errors must be one of {', '.join(DATA_ERRORS)}, got {cfg.data_errors!r}")
    for stage in STAGES:
        if getattr(cfg, stage).max_bad_updates < 1:
            raise ConfigError(f"{stage}.max_bad_updates must be >= 1, got {getattr(cfg, stage).max_bad_updates}")
    if cfg.model.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype must be float32, bfloat16 or float16, got {cfg.model.dtype!r}")
    _validate_rollout(cfg.grpo)


def _validate_rollout(cfg: GRPOConfig) -> None:
    if cfg.rollout not in ROLLOUT_BACKENDS:
        raise ConfigError(f"grpo.rollout must be one of {', '.join(ROLLOUT_BACKENDS)}, got {cfg.rollout!r}")
    if cfg.rollout == "vllm" and cfg.tools.enabled:
        raise ConfigError("grpo.rollout: vllm does not run multi-turn tool rollouts; use grpo.rollout: hf with tools")
    if not 0.0 < cfg.vllm.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"grpo.vllm.gpu_memory_utilization must be in (0, 1], got {cfg.vllm.gpu_memory_utilization}")
    if cfg.vllm.importance_cap < 0:
        raise ConfigError(f"grpo.vllm.importance_cap must be >= 0 (0: no correction), got {cfg.vllm.importance_cap}")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return asdict(cfg)


def save_config(cfg: RunConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
