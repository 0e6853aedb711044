"""The embedded default model: a tiny Qwen2.5-VL (or Qwen2-VL) architecture built offline from a config.

Random-init weights, a byte-level BPE tokenizer trained locally with the Qwen chat special tokens, and a real
transformers processor with the Qwen chat template, all saved with `save_pretrained` so that the very same
`from_pretrained` loading code serves it and real hub models alike.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mmreason.models.family import get_family

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The tags the tasks ask for are single tokens, so a tiny model can learn the answer format in few steps.
ADDED_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>"]

# Qwen2-VL / Qwen2.5-VL chat template (the one shipped with the instruct models), vision placeholders included.
CHAT_TEMPLATE = (
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



def _corpus() -> list[str]:
    """Text the tokenizer is trained on: the prompts, tags, numbers and words the built-in tasks use."""
    words = (
        "system user assistant You are a helpful assistant. How many shapes are in the image? Count the objects. "
        "Find the box of the red square. Output the bounding box as [x1, y1, x2, y2]. Which tile goes where? "
        "The image was cut into tiles and shuffled. Where was this photo taken? latitude longitude country city "
        "Answer with the letter of the correct option. What is the class of the object? When does the event "
        "happen in the video? seconds start end think answer none red green blue yellow circle square triangle "
        "first then inside tags give final the a an of is it and or to in on at with which larger smaller left "
        "right top bottom"
    )
    digits = " ".join(str(i) for i in range(0, 1001))
    coords = " ".join(f"[{i}, {i + 3}, {i + 7}, {i + 11}]" for i in range(0, 500, 7))
    return [words] * 20 + [digits] * 5 + [coords] * 5 + [string.printable] * 5


def build_tokenizer(vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer locally and wrap it as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # padding_side must go to the constructor: it survives save_pretrained only that way.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
    )
    fast.add_tokens(ADDED_TOKENS)
    return fast


def build_processor(
    tokenizer, min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 256, arch: str = "qwen2_5_vl"
):
    """A real Qwen2.5-VL (or Qwen2-VL) processor (image + video processors, chat template) around `tokenizer`."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    cls = Qwen2_5_VLProcessor if arch == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer, arch: str = "qwen2_5_vl", hidden_size: int = 64, layers: int = 2, vision_depth: int = 2):
    """A Qwen2.5-VL / Qwen2-VL config of a few hundred thousand to a few million parameters."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    get_family(arch)  # FamilyError naming the supported families
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 4
    head_dim = hidden_size // heads
    # mrope sections (temporal, height, width) must add up to head_dim / 2.
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
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
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    if arch == "qwen2_5_vl":
        vision = dict(
            depth=vision_depth,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[vision_depth - 1],
            window_size=112,
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    vision = dict(depth=vision_depth, embed_dim=32, hidden_size=hidden_size, num_heads=2, mlp_ratio=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, **common)


def build_tiny(
    out_dir: str | Path | None = None,
    arch: str = "qwen2_5_vl",
    hidden_size: int = 64,
    layers: int = 2,
    vision_depth: int = 2,
    seed: int = 0,
):
    """Build (and optionally save) the tiny model, processor and tokenizer. Returns (model, processor)."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, arch=arch)
    config = build_config(tokenizer, arch, hidden_size, layers, vision_depth)
    torch.manual_seed(seed)
    cls = Qwen2_5_VLForConditionalGeneration if arch == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    model = cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.pad_token_id
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "mmreason_tiny.json").write_text(json.dumps({"arch": arch, "hidden_size": hidden_size, "seed": seed}))
    return model, processor
