"""Several processes: a 2-process GRPO run of the tiny model on CPU (gloo; `mmreason train --num-processes 2`, i.e.
accelerate's torchrun launcher with ACCELERATE_USE_CPU) against a 1-process run with the same global batch; resume of
a 2-process run; the same for DeepSpeed ZeRO-2 / ZeRO-3 on CPU (gloo, DeepSpeed's CPU accelerator), with the
optimizer shards saved and restored; the shipped accelerate configs; DeepSpeed ZeRO-2 on a GPU (skipped without
CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.runs import store
from mmreason.train.dist import launch_command, split_per_rank

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "mmreason" / "configs" / "accelerate"
STEPS, PROMPTS, GROUP = 2, 2, 4
MAX_GRAD_NORM = 0.5

# a dense reward (share of vowels in the completion): random tiny-model text gets non-zero, varied advantages, so
# the loss and the update are not trivially zero
REWARD_FILE = """
from mmreason import register_reward

@register_reward("vowel_share_dist", replace=True)
def vowel_share(completions, **_):
    return [sum(c in "aeiou" for c in t) / max(len(t), 1) for t in completions]
"""


DUMP_ENV = "TEST_DUMP_WEIGHTS"
# loaded by every rank as a --task-file: after the stages (process group still open) every rank saves its final
# weights to $TEST_DUMP_WEIGHTS/rank<r>.pt, so the test can check that data-parallel replicas stayed identical. Under
# ZeRO-3 the weights are gathered (a collective) and saved where the gather delivers them (rank 0).
DUMP_FILE = """
import os
from pathlib import Path

import torch

import mmreason.train.stages as stages

_run_stages = stages.run_stages


def _dump_weights(run):
    gathered = run.dist.model_state(run.model) if run.dist is not None else None
    if gathered is None and run.shards_params:
        return
    state = gathered if gathered is not None else run.policy.model.state_dict()
    folder = Path(os.environ["TEST_DUMP_WEIGHTS"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state.items()}, folder / f"rank{run.rank}.pt")


def run_stages(run, state, ckpt):
    _run_stages(run, state, ckpt)
    if os.environ.get("TEST_DUMP_WEIGHTS"):
        _dump_weights(run)
        run.barrier()


