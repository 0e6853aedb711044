"""Checkpoints: reload with plain transformers / peft, exact resume of optimizer, scheduler and RNG, crash safety."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmreason.models.tiny import build_tiny
from mmreason.train.checkpoint import (
    COMPLETE_MARKER,
    checkpoint_name,
    complete_checkpoints,
    keep_last,
    latest_checkpoint,
    load_training_state,
    save_checkpoint,
    staging_dir,
)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _train_setup(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return opt, sched


def _fake_step(model, opt, sched, seed: int) -> None:
    """One optimizer step with deterministic pseudo-gradients (no forward needed to exercise the state)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    sched.step()
    opt.zero_grad()


@pytest.mark.parametrize(
    "args, expected",
    [((0, "sft", 10), "s00-sft-step000010"), ((1, "grpo", 999_999), "s01-grpo-step999999")],
)
def test_checkpoint_name(args, expected):
    assert checkpoint_name(*args) == expected


def test_checkpoint_names_sort_in_training_order():
    names = [checkpoint_name(0, "sft", 9), checkpoint_name(0, "sft", 10), checkpoint_name(1, "grpo", 2)]
    assert sorted(names) == names


@pytest.mark.parametrize("args", [(100, "sft", 1), (0, "sft", 1_000_000), (0, "../x", 1), (0, "", 1)])
def test_checkpoint_name_errors(args):
    with pytest.raises(ValueError, match="checkpoint name"):
        checkpoint_name(*args)


