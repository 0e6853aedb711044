"""Run configuration: typed dataclasses, overlaid by YAML, overlaid by `key.sub=value` overrides.

This module owns the config schema (every key, its type, default and meaning), loading and saving it, and checking
it: each value is checked against its field's type when the config is built (`typing.Literal` fields against their
allowed values), and `validate` adds the checks that span several fields or need a range (the range of every
number lives in `mmreason.config_ranges`). Unknown keys and values outside a `Literal` fail with the closest valid
name suggested; the resolved config is saved in the run directory.

Every failure is one ConfigError line that shows at most a few hundred characters of a bad value (`show_value`).
YAML is read without aliases (a few hundred bytes of nested aliases expand to gigabytes) and a config file over
MAX_CONFIG_BYTES is refused unread.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from mmreason.config_schedule import (  # noqa: F401 (re-exported: part of the schema)
    BudgetConfig,
    Curriculum,
    DifficultyStage,
    FilterConfig,
    MixturePhase,
    RewardPhase,
    ScheduleBy,
    ScheduleConfig,
    StopAt,
)

# The allowed values of the enum-like keys; `_coerce` checks them when the config is built.
Stage = Literal["sft", "grpo", "rejection_sft"]
LossAggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
# transformers' `get_scheduler` kinds that need nothing beyond the warmup and total step counts ("constant" has no
# warmup: warmup_ratio needs "constant_with_warmup")
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
DataErrors = Literal["skip", "fatal"]
RolloutBackend = Literal["hf", "vllm"]
DType = Literal["float32", "bfloat16", "float16"]

STAGES: tuple[str, ...] = typing.get_args(Stage)
LOSS_AGGREGATIONS: tuple[str, ...] = typing.get_args(LossAggregation)
SCHEDULERS: tuple[str, ...] = typing.get_args(Scheduler)
DATA_ERRORS: tuple[str, ...] = typing.get_args(DataErrors)
ROLLOUT_BACKENDS: tuple[str, ...] = typing.get_args(RolloutBackend)
DTYPES: tuple[str, ...] = typing.get_args(DType)
# experiment trackers `report_to` may name: accelerate's tracker classes (mmreason.runs.trackers)
TRACKERS: tuple[str, ...] = (
    "tensorboard", "wandb", "swanlab", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "trackio"
)


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what was expected."""


MAX_SHOWN_CHARS = 200  # an error message shows at most this much of a bad value
MAX_CONFIG_BYTES = 1 << 20  # a config file is hand-written YAML: anything larger is refused unread
_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = MAX_SHOWN_CHARS, MAX_SHOWN_CHARS, 60, 3


@dataclass
class LoraConfig:
    """LoRA adapters (peft) trained instead of the full model."""

    enabled: bool = False  # train LoRA adapters only (the base weights stay frozen)
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapter input, 0..1
    # modules that get adapters: "all-linear" (every linear layer but the output head), a list of module names, or
    # one regular expression matched against the full module names (peft's `target_modules`)
    target_modules: list[str] | str = "all-linear"


@dataclass
class TinyConfig:
    """Shape of the embedded default model (used when model.name == "tiny")."""

    arch: str = "qwen2_5_vl"  # model family of the architecture (checked by the model-family registry)
    hidden_size: int = 64  # width of the language model
    layers: int = 2  # language-model layers
    vision_depth: int = 2  # vision-encoder blocks


