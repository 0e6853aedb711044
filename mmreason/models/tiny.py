"""The embedded default models: a tiny architecture of any supported model family, built offline from a config.

Random-init weights, a byte-level BPE tokenizer trained locally with the family's special tokens, and the family's
real transformers processor with its chat template, all saved with `save_pretrained` so that the very same
`from_pretrained` loading code serves it and real hub models alike. What is family-specific (special tokens, chat
template, processor, config, model class) comes from the family's module (`family.family_module`).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mmreason.models.family import family_module

# The tags the tasks ask for are single tokens, so a tiny model can learn the answer format in few steps.
ADDED_TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>"]

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


def build_tokenizer(arch: str = "qwen2_5_vl", vocab_size: int = 1024):
    """Train a byte-level BPE tokenizer locally with the family's special tokens (the first is the pad token, the
    family's end of turn the EOS) and wrap it as a transformers fast tokenizer; the task tags and the family's
    `TINY_ADDED_TOKENS` (if any) are added as ordinary single tokens."""
    from transformers import PreTrainedTokenizerFast

    module = family_module(arch)
    special = list(module.TINY_SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # padding_side must go to the constructor: it survives save_pretrained only that way.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=module.FAMILY.turn_end,
        pad_token=special[0],
        unk_token=None,
        padding_side="left",
        additional_special_tokens=special[1:],
        model_max_length=32768,
    )
    fast.add_tokens(ADDED_TOKENS + list(getattr(module, "TINY_ADDED_TOKENS", ())))
    return fast


def with_named_tokens(tokenizer, **attributes):
    """The same tokenizer rebuilt with extra constructor `attributes` (named tokens such as `boi_token`, which
    processors look up and save_pretrained writes to the tokenizer's config; BOS settings)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    return type(tokenizer)(tokenizer_object=backend, **{**tokenizer.init_kwargs, **attributes})


def build_processor(
    tokenizer, min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 256, arch: str = "qwen2_5_vl"
):
    """The family's real processor (image and video processors, chat template) around `tokenizer`."""
    return family_module(arch).tiny_processor(tokenizer, min_pixels, max_pixels)


def build_config(tokenizer, arch: str = "qwen2_5_vl", hidden_size: int = 64, layers: int = 2, vision_depth: int = 2):
    """A config of the family of a few hundred thousand to a few million parameters."""
    return family_module(arch).tiny_config(tokenizer, hidden_size, layers, vision_depth)


def build_tiny(
    out_dir: str | Path | None = None,
    arch: str = "qwen2_5_vl",
    hidden_size: int = 64,
    layers: int = 2,
    vision_depth: int = 2,
    seed: int = 0,
):
    """Build (and optionally save) the tiny model, processor and tokenizer. Returns (model, processor)."""
    module = family_module(arch)  # FamilyError naming the supported families
    tokenizer = build_tokenizer(arch)
    processor = build_processor(tokenizer, arch=arch)
    config = build_config(tokenizer, arch, hidden_size, layers, vision_depth)
    torch.manual_seed(seed)
    model = module.tiny_model(config)
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
