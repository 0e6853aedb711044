"""Vision features computed once per GRPO step: the per-step memo of the vision encoder's outputs.

A GRPO step runs the model over the same images and videos many times: the rollout's prompt prefill, the old-policy
log-probs, the reference log-probs and each of the `num_iterations` updates. When no vision parameter is trained
(`model.freeze_vision_tower` + `model.freeze_projector`, or LoRA, which adapts the language model only), every one of
those forwards computes the very same vision features. This module owns computing them once: `step_cache(models)`
opens a step, during which the models' own `get_image_features` / `get_video_features` (those of the inner
transformers model that holds the vision tower: Qwen's `model.model`) answer repeated calls from a memo.

Why wrap `get_image_features` rather than pass `inputs_embeds`: the model still gets `input_ids`, `pixel_values` and
the grids, so everything downstream of the encoder takes its usual path (the placeholder masks, `get_rope_index`'s
3-D positions, Qwen3-VL's DeepStack features, which are part of the memoized output), and every scoring path (shared
prefix, repeated prompts, HF generate, multi-turn trajectories) benefits without being told.

A hit returns exactly what a fresh call would compute (bit for bit), because
- the arguments match: tensors by identity with an unchanged `_version`, or by equal content (same shape, dtype,
  device, `torch.equal`: the repeated-prompt path builds new pixel tensors each call); anything else by value;
- the weights match: with no vision parameter trainable they cannot change during the step; two models (the policy
  and its deep-copy reference) share entries only when their vision weights are equal, checked when the step opens
  (a LoRA reference is the policy module itself). A trainable vision tower is memoized in no-grad passes only
  (sampling, old-policy log-probs: the encoder needs its graph in the loss), per model and keyed by its parameters'
  version counters, so an optimizer step invalidates its entries (and in a GRPO step both of those passes come
  before the first update anyway);
- the computation matches: the autocast state is part of the key, and a vision tower with active dropout (train mode,
  p > 0) or batch norm is never memoized (GRPO's updates turn dropout off, so sampling in eval mode and the updates
  in train mode compute the same features); nothing is memoized under inference mode (such tensors cannot be saved
  for a later backward).

What is kept, for the step only: the argument tensors (referenced, not copied) and the output's `pooler_output` and
`deepstack_features`, the fields every supported family's forward reads (the pre-merger hidden states are dropped:
they are larger than the features themselves). Under the repeated-prompt path that is the G-times repeated pixels and
their features. `grpo.cache_vision: false` turns the memo off.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from mmreason.models.policy import family_of, unwrap_model

METHODS = ("get_image_features", "get_video_features")
# the output fields the families' forwards read (Qwen3-VL's DeepStack levels included)
KEPT_FIELDS = ("pooler_output", "deepstack_features")


@dataclass
class Owner:
    """A module whose feature methods are memoized, with the vision parameters those methods compute with."""

    module: nn.Module
    vision: list[nn.Parameter]
    vision_modules: list[nn.Module]
    trainable: bool  # some vision parameter requires grad: memoized in no-grad passes only
    token: int  # owners with the same token share entries (equal, frozen vision weights)


@dataclass
class Entry:
    meta: tuple[Any, ...]  # method, owner token, weight version, autocast state, non-tensor arguments
    tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]  # each tensor's _version when stored: an in-place change invalidates the entry
    output: Any


@dataclass
class VisionCache:
    """One step's memo; `encoder_runs` counts the calls that ran the encoder and were stored, `hits` the others."""

    entries: list[Entry] = field(default_factory=list)
    encoder_runs: int = 0
    hits: int = 0
    depth: int = 0  # >0 inside a memoized call: Qwen3-VL's get_video_features calls get_image_features itself

    def find(self, meta: tuple[Any, ...], tensors: tuple[torch.Tensor, ...]) -> Any | None:
        for entry in self.entries:
            if entry.meta == meta and _same_tensors(entry, tensors):
                return entry.output
        return None


def feature_owner(model: Any) -> nn.Module | None:
    """The module whose `get_image_features` the model's forward calls (the inner model of a transformers VLM),
    through DDP / DeepSpeed / peft wrappers; None for a model without one."""
    base = unwrap_model(model)
    for module in (getattr(base, "model", None), base):
        if isinstance(module, nn.Module) and callable(getattr(type(module), "get_image_features", None)):
            return module
    return None


