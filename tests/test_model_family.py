"""Model families (`mmreason.models.family`): one module per family holds its facts, a checkpoint's family is found
from its config and checked against its processor and `model.family`, and nothing falls back to another family."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mmreason.models.family import (
    FAMILY_MODULES,
    FamilyError,
    family_for_model_type,
    family_for_processor,
    get_family,
    resolve_family,
)


@pytest.mark.parametrize(
    "name, factor, convention, label, square",
    [
        ("qwen2_5_vl", 28, "absolute", "Qwen2.5-VL", None),
        ("qwen2_vl", 28, "relative_1000", "Qwen2-VL", None),
        ("qwen3_vl", 32, "relative_1000", "Qwen3-VL", None),
        ("internvl", 28, "relative_1000", "InternVL3", 448),
        ("gemma3", 56, "relative_1000", "Gemma 3", 896),
    ],
)
def test_family_facts(name, factor, convention, label, square):
    family = get_family(name)
    assert family.name == name and family.image_factor == factor and family.box_convention == convention
    assert family.label == label and family_for_model_type(name) is family and name in FAMILY_MODULES
    assert family.fixed_image_size == square
    # a fixed square is made of whole vision tokens
    assert square is None or square % factor == 0


def test_tool_turn_is_written_as_the_family_writes_turns():
    text = get_family("qwen2_5_vl").tool_turn("found it", n_images=2)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (
        f"<|im_end|>\n<|im_start|>user\n{image}{image}<tool_response>found it</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_gemma3_tool_turn_reopens_the_model_turn():
    text = get_family("gemma3").tool_turn("found it", n_images=1)
    assert text == (
        "<end_of_turn>\n<start_of_turn>user\n<start_of_image><tool_response>found it</tool_response><end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_token_ids_come_from_the_processor(tiny_processor):
    family = family_for_processor(tiny_processor)
    tok = tiny_processor.tokenizer
    assert family.name == "qwen2_5_vl"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert family.eos_token_ids(tok, None) == [im_end]
    assert family.eos_token_ids(tok, [5, im_end]) == [5, im_end]  # no duplicate
    assert family.eos_token_ids(tok, 7) == [7, im_end]
    banned = family.suppressed_token_ids(tok)
    assert tok.convert_tokens_to_ids("<|image_pad|>") in banned and im_end not in banned


SUPPORTED = "qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_5, internvl, gemma3"


@pytest.mark.parametrize(
    "model_type, processor, requested, message",
    [
        ("llava", "Qwen2_5_VLProcessor", "auto", "model_type 'llava' is not a supported model family; supported:"),
        ("", "Qwen2_5_VLProcessor", "auto", "model_type '' is not a supported model family"),
        ("qwen2_5_vl", "Qwen2VLProcessor", "auto", "its processor is Qwen2VLProcessor; expected Qwen2_5_VLProcessor"),
        ("qwen2_vl", "Qwen2VLProcessor", "qwen2_5_vl", "model.family=qwen2_5_vl contradicts the checkpoint"),
        ("qwen2_vl", "Qwen2VLProcessor", "qwen3", f"unknown model family 'qwen3'; supported: {SUPPORTED}"),
        ("gemma3", "Gemma3Processor", "internvl", "model.family=internvl contradicts the checkpoint"),
        ("internvl", "Gemma3Processor", "auto", "its processor is Gemma3Processor; expected InternVLProcessor"),
    ],
)
def test_mismatches_are_refused_naming_what_was_found(model_type, processor, requested, message):
    fake_processor = type(processor, (), {})()
    with pytest.raises(FamilyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_family(SimpleNamespace(model_type=model_type), fake_processor, requested)


def test_matching_checkpoint_resolves():
    fake_processor = type("Qwen2VLProcessor", (), {})()
    config = SimpleNamespace(model_type="qwen2_vl")
    assert resolve_family(config, fake_processor, "auto") is get_family("qwen2_vl")
    assert resolve_family(config, fake_processor, "qwen2_vl") is get_family("qwen2_vl")


def test_an_unknown_processor_is_refused():
    with pytest.raises(FamilyError, match="processor LlavaProcessor belongs to no supported model family"):
        family_for_processor(type("LlavaProcessor", (), {})())


def test_families_sharing_a_processor_class_agree_on_its_facts():
    """Qwen3-VL and Qwen3.5 share Qwen3VLProcessor: whatever is asked through the processor is the same for both."""
    processor = type("Qwen3VLProcessor", (), {})()
    assert family_for_processor(processor).name in ("qwen3_vl", "qwen3_5")
    assert get_family("qwen3_vl").chat_template_kwargs == get_family("qwen3_5").chat_template_kwargs
    assert get_family("qwen3_5").cache == "hybrid" and get_family("qwen3_vl").cache == "kv"


def test_prompt_fixes_rewrite_a_checkpoint_templates_video_placeholder():
    fixed = get_family("qwen3_vl").fix_prompt("a<|vision_start|><|video_pad|><|vision_end|>b")
    assert fixed == "a<|video_pad|>b"
    assert get_family("qwen2_5_vl").fix_prompt("a<|vision_start|><|video_pad|><|vision_end|>b").count("vision") == 2
