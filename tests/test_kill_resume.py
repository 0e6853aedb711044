"""Crashes never lose work: `mmreason train` processes are killed with SIGKILL at random points (during start-up,
between steps, in the middle of a checkpoint write) and continued with `--resume` until done.

After every kill the latest checkpoint is complete and loadable, and progress never goes back; at the end the
weights equal those of an uninterrupted run, and the rollout store and metrics hold every step exactly once, with
the very same completions. Debris of a crash mid-checkpoint (a partial temp folder, a partial shard, a shard and a
metrics line written after the checkpoint) is planted and must be ignored.

The quick test kills once; the slow one kills at 12 points of one run (SFT then GRPO, a checkpoint every step).
A run started again with --overwrite replaces the old run's checkpoints, so a later --resume never picks one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mmreason.runs import store
from mmreason.train.checkpoint import COMPLETE_MARKER, complete_checkpoints, latest_checkpoint

# one thread: the same float summation order in every process, so a resumed run can match bit for bit
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
DEADLINE_S = 240


@dataclass
class Launch:
    proc: subprocess.Popen
    started: float
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    return make_synthetic("counting", tmp_path_factory.mktemp("counting"), n=40, seed=0)


def _config(root: Path, data: Path, name: str, stages: list[str], sft_steps: int, grpo_steps: int) -> Path:
    cfg = {
        "name": name,
        "output_dir": str(root / "runs"),  # shared: the runs share the tiny model built (from the seed) once
        "think": False,
        "stages": stages,
        "keep_checkpoints": 2,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"),
                  "max_val": 2}],
        # a stage left out of `stages` still needs valid settings
        "sft": {"steps": max(sft_steps, 1), "batch_size": 2, "save_every": 1},
        "grpo": {"steps": max(grpo_steps, 1), "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6,
                 "save_every": 1},
        "eval": {"max_new_tokens": 6, "batch_size": 2},  # greedy evaluation before and after each stage
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _launch(config: Path, *extra: str) -> Launch:
    log = config.with_name(f"{config.stem}-{time.monotonic_ns()}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmreason.cli", "train", str(config), *extra],
            cwd=config.parent, env=ENV, stdout=out, stderr=subprocess.STDOUT,
        )
    return Launch(proc, time.time(), log)


def _finish(launch: Launch) -> str:
    rc = launch.proc.wait(timeout=DEADLINE_S)
    assert rc == 0, launch.output()
    return launch.output()


def _new_rows(run_dir: Path, since: float) -> int:
    """Metrics lines written by the process started at `since` (every row carries its wall-clock time)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    count = 0
    for line in lines:
        try:
            count += json.loads(line)["time"] >= since
        except (ValueError, KeyError):  # a line being written
            pass
    return count


