"""A run folder is written by one trainer at a time, only when asked, and never resumes a broken or foreign state:
the run-folder lock across processes (refusal naming the holder, release, stale takeover), the tiny-model cache
built once under its lock, run names kept inside output_dir, --resume / --overwrite into an existing folder, a fresh
start cut short mid-delete, non-finite weights undone or stopped and never checkpointed, and damaged checkpoints
(cut short, missing, another model size, non-finite) skipped for the intact one before them.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mmreason import cli
from mmreason.config import ConfigError, load_config
from mmreason.runs.folder import generation
from mmreason.runs.lock import (
    Holder,
    RunFolderError,
    RunLocked,
    check_run_name,
    file_lock,
    hold_run_folder,
    lock_file,
    release_run_folder,
)
from mmreason.train.checkpoint import latest_checkpoint, refuse_non_finite, restore_training_state
from mmreason.train.step import TrainingStopped, make_optimizer, optimizer_step
from mmreason.train.verify import checkpoint_problem, file_checks

FORK = multiprocessing.get_context("fork")  # the children below only touch files: no torch after the fork
STEP1, STEP2 = "s00-sft-step000001", "s00-sft-step000002"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished 2-step SFT run `runs/base` (a checkpoint after each step) and its config `cfg.json`."""
    from mmreason.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("run_folder")
    data = make_synthetic("counting", root / "data", n=12, seed=0)
    cfg = {
        "name": "base", "output_dir": str(root / "runs"), "think": False, "stages": ["sft"], "keep_checkpoints": 3,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"),
                  "max_val": 1}],
        "sft": {"steps": 2, "batch_size": 2, "save_every": 1},
        "eval": {"max_new_tokens": 2, "batch_size": 1, "at_start": False},
    }
    (root / "cfg.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(cli.app, ["train", str(root / "cfg.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def _clone(base: Path, name: str) -> Path:
    shutil.copytree(base / "runs" / "base", base / "runs" / name)
    return base / "runs" / name


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`mmreason <args>` through the real entry point: its exit code and output."""
    monkeypatch.setattr(sys, "argv", ["mmreason", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        sys.exit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def _error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------------ the lock

def _hold(run_dir: str, ready, go) -> None:
    hold_run_folder(run_dir)
    ready.set()
    go.wait(30)
    release_run_folder(run_dir)  # as `train` does when it ends (a multiprocessing child skips atexit)


def _hold_and_die(run_dir: str) -> None:
    hold_run_folder(run_dir)
    os._exit(0)  # no atexit, like a SIGKILL: the lock file stays, the kernel drops the flock


def test_the_run_folder_lock_refuses_names_the_holder_releases_and_takes_over_stale_locks(tmp_path, caplog):
    run_dir = tmp_path / "runs" / "r"
    ready, go = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(str(run_dir), ready, go))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(RunLocked, match=rf"in use by pid {holder.pid} on host {socket.gethostname()}"):
        hold_run_folder(run_dir)
    go.set()
    holder.join(30)
    assert not lock_file(run_dir).exists(), "released on exit"
    hold_run_folder(run_dir).release()

    dead = FORK.Process(target=_hold_and_die, args=(str(run_dir),))
    dead.start()
    dead.join(30)
    assert json.loads(lock_file(run_dir).read_text())["pid"] == dead.pid
    with caplog.at_level(logging.WARNING):
        hold_run_folder(run_dir).release()
    assert f"taking over the lock of pid {dead.pid}" in caplog.text and "no longer running" in caplog.text

    # a lock file naming a live process (a filesystem that ignores flock) or another host is never taken over
    parent = os.getppid()
    lock_file(run_dir).write_text(json.dumps(Holder(parent, socket.gethostname(), time.time(),
                                                    _start_of(parent)).__dict__))
    with pytest.raises(RunLocked, match=f"pid {parent}"):
        hold_run_folder(run_dir)
    lock_file(run_dir).write_text(json.dumps(Holder(1, "elsewhere", time.time()).__dict__))
    with pytest.raises(RunLocked, match=r"held by pid 1 on host elsewhere, since .*; if that run is gone, delete"):
        hold_run_folder(run_dir)


def _start_of(pid: int) -> str:
    from mmreason.runs.lock import _proc_start

    return _proc_start(pid)


def test_a_second_trainer_is_refused_with_one_line_naming_the_holder(base, monkeypatch, capsys):
    run_dir = base / "runs" / "busy"
    ready, go = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold, args=(str(run_dir), ready, go))
    holder.start()
    try:
        assert ready.wait(30)
        code, out = _main(monkeypatch, capsys, "train", str(base / "cfg.json"), "name=busy", "--resume")
    finally:
        go.set()
        holder.join(30)
    assert code == 2 and "Traceback" not in out, out
    assert _error_lines(out) == [line for line in out.splitlines() if "in use by" in line], out
    assert f"run folder {run_dir} is in use by pid {holder.pid} on host" in out
    assert not run_dir.exists(), "the refused trainer wrote nothing"


def _build_by_copy(cache: str, source: str, target: str) -> None:
    """A stand-in for another process building the same tiny model: holds the cache lock while it copies."""
    with file_lock(Path(cache) / f".{target}.lock", what="cache"):
        time.sleep(1.0)
        tmp = Path(cache) / f".{target}.tmp-{os.getpid()}"
        shutil.copytree(source, tmp)
        (tmp / "built_by.txt").write_text(str(os.getpid()))
        tmp.replace(Path(cache) / target)


def test_runs_sharing_output_dir_build_the_tiny_model_once(base):
    from mmreason.models.policy import ensure_tiny

    cfg = load_config(str(base / "cfg.json"))
    cache = base / "runs" / ".cache"
    built = ensure_tiny(cfg.model, cache, cfg.seed)  # the base run's
    target = built.name.replace("-s0", "-s7")
    other = FORK.Process(target=_build_by_copy, args=(str(cache), str(built), target))
    other.start()
    time.sleep(0.3)  # the other process holds the lock now
    folder = ensure_tiny(cfg.model, cache, seed=7)  # waits for it, then uses its folder instead of building
    other.join(30)
    assert folder == cache / target and (folder / "built_by.txt").read_text() == str(other.pid)
    assert not list(cache.glob(f".{target}*")), "no temp folder or lock left"


def test_run_names_cannot_leave_output_dir(base, monkeypatch, capsys):
    victim = base / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    for name in ("../victim", str(victim), "a/b"):
        code, out = _main(monkeypatch, capsys, "train", str(base / "cfg.json"), f"name={name}")
        assert code == 2 and len(_error_lines(out)) == 1 and "Traceback" not in out, out
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]
    for name in (".cache", "..", "a\\b", ""):
        with pytest.raises(RunFolderError):
            check_run_name(name)


# ------------------------------------------------------------------------------------------------ fresh starts

class SimulatedKill(Exception):
    pass


def test_an_existing_run_needs_resume_or_overwrite_and_a_cut_fresh_start_is_never_resumed(base, monkeypatch, capsys):
    import mmreason.train.checkpoint as checkpoint

    run_dir = _clone(base, "again")
    old_generation = generation(run_dir)
    code, out = _main(monkeypatch, capsys, "train", str(base / "cfg.json"), "name=again")
    assert code == 2 and len(_error_lines(out)) == 1, out
    assert "already holds a run (2 checkpoint(s), 1 rollout shard(s), 3 metrics line(s)): pass --resume" in out
    assert len(list((run_dir / "checkpoints").iterdir())) == 2, "nothing deleted unasked"

    real_remove = checkpoint._remove_dir

    def killed_mid_delete(path: Path) -> None:
        real_remove(path)
        raise SimulatedKill  # one old checkpoint deleted, the other left

    monkeypatch.setattr(checkpoint, "_remove_dir", killed_mid_delete)
    monkeypatch.setattr(sys, "argv", ["mmreason", "train", str(base / "cfg.json"), "name=again", "--overwrite"])
    with pytest.raises(SimulatedKill):
        cli.main()
    out = capsys.readouterr().err
    assert f"overwriting {run_dir}: deleting 2 checkpoint(s), 1 rollout shard(s), 3 metrics line(s)" in out
    monkeypatch.setattr(checkpoint, "_remove_dir", real_remove)
    assert generation(run_dir) != old_generation, "the fresh start was recorded before anything was deleted"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [STEP2], "the old run's last checkpoint is left"
    assert latest_checkpoint(run_dir) is None, "and belongs to no run that can be resumed"

    code, out = _main(monkeypatch, capsys, "train", str(base / "cfg.json"), "name=again", "--resume",
                      "sft.steps=1", "sft.save_every=0")
    assert code == 0, out
    assert "no complete checkpoint of this run found: starting from scratch" in out and "resuming" not in out
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [STEP1]
    assert latest_checkpoint(run_dir).name == STEP1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("sft", 1), ("eval-after-s00-sft", 0)]


# ------------------------------------------------------------------------------------------------ non-finite weights

def _tiny_run(params: list[torch.nn.Parameter]) -> types.SimpleNamespace:
    policy = types.SimpleNamespace(trainable_parameters=lambda: params)
    return types.SimpleNamespace(policy=policy, dist=None, sum=float, is_main=True)


def test_an_update_leaving_non_finite_weights_is_undone_or_stops_the_run(monkeypatch):
    import mmreason.train.step as step

    with pytest.raises(ConfigError, match="grpo.lr"):
        load_config("quickstart", ["grpo.lr=.inf"])
    layer = torch.nn.Linear(4, 4)
    params = list(layer.parameters())
    run, optimizer = _tiny_run(params), make_optimizer(params, math.inf, 0.0)
    before = [p.detach().clone() for p in params]
    layer(torch.ones(1, 4)).sum().backward()
    assert optimizer_step(run, optimizer, True, 1.0)["updates_skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True)), "the update was undone"

    monkeypatch.setattr(step, "ROLLBACK_MAX_BYTES", 0)  # a model too large to keep a copy of
    optimizer = make_optimizer(params, math.inf, 0.0)
    layer(torch.ones(1, 4)).sum().backward()
    with pytest.raises(TrainingStopped, match="left non-finite weights"):
        optimizer_step(run, optimizer, True, 1.0)
    with pytest.raises(TrainingStopped, match="checkpoint s00-sft-step000001 not written: the weights hold non-fin"):
        refuse_non_finite(run, STEP1, None)


def test_a_run_whose_every_update_is_non_finite_stops_with_one_line_and_finite_checkpoints(
    base, monkeypatch, capsys
):
    import mmreason.train.step as step

    real = step.make_optimizer
    monkeypatch.setattr(step, "make_optimizer", lambda params, lr, wd: real(params, math.inf, wd))
    code, out = _main(monkeypatch, capsys, "train", str(base / "cfg.json"), "name=diverging", "sft.max_bad_updates=2")
    assert code == 1 and "Traceback" not in out, out
    assert _error_lines(out) == ["error: sft stopped at step 2: 2 updates in a row were skipped for a non-finite "
                                 "loss, gradient or weights (sft.max_bad_updates=2). The last checkpoint is "
                                 "intact; lower sft.lr or check the data and rewards, then continue with --resume."]
    ckpt = latest_checkpoint(base / "runs" / "diverging")
    assert ckpt.name == STEP1
    assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())


# ------------------------------------------------------------------------------------------------ damaged checkpoints

def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _reseal(ckpt: Path) -> None:
    """Record the checkpoint's files as they are now (a checkpoint whose files pass and whose content is bad)."""
    marker = json.loads((ckpt / "complete.json").read_text())
    checks = file_checks(ckpt)
    checks.pop("complete.json")
    (ckpt / "complete.json").write_text(json.dumps({**marker, "checks": checks}))


def test_a_damaged_checkpoint_names_the_file(base, tmp_path, caplog):
    source = base / "runs" / "base" / "checkpoints" / STEP2
    assert checkpoint_problem(source) is None
    size = (source / "model.safetensors").stat().st_size
    cases = {
        "model.safetensors cut": (lambda c: _cut(c / "model.safetensors"), f"model.safetensors is {size // 2} bytes, "
                                  f"{size} when written (cut short or replaced)"),
        "model.safetensors gone": (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
        "optimizer.pt cut": (lambda c: _cut(c / "optimizer.pt"), "optimizer.pt is "),
        "optimizer.pt gone": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing (complete.json "
                              "lists it)"),
        "state.json cut": (lambda c: _cut(c / "state.json"), "state.json is "),
        "state.json changed": (lambda c: (c / "state.json").write_text((c / "state.json").read_text()[::-1]),
                               "state.json does not match the checksum"),
    }
    for i, (case, (damage, expected)) in enumerate(cases.items()):
        ckpt = shutil.copytree(source, tmp_path / str(i))
        damage(ckpt)
        assert expected in (checkpoint_problem(ckpt) or ""), case
    # a checkpoint from before sizes were recorded: its state is still read before it is trusted
    ckpt = shutil.copytree(source, tmp_path / "old")
    marker = json.loads((ckpt / "complete.json").read_text())
    (ckpt / "complete.json").write_text(json.dumps({k: v for k, v in marker.items() if k != "checks"}))
    _cut(ckpt / "state.json")
    assert checkpoint_problem(ckpt).startswith("state.json cannot be read")
    # ... and an optimizer.pt of such a checkpoint that cannot be loaded is one line, not a traceback
    ckpt = shutil.copytree(source, tmp_path / "old-optimizer")
    (ckpt / "complete.json").write_text(json.dumps({k: v for k, v in marker.items() if k != "checks"}))
    _cut(ckpt / "optimizer.pt")
    run = types.SimpleNamespace(engine_resume=None, is_main=True)
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1e-3, 0.0)
    with pytest.raises(RunFolderError, match="checkpoint old-optimizer: its optimizer or scheduler state cannot be"):
        restore_training_state(run, ckpt, optimizer, scheduler=None)

    # a checkpoint saved without optimizer states says why, never blaming FSDP when FSDP was not used
    ckpt = shutil.copytree(source, tmp_path / "no-optimizer")
    (ckpt / "optimizer.pt").unlink()
    with caplog.at_level(logging.WARNING):
        restore_training_state(run, ckpt, optimizer=None, scheduler=None)
    assert "holds no optimizer states (it was saved without them)" in caplog.text and "FSDP" not in caplog.text


def test_resume_skips_damaged_checkpoints_for_the_intact_one_before_them(base, monkeypatch, capsys):
    from mmreason.models.policy import ensure_tiny

    run_dir = _clone(base, "damaged")
    root = run_dir / "checkpoints"
    # the latest: a checkpoint of another model size (weights of a narrower tiny model, files consistent)
    cfg = load_config(str(base / "cfg.json"), ["model.tiny.hidden_size=32"])
    narrow = ensure_tiny(cfg.model, base / "runs" / ".cache", cfg.seed)
    other = shutil.copytree(root / STEP2, root / "s00-sft-step000003")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(narrow / name, other / name)
    _reseal(other)
    # before it: non-finite weights, as an older version could write them
    weights = load_file(str(root / STEP2 / "model.safetensors"))
    weights = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(root / STEP2 / "model.safetensors"), metadata={"format": "pt"})
    _reseal(root / STEP2)

    code, out = _main(monkeypatch, capsys, "train", str(base / "cfg.json"), "name=damaged", "--resume")
    assert code == 0, out
    assert ("checkpoint s00-sft-step000003 is damaged: its weights do not fit this model (another model size?): "
            "size mismatch for") in out
    assert "checkpoint s00-sft-step000002 is damaged: its weights hold non-finite values; skipped" in out
    assert f"resuming from {STEP1}" in out and "kept as checkpoints/.damaged-s00-sft-step000003" in out
    assert sorted(p.name for p in root.iterdir()) == [
        ".damaged-s00-sft-step000002", ".damaged-s00-sft-step000003", STEP1, STEP2
    ]
    assert checkpoint_problem(root / STEP2) is None

    # when no checkpoint is usable: one line, nothing moved or deleted
    for name in (STEP1, STEP2):
        _cut(root / name / "model.safetensors")
    code, out = _main(monkeypatch, capsys, "train", str(base / "cfg.json"), "name=damaged", "--resume")
    assert code == 2 and len(_error_lines(out)) == 1 and "Traceback" not in out, out
    assert f"error: no usable checkpoint in {root} (s00-sft-step000002: model.safetensors is" in out
    assert sorted(p.name for p in root.iterdir())[2:] == [STEP1, STEP2]
