"""Freezing the vision tower, the projector or the language model, for every supported family: which parameters
each option freezes, the count printed at start, and training that leaves frozen weights untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.config import ConfigError, RunConfig, from_dict, validate
from mmreason.models.family import family_names, get_family
from mmreason.models.policy import PARTS, describe_trainable, freeze_parts, parameter_counts
from mmreason.models.tiny import build_tiny


@pytest.mark.parametrize("family", family_names())
def test_each_part_freezes_alone(family):
    model, _ = build_tiny(None, family)
    fam = get_family(family)
    whole = parameter_counts(model, fam)
    assert all(whole[p][1] > 0 for p in PARTS), f"{family}: every part has parameters ({whole})"
    for part in PARTS:
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_parts(model, fam, [part])
        counts = parameter_counts(model, fam)
        assert counts[part][0] == 0
        assert all(counts[other][0] == counts[other][1] for other in PARTS if other != part)
    assert "trainable" not in describe_trainable(whole) and "of" in describe_trainable(whole)


def test_nothing_left_to_train_is_refused():
    base = {"data": [{"task": "counting", "train": "x.jsonl"}]}
    for model in ({"freeze_language_model": True, "lora": {"enabled": True}},
                  {"freeze_language_model": True, "freeze_vision_tower": True, "freeze_projector": True}):
        with pytest.raises(ConfigError, match="leaves nothing to train"):
            validate(from_dict(RunConfig, {**base, "model": model}))


def test_training_leaves_frozen_weights_untouched(tmp_path):
    from mmreason.data.synthetic import make_synthetic

    data = make_synthetic("counting", tmp_path / "data", n=8, seed=0)
    cfg = {
        "name": "frozen", "output_dir": str(tmp_path / "runs"), "stages": ["sft"], "think": False,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136, "freeze_vision_tower": True,
                  "freeze_projector": True},
        "data": [{"task": "counting", "train": str(data / "train.jsonl")}],
        "sft": {"steps": 2, "batch_size": 2, "lr": 1e-2},
        "eval": {"at_start": False},
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    assert "trainable parameters:" in result.output and "vision_tower 0 of" in result.output
    before = load_file(next(Path(tmp_path / "runs" / ".cache").rglob("model.safetensors")))
    ckpt = sorted((tmp_path / "runs" / "frozen" / "checkpoints").iterdir())[-1]
    after = load_file(ckpt / "model.safetensors")
    fam = get_family("qwen2_5_vl")
    changed = {fam.part_of(k) for k in before if not before[k].equal(after[k])}
    assert changed == {"language_model"}
