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
    "name, factor, convention, label",
    [("qwen2_5_vl", 28, "absolute", "Qwen2.5-VL"), ("qwen2_vl", 28, "relative_1000", "Qwen2-VL")],
)
def test_family_facts(name, factor, convention, label):
    family = get_family(name)
    assert family.name == name and family.image_factor == factor and family.box_convention == convention
    assert family.label == label and family_for_model_type(name) is family and name in FAMILY_MODULES


def test_tool_turn_is_written_as_the_family_writes_turns():
    text = get_family("qwen2_5_vl").tool_turn("found it", n_images=2)
    image = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text == (
        f"<|im_end|>\n<|im_start|>user\n{image}{image}<tool_response>found it</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
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


@pytest.mark.parametrize(
    "model_type, processor, requested, message",
    [
        ("llava", "Qwen2_5_VLProcessor", "auto", "model_type 'llava' is not a supported model family; supported:"),
        ("", "Qwen2_5_VLProcessor", "auto", "model_type '' is not a supported model family"),
        ("qwen2_5_vl", "Qwen2VLProcessor", "auto", "its processor is Qwen2VLProcessor; expected Qwen2_5_VLProcessor"),
        ("qwen2_vl", "Qwen2VLProcessor", "qwen2_5_vl", "model.family=qwen2_5_vl contradicts the checkpoint"),
        ("qwen2_vl", "Qwen2VLProcessor", "qwen3", "unknown model family 'qwen3'; supported: qwen2_5_vl, qwen2_vl"),
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
