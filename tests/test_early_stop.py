"""A stage's held-out target (`<stage>.stop_at`): its config checks, the decision, and a run that stops at it; the
stage's periodic evaluations in the rollout store and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.config import ConfigError, RunConfig, StopAt, from_dict, validate
from mmreason.runs.store import read
from mmreason.train.early_stop import check_stop_metrics, stop_metric_names, target_reached

runner = CliRunner()


def _cfg(**stage: dict) -> RunConfig:
    tree = {"data": [{"task": "counting", "train": "t.jsonl", "val": "v.jsonl"},
                     {"task": "grounding", "train": "g.jsonl"}],
            "stages": ["sft", "grpo"], **stage}
    return from_dict(RunConfig, tree)


@pytest.mark.parametrize("stage, match", [
    ({"sft": {"stop_at": {"at_least": 0.5}}}, r"sft\.stop_at\.at_least needs sft\.stop_at\.metric"),
    ({"grpo": {"stop_at": {"at_most": 0.5}}}, r"grpo\.stop_at\.at_most needs grpo\.stop_at\.metric"),
    ({"sft": {"eval_every": 5, "stop_at": {"metric": "counting/accuracy"}}}, r"one target.*got neither"),
    ({"sft": {"eval_every": 5, "stop_at": {"metric": "counting/accuracy", "at_least": 0.5, "at_most": 0.9}}},
     r"one target.*got both"),
    ({"sft": {"eval_every": 5, "stop_at": {"metric": "accuracy", "at_least": 0.5}}}, r"'<task>/<metric>'"),
    ({"sft": {"eval_every": 5, "stop_at": {"metric": "/accuracy", "at_least": 0.5}}}, r"'<task>/<metric>'"),
    ({"sft": {"eval_every": 5, "stop_at": {"metric": "grounding/mean_iou", "at_least": 0.5}}},
     r"names task 'grounding', which no data entry evaluates.*: counting"),
    ({"sft": {"stop_at": {"metric": "counting/accuracy", "at_least": 0.5}}}, r"needs sft\.eval_every > 0"),
    ({"sft": {"eval_every": 5, "stop_at": {"metric": "counting/accuracy", "at_least": math.nan}}},
     r"sft\.stop_at\.at_least"),
])
def test_a_target_that_cannot_work_is_one_line(stage, match):
    with pytest.raises(ConfigError, match=match):
        validate(_cfg(**stage), check_paths=False)


def test_a_stage_that_does_not_run_is_not_checked():
    cfg = _cfg(stages=["grpo"], sft={"stop_at": {"at_least": 0.5}})
    validate(cfg, check_paths=False)


def test_a_valid_target_passes_and_names_a_logged_metric():
    cfg = _cfg(sft={"eval_every": 5, "stop_at": {"metric": "counting/reward_total", "at_least": 0.5}})
    validate(cfg, check_paths=False)
    check_stop_metrics(cfg)
    names = stop_metric_names(cfg, "counting")
    assert "accuracy" in names and "reward_total" in names and any(n.startswith("reward/") for n in names)


def test_a_metric_the_task_does_not_report_is_named_with_those_it_does():
    cfg = _cfg(sft={"eval_every": 5, "stop_at": {"metric": "counting/mean_iou", "at_least": 0.5}})
    with pytest.raises(ConfigError, match=r"counting reports no 'mean_iou'; it reports accuracy, reward/"):
        check_stop_metrics(cfg)


GROUNDING = {"grounding": {"mean_iou": 0.4, "median_km": 120.0, "broken": math.nan}}


@pytest.mark.parametrize("stop, expected", [
    (StopAt("grounding/mean_iou", at_least=0.35), 0.4),
    (StopAt("grounding/mean_iou", at_least=0.4), 0.4),  # reaching the target is enough
    (StopAt("grounding/mean_iou", at_least=0.41), None),
    (StopAt("grounding/median_km", at_most=120.0), 120.0),
    (StopAt("grounding/median_km", at_most=100.0), None),
    (StopAt("grounding/broken", at_least=0.0), None),  # NaN never reaches a target
    (StopAt("grounding/absent", at_least=0.0), None),
    (StopAt("counting/accuracy", at_least=0.0), None),  # this process evaluated no such task
    (StopAt(None, at_least=0.0), None),
])
def test_target_reached(stop, expected):
    assert target_reached(stop, GROUNDING) == expected


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("counting")
    make_synthetic("counting", out, n=24, seed=0)
    return out


def _train(tmp_path: Path, data: Path, stop_at: dict) -> Path:
    cfg = {
        "name": "t", "output_dir": str(tmp_path / "runs"), "think": False, "stages": ["sft", "grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"),
                  "max_val": 2}],
        "sft": {"steps": 6, "batch_size": 2, "eval_every": 2, "stop_at": stop_at},
        "grpo": {"steps": 1, "prompts_per_step": 1, "group_size": 2, "max_new_tokens": 4},
        "eval": {"max_new_tokens": 4, "batch_size": 2},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    result = runner.invoke(app, ["train", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "t"


def _history(run_dir: Path) -> tuple[list[int], list[str]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["stage"] == "sft"], [r["label"] for r in rows if "label" in r]


def test_a_reached_target_ends_the_stage_and_the_run_goes_on(tmp_path, counting_data):
    run_dir = _train(tmp_path, counting_data, {"metric": "counting/reward_total", "at_least": 0.0})
    steps, labels = _history(run_dir)
    assert steps == [1, 2]  # reward_total >= 0 holds at the first evaluation
    assert labels == ["before", "s00-sft-step2", "after-s00-sft", "after-s01-grpo"]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["s00-sft-step000002", "s01-grpo-step000001"]
    assert json.loads((run_dir / "checkpoints" / "s00-sft-step000002" / "state.json").read_text())["stage_done"]
    log = (run_dir / "train.log").read_text()
    assert "held-out counting/reward_total is" in log and "at step 2: the stage ends here" in log


def test_a_target_never_reached_trains_every_step(tmp_path, counting_data):
    run_dir = _train(tmp_path, counting_data, {"metric": "counting/accuracy", "at_least": 1.01})
    steps, labels = _history(run_dir)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert labels == ["before", "s00-sft-step2", "s00-sft-step4", "after-s00-sft", "after-s01-grpo"]
    assert "the stage ends here" not in (run_dir / "train.log").read_text()
    # the stage's periodic evaluations share one store stage, one step each: any number of them fits the store
    evals = read(run_dir)
    evals = evals[evals["stage"].str.startswith("eval-")]
    assert list(dict.fromkeys(zip(evals["stage"], evals["step"], strict=True))) == [
        ("eval-before", 0), ("eval-s00-sft", 2), ("eval-s00-sft", 4), ("eval-after-s00-sft", 0),
        ("eval-after-s01-grpo", 0)]
    report = (run_dir / "report.html").read_text()
    assert "s00-sft-step2" in report and "s00-sft-step4" in report  # one report column per evaluation
