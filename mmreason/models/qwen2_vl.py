"""Qwen2-VL: 14-pixel patches merged 2x2 (sides multiples of 28), ChatML turns, 3-D multimodal rotary positions,
boxes written `(x1,y1),(x2,y2)` in 0-1000 coordinates relative to each image side.
The tiny offline model (`mmreason.models.tiny`) of this family and of Qwen2.5-VL is built by `tiny_config`,
`tiny_processor` and `tiny_model` below, with the instruct models' chat template.
"""

from __future__ import annotations

from typing import Any

from mmreason.models.family import ModelFamily

FAMILY = ModelFamily(
    name="qwen2_vl",
    label="Qwen2-VL",
    model_types=("qwen2_vl",),
    processor_classes=("Qwen2VLProcessor",),
    patch_size=14,
    merge_size=2,
    box_convention="relative_1000",
    box_format="point_pairs",
    rope="mrope",
    turn_start="<|im_start|>",
    turn_end="<|im_end|>",
    image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    vision_tokens=("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"),
)

# special tokens of the tiny tokenizer: the first is the pad token, `turn_end` the EOS
TINY_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# the Qwen2-VL / Qwen2.5-VL instruct chat template, vision placeholders included
TINY_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_processor(tokenizer: Any, min_pixels: int, max_pixels: int, processor_class: Any = None) -> Any:
    """A real Qwen2-VL processor (image + video processors, chat template) around `tokenizer`."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    patch = dict(patch_size=FAMILY.patch_size, merge_size=FAMILY.merge_size, temporal_patch_size=2)
    return (processor_class or Qwen2VLProcessor)(
        image_processor=Qwen2VLImageProcessor(size=size, **patch),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size, **patch),
        chat_template=TINY_CHAT_TEMPLATE,
    )


def tiny_text_config(tokenizer: Any, hidden_size: int, layers: int) -> dict[str, Any]:
    """The language model of a tiny Qwen2-VL / Qwen2.5-VL (4 heads, 3-D rotary sections of the head dim)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS}
    heads = 4
    half = hidden_size // heads // 2
    # mrope sections (temporal, height, width) must add up to head_dim / 2.
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )


def tiny_vision_ids(tokenizer: Any) -> dict[str, Any]:
    """The placeholder token ids a Qwen-VL config names."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS}
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def tiny_config(tokenizer: Any, hidden_size: int, layers: int, vision_depth: int) -> Any:
    from transformers import Qwen2VLConfig

    vision = dict(depth=vision_depth, embed_dim=32, hidden_size=hidden_size, num_heads=2, mlp_ratio=2)
    text = tiny_text_config(tokenizer, hidden_size, layers)
    return Qwen2VLConfig(text_config=text, vision_config=vision, **tiny_vision_ids(tokenizer))


def tiny_model(config: Any) -> Any:
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration(config)