@dataclass
class ModelConfig:
    """The policy: which model, its precision, attention kernel, image pixel budget and adapters."""

    name: str = "tiny"  # "tiny" (built offline), a hub id, or a local path
    dtype: DType = "float32"  # weight dtype (and autocast precision on GPUs)
    # attention kernel passed to transformers: eager | sdpa | flash_attention_2 (or any other kernel it accepts)
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    # faster forwards that compute the same values (`mmreason.models.fast_paths`: the Qwen patch embedding as a
    # matrix product, grouped-query attention under padding masks on CPUs); false runs transformers' modules as is
    fast_paths: bool = True
    # coordinate convention of boxes in prompts and rewards: auto (from the config's model_type) or a model family
    # name (checked by the model-family registry)
    family: str = "auto"
    min_pixels: int = 28 * 28 * 4  # images are resized to at least this many pixels (multiples of 28 per side)
    max_pixels: int = 28 * 28 * 256  # ... and at most this many
    # bounds on one record: a record over any is skipped and counted like any bad record, and `data check` lists it
    # (mmreason.data.prepare.record_limits). 0 derives each from the model's context length (its config's
    # max_position_embeddings) less the longest max_new_tokens, at most 32768
    max_prompt_tokens: int = 0  # prompt tokens: text of every turn + vision tokens
    max_vision_tokens: int = 0  # vision tokens of a prompt's images and video; 0: max_prompt_tokens
    max_images: int = 0  # images of one record; 0: as many as max_vision_tokens holds at min_pixels, at most 256
    max_target_tokens: int = 0  # tokens of the gold assistant text (the SFT target); 0: max_prompt_tokens
    # freeze parts of the model (with or without LoRA): the vision encoder, the projector (merger / aligner) that maps
    # its features into the language model, and the language model (which parts are which: mmreason.models.family)
    freeze_vision_tower: bool = False
    freeze_projector: bool = False
    freeze_language_model: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class DataConfig:
    """One task of the mixture: its training data, optional held-out data, how rows map onto the task's fields, the
    stages it feeds and its mixture weight (README: "Bring your own data")."""

    task: str = "counting"  # a registered task name (`mmreason tasks` lists them)
    # training data: a JSONL/JSON/CSV/parquet/arrow file, a folder (split files or the hub layout data/train-*), a
    # `datasets` save_to_disk folder or a hub id; `path@split` picks a split (relative to the current folder)
    train: str = ""
    split: str | None = None  # split of `train` (default: train); the same as `train: path@split`
    val: str | None = None  # held-out data, as `train` (None: the task is not evaluated)
    val_split: str | None = None  # split of `val` (default: the first of validation, val, test that exists)
    format: str | None = None  # a peer layout to adapt rows from: vlm_r1, easyr1, trl, messages, swift_grounding
    columns: dict[str, str] = field(default_factory=dict)  # task field -> your column, e.g. {solution: answer}
    media_dir: str | None = None  # folder relative media paths resolve against (default: the data's folder)
    stages: list[Stage] | None = None  # stage kinds this entry feeds, e.g. [sft] (None: every stage)
    system_prompt: str | None = None  # a system turn before every prompt of this entry
    # replaces the task's user text: a format string over {prompt} (the task's text), {instruction} (the answer
    # format instruction) and the record's fields, e.g. "{problem} {instruction}"
    prompt_template: str | None = None
    weight: float = 1.0  # share of the task in the mixture, relative to the other tasks' weights (> 0)
    rewards: dict[str, float] | None = None  # override the task's default reward weights (reward name -> weight)
    max_val: int = 64  # held-out records evaluated per evaluation (the first ones of the file)


@dataclass
class SFTConfig:
    """The supervised cold-start stage: cross-entropy on the gold assistant turns."""

    steps: int = 100  # optimizer updates
    batch_size: int = 8  # samples per micro-batch, over all processes
    grad_accum: int = 1  # micro-batches accumulated per update
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.05  # share of `steps` spent warming up the learning rate (0..1)
    scheduler: Scheduler = "cosine"  # learning-rate schedule after the warmup (transformers' `get_scheduler`)
    max_grad_norm: float = 1.0  # clip the gradient's global L2 norm to this before each update
    eval_every: int = 0  # evaluate every this many steps; 0 = only at the end of the stage
    stop_at: StopAt = field(default_factory=StopAt)  # end the stage at a held-out target (needs eval_every)
    save_every: int = 0  # checkpoint every this many steps; 0 = only at the end of the stage
    max_bad_updates: int = 5  # stop after this many updates in a row skipped for a non-finite loss or gradient


