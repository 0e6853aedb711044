"""Model families: the one home of every fact that differs between vision-language model families.

A `ModelFamily` says how a family's checkpoints are recognised (config `model_type`, processor class), how its
images are cut (patch size x merge size = the side multiple images are resized to, or one fixed square), how its chat
and tool turns are written, which tokens end a turn and which vision placeholders must never be sampled, which
per-token vision types its processor returns and its model takes, how the rotary positions of a prompt are computed
(3-D multimodal or 1-D), and in which convention it writes boxes. Processors, rollout, shared prefix, multi-turn
tools, the tasks and the grounding reward ask this object; nothing re-derives these facts.

Each family is one module of this package defining `FAMILY`; `FAMILY_MODULES` is the list of them. An unknown family
is refused with the supported names, never treated as another. This module imports no torch: rewards use it.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Literal

# the supported families, one module each in mmreason/models/ (adding a family = one module + one entry here)
FAMILY_MODULES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5", "internvl", "gemma3")

BoxConvention = Literal["absolute", "relative_1000"]


class FamilyError(ValueError):
    """A checkpoint, processor or `model.family` that names no supported family, or two that disagree."""


@dataclass(frozen=True)
class ModelFamily:
    """The facts of one model family (see the module docstring); methods derive token ids from a processor."""

    name: str  # the family's key: `model.family`, `tiny-model --arch`, the `coord_family` reward column
    label: str  # human name, e.g. "Qwen2.5-VL"
    model_types: tuple[str, ...]  # checkpoint config `model_type` values this family loads
    processor_classes: tuple[str, ...]  # transformers processor classes of its checkpoints
    patch_size: int  # vision patch side in pixels
    merge_size: int  # patches merged per side into one vision token
    box_convention: BoxConvention  # absolute: pixels of the resized image; relative_1000: 0-1000 of each side
    rope: Literal["mrope", "1d"]  # prompt rotary positions: 3-D multimodal (the model's get_rope_index) or 1-D
    turn_start: str  # opens a chat turn: turn_start + role + "\n"
    turn_end: str  # closes a chat turn (and ends an assistant answer)
    image_placeholder: str  # what one image is written as in a turn's text (the processor expands it)
    vision_tokens: tuple[str, ...]  # placeholder tokens a completion must never contain
    # how boxes are written in prompts and gold answers: json_bbox_2d `[{"bbox_2d": [x1, y1, x2, y2]}]`,
    # point_pairs `(x1,y1),(x2,y2)` (Qwen2-VL), ref_box `<ref>label</ref><box>[[x1, y1, x2, y2]]</box>` (InternVL)
    box_format: Literal["json_bbox_2d", "point_pairs", "ref_box"] = "json_bbox_2d"
    # images are resized to sides that are multiples of `image_factor` within the pixel budget (smart_resize), or,
    # for families whose processor cuts fixed tiles, to this square side
    fixed_image_size: int | None = None
    video: bool = True  # video prompts supported
    assistant_role: str = "assistant"  # the role the chat template writes assistant turns with (Gemma 3: model)
    # the per-token vision types the processor returns and the model takes (Qwen: mm_token_type_ids, for the 3-D
    # positions; Gemma 3: token_type_ids, for the bidirectional attention among image tokens); None: neither
    token_type_key: Literal["mm_token_type_ids", "token_type_ids"] | None = "mm_token_type_ids"
    # (option, value) pairs passed to the image processor on every call: a processor that would re-cut an image
    # (InternVL's tiles, Gemma 3's pan-and-scan crops) is held to the one image mmreason already resized
    images_kwargs: tuple[tuple[str, Any], ...] = ()
    # names of the modules holding the vision tower and its projector: LoRA adapts the language model only
    vision_modules: tuple[str, ...] = ("visual",)
    # the modules inside those that project vision features into the language model (merger / aligner), which
    # model.freeze_projector freezes; the rest of vision_modules is the vision tower (model.freeze_vision_tower)
    projector_modules: tuple[str, ...] = ("visual.merger",)
    video_timestamps: bool = False  # frames are introduced by their timestamps in the prompt text (Qwen3-VL)
    # what a prompt's cache holds per sequence, repeated G times for a shared prefix: kv (attention keys/values) or
    # hybrid (also linear-attention recurrent and convolution states)
    cache: Literal["kv", "hybrid"] = "kv"
    # the token types shape the attention mask (Gemma 3's bidirectional image blocks): a forward on top of a cache
    # must then get them for the whole sequence, cache included, since transformers indexes them by absolute position
    mask_from_token_types: bool = False
    # (old, new) replacements applied to a rendered chat template before the processor expands its placeholders:
    # where a checkpoint's template and its processor disagree on how a placeholder is written
    prompt_fixes: tuple[tuple[str, str], ...] = ()
    # keyword arguments of the chat template (Qwen3.5 and Qwen3-VL: enable_thinking=False, so the generation prompt
    # does not open a <think> block of its own: the tasks ask for their <think>/<answer> format themselves)
    chat_template_kwargs: tuple[tuple[str, Any], ...] = ()

    def part_of(self, parameter: str) -> Literal["vision_tower", "projector", "language_model"]:
        """Which part of the model a parameter name belongs to (names may carry wrapper prefixes, e.g. peft's)."""
        dotted = f".{parameter}."
        if any(f".{m}." in dotted for m in self.projector_modules):
            return "projector"
        if any(f".{m}." in dotted for m in self.vision_modules):
            return "vision_tower"
        return "language_model"

    @property
    def image_factor(self) -> int:
        """Pixels per side of one vision token: image sides are resized to multiples of it (qwen-vl-utils'
        smart_resize factor), a fixed square is a whole number of them."""
        return self.patch_size * self.merge_size

    def turn(self, role: str, content: str) -> str:
        """One whole chat turn as the family's template writes it."""
        return f"{self.turn_start}{role}\n{content}{self.turn_end}\n"

    def tool_turn(self, text: str, n_images: int) -> str:
        """Text that closes the assistant's tool call, answers it as a user turn holding `n_images` images and the
        tool's `text`, and opens the next assistant turn."""
        response = self.image_placeholder * n_images + f"<tool_response>{text}</tool_response>"
        return f"{self.turn_end}\n" + self.turn("user", response) + f"{self.turn_start}{self.assistant_role}\n"

    def fix_prompt(self, text: str) -> str:
        """The rendered chat template with `prompt_fixes` applied."""
        for old, new in self.prompt_fixes:
            text = text.replace(old, new)
        return text

    def eos_token_ids(self, tokenizer: Any, generation_eos: int | list[int] | None) -> list[int]:
        """Tokens that end a completion: the checkpoint's generation EOS ids plus the family's end of turn."""
        ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
        end = tokenizer.convert_tokens_to_ids(self.turn_end)
        if isinstance(end, int) and end >= 0 and end not in ids:
            ids.append(end)
        return ids

    def suppressed_token_ids(self, tokenizer: Any) -> list[int]:
        """Vision placeholder tokens: a completion must never contain them (the model would look for image features
        that do not exist), so sampling excludes them and scoring renormalises without them."""
        vocab = tokenizer.get_vocab()
        return sorted(vocab[t] for t in self.vision_tokens if t in vocab)


# the facts callers read from a processor's family (families sharing a processor class must agree on them)
PROCESSOR_FACTS = (
    "turn_start", "turn_end", "assistant_role", "image_placeholder", "vision_tokens", "patch_size", "merge_size",
    "fixed_image_size", "token_type_key", "images_kwargs", "prompt_fixes", "chat_template_kwargs", "video",
    "video_timestamps",
)


def family_names() -> tuple[str, ...]:
    return FAMILY_MODULES


def family_module(name: str) -> Any:
    """The module of the family called `name`: its `FAMILY` facts and its tiny offline model builders
    (`TINY_SPECIAL_TOKENS`, `TINY_CHAT_TEMPLATE`, `tiny_processor`, `tiny_config`, `tiny_model`)."""
    if name not in FAMILY_MODULES:
        raise FamilyError(f"unknown model family {name!r}; supported: {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(f"mmreason.models.{name}")


def get_family(name: str) -> ModelFamily:
    """The family called `name` (a `FAMILY_MODULES` entry); FamilyError naming the supported ones otherwise."""
    return family_module(name).FAMILY


def families() -> list[ModelFamily]:
    return [get_family(name) for name in FAMILY_MODULES]


def family_for_model_type(model_type: str) -> ModelFamily:
    for family in families():
        if model_type in family.model_types:
            return family
    raise FamilyError(
        f"checkpoint model_type {model_type!r} is not a supported model family; supported: "
        + ", ".join(f"{f.name} ({f.label})" for f in families())
    )


def family_for_processor(processor: Any) -> ModelFamily:
    """The family whose processor class `processor` is (FamilyError for any other processor).

    Several families may share a processor class (Qwen3-VL and Qwen3.5): they must then agree on every fact asked
    through the processor (`PROCESSOR_FACTS`), so the answer does not depend on which of them is returned."""
    return _family_for_processor_class(type(processor).__name__, FAMILY_MODULES)


@functools.cache
def _family_for_processor_class(cls: str, modules: tuple[str, ...]) -> ModelFamily:
    # asked for every prompt encoded: resolved once per processor class (and family list)
    found = [f for f in (get_family(name) for name in modules) if cls in f.processor_classes]
    if not found:
        raise FamilyError(f"processor {cls} belongs to no supported model family; supported: {', '.join(modules)}")
    facts = {tuple(getattr(f, k) for k in PROCESSOR_FACTS) for f in found}
    if len(facts) > 1:
        raise FamilyError(f"families {[f.name for f in found]} share {cls} but disagree on its facts")
    return found[0]


def resolve_family(config: Any, processor: Any = None, requested: str = "auto") -> ModelFamily:
    """The family of a checkpoint from its config's `model_type`, checked against `model.family` (unless "auto")
    and against its processor: any disagreement is a FamilyError naming what was found."""
    model_type = str(getattr(config, "model_type", ""))
    found = family_for_model_type(model_type)
    if requested != "auto" and get_family(requested) is not found:
        raise FamilyError(
            f"model.family={requested} contradicts the checkpoint (model_type {model_type!r} is {found.name})"
        )
    if processor is not None and type(processor).__name__ not in found.processor_classes:
        raise FamilyError(
            f"the checkpoint is {found.label} (model_type {model_type!r}) but its processor is "
            f"{type(processor).__name__}; expected {' or '.join(found.processor_classes)}"
        )
    return found