stages.run_stages = run_stages
"""


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory) -> tuple[Path, Path]:
    from mmreason.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("dist")
    make_synthetic("counting", base / "data", n=24, seed=0)
    (base / "reward.py").write_text(REWARD_FILE)
    (base / "dump_weights.py").write_text(DUMP_FILE)
    cfg = {
        "name": "one",
        "output_dir": str(base / "runs"),
        "think": False,
        "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [
            {"task": "counting", "train": str(base / "data" / "train.jsonl"), "rewards": {"vowel_share_dist": 1.0}}
        ],
        # max_grad_norm below the runs' gradient norms (1.3 - 1.7): every run clips, at the stage's value
        "grpo": {
            "steps": STEPS,
            "prompts_per_step": PROMPTS,
            "group_size": GROUP,
            "max_new_tokens": 8,
            "lr": 1e-3,
            "max_grad_norm": MAX_GRAD_NORM,
        },
        "eval": {"at_start": False},
    }
    (base / "cfg.yaml").write_text(json.dumps(cfg))
    return base, base / "cfg.yaml"


def _metrics(run_dir: Path, stage: str = "grpo") -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


@pytest.fixture(scope="module")
def one_process_run(setup_files) -> Path:
    """The 1-process GRPO run every multi-process run is compared with (same global batch)."""
    base, cfg = setup_files
    one = CliRunner().invoke(app, ["train", str(cfg), "--task-file", str(base / "reward.py")], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    return base / "runs" / "one"


def test_two_processes_match_one_process_and_stay_in_sync(setup_files, one_process_run):
    base, cfg = setup_files
    task_file = ["--task-file", str(base / "reward.py"), "--task-file", str(base / "dump_weights.py")]
    env = {**os.environ, DUMP_ENV: str(base / "dump")}
    cmd = [sys.executable, "-m", "mmreason.cli", "train", str(cfg), "name=two", "--num-processes", "2", *task_file]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-6000:]

    # data-parallel replicas identical after the updates
    w0, w1 = (torch.load(base / "dump" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)

    # the store: exactly one row per completion, gathered from both ranks, in the 1-process order
    run_one, run_two = one_process_run, base / "runs" / "two"
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
        # the surrogate's value can be exactly 0 (advantages sum to 0 in a group) while its gradient is not
        assert a["grad_norm"] > 0.0
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


def test_fsdp_is_refused_without_cuda_and_deepspeed_is_not():
    from mmreason.config import ConfigError
    from mmreason.train.dist import check_launch_config, launch_env, mixed_precision_for

    pytest.importorskip("deepspeed")
    with pytest.raises(ConfigError, match="FSDP needs CUDA"):
        check_launch_config(ACCELERATE_CONFIGS / "fsdp.yaml", cuda=False)
    assert check_launch_config(ACCELERATE_CONFIGS / "fsdp.yaml", cuda=True) == "FSDP"
    for name in ("zero2.yaml", "zero3.yaml", "zero3_offload.yaml"):
        for cuda in (False, True):
            assert check_launch_config(ACCELERATE_CONFIGS / name, cuda=cuda) == "DEEPSPEED"
        # ACCELERATE_USE_CPU would make accelerate drop DeepSpeed: never set (nor inherited) for a DeepSpeed launch
        assert "ACCELERATE_USE_CPU" not in launch_env(str(ACCELERATE_CONFIGS / name), cpu=True)
    assert check_launch_config(ACCELERATE_CONFIGS / "ddp.yaml", cuda=False) == "MULTI_GPU"
    assert launch_env(str(ACCELERATE_CONFIGS / "ddp.yaml"), cpu=True)["ACCELERATE_USE_CPU"] == "true"
    assert launch_env(None, cpu=True)["ACCELERATE_USE_CPU"] == "true"
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


def _deepspeed_train(base: Path, name: str, config: str, *extra: str) -> Path:
    """A 2-process run of the module's config under a shipped DeepSpeed accelerate config (on CPU: gloo and
    DeepSpeed's CPU accelerator); every rank dumps its final weights to base/dump-<name>. Returns the run dir."""
    cmd = [sys.executable, "-m", "mmreason.cli", "train", str(base / "cfg.yaml"), f"name={name}", *extra]
    cmd += ["--num-processes", "2", "--accelerate-config", str(ACCELERATE_CONFIGS / config)]
    cmd += ["--task-file", str(base / "reward.py"), "--task-file", str(base / "dump_weights.py")]
    dump = base / f"dump-{name}"
    subprocess.run(["rm", "-rf", str(dump)], check=True)
    done = subprocess.run(cmd, env={**os.environ, DUMP_ENV: str(dump)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return base / "runs" / name


def _snapshot(run_dir: Path, dump: Path) -> dict:
    """What a finished run left: GRPO metrics, store rows, its last checkpoint reloaded with from_pretrained, and
    the weights its ranks dumped (ZeRO-2: every replica; ZeRO-3: rank 0's gathered copy)."""
    from transformers import AutoModelForImageTextToText

    ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
    return {
        "metrics": _metrics(run_dir),
        "rows": store.read(run_dir),
        "final": AutoModelForImageTextToText.from_pretrained(ckpt).state_dict(),
        "dumps": [torch.load(p, weights_only=True) for p in sorted(dump.glob("rank*.pt"))],
    }


def _check_matches_one_process(one: Path, snap: dict, replicas: int) -> None:
    """Store rows, metrics and weights of a sharded run against the 1-process run with the same global batch."""
    rows1, rows = (df[df["stage"] == "grpo-0"] for df in (store.read(one), snap["rows"]))
    assert len(rows) == STEPS * PROMPTS * GROUP
    assert not rows.duplicated(["step", "group_id", "completion_index"]).any()
    assert list(rows1["sample_id"]) == list(rows["sample_id"])
    assert list(rows1["completion"]) == list(rows["completion"])
    m1, m2 = _metrics(one), snap["metrics"]
    assert [m["step"] for m in m2] == list(range(1, STEPS + 1))
    # measured (ZeRO-2 and ZeRO-3 alike): loss 1e-7 relative at step 1, 2e-8 absolute at step 2 (about 0), grad_norm
    # 6e-6 relative (DeepSpeed reduces and takes the norm over flat buffers: another fp32 summation order)
    for a, b in zip(m1, m2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
        assert b["reward_mean"] == pytest.approx(a["reward_mean"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
    # the checkpoint reloads and holds the trained (gathered) weights
    final = snap["final"]
    assert len(snap["dumps"]) == replicas
    for weights in snap["dumps"]:
        assert weights.keys() == final.keys() and all(torch.equal(final[k], weights[k]) for k in final)


@pytest.fixture(scope="module")
def zero2_run(setup_files) -> dict:
    """A 2-process ZeRO-2 GRPO run with a checkpoint every step, snapshotted before the resume test reuses it."""
    pytest.importorskip("deepspeed")
    base, _ = setup_files
    run_dir = _deepspeed_train(base, "zero2", "zero2.yaml", "grpo.save_every=1")
    return {"run_dir": run_dir, **_snapshot(run_dir, base / "dump-zero2")}


def test_zero2_on_cpu_matches_one_process(zero2_run, one_process_run):
    _check_matches_one_process(one_process_run, zero2_run, replicas=2)
    assert all(m["grad_norm"] > MAX_GRAD_NORM for m in zero2_run["metrics"])  # clipping was active
    # DeepSpeed clips inside its step at its own config's value: the stage's max_grad_norm, not the accelerate
    # config's gradient_clipping (1.0)
    ckpt = zero2_run["run_dir"] / "checkpoints" / f"s00-grpo-step{STEPS:06d}" / "deepspeed" / "zero"
    engine = torch.load(ckpt / "mp_rank_00_model_states.pt", weights_only=False)
    assert engine["ds_config"]["gradient_clipping"] == MAX_GRAD_NORM


def test_zero3_on_cpu_matches_one_process(setup_files, one_process_run):
    pytest.importorskip("deepspeed")
    base, _ = setup_files
    run_dir = _deepspeed_train(base, "zero3", "zero3.yaml")
    _check_matches_one_process(one_process_run, _snapshot(run_dir, base / "dump-zero3"), replicas=1)
    engine = run_dir / "checkpoints" / f"s00-grpo-step{STEPS:06d}" / "deepspeed" / "zero"
    assert len(list(engine.glob("zero_pp_rank_*_optim_states.pt"))) == 2


def test_zero2_resume_restores_the_optimizer_shards(setup_files, zero2_run):
    """Stop after step 1 and resume: the run ends as the uninterrupted one, final weights included. The step-2 update
    uses Adam's moments from step 1, restored from each rank's shard: a restarted Adam moves the weights by up to
    lr (1e-3) elsewhere (measured: 1.7e-3 max difference with the restore disabled, 0 with it)."""
    base, _ = setup_files
    run_dir = zero2_run["run_dir"]
    step1 = run_dir / "checkpoints" / "s00-grpo-step000001"
    shards = list((step1 / "deepspeed" / "zero").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2 and not (step1 / "optimizer.pt").exists()
    for ckpt in (run_dir / "checkpoints").iterdir():
        if ckpt != step1:
            subprocess.run(["rm", "-rf", str(ckpt)], check=True)
    _deepspeed_train(base, "zero2", "zero2.yaml", "grpo.save_every=1", "--resume")
    after = _snapshot(run_dir, base / "dump-zero2")
    assert [m["step"] for m in after["metrics"]] == [1, 2]
    for key in ("loss", "grad_norm", "reward_mean"):
        assert [m[key] for m in after["metrics"]] == pytest.approx([m[key] for m in zero2_run["metrics"]], rel=1e-6)
    grpo = [df[df["stage"] == "grpo-0"] for df in (zero2_run["rows"], after["rows"])]
    assert len(grpo[1]) == STEPS * PROMPTS * GROUP and list(grpo[0]["completion"]) == list(grpo[1]["completion"])
    final, before = after["final"], zero2_run["final"]
    moved = max(float((final[k] - before[k]).abs().max()) for k in final)
    assert moved < 1e-6, f"final weights differ by {moved} from the uninterrupted run's"


def test_zero2_sft_then_grpo_on_cpu_matches_one_process(setup_files):
    """SFT under ZeRO-2, then GRPO on the SFT weights in a second DeepSpeed engine around the same model."""
    pytest.importorskip("deepspeed")
    base, cfg = setup_files
    stages = ["stages=[sft,grpo]", "sft.steps=2", "sft.batch_size=2", "sft.lr=1e-3", "sft.warmup_ratio=0"]
    task_file = ["--task-file", str(base / "reward.py")]
    one = CliRunner().invoke(app, ["train", str(cfg), "name=sft-one", *stages, *task_file], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    run_dir = _deepspeed_train(base, "sft-zero2", "zero2.yaml", *stages)
    for stage in ("sft", "grpo"):
        m1, m2 = _metrics(base / "runs" / "sft-one", stage), _metrics(run_dir, stage)
        assert len(m2) == 2
        # measured: SFT loss 4e-8 relative, GRPO loss (about 0) 3e-8 absolute, grad_norm 8e-6 relative
        for a, b in zip(m1, m2, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6) and b.get("tokens") == a.get("tokens")
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)


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
