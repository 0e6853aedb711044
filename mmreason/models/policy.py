"""The policy: loading a VLM and its processor (hub id, local path, or the embedded tiny model), its model family
(checked against the processor and `model.family` before anything trains), LoRA, and the frozen reference for KL.

The tiny default is built offline and saved to disk first, so it goes through the very same `from_pretrained`
code as a real model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmreason.config import ModelConfig
from mmreason.models.family import ModelFamily, family_for_model_type, resolve_family
from mmreason.models.fast_paths import apply_fast_paths

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    """A model with its processor and its family (the facts the prompts, rollouts and rewards ask for)."""

    model: Any
    processor: Any
    family: ModelFamily
    source: str

    @classmethod
    def wrap(cls, model: Any, processor: Any, source: str = "", fast_paths: bool = True) -> Policy:
        """A policy around a loaded model and processor, its family checked against both (`resolve_family`), with
        the model's fast paths on unless told otherwise (`fast_paths.apply_fast_paths`)."""
        if fast_paths:
            apply_fast_paths(unwrap_model(model))
        return cls(model, processor, resolve_family(unwrap_model(model).config, processor), source)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def ensure_tiny(cfg: ModelConfig, cache_dir: Path, seed: int = 0) -> Path:
    """Build the tiny model into `cache_dir` once (keyed by its shape and seed) and return its folder."""
    from mmreason.models.tiny import build_tiny

    t = cfg.tiny
    folder = cache_dir / f"tiny-{t.arch}-h{t.hidden_size}-l{t.layers}-v{t.vision_depth}-s{seed}"
    if (folder / "config.json").is_file():
        return folder
    from mmreason.runs.lock import file_lock

    # runs sharing output_dir may start together: one builds, the others wait for it and use its folder
    with file_lock(folder.with_name(f".{folder.name}.lock"), what=f"the tiny-model cache {folder}"):
        if (folder / "config.json").is_file():
            return folder
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)  # without config.json: a build cut short
        # building seeds and draws from torch's RNG: fork it, so a run samples the same with or without the cache
        with torch.random.fork_rng(devices=[]):
            build_tiny(
                tmp, arch=t.arch, hidden_size=t.hidden_size, layers=t.layers, vision_depth=t.vision_depth, seed=seed
            )
        tmp.replace(folder)
    return folder


def unwrap_model(model: Any) -> Any:
    """The transformers model inside DDP / DeepSpeed / FSDP (`.module`) and peft (`get_base_model`) wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def family_of(model: Any) -> ModelFamily:
    """The family of a (possibly wrapped) model, from its config's model_type."""
    return family_for_model_type(str(getattr(unwrap_model(model).config, "model_type", "")))