def _owner(model: Any, module: nn.Module, token: int) -> Owner:
    """An owner of `module`, its vision parameters being those its family puts in the vision tower or projector."""
    family = family_of(model)
    vision = [p for name, p in module.named_parameters() if family.part_of(name) != "language_model"]
    modules = [module.get_submodule(n) for n in family.vision_modules if _has_submodule(module, n)]
    return Owner(module, vision, modules, any(p.requires_grad for p in vision), token)


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def owners(models: Sequence[Any | None]) -> list[Owner]:
    """One owner per distinct feature module; a frozen one shares the token of an earlier frozen owner whose vision
    weights are equal (the policy and a full-copy reference with a frozen vision tower)."""
    found: list[Owner] = []
    for model in models:
        module = None if model is None else feature_owner(model)
        if module is None or any(o.module is module for o in found):
            continue
        owner = _owner(model, module, len(found))
        for other in found:
            if not owner.trainable and not other.trainable and _same_weights(owner.vision, other.vision):
                owner.token = other.token
                break
        found.append(owner)
    return found


def _same_weights(a: list[nn.Parameter], b: list[nn.Parameter]) -> bool:
    return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _same_tensors(entry: Entry, tensors: tuple[torch.Tensor, ...]) -> bool:
    if len(tensors) != len(entry.tensors):
        return False
    for stored, version, tensor in zip(entry.tensors, entry.versions, tensors, strict=True):
        if stored._version != version:  # changed in place since: no longer what the features were computed from
            return False
        if tensor is not stored and not _equal(tensor, stored):
            return False
    return True


def _stochastic(modules: list[nn.Module]) -> bool:
    """Whether the vision modules would compute different features in train mode than in eval mode: an active
    dropout (nn.Dropout or an attention-dropout rate such as `attention_dropout`) or a batch norm in train mode."""
    for module in (m for top in modules for m in top.modules() if m.training):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return True
    return False


def call_key(owner: Owner, name: str, args: tuple, kwargs: dict) -> tuple[tuple, tuple[torch.Tensor, ...]] | None:
    """(meta, tensors) identifying one feature call, or None when it must run uncached (module doc: when)."""
    if torch.is_inference_mode_enabled() or (owner.trainable and torch.is_grad_enabled()):
        return None
    meta: list[tuple[Any, Any]] = []
    tensors: list[torch.Tensor] = []
    for key, value in [*enumerate(args), *sorted(kwargs.items())]:
        if isinstance(value, torch.Tensor) and not value.requires_grad:
            tensors.append(value)
            meta.append((key, "tensor"))
        elif value is None or isinstance(value, bool | int | float | str):
            meta.append((key, value))
        else:  # an argument that cannot be compared by value (a tensor with a graph, a callable, ...)
            return None
    if not tensors or _stochastic(owner.vision_modules):
        return None
    device = tensors[0].device.type
    autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
    version = sum(p._version for p in owner.vision) if owner.trainable else 0
    return (name, owner.token, version, autocast, tuple(meta)), tuple(tensors)


def _kept(output: Any) -> Any:
    """What an entry stores: a ModelOutput's KEPT_FIELDS (the whole output when it has none of them)."""
    if not isinstance(output, ModelOutput):
        return output
    kept = {k: output[k] for k in KEPT_FIELDS if output.get(k) is not None}
    return type(output)(**kept) if kept else output


def _fresh(output: Any) -> Any:
    """A new output object around the stored tensors: callers may set attributes on what they get (transformers'
    get_image_features reassigns `pooler_output`), never on the entry itself."""
    if not isinstance(output, ModelOutput):
        return output
    return type(output)(**{k: list(v) if isinstance(v, list) else v for k, v in output.items()})


def memoized(cache: VisionCache, owner: Owner, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """`original` (a bound feature method of owner.module) answering repeated calls from `cache`."""

    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        key = None if cache.depth else call_key(owner, name, args, kwargs)
        if key is None:
            return original(*args, **kwargs)
        found = cache.find(*key)
        if found is not None:
            cache.hits += 1
            return _fresh(found)
        cache.depth += 1
        try:
            output = original(*args, **kwargs)
        finally:
            cache.depth -= 1
        versions = tuple(t._version for t in key[1])
        cache.entries.append(Entry(key[0], key[1], versions, _kept(output)))
        cache.encoder_runs += 1
        return output

    return call


@contextlib.contextmanager
def step_cache(models: Sequence[Any | None], enabled: bool = True) -> Iterator[VisionCache | None]:
    """One GRPO step's vision memo over `models` (the policy, and the full-copy reference or None), patched in for
    the block and removed after it, with every entry. Yields None (and patches nothing) when not `enabled`."""
    if not enabled:
        yield None
        return
    cache = VisionCache()
    patched: list[tuple[nn.Module, str]] = []
    try:
        for owner in owners(models):
            for name in METHODS:
                original = getattr(owner.module, name, None)
                if original is None or name in vars(owner.module):  # none, or already patched by an outer step
                    continue
                setattr(owner.module, name, memoized(cache, owner, name, original))
                patched.append((owner.module, name))
        yield cache
    finally:
        for module, name in patched:
            delattr(module, name)  # back to the class's own method
        cache.entries.clear()