@dataclass
class RejectionSFTConfig:
    """Rejection-sampling SFT (Metis-RISE): sample N completions per prompt with the current policy (GRPO's engine,
    grpo.rollout), score them with the tasks' rewards, and train SFT on those whose total reward reaches min_reward
    (mmreason.train.rejection). Reads the data entries that feed GRPO, unless an entry names rejection_sft."""

    steps: int = 50  # sampling steps, each followed by one SFT update on what was kept (none when nothing was)
    prompts_per_step: int = 8  # prompts sampled per step, over all processes
    samples_per_prompt: int = 8  # N: completions sampled per prompt
    # keep a completion whose total reward is >= this (and that ended within max_new_tokens); null: its task's best
    # total, the sum of the task's positive reward weights (every built-in reward at 1: only perfect completions)
    min_reward: float | None = None
    shortest_only: bool = False  # keep only the shortest kept completion of each prompt
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus-sampling threshold (1.0: off)
    max_new_tokens: int = 64  # completion length limit, in tokens; a completion cut at it is never kept
    batch_size: int = 16  # kept completions per micro-batch, over all processes; a step trains on all it kept
    lr: float = 1e-5  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.0  # share of `steps` spent warming up the learning rate (0..1)
    scheduler: Scheduler = "constant"  # learning-rate schedule after the warmup (transformers' `get_scheduler`)
    max_grad_norm: float = 1.0  # clip the gradient's global L2 norm to this before each update
    eval_every: int = 0  # evaluate every this many steps; 0 = only at the end of the stage
    stop_at: StopAt = field(default_factory=StopAt)  # end the stage at a held-out target (needs eval_every)
    save_every: int = 0  # checkpoint every this many steps; 0 = only at the end of the stage
    max_bad_updates: int = 5  # stop after this many updates in a row skipped for a non-finite loss or gradient


@dataclass
class ToolsConfig:
    """Multi-turn rollouts where the policy may call its task's tools (zoom_in, crop_video, select_frames)."""

    enabled: bool = False  # let the policy call tools during GRPO rollouts
    max_turns: int = 2  # tool calls per trajectory; one more call ends it as over budget
    max_pixels: int = 28 * 28 * 256  # pixel budget of each image a tool returns
    # weights of the tool rewards added to the task's rewards (reward name -> weight)
    rewards: dict[str, float] = field(default_factory=lambda: {"tool_success": 0.1, "tool_discipline": 0.1})


@dataclass
class VLLMConfig:
    """The vLLM rollout engine (grpo.rollout: vllm): one engine per process, colocated with the trainer on its GPU."""

    # share of the GPU the engine takes (its weights + KV cache), in (0, 1]; the trainer keeps the rest
    gpu_memory_utilization: float = 0.3
    max_model_len: int = 4096  # tokens: prompt (with image tokens) + completion
    max_images: int = 4  # the most images one prompt may carry (the engine reserves memory for them)
    enable_sleep_mode: bool = False  # free the engine's weights and KV cache during the update (level-2 sleep)
    # truncated importance sampling of the sampler / trainer mismatch (vLLM's kernels are not the trainer's):
    # per-token weights min(pi_train / pi_vllm, cap) on the policy-gradient term; 0 turns the correction off
    importance_cap: float = 2.0


