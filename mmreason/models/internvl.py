"""InternVL3 (transformers `internvl`): 448-pixel tiles of 14-pixel patches, pixel-shuffled 2x2 into 256 tokens per
tile, a Qwen2 language model with ChatML turns and 1-D rotary positions, boxes written
`<ref>label</ref><box>[[x1, y1, x2, y2]]</box>` in 0-1000 coordinates relative to each image side.

The processor cuts every image into 448x448 tiles (`crop_to_patches`, on by default in `InternVLProcessor`): mmreason
resizes images to that square and turns the tiling off, so each image is exactly one tile (one `pixel_values` row,
like each video frame). The model takes no per-token vision types. The grounding tags `<ref>`, `</ref>`, `<box>`,
`</box>` are special tokens of the real checkpoints' tokenizers (InternVL's training code adds them with
`special_tokens=True`), so a completion decoded with `skip_special_tokens=True` keeps `label[[x1, y1, x2, y2]]`
without them; the grounding reward reads the box inside either way. Its tiny offline model
(`mmreason.models.tiny`) is built by `tiny_config`, `tiny_processor` and `tiny_model` below, with the chat template
of the transformers conversion of InternVL3.
"""

from __future__ import annotations

from typing import Any

from mmreason.models.family import ModelFamily

FAMILY = ModelFamily(
    name="internvl",
    projector_modules=("multi_modal_projector",),
    label="InternVL3",
    model_types=("internvl",),
    processor_classes=("InternVLProcessor",),
    patch_size=14,
    merge_size=2,  # pixel shuffle with downsample_ratio 0.5: 2x2 patches -> one token
    box_convention="relative_1000",
    box_format="ref_box",
    rope="1d",
    turn_start="<|im_start|>",
    turn_end="<|im_end|>",
    # the chat template writes an image as `<IMG_CONTEXT>\n`; the processor expands the `<IMG_CONTEXT>` into
    # `<img>` + 256 `<IMG_CONTEXT>` per tile + `</img>`
    image_placeholder="<IMG_CONTEXT>\n",
    vision_tokens=("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    fixed_image_size=448,
    # videos: frames of 448x448, each one tile introduced by "FrameN: " (no timestamps)
    video=True,
    token_type_key=None,
    images_kwargs=(("crop_to_patches", False),),
    vision_modules=("vision_tower", "multi_modal_projector"),
)

# the tokens the processor finds by name on its tokenizer (InternVLProcessor.__init__)
NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# special tokens of the tiny tokenizer: the first is the pad token, `turn_end` the EOS
TINY_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
]

# The grounding tags are single tokens here as in the real tokenizer, but not special ones: decoded completions keep
# them, so the tiny model's answers show the family's box syntax (see the module docstring for the real checkpoints).
TINY_ADDED_TOKENS = ["<ref>", "</ref>", "<box>", "</box>"]

# the chat template of the transformers InternVL3 checkpoints (no default system turn)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The tiny vision tower sees the real 448-pixel tiles through 56-pixel patches: 8x8 patches, pixel-shuffled to 4x4 =
# 16 tokens per tile, so images keep the family's size while the CPU cost stays small.
TINY_PATCH_SIZE = 56
TINY_IMAGE_TOKENS = (FAMILY.fixed_image_size // TINY_PATCH_SIZE // FAMILY.merge_size) ** 2
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]


def tiny_processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    """A real InternVL processor around `tokenizer` (the pixel budget is unused: tiles have a fixed size)."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    from mmreason.models.tiny import with_named_tokens

    size = {"height": FAMILY.fixed_image_size, "width": FAMILY.fixed_image_size}
    norm = dict(size=size, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(**norm),
        tokenizer=with_named_tokens(tokenizer, **NAMED_TOKENS),
        video_processor=InternVLVideoProcessor(**norm),
        image_seq_length=TINY_IMAGE_TOKENS,
        chat_template=TINY_CHAT_TEMPLATE,
    )


def tiny_text_config(tokenizer: Any, hidden_size: int, layers: int) -> dict[str, Any]:
    """A tiny Qwen2 language model (4 heads, 2 key/value heads, 1-D rotary positions)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS}
    return dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )


def tiny_config(tokenizer: Any, hidden_size: int, layers: int, vision_depth: int) -> Any:
    from transformers import InternVLConfig

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_depth,
        num_attention_heads=2,
        image_size=FAMILY.fixed_image_size,
        patch_size=TINY_PATCH_SIZE,
    )
    return InternVLConfig(
        text_config=tiny_text_config(tokenizer, hidden_size, layers),
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=TINY_IMAGE_TOKENS,
        tie_word_embeddings=True,
    )


def tiny_model(config: Any) -> Any:
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration(config)
