"""Several processes: a 2-process GRPO run of the tiny model on CPU (gloo; `mmreason train --num-processes 2`, i.e.
accelerate's torchrun launcher with ACCELERATE_USE_CPU) against a 1-process run with the same global batch; resume of
a 2-process run; the shipped accelerate configs; DeepSpeed ZeRO-2 on a GPU (skipped without CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmreason import store
from mmreason.cli import app
from mmreason.dist import launch_command, split_per_rank

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "mmreason" / "configs" / "accelerate"
STEPS, PROMPTS, GROUP = 2, 2, 4

# a dense reward (share of vowels in the completion): random tiny-model text gets non-zero, varied advantages, so
# the loss and the update are not trivially zero
REWARD_FILE = """
from mmreason import register_reward

@register_reward("vowel_share_dist", replace=True)
def vowel_share(completions, **_):
    return [sum(c in "aeiou" for c in t) / max(len(t), 1) for t in completions]
"""


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory) -> tuple[Path, Path]:
    from mmreason.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("dist")
    make_synthetic("counting", base / "data", n=24, seed=0)
    (base / "reward.py").write_text(REWARD_FILE)
    cfg = {
        "name": "one",
        "output_dir": str(base / "runs"),
        "think": False,
        "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [
            {"task": "counting", "train": str(base / "data" / "train.jsonl"), "rewards": {"vowel_share_dist": 1.0}}
        ],
        "grpo": {"steps": STEPS, "prompts_per_step": PROMPTS, "group_size": GROUP, "max_new_tokens": 8, "lr": 1e-3},
        "eval": {"at_start": False},
    }
    (base / "cfg.yaml").write_text(json.dumps(cfg))
    return base, base / "cfg.yaml"


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == "grpo"]


def test_two_processes_match_one_process_and_stay_in_sync(setup_files):
    base, cfg = setup_files
    task_file = ["--task-file", str(base / "reward.py")]
    one = CliRunner().invoke(app, ["train", str(cfg), *task_file], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    env = {**os.environ, "MMREASON_DUMP_WEIGHTS": str(base / "dump")}
    cmd = [sys.executable, "-m", "mmreason.cli", "train", str(cfg), "name=two", "--num-processes", "2", *task_file]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-6000:]

    # data-parallel replicas identical after the updates
    w0, w1 = (torch.load(base / "dump" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)

    # the store: exactly one row per completion, gathered from both ranks, in the 1-process order
    run_one, run_two = base / "runs" / "one", base / "runs" / "two"
    df1, df2 = store.read(run_one), store.read(run_two)
    rows2 = df2[df2["stage"] == "grpo-0"]
    assert len(rows2) == STEPS * PROMPTS * GROUP
    assert not rows2.duplicated(["step", "group_id", "completion_index"]).any()
    rows1 = df1[df1["stage"] == "grpo-0"]
    # per-prompt sampling seeds: the same prompts get the same completions whichever rank samples them
    assert list(rows1["sample_id"]) == list(rows2["sample_id"])
    assert list(rows1["completion"]) == list(rows2["completion"])

    # loss and metrics of the global batch equal the 1-process run's
    m1, m2 = _metrics(run_one), _metrics(run_two)
    assert [m["step"] for m in m2] == list(range(1, STEPS + 1))
    for a, b in zip(m1, m2, strict=True):
        assert a["loss"] != 0.0
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["reward_mean"] == pytest.approx(a["reward_mean"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)

    # rank 0's checkpoint reloads and holds the replicas' weights
    from transformers import AutoModelForImageTextToText

    ckpt = sorted((run_two / "checkpoints").iterdir())[-1]
    reloaded = AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()
    assert all(torch.allclose(reloaded[k], w0[k]) for k in reloaded if k in w0)


def test_two_process_run_resumes_mid_stage(setup_files):
    """Stop after step 1 (the step-2 checkpoint is removed, as if killed before it), resume: each rank restores its
    own data cursor and the run ends exactly as an uninterrupted one (same rollouts, same losses)."""
    base, cfg = setup_files
    args = [sys.executable, "-m", "mmreason.cli", "train", str(cfg), "name=resumed", "grpo.save_every=1"]
    args += ["--num-processes", "2", "--task-file", str(base / "reward.py")]
    full = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert full.returncode == 0, full.stderr[-6000:]
    run_dir = base / "runs" / "resumed"
    before, rows_before = _metrics(run_dir), store.read(run_dir)
    for ckpt in (run_dir / "checkpoints").iterdir():
        if not ckpt.name.endswith("step000001"):
            subprocess.run(["rm", "-rf", str(ckpt)], check=True)
    again = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-6000:]
    after, rows_after = _metrics(run_dir), store.read(run_dir)
    assert [m["step"] for m in after] == [1, 2]
    assert [m["loss"] for m in after] == pytest.approx([m["loss"] for m in before], rel=1e-6, abs=1e-9)
    grpo = [df[df["stage"] == "grpo-0"] for df in (rows_before, rows_after)]
    assert len(grpo[1]) == STEPS * PROMPTS * GROUP and list(grpo[0]["completion"]) == list(grpo[1]["completion"])


def test_global_counts_must_divide_between_processes():
    from mmreason.config import ConfigError

    assert split_per_rank(8, 2, "grpo.prompts_per_step") == 4
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        split_per_rank(3, 2, "grpo.prompts_per_step")


def test_launch_command_wraps_accelerate():
    cmd = launch_command(2, ["train", "cfg.yaml"], cpu=True)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd  # torchrun, gloo on CPU
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[-3:] == ["mmreason.cli", "train", "cfg.yaml"]
    cfg = str(ACCELERATE_CONFIGS / "zero2.yaml")
    cmd = launch_command(None, ["train", "x"], config_file=cfg, cpu=False)
    assert "--num_processes" not in cmd and cmd[cmd.index("--config_file") + 1] == cfg


def test_deepspeed_and_fsdp_configs_are_refused_without_cuda():
    from mmreason.config import ConfigError
    from mmreason.dist import check_launch_config, mixed_precision_for

    for name in ("zero2.yaml", "zero3.yaml", "zero3_offload.yaml", "fsdp.yaml"):
        with pytest.raises(ConfigError, match="needs CUDA"):
            check_launch_config(ACCELERATE_CONFIGS / name, cuda=False)
        assert check_launch_config(ACCELERATE_CONFIGS / name, cuda=True) in ("DEEPSPEED", "FSDP")
    assert check_launch_config(ACCELERATE_CONFIGS / "ddp.yaml", cuda=False) == "MULTI_GPU"
    # bf16 autocast on GPUs only, following the model dtype
    assert mixed_precision_for("bfloat16", "cuda") == "bf16" and mixed_precision_for("float16", "cuda:1") == "fp16"
    assert mixed_precision_for("bfloat16", "cpu") == "no" and mixed_precision_for("float32", "cuda") == "no"


@pytest.mark.parametrize("name", sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")))
def test_shipped_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ACCELERATE_CONFIGS / name))
    assert cfg.num_processes >= 1 and cfg.mixed_precision == "bf16"
    kind = str(cfg.distributed_type)
    if name.startswith("zero"):
        assert "DEEPSPEED" in kind and cfg.deepspeed_config["zero_stage"] == int(name[4])
    elif name == "fsdp.yaml":
        assert "FSDP" in kind and cfg.fsdp_config["fsdp_version"] == 2
    else:
        assert "MULTI_GPU" in kind


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed ZeRO-2 needs a CUDA device")
def test_zero2_grpo_step_on_gpu(setup_files):
    pytest.importorskip("deepspeed")
    base, cfg = setup_files
    n = torch.cuda.device_count()
    cmd = [sys.executable, "-m", "mmreason.cli", "train", str(cfg), "name=zero2", "model.dtype=bfloat16"]
    cmd += ["--num-processes", str(n), "--accelerate-config", str(ACCELERATE_CONFIGS / "zero2.yaml")]
    cmd += ["--task-file", str(base / "reward.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    assert len(_metrics(base / "runs" / "zero2")) == STEPS