@dataclass
class GRPOConfig:
    """The GRPO stage: G sampled completions per prompt, rewards turned into group-relative advantages."""

    steps: int = 100  # rollout steps, each followed by num_iterations updates
    prompts_per_step: int = 4  # prompts per rollout batch, over all processes
    group_size: int = 8  # G: completions sampled per prompt (>= 2)
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus-sampling threshold of the rollouts (1.0: off)
    max_new_tokens: int = 64  # completion length limit, in tokens; longer completions are truncated
    lr: float = 1e-5  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.0  # share of `steps` spent warming up the learning rate (0..1)
    scheduler: Scheduler = "constant"  # learning-rate schedule after the warmup (transformers' `get_scheduler`)
    max_grad_norm: float = 1.0  # clip the gradient's global L2 norm to this before each update
    num_iterations: int = 1  # updates per rollout batch (mu); above 1 the old-policy ratio is clipped
    eps_low: float = 0.2  # lower clip of the probability ratio: 1 - eps_low
    eps_high: float = 0.28  # upper clip of the probability ratio: 1 + eps_high (DAPO's clip-higher)
    beta: float = 0.0  # weight of the KL penalty to the reference (initial) policy; 0: no KL term
    # how per-token losses become one number (mmreason.train.rl.aggregate_loss): token_mean (DAPO),
    # seq_mean_token_mean (GRPO), seq_mean_token_sum_norm (Dr.GRPO)
    loss_agg: LossAggregation = "token_mean"
    scale_std: bool = True  # divide advantages by the group's reward std (false: Dr.GRPO's unscaled advantages)
    dynamic_sampling: bool = False  # leave groups whose completions all got the same reward out of the loss
    filter: FilterConfig = field(default_factory=FilterConfig)  # keep groups by accuracy, refill from the stream
    # reward weights that change by stage or step (dense partial credit early, exact match later), in order
    reward_schedule: list[RewardPhase] = field(default_factory=list)
    mask_truncated: bool = False  # leave completions cut at max_new_tokens out of the loss
    # encode each prompt (and its images) once per group in rollouts and in the loss (mmreason.rollout.prefix); false:
    # the prompt rows are repeated G times (HF generate, full-sequence scoring). The scoring path is decided once per
    # stage and logged: shared_prefix; repeated_prompt for the loss under gradient checkpointing or several
    # processes (the no-grad passes still share); trajectory for multi-turn tool rollouts (mmreason.train.grpo)
    share_prefix: bool = True
    # compute each step's image / video features once and reuse them in the rollout prefill, the old-policy and
    # reference log-probs and every update (mmreason.models.vision_cache): in every pass when no vision parameter
    # is trained (freeze_vision_tower + freeze_projector, or LoRA), else in the no-grad passes only. Exact: the
    # same values and gradients as without it
    cache_vision: bool = True
    # the rollout engine: "hf" (the policy itself, shared-prefix sampling) or "vllm" (pip install vllm; GPUs only;
    # weights synced to it before every rollout)
    rollout: RolloutBackend = "hf"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    eval_every: int = 0  # evaluate every this many steps; 0 = only at the end of the stage
    stop_at: StopAt = field(default_factory=StopAt)  # end the stage at a held-out target (needs eval_every)
    save_every: int = 0  # checkpoint every this many steps; 0 = only at the end of the stage
    max_bad_updates: int = 5  # stop after this many updates in a row skipped for a non-finite loss or gradient
    tools: ToolsConfig = field(default_factory=ToolsConfig)


@dataclass
class EvalConfig:
    """The held-out evaluations: greedy generations on each task's `val` file."""

    max_new_tokens: int = 64  # completion length limit, in tokens
    batch_size: int = 16  # prompts generated together
    at_start: bool = True  # evaluate before the first stage (the "before" row of the metrics table)


