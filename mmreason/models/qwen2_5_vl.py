"""Qwen2.5-VL: 14-pixel patches merged 2x2 (sides multiples of 28), ChatML turns, 3-D multimodal rotary positions,
boxes as JSON `[{"bbox_2d": [x1, y1, x2, y2]}]` in absolute pixels of the resized image. Its tiny offline model
shares Qwen2-VL's tokenizer tokens, chat template and language model shapes; the vision tower is Qwen2.5-VL's."""

from __future__ import annotations

from typing import Any

from mmreason.models import qwen2_vl
from mmreason.models.family import ModelFamily
from mmreason.models.qwen2_vl import FAMILY as QWEN2_VL
from mmreason.models.qwen2_vl import TINY_CHAT_TEMPLATE, TINY_SPECIAL_TOKENS  # noqa: F401 (this family's too)

FAMILY = ModelFamily(
    name="qwen2_5_vl",
    label="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    processor_classes=("Qwen2_5_VLProcessor",),
    patch_size=QWEN2_VL.patch_size,
    merge_size=QWEN2_VL.merge_size,
    box_convention="absolute",
    rope="mrope",
    turn_start=QWEN2_VL.turn_start,
    turn_end=QWEN2_VL.turn_end,
    image_placeholder=QWEN2_VL.image_placeholder,
    vision_tokens=QWEN2_VL.vision_tokens,
)


def tiny_processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    from transformers import Qwen2_5_VLProcessor

    return qwen2_vl.tiny_processor(tokenizer, min_pixels, max_pixels, processor_class=Qwen2_5_VLProcessor)


def tiny_config(tokenizer: Any, hidden_size: int, layers: int, vision_depth: int) -> Any:
    from transformers import Qwen2_5_VLConfig

    vision = dict(
        depth=vision_depth,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=hidden_size,
        fullatt_block_indexes=[vision_depth - 1],
        window_size=112,
    )
    text = qwen2_vl.tiny_text_config(tokenizer, hidden_size, layers)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **qwen2_vl.tiny_vision_ids(tokenizer))


def tiny_model(config: Any) -> Any:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration(config)