def load_processor(source: str | Path, cfg: ModelConfig) -> Any:
    import warnings

    from transformers import AutoProcessor

    # transformers 5.x warns on every call when a saved processor carries min/max pixels; they are unused here.
    warnings.filterwarnings("ignore", message="Passing `min_pixels` and `max_pixels`", category=FutureWarning)

    # Images and frames are resized by mmreason.processors (qwen-vl-utils rules, the config's pixel budget) before
    # they reach the processor, which is called with do_resize=False; its own min/max pixels are not used.
    processor = AutoProcessor.from_pretrained(str(source))
    # Without torchvision AutoProcessor can silently hand back a bare tokenizer; fail loudly instead.
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise RuntimeError(
            f"AutoProcessor.from_pretrained({str(source)!r}) returned {type(processor).__name__}, not a "
            "vision-language processor; is torchvision installed?"
        )
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def apply_lora(model: Any, cfg: ModelConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    vision = "|".join(re.escape(name) for name in family_of(model).vision_modules)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        # Keep the vision tower (and its projector) frozen and un-adapted: adapters go on the language model's
        # linear layers.
        exclude_modules=rf".*(?:{vision}).*",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


class ModelNotFoundError(ValueError):
    """`model.name` names neither a local model folder nor a model the hub serves (or, offline, the cache holds)."""


# a hub model id: `name` or `owner/name` (letters, digits, - _ .)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
MODEL_NAME_HELP = ("model.name takes tiny, a folder written by save_pretrained, or a hub id such as "
                   "Qwen/Qwen2.5-VL-3B-Instruct")


def model_config(name: str | Path) -> Any:
    """The transformers config of a model folder or hub id, read without any weights: from the folder, from the
    local hub cache, then from the hub. ModelNotFoundError (one line, naming the model) when none has it."""
    from transformers import AutoConfig

    text, path = str(name), Path(str(name)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model {text}: the folder has no config.json, so it is not a model folder; "
                                     + MODEL_NAME_HELP)
        return AutoConfig.from_pretrained(str(path))
    if not _HUB_ID.match(text) or text.startswith("."):
        raise ModelNotFoundError(f"model {text} is neither a local folder (no such path) nor reachable on the hub "
                                 "(a hub id reads owner/name); " + MODEL_NAME_HELP)
    try:
        return AutoConfig.from_pretrained(text, local_files_only=True)  # cached: no network needed
    except OSError:
        pass
    try:
        return AutoConfig.from_pretrained(text)
    except OSError as exc:
        raise ModelNotFoundError(f"model {text} is neither a local folder nor reachable on the hub "
                                 f"({_hub_problem(exc)})") from None


def _hub_problem(exc: OSError) -> str:
    """Why the hub did not give a model's config, in a few words with what to do."""
    from huggingface_hub import errors

    cause = exc.__cause__
    if isinstance(cause, errors.GatedRepoError):
        return "it is gated: accept its terms on the hub and log in with `hf auth login`"
    if isinstance(cause, errors.RepositoryNotFoundError):
        return "the hub has no such model, or it is private: check the id, or log in with `hf auth login`"
    if isinstance(cause, errors.LocalEntryNotFoundError):
        return ("no connection, or HF_HUB_OFFLINE is set, and not in the local cache: check the name and the "
                "network, or download it once with `hf download`")
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def build_policy(
    cfg: ModelConfig, cache_dir: str | Path = "runs/.cache", device: str = "auto", seed: int = 0
) -> Policy:
    """Load model + processor from a hub id, a local folder, or the tiny default; optional LoRA / checkpointing."""
    from transformers import AutoModelForImageTextToText

    source = ensure_tiny(cfg, Path(cache_dir), seed) if cfg.name == "tiny" else cfg.name
    hf_config = model_config(source)
    processor = load_processor(source, cfg)
    family = resolve_family(hf_config, processor, cfg.family)  # refused before the weights are loaded
    model = AutoModelForImageTextToText.from_pretrained(
        str(source), dtype=DTYPES[cfg.dtype], attn_implementation=cfg.attn_implementation
    )
    model.to(resolve_device(device))
    if cfg.fast_paths:
        apply_fast_paths(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.enabled:
        model = apply_lora(model, cfg)
    freeze_parts(model, family, [part for part in PARTS if getattr(cfg, f"freeze_{part}", False)])
    return Policy(model=model, processor=processor, family=family, source=str(source))


PARTS = ("vision_tower", "projector", "language_model")


def freeze_parts(model: Any, family: ModelFamily, parts: list[str]) -> None:
    """Freeze every parameter of the named parts (`ModelFamily.part_of`), as EasyR1's freeze_vision_tower and
    ms-swift's freeze_vit / freeze_aligner do."""
    for name, param in model.named_parameters():
        if family.part_of(name) in parts:
            param.requires_grad_(False)


def parameter_counts(model: Any, family: ModelFamily) -> dict[str, tuple[int, int]]:
    """Part -> (trainable, total) parameter counts."""
    counts = {part: [0, 0] for part in PARTS}
    for name, param in model.named_parameters():
        part = counts[family.part_of(name)]
        part[0] += param.numel() if param.requires_grad else 0
        part[1] += param.numel()
    return {part: (trainable, total) for part, (trainable, total) in counts.items()}


def describe_trainable(counts: dict[str, tuple[int, int]]) -> str:
    """`1,234 of 5,678 (21.7%); vision_tower 0 of ..., ...`: what the optimizer will update."""
    trainable, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    parts = ", ".join(f"{part} {t:,} of {n:,}" for part, (t, n) in counts.items() if n)
    return f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.1f}%); {parts}"


def load_checkpoint_policy(path: str | Path, cfg: ModelConfig, device: str = "auto") -> Policy:
    """A policy from a checkpoint folder (full model or LoRA adapter) written by `save_checkpoint`."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        import json

        from peft import PeftModel
        from transformers import AutoModelForImageTextToText

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=DTYPES[cfg.dtype])
        model = PeftModel.from_pretrained(model, str(path))
        processor = load_processor(path if (path / "preprocessor_config.json").is_file() else base, cfg)
        family = resolve_family(model.config, processor, cfg.family)
        model.to(resolve_device(device))
        if cfg.fast_paths:
            apply_fast_paths(model)
        return Policy(model=model, processor=processor, family=family, source=str(path))
    sub = ModelConfig(**{**cfg.__dict__, "name": str(path), "lora": cfg.lora.__class__()})
    return build_policy(sub, device=device)


class Reference:
    """Log-probs of the frozen reference policy for the KL term; nothing is built when beta == 0.

    With LoRA the reference is the same module with its adapters disabled (no copy of the weights).
    """

    def __init__(self, policy: Policy, beta: float) -> None:
        self.policy = policy
        self.copy = None
        if beta > 0 and not policy.is_lora:
            self.copy = copy.deepcopy(policy.model).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)

    @contextlib.contextmanager
    def model(self) -> Iterator[Any]:
        if self.copy is not None:
            yield self.copy
            return
        with self.policy.model.disable_adapter():
            yield self.policy.model


def restore_weights(policy: Policy, ckpt: str | Path) -> None:
    """Load a checkpoint's weights into the live policy (full model, or the LoRA adapter onto the same base)."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    if policy.is_lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(policy.model, load_file(str(ckpt / "adapter_model.safetensors")))
        return
    from transformers import AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(str(ckpt), dtype=next(policy.model.parameters()).dtype)
    policy.model.load_state_dict(loaded.state_dict())
