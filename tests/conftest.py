"""Shared pytest fixtures: the tiny offline Qwen2.5-VL model folder and its processor, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Folder holding the tiny model, tokenizer and processor saved with save_pretrained (built once, ~4 s)."""
    from mmreason.models.tiny import build_tiny

    out = tmp_path_factory.mktemp("tiny") / "qwen2_5_vl"
    build_tiny(out)
    return out


@pytest.fixture(scope="session")
def tiny_processor(tiny_dir):
    """The tiny model's processor, loaded the way real checkpoints are (AutoProcessor.from_pretrained)."""
    from transformers import AutoProcessor, Qwen2_5_VLProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    # Without torchvision, AutoProcessor can silently return only the tokenizer: the type is asserted.
    assert isinstance(processor, Qwen2_5_VLProcessor), f"got {type(processor).__name__}"
    return processor


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> str:
    """Where `family_models.load` saves each family's tiny model (once per session)."""
    return str(tmp_path_factory.mktemp("families"))
