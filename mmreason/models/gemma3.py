"""Gemma 3 (transformers `gemma3`): a SigLIP tower on 896x896 images (14-pixel patches, average-pooled 4x4 into
256 tokens per image), Gemma turns `<start_of_turn>user\\n...<end_of_turn>\\n` whose assistant role is `model`, 1-D
rotary positions, and image tokens that attend to each other bidirectionally (`token_type_ids` marks them). Gemma 3
has no grounding output format of its own; boxes are asked for as JSON `[{"bbox_2d": [x1, y1, x2, y2]}]` in 0-1000
coordinates relative to each image side.

The processor takes one fixed square size (pan-and-scan off): mmreason resizes images to 896x896, one `pixel_values`
row each. The chat template writes the BOS itself, so prompts are tokenized without the tokenizer's own special
tokens (which would add a second BOS). Its tiny offline
model (`mmreason.models.tiny`) is built by `tiny_config`, `tiny_processor` and `tiny_model` below, with the
instruction-tuned checkpoints' chat template.
"""

from __future__ import annotations

from typing import Any

from mmreason.models.family import ModelFamily

FAMILY = ModelFamily(
    name="gemma3",
    projector_modules=("multi_modal_projector",),
    label="Gemma 3",
    model_types=("gemma3",),
    processor_classes=("Gemma3Processor",),
    patch_size=14,
    merge_size=4,  # the projector average-pools 4x4 patches (64x64 -> 16x16) into one token
    # Relative 0-1000 rather than pixels: every image is squashed to 896x896, so pixel coordinates of the model's
    # image would not keep the original's aspect ratio, while relative ones are the same in both. JSON bbox_2d
    # because, with no box syntax of its own to fall back on, a plain JSON list is what the model follows from the
    # instruction alone.
    box_convention="relative_1000",
    box_format="json_bbox_2d",
    rope="1d",
    turn_start="<start_of_turn>",
    turn_end="<end_of_turn>",
    # the processor expands `<start_of_image>` into "\n\n<start_of_image>" + 256 `<image_soft_token>` +
    # "<end_of_image>\n\n"
    image_placeholder="<start_of_image>",
    vision_tokens=("<start_of_image>", "<end_of_image>", "<image_soft_token>"),
    fixed_image_size=896,
    video=False,  # Gemma3Processor has no video processor
    assistant_role="model",
    token_type_key="token_type_ids",  # 1 on image soft tokens: they attend to each other bidirectionally
    mask_from_token_types=True,
    images_kwargs=(("do_pan_and_scan", False),),
    vision_modules=("vision_tower", "multi_modal_projector"),
)

# the tokens the processor finds by name on its tokenizer (Gemma3Processor.__init__)
NAMED_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}

# special tokens of the tiny tokenizer: the first is the pad token, `turn_end` the EOS
TINY_SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]

# the chat template of the instruction-tuned Gemma 3 checkpoints: BOS first, a system turn folded into the first user
# turn, assistant turns written as `model`, user/assistant alternation enforced, text items trimmed
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    '{%- else -%}{%- set first_user_prefix = "" -%}{%- set loop_messages = messages -%}{%- endif -%}'
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    '{{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}{%- endif -%}'
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    '{%- else -%}{{ raise_exception("Invalid content type") }}{%- endif -%}'
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# The tiny vision tower sees the real 896-pixel images through 56-pixel patches: 16x16 patches, pooled 4x4 into
# 4x4 = 16 tokens per image, so images keep the family's size while the CPU cost stays small.
TINY_PATCH_SIZE = 56
TINY_IMAGE_TOKENS = (FAMILY.fixed_image_size // TINY_PATCH_SIZE // FAMILY.merge_size) ** 2


def _named(tokenizer: Any) -> Any:
    """The tokenizer with Gemma 3's named image tokens and a BOS that tokenizing adds, as Gemma's tokenizer does."""
    from mmreason.models.tiny import with_named_tokens

    return with_named_tokens(tokenizer, **NAMED_TOKENS, bos_token="<bos>", add_bos_token=True)


def tiny_processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    """A real Gemma 3 processor around `tokenizer` (the pixel budget is unused: images have a fixed size)."""
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    side = FAMILY.fixed_image_size
    image_processor = Gemma3ImageProcessor(
        size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_pan_and_scan=False
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=_named(tokenizer),
        chat_template=TINY_CHAT_TEMPLATE,
        image_seq_length=TINY_IMAGE_TOKENS,
    )


def tiny_text_config(tokenizer: Any, hidden_size: int, layers: int) -> dict[str, Any]:
    """A tiny Gemma 3 language model: sliding-window layers with a global last one, as Gemma 3 interleaves them."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS}
    heads = 4
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        head_dim=hidden_size // heads,
        query_pre_attn_scalar=hidden_size // heads,
        max_position_embeddings=4096,
        sliding_window=512,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"],
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=True,
    )


def tiny_config(tokenizer: Any, hidden_size: int, layers: int, vision_depth: int) -> Any:
    from transformers import Gemma3Config

    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_depth,
        num_attention_heads=2,
        image_size=FAMILY.fixed_image_size,
        patch_size=TINY_PATCH_SIZE,
        vision_use_head=False,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in NAMED_TOKENS.values()}
    return Gemma3Config(
        text_config=tiny_text_config(tokenizer, hidden_size, layers),
        vision_config=vision,
        mm_tokens_per_image=TINY_IMAGE_TOKENS,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        tie_word_embeddings=True,
    )


def tiny_model(config: Any) -> Any:
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration(config)
