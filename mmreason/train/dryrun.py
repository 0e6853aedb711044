"""What `mmreason train --dry-run` checks before anything is trained, and the cheap checks every run makes first.

`check_sources` (every run, before the model is built): each data entry's task is registered and its training and
held-out data exist (files, folders, splits; a hub id is taken on trust until read), and a stage's held-out
target (`stop_at`) names a metric its task reports. No record is read.

`dry_run` (`--dry-run`, writes nothing): the sources as above, then every entry's data is read, a spread-out sample
of its records is built into Samples (media loaded and resized) and encoded by the model's processor, and the model
is resolved without reading any weights (the tiny default is built in memory; a local folder or hub id gives its
config and processor, and its architecture is instantiated on the meta device to count parameters). It reports the
vision and prompt tokens per sample and an estimate of the memory the configured batches need (`estimate_memory`).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmreason.config import RunConfig
from mmreason.data.entries import entry_location, entry_ref, read_entry
from mmreason.data.locate import DataError
from mmreason.registry import get_task, resolve_reward
from mmreason.train.early_stop import check_stop_metrics

SAMPLE_RECORDS = 16  # records built per data file (spread over the file)
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MISSING = "data file or folder does not exist"  # mmreason.data.locate's message for a missing reference


def check_sources(cfg: RunConfig) -> None:
    """RegistryError for an unknown task or reward (or one missing from its file), DataError for data that is not
    there (with the command that makes synthetic data for the task, where there is a maker); reads no record."""
    for i, entry in enumerate(cfg.data):
        get_task(entry.task)
        for spec in entry.rewards or {}:
            resolve_reward(spec)  # a registered name or a user's file.py:function
        for which in ("train", "val"):
            if not entry_ref(entry, which)[0]:
                continue
            try:
                entry_location(entry, which)
            except DataError as exc:
                raise DataError(f"data[{i}].{which}: {exc}{_maker_hint(str(exc), entry, which)}") from None
    for phase in cfg.grpo.reward_schedule:  # a scheduled reward must exist before the stage reaches its phase
        for weights in phase.rewards.values():
            for spec in weights:
                resolve_reward(spec)
    check_stop_metrics(cfg)  # a stage's held-out target names a metric its task's evaluations log


def _maker_hint(message: str, entry: Any, which: str) -> str:
    """How to make synthetic data where a missing file or folder was expected, for a task that has a maker."""
    from mmreason.data.synthetic import MAKERS

    ref = entry_ref(entry, which)[0] or ""
    if MISSING not in message or entry.task not in MAKERS:
        return ""
    folder = Path(ref.partition("@")[0])
    folder = folder.parent if folder.suffix else folder
    return (f"; make synthetic {entry.task} data there with: "
            f"mmreason data make synthetic --task {entry.task} --out {folder}")


# ------------------------------------------------------------------------------------------------------ the model


@dataclass
class ModelFacts:
    """What the dry run learns of the model without its weights."""

    source: str  # "tiny (built in memory)", a folder or a hub id
    family: Any  # mmreason.models.family.ModelFamily
    processor: Any
    config: Any  # the transformers config
    parameters: int  # all parameters
    trainable: int  # what the optimizer updates (LoRA adapters only with LoRA)


def resolve_model(cfg: RunConfig) -> ModelFacts:
    """The model's config, processor and family (checked as `build_policy` checks them), and its parameter counts
    from the architecture instantiated on the meta device: no weight is read or allocated."""
    from mmreason.models.family import resolve_family
    from mmreason.models.policy import load_processor, model_config

    model = cfg.model
    if model.name == "tiny":
        from mmreason.models.tiny import build_config, build_processor, build_tokenizer

        t = model.tiny
        tokenizer = build_tokenizer(t.arch)
        processor = build_processor(tokenizer, arch=t.arch)
        config = build_config(tokenizer, t.arch, t.hidden_size, t.layers, t.vision_depth)
        source = "tiny (built in memory)"
    else:
        config = model_config(model.name)
        processor = load_processor(model.name, model)
        source = model.name
    family = resolve_family(config, processor, model.family)
    parameters, trainable = _parameter_counts(config, cfg, family)
    return ModelFacts(source, family, processor, config, parameters, trainable)


def _parameter_counts(config: Any, cfg: RunConfig, family: Any) -> tuple[int, int]:
    """(all, trainable) parameters of the architecture, built on the meta device (shapes only)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from mmreason.models.policy import PARTS, apply_lora, freeze_parts

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    if cfg.model.lora.enabled:
        model = apply_lora(model, cfg.model)
    freeze_parts(model, family, [part for part in PARTS if getattr(cfg.model, f"freeze_{part}", False)])
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------------- the records


@dataclass
class SampleSizes:
    """Token counts of the samples built from the records the dry run drew."""

    vision: list[int]  # vision tokens of each prompt
    prompt: list[int]  # prompt tokens (text and vision) of each prompt
    sft: list[int]  # prompt + gold answer tokens of each sample that has a gold answer
    built: int = 0
    drawn: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


