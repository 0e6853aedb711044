"""End-to-end tests of the CLI commands on the tiny model: train (SFT + GRPO), resume, eval, tasks, data."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmreason.cli import app, main
from mmreason.config import ConfigError, load_config, shipped_config_names
from mmreason.runs import store

runner = CliRunner()


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("counting")
    make_synthetic("counting", out, n=48, seed=0)
    return out


def _config(tmp_path: Path, data: Path, **extra: str) -> list[str]:
    cfg = {
        "name": "t",
        "output_dir": str(tmp_path / "runs"),
        "think": False,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [
            {"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"), "max_val": 4}
        ],
        "sft": {"steps": 2, "batch_size": 4},
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8},
        "eval": {"max_new_tokens": 8, "batch_size": 4},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return [str(path), *[f"{k}={v}" for k, v in extra.items()]]


def _invoke(args: list[str]):
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_train_sft_then_grpo_end_to_end(tmp_path, counting_data):
    _invoke(["train", *_config(tmp_path, counting_data)])
    run_dir = tmp_path / "runs" / "t"
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [m for m in metrics if m["stage"] == "sft"]
    grpo = [m for m in metrics if m["stage"] == "grpo"]
    assert [m["step"] for m in sft] == [1, 2] and [m["step"] for m in grpo] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in sft + grpo if "loss" in m)
    for key in (
        "reward_mean",
        "reward/format_nothink_mean",
        "reward/count_match_mean",
        "completion_len_mean",
        "truncated_rate",
        "tokens_per_s",
        "step_time",
        "peak_memory_mb",
        "advantage_std",
    ):
        assert key in grpo[0], key
    df = store.read(run_dir)
    train_rows = df[df["stage"] == "grpo-1"]
    assert len(train_rows) == 2 * 2 * 4  # steps x prompts x G
    assert set(train_rows["completion_index"]) == {0, 1, 2, 3}
    assert (run_dir / "config.yaml").is_file()
    ckpts = sorted((run_dir / "checkpoints").iterdir())
    assert ckpts and (ckpts[-1] / "complete.json").is_file()
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(ckpts[-1])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, counting_data):
    result = _invoke(["train", *_config(tmp_path, counting_data), "--dry-run", "grpo.beta=0.04", "grpo.rollout=vllm"])
    assert "beta: 0.04" in result.output and "stage 1: grpo" in result.output and "rollout=vllm" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_family_that_contradicts_the_checkpoint_is_one_line_before_training(
    tmp_path, counting_data, monkeypatch, capsys
):
    args = _config(tmp_path, counting_data, **{"model.family": "qwen2_vl"})
    monkeypatch.setattr(sys, "argv", ["mmreason", "train", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 2, out
    assert "model.family=qwen2_vl contradicts the checkpoint (model_type 'qwen2_5_vl' is qwen2_5_vl)" in out
    assert "Traceback" not in out and not (tmp_path / "runs" / "t" / "metrics.jsonl").exists()


def test_config_errors_suggest_the_right_key(tmp_path, counting_data):
    args = _config(tmp_path, counting_data, **{"grpo.betta": "0.1"})
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2
    assert "grpo.betta" in result.output and "did you mean 'beta'" in result.output
    with pytest.raises(ConfigError, match="loss_agg"):
        load_config(args[0], ["grpo.loss_agg=mean"])
    with pytest.raises(ConfigError, match="stages"):
        load_config(args[0], ["stages=[sft, ppo]"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(args[0], ["grpo.steps=lots"])


def test_cli_eval_table_shows_each_evaluation_and_task_metric():
    from mmreason.cli import _eval_table

    history = [
        {"stage": "eval-before", "step": 0, "label": "before", "eval/counting/accuracy": 0.25,
         "eval/counting/reward/format": 0.5},
        {"stage": "sft", "step": 1, "loss": 2.0},
        {"stage": "eval-after-s00-sft", "step": 0, "label": "after-s00-sft", "eval/counting/accuracy": 0.5,
         "eval/grounding/mean_iou": 0.1234},
    ]
    table = _eval_table(history)
    assert table.title == "held-out metrics"
    # long format: a row per task metric, a column per evaluation (its label broken at the first hyphen)
    assert [c.header for c in table.columns] == ["task", "metric", "before", "after\ns00-sft"]
    assert [list(c.cells) for c in table.columns] == [
        ["counting", "grounding"], ["accuracy", "mean_iou"], ["0.250", ""], ["0.500", "0.123"]
    ]
    assert [c.header for c in _eval_table([]).columns] == ["task", "metric"]


@pytest.mark.parametrize("name", shipped_config_names())
def test_every_shipped_config_loads(name):
    cfg = load_config(name)
    assert cfg.stages and cfg.data


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
    return AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()


class SimulatedCrash(Exception):
    pass


def test_resume_matches_uninterrupted_run(tmp_path, counting_data, monkeypatch):
    import mmreason.train.grpo as grpo

    base = {"stages": "[grpo]", "grpo.steps": "4", "grpo.save_every": "2", "eval.at_start": "false"}
    _invoke(["train", *_config(tmp_path / "a", counting_data, **base)])

    real_periodic = grpo.periodic

    def crash_after_save(run, cfg, stage_index, stage, step, optimizer, scheduler):
        real_periodic(run, cfg, stage_index, stage, step, optimizer, scheduler)
        if step == 2:
            raise SimulatedCrash  # the process dies right after the step-2 checkpoint

    monkeypatch.setattr(grpo, "periodic", crash_after_save)
    with pytest.raises(SimulatedCrash):
        runner.invoke(app, ["train", *_config(tmp_path / "b", counting_data, **base)], catch_exceptions=False)
    monkeypatch.setattr(grpo, "periodic", real_periodic)
    result = _invoke(["train", *_config(tmp_path / "b", counting_data, **base), "--resume"])
    assert "resuming from s00-grpo-step000002" in result.output
    a, b = _weights(tmp_path / "a" / "runs" / "t"), _weights(tmp_path / "b" / "runs" / "t")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    steps = store.read(tmp_path / "b" / "runs" / "t", stage="grpo-0")["step"].value_counts().sort_index()
    assert steps.to_dict() == {1: 8, 2: 8, 3: 8, 4: 8}


def test_eval_command_reports_metrics_and_stores_generations(tmp_path, counting_data):
    _invoke(["train", *_config(tmp_path, counting_data, stages="[sft]", **{"eval.at_start": "false"})])
    run_dir = tmp_path / "runs" / "t"
    result = _invoke(
        [
            "eval",
            str(run_dir),
            "--task",
            "counting",
            "--data",
            str(counting_data / "val.jsonl"),
            "--limit",
            "3",
            "--max-new-tokens",
            "6",
            "--no-think",
        ]
    )
    assert "accuracy" in result.output
    df = store.read(run_dir)
    assert any(s.startswith("eval-s00-sft") for s in df["stage"].unique())


def test_tasks_command_lists_builtins():
    result = _invoke(["tasks"])
    for name in (
        "grounding",
        "jigsaw",
        "geolocation",
        "classification",
        "counting",
        "multiple_choice",
        "math",
        "temporal_grounding",
    ):
        assert name in result.output


def test_data_commands(tmp_path, counting_data):
    out = tmp_path / "g"
    _invoke(["data", "make", "synthetic", "--task", "grounding", "--out", str(out), "--n", "6"])
    _invoke(["data", "check", str(out / "train.jsonl"), "--task", "grounding"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "missing.png", "problem": "How many?", "solution": 2}\nnot json\n')
    result = runner.invoke(app, ["data", "check", str(bad), "--task", "counting"])
    assert result.exit_code == 2
    assert "missing.png" in result.output and ":2" in result.output
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (40, 40), (40 * i, 90, 200)).save(imgs / f"{i}.png")
    _invoke(["data", "make", "jigsaw", "--images", str(imgs), "--out", str(tmp_path / "jig"), "--grid", "2x2"])
    assert list((tmp_path / "jig").glob("*.jsonl"))


def test_tiny_model_command_round_trip(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLProcessor

    _invoke(["tiny-model", str(tmp_path / "tiny")])
    assert isinstance(AutoProcessor.from_pretrained(tmp_path / "tiny"), Qwen2_5_VLProcessor)
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny").config.model_type == "qwen2_5_vl"


def test_tiny_qwen2_vl_round_trip_and_generates(tmp_path):
    from mmreason.processors import build_inputs
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLProcessor

    _invoke(["tiny-model", str(tmp_path / "q2"), "--arch", "qwen2_vl"])
    processor = AutoProcessor.from_pretrained(tmp_path / "q2")
    assert isinstance(processor, Qwen2VLProcessor)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "q2")
    assert model.config.model_type == "qwen2_vl"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    inputs = build_inputs(processor, messages, images=[Image.new("RGB", (56, 56), "red")])
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=True, pad_token_id=processor.tokenizer.pad_token_id)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_lora_grpo_with_kl_uses_the_adapter_disabled_base(tmp_path, counting_data):
    args = _config(
        tmp_path,
        counting_data,
        stages="[grpo]",
        **{"model.lora.enabled": "true", "model.lora.r": "4", "grpo.beta": "0.04", "eval.at_start": "false"},
    )
    _invoke(["train", *args])
    run_dir = tmp_path / "runs" / "t"
    grpo = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grpo = [m for m in grpo if m["stage"] == "grpo"]
    assert all(math.isfinite(m["kl"]) and m["kl"] >= 0 for m in grpo)
    ckpt = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    result = _invoke(
        [
            "eval",
            str(run_dir),
            "--task",
            "counting",
            "--data",
            str(counting_data / "val.jsonl"),
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--no-think",
        ]
    )
    assert "accuracy" in result.output
