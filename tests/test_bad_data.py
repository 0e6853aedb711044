"""Bad data never crashes a run: with `data_errors: skip` (the default) every bad record is skipped, counted in
metrics.jsonl and logged with its id and reason; with `data_errors: fatal` the run stops before training with a
list of every problem (file:line) and exit code 2.

The dataset (tests/bad_data.py) has 100 training lines, 10 of them bad in every way the processors and tasks can
see: missing file, truncated JPEG, zero-byte file, a text file named .png, two wrong answer shapes, a non-UTF-8
line, a cut JSON line, a one-frame video and an unreadable video; plus one bad held-out record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
from bad_data import BadData, make_bad_data
from typer.testing import CliRunner

from mmreason import cli
from mmreason.config import load_config
from mmreason.runs.run import build_streams, sample_context

pytest.importorskip("av")  # writes the test videos

SFT_STEPS, SFT_BATCH = 6, 16  # 96 samples: more than one pass over the 90 good records, so every bad one is drawn
GRPO_STEPS, PROMPTS = 2, 2


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> BadData:
    return make_bad_data(tmp_path_factory.mktemp("bad-data"))


def _config(tmp_path: Path, data: BadData) -> Path:
    cfg = {
        "name": "bad",
        "output_dir": str(tmp_path / "runs"),
        "think": False,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [
            {"task": "counting", "train": str(data.counting), "val": str(data.val), "max_val": 8, "weight": 4},
            {"task": "temporal_grounding", "train": str(data.temporal), "weight": 1},
        ],
        "sft": {"steps": SFT_STEPS, "batch_size": SFT_BATCH},
        "grpo": {"steps": GRPO_STEPS, "prompts_per_step": PROMPTS, "group_size": 2, "max_new_tokens": 4},
        "eval": {"max_new_tokens": 4, "batch_size": 8, "at_start": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _at(name: str, line: int, text: str) -> bool:
    """Whether `text` points at line `line` of file `name` (file:5 must not match file:55)."""
    return re.search(rf"{re.escape(name)}:{line}(?!\d)", text) is not None


def _drawn_ids(config: Path, run_dir: Path) -> list[str]:
    """Ids of every record the run's stream drew, replayed from the final checkpoint's data cursor."""
    cfg = load_config(config)
    stream = build_streams(cfg, sample_context(cfg, "qwen2_5_vl", Path.cwd()))["grpo"]
    final = sorted((run_dir / "checkpoints").iterdir())[-1]
    cursor = json.loads((final / "state.json").read_text())["stream"]
    drawn = []
    for epoch in range(cursor["epoch"] + 1):
        src, idx = stream.epoch_order(epoch)
        n = stream.epoch_size if epoch < cursor["epoch"] else cursor["position"]
        drawn += [stream.sources[s].dataset.records[i]["id"] for s, i in zip(src[:n], idx[:n], strict=True)]
    return drawn


def test_skip_mode_trains_past_every_bad_record_and_counts_it(tmp_path, bad_data, caplog):
    assert bad_data.lines == 100 and len(bad_data.bad) - 1 == 10  # 10% bad training lines (+ 1 held-out record)
    config = _config(tmp_path, bad_data)
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(cli.app, ["train", str(config)])
    assert result.exit_code == 0 and result.exception is None, result.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    run_dir = tmp_path / "runs" / "bad"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["stage"] == "grpo"][-1]

    drawn = _drawn_ids(config, run_dir)
    bad_drawn = [rid for rid in drawn if rid in bad_data.bad_ids]
    assert bad_data.bad_ids <= set(drawn), "every bad record is drawn at least once"
    assert last["skipped_samples"] == len(bad_drawn) >= len(bad_data.bad_ids)
    assert last["unreadable_lines"] == bad_data.unreadable
    # nothing else went missing: every good record drawn became exactly one trained sample
    assert len(drawn) - len(bad_drawn) == SFT_STEPS * SFT_BATCH + GRPO_STEPS * PROMPTS
    skipped_sft = [r["skipped_samples"] for r in rows if r["stage"] == "sft"]
    assert skipped_sft == sorted(skipped_sft) and skipped_sft[-1] > 0

    for (name, line), words in bad_data.bad.items():
        hits = [m for m in warnings if _at(name, line, m)]
        assert len(hits) == 1 and words in hits[0], (name, line, hits)
    for rid in bad_data.bad_ids:
        assert any(rid in m for m in warnings), rid


def test_fatal_mode_lists_every_problem_before_training(tmp_path, bad_data, monkeypatch, capsys):
    config = _config(tmp_path, bad_data)
    monkeypatch.setattr(sys, "argv", ["mmreason", "train", str(config), "data_errors=fatal"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert f"{len(bad_data.bad)} problem(s) in the data" in out and "Traceback" not in out
    for (name, line), words in bad_data.bad.items():
        listed = [x for x in out.splitlines() if _at(name, line, x)]
        assert len(listed) == 1 and words in listed[0], (name, line, out)
    for rid in bad_data.bad_ids:
        assert f"[id {rid}]" in out, rid
    assert not (tmp_path / "runs" / "bad").exists(), "nothing is written or trained before the data is clean"


def test_fatal_mode_trains_on_clean_data(tmp_path):
    from mmreason.data.synthetic import make_synthetic

    data = make_synthetic("counting", tmp_path / "data", n=12, seed=0)
    cfg = {
        "name": "clean", "output_dir": str(tmp_path / "runs"), "think": False, "stages": ["sft"],
        "data_errors": "fatal", "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl")}],
        "sft": {"steps": 1, "batch_size": 2}, "eval": {"max_new_tokens": 2, "at_start": False},
    }
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    result = CliRunner().invoke(cli.app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 0, result.output


def test_bad_data_errors_value_is_a_config_error(tmp_path, bad_data):
    from mmreason.config import ConfigError

    with pytest.raises(ConfigError, match="data_errors must be one of skip, fatal"):
        load_config(_config(tmp_path, bad_data), ["data_errors=ignore"])