def measure_samples(cfg: RunConfig, facts: ModelFacts, emit: Callable[[str], None]) -> SampleSizes:
    """Read every entry's data, build a spread-out sample of its records and encode each with the processor."""
    from mmreason.data.entries import entry_context
    from mmreason.data.records import build_samples
    from mmreason.runs.run import sample_context

    ctx = sample_context(cfg, facts.family.name, Path.cwd())
    sizes = SampleSizes([], [], [])
    for i, entry in enumerate(cfg.data):
        task = get_task(entry.task)
        for which in ("train", "val"):
            if not entry_ref(entry, which)[0]:
                continue
            dataset = read_entry(entry, which)
            emit(f"data[{i}].{which}: {dataset.source}: {len(dataset)} record(s) for task {entry.task}"
                 + (f", {len(dataset.problems)} unreadable line(s)" if dataset.problems else ""))
            drawn = dataclasses.replace(dataset, records=[dataset.records[k] for k in spread_indices(len(dataset))])
            samples, problems = build_samples(drawn, task, entry_context(entry, ctx))
            sizes.drawn += len(drawn)
            sizes.built += len(samples)
            sizes.problems += [str(p) for p in problems]
            for sample in samples:
                _measure(sample, facts, sizes)
    return sizes


def spread_indices(n: int, count: int = SAMPLE_RECORDS) -> list[int]:
    """Up to `count` indices evenly spread over range(n) (all of them when n <= count)."""
    return sorted({k * n // count for k in range(count)}) if n else []


def _measure(sample: Any, facts: ModelFacts, sizes: SampleSizes) -> None:
    from mmreason.processors import build_inputs

    inputs = build_inputs(facts.processor, sample.messages, images=sample.images or None, video=sample.video)
    sizes.prompt.append(int(inputs["input_ids"].shape[1]))
    sizes.vision.append(vision_tokens(inputs, sample, facts.family))
    if sample.target is not None:
        full = build_inputs(facts.processor, sample.messages, images=sample.images or None, video=sample.video,
                            assistant_text=sample.target)
        sizes.sft.append(int(full["input_ids"].shape[1]))


def vision_tokens(inputs: dict[str, Any], sample: Any, family: Any) -> int:
    """Vision tokens of one encoded prompt: each image's and video's grid (t x h x w patches, from the processor's
    image_grid_thw / video_grid_thw) over the merge_size x merge_size patches that make one token; for a family
    without grids (a fixed square per image), (side / image_factor)^2 per image."""
    merged = family.merge_size**2
    total = 0
    for key in ("image_grid_thw", "video_grid_thw"):
        if inputs.get(key) is not None:
            total += int(inputs[key].prod(dim=-1).sum()) // merged
    if total or "image_grid_thw" in inputs or family.fixed_image_size is None:
        return total
    return len(sample.images) * (family.fixed_image_size // family.image_factor) ** 2


# ----------------------------------------------------------------------------------------------------- the memory


@dataclass
class MemoryEstimate:
    """Bytes per process of one stage (see `estimate_memory`)."""

    stage: str
    shape: str  # the batch it is for, in words
    static: dict[str, int]  # weights, gradients, AdamW states, reference weights
    rollout: int  # the rollout's KV cache (0 for SFT)
    loss: dict[str, int]  # what the loss forward holds for the backward: activations, logits

    @property
    def peak(self) -> int:
        return sum(self.static.values()) + max(self.rollout, sum(self.loss.values()))


def estimate_memory(cfg: RunConfig, facts: ModelFacts, sizes: SampleSizes) -> list[MemoryEstimate]:
    """An estimate (not a measurement) of the memory each stage needs in one process, from the model config and the
    longest sampled prompt. With b bytes per weight (model.dtype), N parameters and T trainable ones:

        static      = N b (weights) + T b (gradients) + 2 T b (AdamW's two moments, kept in the weight dtype)
                      + N b (the frozen reference, only when grpo.beta > 0 without LoRA)
        KV cache    = rows x tokens x 2 L_kv kv_heads head_dim b        (GRPO rollout, no grad)
        activations = tokens x L x 17 h b                               (17 h b: Korthikanti et al. 2022's 34 h bytes
                      per token and layer at 16 bits, attention scores left out as SDPA keeps none); with gradient
                      checkpointing tokens x L x h b + one layer's tokens x 17 h b
        logits      = tokens x vocab x (b + 4)                          (the logits and their float32 log-softmax)

    SFT: tokens = sft.batch_size x the longest prompt + answer. Rejection-sampling SFT: a rollout of prompts_per_step x
    N rows, a loss of batch_size rows, each the longest prompt + max_new_tokens. GRPO: rows = prompts_per_step x G,
    each the longest prompt P plus max_new_tokens C; the loss forward holds prompts x (P + G C) tokens when the prompt
    prefix is shared, rows x (P + C) otherwise (gradient checkpointing repeats the prompt). peak = static + KV cache of
    the rollout or activations + logits of the loss, whichever is larger. Left out: the vision encoder's activations,
    the CUDA context and allocator slack, and accelerate / DeepSpeed sharding (all of it is per process, unsharded).
    """
    text = facts.config.get_text_config() if hasattr(facts.config, "get_text_config") else facts.config
    b = BYTES[cfg.model.dtype]
    n, t = facts.parameters, facts.trainable
    static = {"weights": n * b, "gradients": t * b, "AdamW states": 2 * t * b}
    estimates = []
    prompt = max(sizes.prompt, default=0)
    for stage in dict.fromkeys(cfg.stages):
        stage_static = dict(static)
        if stage == "grpo":
            g = cfg.grpo
            if g.beta > 0 and not cfg.model.lora.enabled:
                stage_static["reference weights"] = n * b
            rows, seq = g.prompts_per_step * g.group_size, prompt + g.max_new_tokens
            shared = g.share_prefix and not cfg.model.gradient_checkpointing
            loss_tokens = g.prompts_per_step * (prompt + g.group_size * g.max_new_tokens) if shared else rows * seq
            rollout = rows * seq * _kv_bytes_per_token(text, b)
            shape = f"{g.prompts_per_step} prompts x G={g.group_size}, {prompt} prompt + {g.max_new_tokens} new tokens"
        elif stage == "rejection_sft":  # sampled like GRPO, then SFT on batch_size kept completions per micro-batch
            r = cfg.rejection_sft
            seq = prompt + r.max_new_tokens
            rows = r.prompts_per_step * r.samples_per_prompt
            loss_tokens, rollout = r.batch_size * seq, rows * seq * _kv_bytes_per_token(text, b)
            shape = (f"{r.prompts_per_step} prompts x N={r.samples_per_prompt}, {prompt} prompt + {r.max_new_tokens} "
                     f"new tokens; SFT micro-batch {r.batch_size}")
        else:
            longest = max(sizes.sft or sizes.prompt or [0])
            loss_tokens, rollout = cfg.sft.batch_size * longest, 0
            shape = f"batch {cfg.sft.batch_size} x {longest} tokens"
        estimates.append(MemoryEstimate(stage, shape, stage_static, rollout, _loss_parts(text, cfg, loss_tokens, b)))
    return estimates


def _kv_bytes_per_token(text: Any, b: int) -> int:
    layers = int(text.num_hidden_layers)
    kinds = list(getattr(text, "layer_types", None) or [])
    kv_layers = layers - sum(1 for kind in kinds if "linear" in str(kind))  # linear attention keeps a fixed state
    heads = int(getattr(text, "num_attention_heads", 1))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * kv_layers * kv_heads * head_dim * b


def _loss_parts(text: Any, cfg: RunConfig, tokens: int, b: int) -> dict[str, int]:
    h, layers, vocab = int(text.hidden_size), int(text.num_hidden_layers), int(text.vocab_size)
    if cfg.model.gradient_checkpointing:
        activations = tokens * layers * h * b + tokens * 17 * h * b
    else:
        activations = tokens * layers * 17 * h * b
    return {"activations": activations, "logits": tokens * vocab * (b + 4)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# -------------------------------------------------------------------------------------------------------- the run


def _spread(values: list[int]) -> str:
    if not values:
        return "none"
    return f"min {min(values)}, median {statistics.median(values):g}, max {max(values)}"


def dry_run(cfg: RunConfig, emit: Callable[[str], None]) -> None:
    """Check the tasks, the data, the model and the media as described in the module docstring, emitting one line
    per finding; raises the user error (RegistryError, DataError, ModelNotFoundError, FamilyError) of the first
    check that fails. Nothing is written."""
    check_sources(cfg)
    emit("tasks: " + ", ".join(dict.fromkeys(d.task for d in cfg.data)) + " (registered)")
    facts = resolve_model(cfg)
    emit(f"model: {facts.source}: {facts.family.label} ({type(facts.processor).__name__}), "
         f"{facts.parameters / 1e6:.2f}M parameters, {facts.trainable / 1e6:.2f}M trainable")
    sizes = measure_samples(cfg, facts, emit)
    emit(f"media: {sizes.built} of {sizes.drawn} sampled record(s) build (up to {SAMPLE_RECORDS} per data file)")
    for problem in sizes.problems[:5]:
        emit(f"  {problem}")
    if sizes.problems and (cfg.data_errors == "fatal" or not sizes.built):
        raise DataError(f"{len(sizes.problems)} of {sizes.drawn} sampled record(s) cannot be built; the first: "
                        f"{sizes.problems[0]} (`mmreason data check` lists every problem)")
    emit(f"vision tokens per sample: {_spread(sizes.vision)} ({facts.family.image_factor} px per token side)")
    emit(f"prompt tokens per sample: {_spread(sizes.prompt)}")
    emit(f"memory estimate per process ({cfg.model.dtype}; an estimate, see mmreason.train.dryrun.estimate_memory):")
    for est in estimate_memory(cfg, facts, sizes):
        parts = {**est.static, **({"rollout KV cache": est.rollout} if est.rollout else {}),
                 **{f"loss {k}": v for k, v in est.loss.items()}}
        listed = ", ".join(f"{k} {human_bytes(v)}" for k, v in parts.items())
        emit(f"  {est.stage} ({est.shape}): {listed} -> peak ~{human_bytes(est.peak)}")
