"""Bad outputs never crash a run: a user reward that raises is isolated (scores missing, errors counted and logged
once; fatal only with strict_rewards), and a non-finite loss or gradient skips the update with a warning, stopping
the run with a clear message after `max_bad_updates` skips in a row (SFT and GRPO).

(That the built-in rewards never raise on any string is fuzzed in tests/test_rewards_fuzz.py.)
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from mmreason import cli
from mmreason.runs import store

REWARD_FILE = '''
calls = [0]


def explode(completions, **columns):
    calls[0] += 1
    if calls[0] == 1:  # a reward that raises on its first GRPO call stops the run (tests/test_reward_shapes.py)
        return [0.0] * len(completions)
    raise ZeroDivisionError("my reward has a bug")


def not_finite(completions, **columns):
    return [float("nan"), float("inf")] * (len(completions) // 2) + [float("nan")] * (len(completions) % 2)
'''


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    return make_synthetic("counting", tmp_path_factory.mktemp("counting"), n=24, seed=0)


def _config(tmp_path: Path, folder: Path, **extra) -> Path:
    cfg = {
        "name": "t",
        "output_dir": str(tmp_path / "runs"),
        "think": False,
        "stages": ["grpo"],
        "keep_checkpoints": 1,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(folder / "train.jsonl"), "val": str(folder / "val.jsonl"),
                  "max_val": 2}],
        "sft": {"steps": 3, "batch_size": 2},
        "grpo": {"steps": 3, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"max_new_tokens": 4, "batch_size": 2, "at_start": False},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _metrics(tmp_path: Path, stage: str) -> list[dict]:
    rows = [json.loads(x) for x in (tmp_path / "runs" / "t" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == stage]


def _reward_config(tmp_path: Path, data: Path, **extra) -> tuple[Path, str, str]:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE)
    explode, not_finite = f"{path}:explode", f"{path}:not_finite"
    rewards = {"format_nothink": 0.5, "count_match": 1.0, explode: 1.0, not_finite: 1.0}
    entry = {"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"), "max_val": 2,
             "rewards": rewards}
    return _config(tmp_path, data, data=[entry], **extra), explode, not_finite


def test_a_raising_user_reward_is_isolated_counted_and_logged_once(tmp_path, counting_data, caplog):
    config, explode, not_finite = _reward_config(tmp_path, counting_data)
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(cli.app, ["train", str(config)])
    assert result.exit_code == 0 and result.exception is None, result.output
    grpo = _metrics(tmp_path, "grpo")
    # one failed call per step after the first (the reward is called once per batch)
    assert [r["reward_errors"] for r in grpo] == [0.0, 1.0, 2.0]
    assert [math.isnan(r[f"reward/{explode}_mean"]) for r in grpo] == [False, True, True]
    assert all(math.isnan(r[f"reward/{not_finite}_mean"]) for r in grpo)  # nan/inf scores are recorded as missing
    assert all(math.isfinite(r["reward_mean"]) and math.isfinite(r["loss"]) for r in grpo)
    logged = [r.getMessage() for r in caplog.records if "raised ZeroDivisionError" in r.getMessage()]
    assert len(logged) == 1 and "my reward has a bug" in logged[0] and "logged once" in logged[0]
    rows = store.read(tmp_path / "runs" / "t", stage="grpo-0")
    assert len(rows) == 3 * 2 * 2
    assert rows[f"reward_{explode}"].isna().tolist() == [False] * 4 + [True] * 8
    assert rows[f"reward_{not_finite}"].isna().all()
    assert pd.notna(rows["reward_total"]).all()


def test_strict_rewards_makes_a_raising_reward_fatal(tmp_path, counting_data):
    config, explode, _ = _reward_config(tmp_path, counting_data, strict_rewards=True)
    with pytest.raises(RuntimeError, match=f"reward '{explode}' failed: my reward has a bug"):
        CliRunner().invoke(cli.app, ["train", str(config)], catch_exceptions=False)


def _poison(monkeypatch, stage: str, bad_calls: set[int] | None, value: float) -> list[int]:
    """Make the stage's loss `value` (nan or inf) on the given 1-based calls (None: every call)."""
    import mmreason.train.grpo as grpo
    import mmreason.train.sft as sft

    calls = [0]

    def poisoned(real):
        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            calls[0] += 1
            if bad_calls is None or calls[0] in bad_calls:
                return (out[0] + value, *out[1:])
            return out

        return wrapper

    module, name = (sft, "sft_token_loss") if stage == "sft" else (grpo, "grpo_loss")
    monkeypatch.setattr(module, name, poisoned(getattr(module, name)))
    return calls


def _adam_steps(tmp_path: Path) -> int:
    ckpt = sorted((tmp_path / "runs" / "t" / "checkpoints").iterdir())[-1]
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    return int(next(iter(state.values()))["step"])


@pytest.mark.parametrize(("stage", "value"), [("sft", math.inf), ("grpo", math.nan)])
def test_a_non_finite_loss_skips_the_update_with_a_warning(tmp_path, counting_data, monkeypatch, caplog, stage, value):
    _poison(monkeypatch, stage, {2}, value)
    config = _config(tmp_path, counting_data, stages=[stage])
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(cli.app, ["train", str(config)])
    assert result.exit_code == 0 and result.exception is None, result.output
    rows = _metrics(tmp_path, stage)
    assert [r.get("updates_skipped", 0.0) for r in rows] == [0.0, 1.0, 0.0]
    assert _adam_steps(tmp_path) == 2, "the optimizer stepped on the two good steps only"
    assert any("update skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_consecutive_non_finite_updates_stop_the_run_with_a_clear_message(
    tmp_path, counting_data, monkeypatch, capsys, stage
):
    _poison(monkeypatch, stage, None, math.nan)
    config = _config(tmp_path, counting_data, stages=[stage])
    monkeypatch.setattr(sys, "argv", ["mmreason", "train", str(config), f"{stage}.max_bad_updates=2"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert f"{stage} stopped at step 2: 2 updates in a row were skipped" in out
    assert f"{stage}.max_bad_updates=2" in out and "Traceback" not in out
    assert len(_metrics(tmp_path, stage)) == 1, "the run stopped at the second bad step"