@dataclass
class RunConfig:
    """A whole run: where it is written, its stages in order, the model, the data mixture and each stage's settings."""

    name: str = "run"  # the run directory is output_dir/name
    output_dir: str = "runs"  # folder holding the run directories
    seed: int = 0  # seeds model building, the data stream and sampling
    stages: list[Stage] = field(default_factory=lambda: ["sft", "grpo"])  # run in this order; a stage may repeat
    think: bool = True  # ask for <think> reasoning before the <answer> (false: answer only)
    # a reward function that raises stops the run; false: its score is missing (0 in the total), counted and logged
    strict_rewards: bool = False
    # a record that cannot become a sample: "skip" it during training (counted and logged), or "fatal": check every
    # record before training starts and stop with the list of all problems
    data_errors: DataErrors = "skip"
    keep_checkpoints: int = 2  # periodic checkpoints kept on disk (older ones are deleted)
    device: str = "auto"  # a torch device: auto (CUDA when available, else CPU), cpu, cuda, cuda:1, ...
    model: ModelConfig = field(default_factory=ModelConfig)
    data: list[DataConfig] = field(default_factory=list)  # the task mixture (at least one entry)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # difficulty-aware data scheduling (off)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rejection_sft: RejectionSFTConfig = field(default_factory=RejectionSFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # reasoning budgets (off by default)
    # experiment trackers fed every metrics line and the evaluations' pictures, e.g. [tensorboard, wandb] (pip install
    # 'mmreason[tracking]'); rank 0 alone logs. TensorBoard writes to runs/<name>/tensorboard
    report_to: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def show_value(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """repr of a config value for an error message, never longer than `limit` characters (reprlib cuts deep or long
    values without building their whole text)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key '{where}{key[:100]}'{hint} (valid keys: {', '.join(sorted(valid))})")


def _not_allowed(value: Any, allowed: tuple[Any, ...], where: str) -> ConfigError:
    names = [str(a) for a in allowed]
    close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where.rstrip('.')} must be one of {', '.join(names)}, got {show_value(value)}{hint}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field type (recursing into dataclasses and lists).

    A `Literal` field takes exactly one of its values; this is the only place where they are checked.
    """
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        raise _not_allowed(value, allowed, where)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a mapping, got {show_value(value)}")
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
        raise ConfigError(errors[0] if errors else f"bad value for {where!r}: {show_value(value)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a list, got {show_value(value)}")
        return [_coerce(v, item_tp, f"{where.rstrip('.')}[{i}].") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a mapping, got {show_value(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise ConfigError(f"config key {where.rstrip('.')!r} is too large, got {show_value(value)}") from None
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-3" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"config key {where.rstrip('.')!r} must be a number, got {show_value(value)}") from None
    if tp is float and not isinstance(value, float):
        raise ConfigError(f"config key {where.rstrip('.')!r} must be a number, got {show_value(value)}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key {where.rstrip('.')!r} must be true or false, got {show_value(value)}")
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"config key {where.rstrip('.')!r} must be an integer, got {show_value(value)}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"config key {where.rstrip('.')!r} must be a string, got {show_value(value)}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str):
            place = where.rstrip(".") or "the top level"
            raise ConfigError(f"config keys are names, got {show_value(key)} in {place}")
        if key not in names:
            raise _unknown_key(key, names, where)
        kwargs[key] = _coerce(value, hints[key], f"{where}{key}.")
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree[a][b]... = value for "a.b...": a list (data) is indexed by a number, e.g. data.0.weight."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, list):
            index = _list_index(node, part, dotted, where)
            if depth == len(parts) - 1:
                node[index] = value
                return
            node = node[index]
        elif depth == len(parts) - 1:
            node[part] = value
            return
        else:
            if node.get(part) is None:  # a section left empty in the YAML (`model:`) reads as None
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict | list):
            raise ConfigError(f"override {show_value(dotted)}: {show_value(part)} is a value, not a section")


def _list_index(items: list[Any], part: str, dotted: str, where: str) -> int:
    """The list index an override names ("0", "1", ...), else ConfigError saying which indexes exist."""
    if not (part.isascii() and part.isdigit()) or int(part) >= len(items):
        valid = f"0..{len(items) - 1}" if items else "none: the list is empty"
        raise ConfigError(f"override {show_value(dotted)}: {where} is a list; the part after it must be an index "
                          f"({valid}), got {show_value(part)}")
    return int(part)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings (values parsed as YAML: numbers, bools, lists) to a config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {show_value(item)} must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = _yaml_load(raw) if raw.strip() else ""
        except ConfigError as exc:
            raise ConfigError(f"override {show_value(item)}: {exc}") from None
        _set_dotted(tree, key.strip(), value)
    return tree


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: a few bytes of nested `*alias` references expand to gigabytes (a
    "billion laughs" bomb) as soon as anything walks the value, and a hand-written config never needs them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor[:40]}) are not "
                              "accepted in configs; write the value out")
        return super().compose_node(parent, index)


