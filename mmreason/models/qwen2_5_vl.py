"""Qwen2.5-VL: 14-pixel patches merged 2x2 (sides multiples of 28), ChatML turns, 3-D multimodal rotary positions,
boxes as JSON `[{"bbox_2d": [x1, y1, x2, y2]}]` in absolute pixels of the resized image."""

from mmreason.models.family import ModelFamily
from mmreason.models.qwen2_vl import FAMILY as QWEN2_VL

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
