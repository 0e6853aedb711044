"""Reward curricula (`grpo.reward_schedule`): when a phase begins, which weights a step scores with, the config's
one-line errors, and a real run whose store shows the switch from a dense to a sparse reward."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.config import ConfigError, RewardPhase, load_config
from mmreason.train.reward_schedule import phase_started, scheduled_weights

BASE = {"format": 0.5, "count_match": 1.0}


@pytest.mark.parametrize(("start", "stage", "step", "steps", "stage_index", "begun"), [
    (0.0, None, 0, 10, 1, True),      # from the start
    (0.5, None, 4, 10, 1, False),     # halfway: steps 5.. (0-based)
    (0.5, None, 5, 10, 1, True),
    (0.5, None, 2, 5, 1, False),      # 2.5 rounds up: step 3 on
    (0.5, None, 3, 5, 1, True),
    (3, None, 1, 10, 1, False),       # a step number: the third step (0-based 2) on
    (3, None, 2, 10, 1, True),
    (1, None, 0, 10, 1, True),        # 1 is the first step, not "the whole stage"
    (0.0, 2, 0, 10, 1, False),        # another stage
    (0.0, 2, 0, 10, 2, True),
])
def test_a_phase_begins_at_its_share_or_step_in_its_stage(start, stage, step, steps, stage_index, begun):
    assert phase_started(RewardPhase(start=start, stage=stage, rewards={"counting": {}}), stage_index, step,
                         steps) is begun


def test_begun_phases_lay_their_weights_over_the_configured_ones_in_order():
    schedule = [
        RewardPhase(0.0, None, {"counting": {"format": 1.0}, "grounding": {"iou": 0.0}}),
        RewardPhase(0.5, None, {"counting": {"count_match": 2.0, "format": 0.0}}),
        RewardPhase(0.8, None, {"counting": {"format": 0.25}}),
    ]
    at = lambda step: scheduled_weights(BASE, "counting", schedule, 1, step, 10)  # noqa: E731
    assert at(0) == {"format": 1.0, "count_match": 1.0}
    assert at(5) == {"format": 0.0, "count_match": 2.0}
    assert at(9) == {"format": 0.25, "count_match": 2.0}
    assert scheduled_weights(BASE, "math", schedule, 1, 9, 10) == BASE  # a task no phase names
    assert BASE == {"format": 0.5, "count_match": 1.0}  # never changed in place


def test_format_names_the_prompt_styles_format_reward():
    phase = [RewardPhase(0.0, None, {"counting": {"format": 0.0}})]
    answer_only = {"format_nothink": 0.5, "count_match": 1.0}
    assert scheduled_weights(answer_only, "counting", phase, 1, 0, 10, think=False) == {"format_nothink": 0.0,
                                                                                       "count_match": 1.0}
    assert scheduled_weights(BASE, "counting", phase, 1, 0, 10, think=True) == {"format": 0.0, "count_match": 1.0}


def _write(tmp_path: Path, schedule: list, stages: list[str] | None = None) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("")
    cfg = {"data": [{"task": "counting", "train": str(data)}], "output_dir": str(tmp_path / "runs"),
           "stages": stages or ["sft", "grpo"], "grpo": {"reward_schedule": schedule}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(("schedule", "stages", "message"), [
    ([{"rewards": {"grounding": {"iou": 1.0}}}], None, "names task(s) grounding that no data entry trains"),
    ([{"stage": 0, "rewards": {"counting": {"format": 1.0}}}], None, "stage must be the position of a grpo stage"),
    ([{"stage": 5, "rewards": {"counting": {"format": 1.0}}}], None, "(0-based): 1; got 5"),
    ([{"start": -0.5, "rewards": {"counting": {"format": 1.0}}}], None, "start must be >= 0"),
    ([{"start": 0.5}], None, "rewards is empty"),
    ([{"rewards": {"counting": {"format": "high"}}}], None, "maps reward names to finite weights"),
    ([{"rewards": {"counting": {"format": 1.0}}, "until": 3}], None, "until"),
])
def test_a_bad_phase_is_one_config_error(tmp_path, schedule, stages, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(_write(tmp_path, schedule, stages))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_run_switches_from_a_dense_to_a_sparse_reward_at_its_phase(tmp_path):
    from mmreason.data.synthetic import make_synthetic

    data = make_synthetic("counting", tmp_path / "data", n=12, seed=0)
    cfg = {
        "name": "curriculum", "output_dir": str(tmp_path / "runs"), "think": False, "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl")}],
        "grpo": {"steps": 3, "prompts_per_step": 1, "group_size": 2, "max_new_tokens": 4,
                 # the format reward alone for the first step, then exact match alone
                 "reward_schedule": [{"rewards": {"counting": {"count_match": 0.0}}},
                                     {"start": 2, "rewards": {"counting": {"format_nothink": 0.0,
                                                                           "count_match": 1.0}}}]},
        "eval": {"at_start": False, "max_new_tokens": 4},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = pd.concat(pd.read_parquet(p) for p in (tmp_path / "runs" / "curriculum" / "rollouts").glob("*.parquet"))
    rows = rows[rows["stage"].str.startswith("grpo")]
    assert sorted(rows["step"].unique()) == [1, 2, 3]
    for step, part in rows.groupby("step"):
        expected = part["reward_format_nothink"] if step == 1 else part["reward_count_match"]
        assert part["reward_total"].tolist() == pytest.approx(expected.fillna(0.0).tolist()), step
