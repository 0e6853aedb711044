"""Qwen2-VL: 14-pixel patches merged 2x2 (sides multiples of 28), ChatML turns, 3-D multimodal rotary positions,
boxes written `(x1,y1),(x2,y2)` in 0-1000 coordinates relative to each image side."""

from mmreason.models.family import ModelFamily

FAMILY = ModelFamily(
    name="qwen2_vl",
    label="Qwen2-VL",
    model_types=("qwen2_vl",),
    processor_classes=("Qwen2VLProcessor",),
    patch_size=14,
    merge_size=2,
    box_convention="relative_1000",
    rope="mrope",
    turn_start="<|im_start|>",
    turn_end="<|im_end|>",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    vision_tokens=("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"),
)
