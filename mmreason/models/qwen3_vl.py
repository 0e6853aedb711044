"""Qwen3-VL (dense `qwen3_vl` and MoE `qwen3_vl_moe` checkpoints): 16-pixel patches merged 2x2 (sides multiples of
32), ChatML turns, interleaved 3-D multimodal rotary positions, DeepStack vision features added to the first decoder
layers, video frames introduced by `<t seconds>` timestamps in the text, boxes as JSON
`[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` in 0-1000 coordinates relative to each image side.
The tiny offline model (`mmreason.models.tiny`) of this family is built by `tiny_config`, `tiny_processor` and
`tiny_model` below, with the essentials of the instruct models' chat template; Qwen3.5 shares its processor.
"""

from __future__ import annotations

from typing import Any

from mmreason.models import qwen2_vl
from mmreason.models.family import ModelFamily
from mmreason.models.qwen2_vl import FAMILY as QWEN2_VL

FAMILY = ModelFamily(
    name="qwen3_vl",
    projector_modules=("visual.merger", "visual.deepstack_merger_list"),
    label="Qwen3-VL",
    model_types=("qwen3_vl", "qwen3_vl_moe"),
    processor_classes=("Qwen3VLProcessor",),
    patch_size=16,
    merge_size=2,
    box_convention="relative_1000",
    box_format="json_bbox_2d",
    rope="mrope",
    turn_start=QWEN2_VL.turn_start,
    turn_end=QWEN2_VL.turn_end,
    image_placeholder=QWEN2_VL.image_placeholder,
    vision_tokens=QWEN2_VL.vision_tokens,
    video_timestamps=True,
    # the checkpoints' template writes a video as <|vision_start|><|video_pad|><|vision_end|>, while transformers 5.x's
    # Qwen3VLProcessor expands the bare <|video_pad|> into `<t seconds><|vision_start|>...<|vision_end|>` per frame:
    # without the fix every frame would sit inside a second pair of vision tokens
    prompt_fixes=(("<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>"),),
    # Qwen3.5 shares this processor: the same flag (ignored by templates without a thinking switch)
    chat_template_kwargs=(("enable_thinking", False),),
)

# the checkpoints' tokenizers carry Qwen2-VL's special tokens; the first is the pad token, `turn_end` the EOS
TINY_SPECIAL_TOKENS = list(qwen2_vl.TINY_SPECIAL_TOKENS)

# Vision placeholders as the instruct template writes them, except a video: it is the bare <|video_pad|>, because
# transformers 5.x's Qwen3VLProcessor replaces only that token with `<t seconds><|vision_start|>...<|vision_end|>` per
# frame, so the template's own <|vision_start|>/<|vision_end|> around it would wrap the frames a second time.
_RENDER_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|video_pad|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
)

# a tool result is a user turn holding <tool_response>; the newline before its end tag is an expression because the
# chat template environment trims the one after a tag
_TOOL_TURN = "<|im_start|>user\n<tool_response>\n" + _RENDER_CONTENT + "{{ '\\n' }}</tool_response>"

# the turns, without a default system turn (unlike Qwen2-VL's template); Qwen3.5 shares them
TINY_TURNS = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if message['role'] == 'tool' %}" + _TOOL_TURN + "{% else %}"
    "<|im_start|>{{ message['role'] }}\n" + _RENDER_CONTENT + "{% endif %}<|im_end|>\n{% endfor %}"
)
TINY_CHAT_TEMPLATE = TINY_TURNS + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"


def tiny_processor(tokenizer: Any, min_pixels: int, max_pixels: int, chat_template: str = TINY_CHAT_TEMPLATE) -> Any:
    """A real Qwen3-VL processor around `tokenizer`: the checkpoints' Qwen2-VL image processor and Qwen3-VL video
    processor with 16-pixel patches and 0.5 mean / std normalisation, and the family's chat template."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    common = dict(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=FAMILY.patch_size,
        merge_size=FAMILY.merge_size,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**common),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**common),
        chat_template=chat_template,
    )


def tiny_vision_config(hidden_size: int, vision_depth: int) -> dict[str, Any]:
    """A tiny Qwen3-VL / Qwen3.5 vision tower: 32 wide, 2 heads, a learned 8 x 8 position grid (resampled to each
    image's grid, as the real 48 x 48 one is), output projected to the language model's width."""
    return dict(
        depth=vision_depth,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=hidden_size,
        num_position_embeddings=64,
        patch_size=FAMILY.patch_size,
        spatial_merge_size=FAMILY.merge_size,
        temporal_patch_size=2,
    )


def tiny_config(tokenizer: Any, hidden_size: int, layers: int, vision_depth: int) -> Any:
    from transformers import Qwen3VLConfig

    text = qwen2_vl.tiny_text_config(tokenizer, hidden_size, layers)
    # head_dim defaults to 128 in Qwen3-VL; the real models interleave the t/h/w rotary sections
    text["head_dim"] = hidden_size // text["num_attention_heads"]
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
    vision = tiny_vision_config(hidden_size, vision_depth)
    # one DeepStack level, from a block the tiny tower has, added to the first decoder layer
    vision["deepstack_visual_indexes"] = [(vision_depth - 1) // 2]
    return Qwen3VLConfig(text_config=text, vision_config=vision, **qwen2_vl.tiny_vision_ids(tokenizer))


def tiny_model(config: Any) -> Any:
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration(config)