def _yaml_load(text: str) -> Any:
    """The YAML text's value; every way it can fail (syntax, tags, aliases, numbers too long, nesting too deep) is
    a one-line ConfigError."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"not valid YAML: {show_value(message, 300)[1:-1]}") from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ConfigError(f"not valid YAML: {str(exc).split(':')[0][:200]}") from None


def shipped_config_path(name: str) -> Path | None:
    """Path of a config shipped in mmreason/configs by bare name (e.g. "quickstart"), or None."""
    candidate = resources.files("mmreason.configs") / f"{name}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def shipped_config_names() -> list[str]:
    """Bare names of the configs shipped in mmreason/configs."""
    root = resources.files("mmreason.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(path: str | Path, overrides: list[str] | None = None, *, check_paths: bool = True) -> RunConfig:
    """YAML file (or a shipped config's name) + overrides -> validated RunConfig (check_paths: see `validate`;
    off to read the config of an existing run, e.g. for its report)."""
    p = Path(path)
    if not p.is_file():
        shipped = shipped_config_path(str(path))
        if shipped is None:
            raise ConfigError(
                f"config {str(path)!r} is neither a file nor a shipped config ({', '.join(shipped_config_names())})"
            )
        p = shipped
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size} bytes; a config file holds at most {MAX_CONFIG_BYTES}")
    try:
        tree = _yaml_load(p.read_text(encoding="utf-8")) or {}
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start + 1})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of config keys")
    tree = apply_overrides(tree, list(overrides or []))
    cfg = from_dict(RunConfig, tree)
    validate(cfg, check_paths)
    return cfg


def validate(cfg: RunConfig, check_paths: bool = True) -> None:
    """Range and cross-field checks that types alone cannot express (allowed values are checked by `_coerce`): the
    range of every number, names, keys that must agree (`mmreason.config_ranges`), the data entries, and with
    check_paths that the run folder can be written."""
    from mmreason.config_ranges import check_values
    from mmreason.data.schedule import check_data_schedule
    from mmreason.train.early_stop import check_stop_at
    from mmreason.train.reward_schedule import check_schedule

    check_values(cfg, check_paths)
    check_schedule(cfg)
    check_stop_at(cfg)
    check_data_schedule(cfg)
    if not cfg.data:
        raise ConfigError("config has no `data`: give at least one {task, train} entry")
    for i, d in enumerate(cfg.data):
        validate_entry(d, f"data[{i}]")
    from mmreason.data.entries import stage_entries

    for stage in dict.fromkeys(cfg.stages):
        if not stage_entries(cfg.data, stage):
            raise ConfigError(f"no data entry feeds the {stage} stage: leave `stages` out of one entry or add {stage}")
    _validate_rollout(cfg.grpo)
    _validate_family(cfg.model)
    _validate_freeze(cfg.model)
    _validate_report_to(cfg.report_to)


def validate_entry(d: DataConfig, where: str) -> None:
    """One data entry's own fields (whether its files exist is checked when the data is read)."""
    if not d.train:
        raise ConfigError(f"{where}.train is empty: give the path of the task's training file")
    if not (d.weight > 0 and math.isfinite(d.weight)):
        raise ConfigError(f"{where}.weight must be > 0, got {d.weight}")
    if d.format is not None:
        from mmreason.data.formats import FORMATS

        if d.format not in FORMATS:
            raise _not_allowed(d.format, tuple(FORMATS), f"{where}.format")
    bad = {k: v for k, v in d.columns.items() if not (isinstance(k, str) and isinstance(v, str) and k and v)}
    if bad:
        raise ConfigError(f"{where}.columns maps task fields to your column names (both strings), got "
                          f"{show_value(bad)}")
    for key in ("system_prompt", "prompt_template"):
        if getattr(d, key) is not None and not getattr(d, key).strip():
            raise ConfigError(f"{where}.{key} is empty: leave it out instead")


def _validate_freeze(cfg: ModelConfig) -> None:
    """Something must stay trainable: LoRA adapts the language model, so freezing it leaves nothing to train."""
    if cfg.freeze_language_model and (cfg.lora.enabled or (cfg.freeze_vision_tower and cfg.freeze_projector)):
        what = "LoRA adapts the language model" if cfg.lora.enabled else "the vision tower and projector are frozen"
        raise ConfigError(f"model.freeze_language_model leaves nothing to train ({what})")


def _validate_family(cfg: ModelConfig) -> None:
    """model.family and model.tiny.arch name supported model families (the one list is mmreason.models.family)."""
    from mmreason.models.family import family_names

    names = family_names()
    if cfg.family != "auto" and cfg.family not in names:
        raise ConfigError(f"model.family must be auto or one of {', '.join(names)}, got {show_value(cfg.family)}")
    if cfg.tiny.arch not in names:
        raise ConfigError(f"model.tiny.arch must be one of {', '.join(names)}, got {show_value(cfg.tiny.arch)}")


def _validate_report_to(names: list[str]) -> None:
    """Each tracker name is one accelerate knows (whether its package is installed is checked when a run starts)."""
    for i, name in enumerate(names):
        if name not in TRACKERS:
            raise _not_allowed(name, TRACKERS, f"report_to[{i}]")


def _validate_rollout(cfg: GRPOConfig) -> None:
    if cfg.rollout == "vllm" and cfg.tools.enabled:
        raise ConfigError("grpo.rollout: vllm does not run multi-turn tool rollouts; use grpo.rollout: hf with tools")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain mappings and lists (what `save_config` writes)."""
    return asdict(cfg)


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (loadable again with `load_config`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