def test_save_reloads_with_plain_transformers(tmp_path, tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = tiny
    path = save_checkpoint(tmp_path, "s00-sft-step000001", model=model, processor=processor, state={"step": 1})
    assert path == tmp_path / "checkpoints" / "s00-sft-step000001"
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    assert type(reloaded) is type(model)
    original = model.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert type(AutoProcessor.from_pretrained(path)) is type(processor)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_save_reloads_a_peft_adapter(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    peft_model = get_peft_model(build_tiny()[0], LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B starts at zero; make the adapter non-trivial so equality means something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    path = save_checkpoint(tmp_path, "s00-grpo-step000001", model=peft_model, state={})
    reloaded = PeftModel.from_pretrained(build_tiny()[0], path)
    want = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    got = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert want.keys() == got.keys() and len(want) > 0
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_resume_reproduces_training_exactly(tmp_path, tiny):
    from transformers import AutoModelForImageTextToText

    model, _ = tiny
    model = AutoModelForImageTextToText.from_pretrained(
        save_checkpoint(tmp_path / "init", "s00-sft-step000000", model=model, state={})
    )
    opt, sched = _train_setup(model)
    _fake_step(model, opt, sched, seed=1)
    state = {"stage_index": 0, "step": 1, "cursor": {"epoch": 0, "index": 8}, "metrics": {"loss": 0.5}}
    path = save_checkpoint(tmp_path, "s00-sft-step000001", model=model, optimizer=opt, scheduler=sched, state=state)
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    _fake_step(model, opt, sched, seed=2)  # the run goes on after the checkpoint ...

    # ... crashes, and resumes from the checkpoint
    resumed = AutoModelForImageTextToText.from_pretrained(path)
    opt2, sched2 = _train_setup(resumed)
    assert load_training_state(path, opt2, sched2) == state
    assert (random.random(), np.random.rand(3).tolist()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert sched2.get_last_lr() == pytest.approx([1e-2 / 2])  # lr * 1 / (1 + s) after the one saved step
    _fake_step(resumed, opt2, sched2, seed=2)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_pt_files_load_with_weights_only(tmp_path, tiny):
    model, _ = tiny
    opt, sched = _train_setup(model)
    path = save_checkpoint(tmp_path, "a", model=model, optimizer=opt, scheduler=sched, state={})
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(path / name, weights_only=True)


def test_crash_leftovers_are_never_latest(tmp_path, tiny):
    model, _ = tiny
    good = save_checkpoint(tmp_path, "s00-sft-step000010", model=model, state={"step": 10})
    root = tmp_path / "checkpoints"
    # a save that died half way: temp folder of a dead process, no marker
    half = root / f".tmp-s00-sft-step000020-{_dead_pid()}"
    half.mkdir()
    (half / "config.json").write_text("{}")
    # a folder under a real name without the marker (not something save_checkpoint makes): ignored, kept
    (root / "s00-sft-step000030").mkdir()
    assert latest_checkpoint(tmp_path) == good
    assert not half.exists()
    assert (root / "s00-sft-step000030").exists()


def test_failed_save_leaves_nothing_behind(tmp_path, tiny, monkeypatch):
    model, processor = tiny
    good = save_checkpoint(tmp_path, "s00-sft-step000010", model=model, state={})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(processor, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, "s00-sft-step000020", model=model, processor=processor, state={})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]
    assert latest_checkpoint(tmp_path) == good


def test_complete_leftovers_of_a_crash_are_recovered(tmp_path, tiny):
    model, _ = tiny
    root = tmp_path / "checkpoints"
    first = save_checkpoint(tmp_path, "s00-sft-step000010", model=model, state={"step": 10})
    # crash between the marker and the rename: the temp folder is complete -> promoted
    os.replace(save_checkpoint(tmp_path, "x", model=model, state={}), root / f".tmp-s00-sft-step000020-{_dead_pid()}")
    # crash while replacing a checkpoint of the same name: the moved-aside one is complete -> put back
    os.replace(first, root / f".old-s00-sft-step000010-{_dead_pid()}")
    assert latest_checkpoint(tmp_path) == root / "s00-sft-step000020"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["s00-sft-step000010", "s00-sft-step000020"]


def test_staged_files_of_other_processes_are_published_with_the_checkpoint(tmp_path, tiny):
    """DeepSpeed: every rank writes its optimizer shard into the staging folder, then one process completes it."""
    model, _ = tiny
    staging = staging_dir(tmp_path, "s00-grpo-step000001")
    assert not any(staging.iterdir()) and staging.name.startswith(".tmp-")
    (staging / "deepspeed").mkdir()
    (staging / "deepspeed" / "shard1.pt").write_bytes(b"x")
    assert complete_checkpoints(tmp_path) == []  # half-staged: not a checkpoint
    path = save_checkpoint(tmp_path, "s00-grpo-step000001", model=model, state={}, staging=staging)
    assert (path / "deepspeed" / "shard1.pt").read_bytes() == b"x" and not staging.exists()
    assert "deepspeed" in json.loads((path / COMPLETE_MARKER).read_text())["files"]
    with pytest.raises(ValueError, match="staging must be the existing folder"):
        save_checkpoint(tmp_path, "s00-grpo-step000002", model=model, state={}, staging=staging)


def test_resave_same_name_replaces(tmp_path, tiny):
    model, _ = tiny
    save_checkpoint(tmp_path, "s00-sft-step000010", model=model, state={"v": 1})
    path = save_checkpoint(tmp_path, "s00-sft-step000010", model=model, state={"v": 2})
    assert json.loads((path / "state.json").read_text()) == {"v": 2}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [path.name]


def test_keep_last_rotation(tmp_path, tiny):
    model, _ = tiny
    names = [checkpoint_name(0, "sft", 5), checkpoint_name(0, "sft", 10), checkpoint_name(1, "grpo", 1)]
    for name in names:
        save_checkpoint(tmp_path, name, model=model, state={})
    removed = keep_last(tmp_path, 2)
    assert [p.name for p in removed] == names[:1]
    assert [p.name for p in complete_checkpoints(tmp_path)] == names[1:]
    keep_last(tmp_path, 1)
    assert latest_checkpoint(tmp_path).name == names[-1]
    assert keep_last(tmp_path, 5) == []
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        keep_last(tmp_path, 0)


def test_empty_run_has_no_latest(tmp_path):
    assert latest_checkpoint(tmp_path / "nothing") is None
    assert keep_last(tmp_path / "nothing", 1) == []


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"name": ".hidden"}, ValueError, "checkpoint name must be"),
        ({"name": "a/b"}, ValueError, "checkpoint name must be"),
        ({"state": {"x": object()}}, ValueError, "JSON-serialisable"),
        ({"state": [1]}, TypeError, "state must be a dict"),
        ({"model": torch.nn.Linear(2, 2)}, TypeError, "must have save_pretrained"),
    ],
)
def test_save_errors(tmp_path, tiny, kwargs, error, match):
    args = {"name": "ok", "model": tiny[0], "state": {}} | kwargs
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path, **args)
    assert latest_checkpoint(tmp_path) is None


def test_load_errors(tmp_path, tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        load_training_state(tmp_path)
    path = save_checkpoint(tmp_path, "a", model=model, state={})
    opt, _ = _train_setup(model)
    with pytest.raises(FileNotFoundError, match="has no optimizer.pt"):
        load_training_state(path, opt)
    (path / COMPLETE_MARKER).unlink()
    with pytest.raises(ValueError, match="no complete.json"):
        load_training_state(path)
