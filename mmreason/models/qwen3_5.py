"""Qwen3.5 (dense `qwen3_5` and MoE `qwen3_5_moe` checkpoints), natively multimodal: Qwen3-VL's vision input
(16-pixel patches merged 2x2, the same processor, timestamped video frames, 0-1000 relative JSON boxes, interleaved
3-D rotary positions) in front of a hybrid language model whose layers alternate Gated DeltaNet linear attention
(three in four in the real models) with gated full attention, so a prompt's cache also holds each linear layer's
convolution and recurrent states. The checkpoints' chat template opens the answer with a thinking block by
default; prompts written for the tasks' own <think>/<answer> format must not (see `TINY_CHAT_TEMPLATE`).
The tiny offline model (`mmreason.models.tiny`) of this family is built by `tiny_config`, `tiny_processor` and
`tiny_model` below.
"""

from __future__ import annotations

from typing import Any

from mmreason.models import qwen2_vl, qwen3_vl
from mmreason.models.family import ModelFamily
from mmreason.models.qwen3_vl import FAMILY as QWEN3_VL

FAMILY = ModelFamily(
    name="qwen3_5",
    projector_modules=("visual.merger", "visual.deepstack_merger_list"),
    label="Qwen3.5",
    model_types=("qwen3_5", "qwen3_5_moe"),
    processor_classes=QWEN3_VL.processor_classes,
    patch_size=QWEN3_VL.patch_size,
    merge_size=QWEN3_VL.merge_size,
    box_convention=QWEN3_VL.box_convention,
    box_format=QWEN3_VL.box_format,
    rope="mrope",
    turn_start=QWEN3_VL.turn_start,
    turn_end=QWEN3_VL.turn_end,
    image_placeholder=QWEN3_VL.image_placeholder,
    vision_tokens=QWEN3_VL.vision_tokens,
    video_timestamps=True,
    cache="hybrid",
    # the same processor expanding the same bare video placeholder (a no-op where a template writes it bare)
    prompt_fixes=QWEN3_VL.prompt_fixes,
    # the checkpoints' generation prompt opens <think> unless told not to; the tasks write their own
    chat_template_kwargs=QWEN3_VL.chat_template_kwargs,
)

# the first is the pad token (<|endoftext|>, as in the checkpoints), `turn_end` the EOS
TINY_SPECIAL_TOKENS = list(qwen3_vl.TINY_SPECIAL_TOKENS)

# Qwen3-VL's turns and vision placeholders. The checkpoints' generation prompt opens a thinking block (`<think>\n`)
# unless enable_thinking=False (then it writes an empty, closed one); the tasks ask for their own <think>/<answer>
# format, so the tiny template opens none by default and writes the checkpoints' blocks only when asked explicitly.
TINY_CHAT_TEMPLATE = qwen3_vl.TINY_TURNS + (
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% elif enable_thinking is defined and enable_thinking is true %}<think>\n{% endif %}{% endif %}"
)

# the real models' pattern: every 4th layer is full attention, the others linear
FULL_ATTENTION_INTERVAL = 4


def tiny_processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> Any:
    """Qwen3-VL's real processor (Qwen3.5 checkpoints name it too) with this family's chat template.

    transformers loads the tokenizer of any `qwen3_5` checkpoint as Qwen3_5Tokenizer, which replaces the saved
    pre-tokenizer and normaliser with its own (digits split one by one, NFC); the tiny tokenizer gets them now, so
    that it tokenizes the same before and after `save_pretrained` / `from_pretrained`.
    """
    from transformers import Qwen3_5Tokenizer

    reference = Qwen3_5Tokenizer().backend_tokenizer
    tokenizer.backend_tokenizer.pre_tokenizer = reference.pre_tokenizer
    tokenizer.backend_tokenizer.normalizer = reference.normalizer
    return qwen3_vl.tiny_processor(tokenizer, min_pixels, max_pixels, chat_template=TINY_CHAT_TEMPLATE)


def tiny_layer_types(layers: int) -> list[str]:
    """The real interleaving, shortened so that every stack ends with full attention and any of two or more layers
    has both kinds (2 layers: linear, full). A cache needs one attention layer to know its length."""
    interval = max(1, min(FULL_ATTENTION_INTERVAL, layers))
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)]


def tiny_text_config(tokenizer: Any, hidden_size: int, layers: int) -> dict[str, Any]:
    """The hybrid language model: 4 query / 2 key-value heads of 32 dims with rotary on a quarter of them (as the
    real models), and Gated DeltaNet layers of 2 key / 4 value heads of 16 dims with a width-4 convolution."""
    text = qwen2_vl.tiny_text_config(tokenizer, hidden_size, layers)
    text.update(
        head_dim=32,
        # 32 * 0.25 = 8 rotary dims = 4 frequencies, split t/h/w like the real [11, 11, 10] of 32
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        layer_types=tiny_layer_types(layers),
        linear_conv_kernel_dim=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )
    return text


def tiny_config(tokenizer: Any, hidden_size: int, layers: int, vision_depth: int) -> Any:
    from transformers import Qwen3_5Config

    vision = qwen3_vl.tiny_vision_config(hidden_size, vision_depth)  # no DeepStack in Qwen3.5
    text = tiny_text_config(tokenizer, hidden_size, layers)
    return Qwen3_5Config(text_config=text, vision_config=vision, **qwen2_vl.tiny_vision_ids(tokenizer))


def tiny_model(config: Any) -> Any:
    from transformers import Qwen3_5ForConditionalGeneration

    return Qwen3_5ForConditionalGeneration(config)