def _temp_checkpoints(run_dir: Path) -> set[str]:
    try:
        return {p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp-")}
    except FileNotFoundError:
        return set()


def _wait(launch: Launch, ready) -> bool:
    """Poll until ready() (True) or the process ends by itself (False)."""
    deadline = time.time() + DEADLINE_S
    while not ready():
        if launch.proc.poll() is not None:
            return False
        assert time.time() < deadline, launch.output()
        time.sleep(0.0005)
    return True


def _kill(launch: Launch, run_dir: Path, mode: str, rng: random.Random, nth: int | None = None) -> bool:
    """SIGKILL the process at a random point of kind `mode`; False when it finished before that point came.

    mode: "startup" (a random time after launch), "step" (soon after the 1st-3rd metrics row of this process),
    "checkpoint" (inside the write of this process's `nth` checkpoint; default: 1st or 2nd).
    """
    if mode == "startup":  # anywhere from imports and model loading to the first steps
        at = launch.started + rng.uniform(0.5, 4.0)
        reached = _wait(launch, lambda: time.time() > at)
    elif mode == "step":  # between or inside steps, evaluations, rollout-shard writes
        k = rng.randint(1, 3)
        reached = _wait(launch, lambda: _new_rows(run_dir, launch.started) >= k)
        time.sleep(rng.uniform(0, 0.05))
    else:  # inside a checkpoint write: the n-th temp folder of this process has just appeared
        n, before, seen = nth or rng.randint(1, 2), _temp_checkpoints(run_dir), set()

        def nth_write_started() -> bool:
            seen.update(_temp_checkpoints(run_dir) - before)
            return len(seen) >= n

        reached = _wait(launch, nth_write_started)
        time.sleep(rng.uniform(0, 0.01))
    if reached and launch.proc.poll() is None:
        os.kill(launch.proc.pid, signal.SIGKILL)
        launch.proc.wait()
        return True
    _finish(launch)
    return False


def _assert_consistent_after_crash(run_dir: Path) -> str:
    """No half checkpoint under a real name; the latest complete one loads. Returns its name ("" if none)."""
    root = run_dir / "checkpoints"
    named = [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
    for path in named:
        assert (path / COMPLETE_MARKER).is_file(), f"half checkpoint under a real name: {path.name}"
    latest = latest_checkpoint(run_dir, cleanup=False)
    if latest is None:
        return ""
    for name in json.loads((latest / COMPLETE_MARKER).read_text())["files"]:
        assert (latest / name).is_file(), name
    json.loads((latest / "state.json").read_text())
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(latest / name, weights_only=True)
    assert load_file(str(latest / "model.safetensors"))
    return latest.name


def _resume_point(run_dir: Path) -> str:
    """The checkpoint --resume will pick: the latest complete one, counting a temp folder that is complete (a kill
    between writing the marker and the rename) and that the resume therefore puts in place."""
    root = run_dir / "checkpoints"
    names = [p.name for p in complete_checkpoints(run_dir)]
    names += [p.name[5:].rsplit("-", 1)[0] for p in root.glob(".tmp-*") if (p / COMPLETE_MARKER).is_file()]
    return max(names)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = latest_checkpoint(run_dir, cleanup=False)
    return load_file(str(latest / "model.safetensors"))


def _assert_same_run(ref_dir: Path, run_dir: Path, steps: dict[str, int], rows_per_step: int) -> None:
    """Same final weights, every step's rollout shard exactly once with the same completions, same metric rows."""
    a, b = _final_weights(ref_dir), _final_weights(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    ref, got = store.read(ref_dir), store.read(run_dir)
    cols = ["stage", "step", "sample_id", "group_id", "completion_index", "completion", "reward_total"]
    pd.testing.assert_frame_equal(ref[cols], got[cols])
    for stage, n in steps.items():
        counts = got[got["stage"] == stage]["step"].value_counts().sort_index().to_dict()
        assert counts == {s: rows_per_step for s in range(1, n + 1)}, stage

    def metric_rows(d: Path) -> list[tuple]:
        return [(r["stage"], r["step"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]

    assert metric_rows(ref_dir) == metric_rows(run_dir)
    assert not list((run_dir / "rollouts").glob(".*")), "no temp shard is left behind"
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def _plant_crash_debris(run_dir: Path, dead_pid: int) -> None:
    """What a crash in the middle of writes can leave, beyond the natural debris of the kill itself."""
    ckpt = run_dir / "checkpoints"
    latest = latest_checkpoint(run_dir, cleanup=False)
    partial = ckpt / f".tmp-s00-grpo-step000099-{dead_pid}"  # would be the latest by name, were it complete
    partial.mkdir()
    (partial / "config.json").write_bytes((latest / "config.json").read_bytes())
    weights = (latest / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    shards = sorted((run_dir / "rollouts").glob("*.parquet"))
    data = shards[-1].read_bytes()
    (run_dir / "rollouts" / f".s00-grpo-step00000099.parquet.{dead_pid}.tmp").write_bytes(data[: len(data) // 2])
    (run_dir / "rollouts" / "s00-grpo-step00000099.parquet").write_bytes(data)  # written after the checkpoint
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"stage": "grpo", "step": 99, "ti')  # a line cut short


def test_kill_mid_checkpoint_then_resume_matches_uninterrupted_run(tmp_path, counting_data):
    steps = 6
    ref = _config(tmp_path, counting_data, "ref", ["grpo"], 0, steps)
    _finish(_launch(ref))
    config = _config(tmp_path, counting_data, "killed", ["grpo"], 0, steps)
    run_dir = tmp_path / "runs" / "killed"
    launch = _launch(config)
    # kill inside the third checkpoint write: two complete checkpoints exist, the third is a temp folder
    assert _kill(launch, run_dir, "checkpoint", random.Random(0), nth=3), "finished before the kill"
    assert _assert_consistent_after_crash(run_dir), "a complete checkpoint exists"
    resume_point = _resume_point(run_dir)
    _plant_crash_debris(run_dir, launch.proc.pid)
    out = _finish(_launch(config, "--resume"))
    assert f"resuming from {resume_point}" in out, out
    _assert_same_run(tmp_path / "runs" / "ref", run_dir, {"grpo-0": steps}, 2 * 2)


@pytest.mark.slow
def test_random_kills_at_many_points_then_resume_until_done(tmp_path, counting_data):
    sft_steps, grpo_steps, kills_wanted = 3, 24, 12
    ref = _config(tmp_path, counting_data, "ref", ["sft", "grpo"], sft_steps, grpo_steps)
    _finish(_launch(ref))
    config = _config(tmp_path, counting_data, "killed", ["sft", "grpo"], sft_steps, grpo_steps)
    run_dir = tmp_path / "runs" / "killed"
    rng = random.Random(8)
    modes = ["startup"] + ["step", "checkpoint"] * kills_wanted
    kills, mid_checkpoint, latest, extra = [], 0, "", ()
    while len(kills) < kills_wanted:
        launch, mode = _launch(config, *extra), modes[len(kills)]
        if not _kill(launch, run_dir, mode, rng):
            pytest.fail(f"the run finished after {len(kills)} kills; give it more steps")
        mid_checkpoint += any(name.endswith(f"-{launch.proc.pid}") for name in _temp_checkpoints(run_dir))
        now = _assert_consistent_after_crash(run_dir)
        assert now >= latest, f"progress went back from {latest} to {now}"
        kills.append((mode, now))
        latest, extra = now, ("--resume",)
    _finish(_launch(config, "--resume"))
    print(f"{len(kills)} kills ({mid_checkpoint} inside a checkpoint write):", kills)
    assert mid_checkpoint >= 1
    _assert_same_run(tmp_path / "runs" / "ref", run_dir, {"grpo-1": grpo_steps}, 2 * 2)


def test_a_fresh_start_replaces_the_previous_run_so_resume_never_picks_its_checkpoints(tmp_path, counting_data):
    from typer.testing import CliRunner

    from mmreason.cli import app

    def train(stages: str, *extra: str) -> str:
        config = _config(tmp_path, counting_data, "t", ["grpo"], 1, 2)
        args = ["train", str(config), f"stages={stages}", "eval.at_start=false", *extra]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run_dir = tmp_path / "runs" / "t"
    train("[grpo]")
    assert latest_checkpoint(run_dir).name == "s00-grpo-step000002"
    out = train("[sft]", "--overwrite")  # the same name, started afresh
    assert "deleting 2 checkpoint(s)" in out
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["s00-sft-step000001"]
    assert set(store.read(run_dir)["stage"]) == {"eval-after-s00-sft"}
    assert "resuming from s00-sft-step000001" in train("[sft]", "--resume")
