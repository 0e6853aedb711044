"""The report and inspection on damaged or ambiguous run folders: samples are found by data source and media, not
by id alone; a corrupt rollout shard or a cut metrics line is skipped with a warning; a run folder that cannot be
written gives one line. A hand-made run folder (no training): config, run.json, metrics and rollout shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmreason.config import DataConfig, RunConfig, save_config
from mmreason.runs import inspection as ins
from mmreason.runs import report, store
from mmreason.runs.run import read_history


def _data(folder: Path, color: tuple[int, int, int], count: int) -> Path:
    """A train.jsonl of one record without an id (so it is `train-1` wherever it lives) and its image."""
    folder.mkdir(parents=True)
    Image.new("RGB", (56, 56), color).save(folder / "img.png")
    line = {"image": "img.png", "problem": f"How many {color}?", "solution": count}
    (folder / "train.jsonl").write_text(json.dumps(line) + "\n")
    return folder / "train.jsonl"


def _row(media: str, prompt: str, step: int, reward: float) -> dict:
    return {"sample_id": "train-1", "group_id": 0, "completion_index": 0, "task": "counting", "media": [media],
            "prompt": prompt, "completion": "<think>x</think><answer>1</answer>", "reward_total": reward,
            "advantage": 0.0, "prompt_len": 10, "completion_len": 5, "truncated": False, "reward_count_match": reward}


@pytest.fixture
def run(tmp_path) -> Path:
    """Two counting sources whose records share the id train-1; the rollouts drew the second one's."""
    first, second = _data(tmp_path / "a", (255, 0, 0), 1), _data(tmp_path / "b", (0, 0, 255), 2)
    entries = [DataConfig(task="counting", train=str(first)), DataConfig(task="counting", train=str(second))]
    cfg = RunConfig(name="r", output_dir=str(tmp_path / "runs"), stages=["grpo"], data=entries)
    run_dir = cfg.run_dir
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "run.json").write_text(json.dumps({"family": "qwen2_5_vl", "data": [e.__dict__ for e in entries]}))
    prompt = "How many (0, 0, 255)?"
    rollouts = store.RolloutStore(run_dir)
    for step in (1, 2, 3):
        rollouts.append([_row(str(tmp_path / "b" / "img.png"), prompt, step, step / 4)], "grpo-0", step)
    lines = [{"stage": "grpo", "step": s, "loss": 0.1} for s in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run_dir


def test_a_sample_is_found_by_its_source_not_by_id_alone(run, tmp_path):
    view = ins.load_run(run)
    row = view.rollouts.iloc[0]
    sample = ins.sample_for(view, row)
    assert sample.media == [str(tmp_path / "b" / "img.png")]
    assert sample.images[0].getpixel((0, 0)) == (0, 0, 255)  # the blue image of source b, not source a's red one


def test_the_match_survives_a_data_folder_moved_since_training(run, tmp_path):
    view = ins.load_run(run)
    row = view.rollouts.iloc[0].copy()
    row["media"] = ["/elsewhere/on/the/training/machine/b/img.png"]  # same file name and folder, another root
    assert ins.sample_for(view, row).images[0].getpixel((0, 0)) == (0, 0, 255)


def test_a_corrupt_shard_and_a_cut_metrics_line_are_skipped_with_a_warning(run, caplog):
    shards = sorted((run / "rollouts").glob("*.parquet"))
    shards[1].write_bytes(b"PAR1 not a parquet file")  # the middle step's shard is damaged
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "grpo", "step": 4, "lo\n{"stage": "grpo", "step": 5, "loss": 0.2}\n')
    view = ins.load_run(run)
    assert view.rollouts["step"].tolist() == [1, 3]
    assert view.metrics["step"].tolist() == [1, 2, 3, 5]
    assert "unreadable rollout shard" in caplog.text and "metrics.jsonl:4: not a JSON object" in caplog.text
    assert [row["step"] for row in read_history(run)] == [1, 2, 3, 5]  # what --resume reads: the same lines
    path = report.write_report(run, load_task_files=False)
    assert "<!DOCTYPE html>" in path.read_text()


def test_a_run_folder_that_cannot_be_written_gives_one_line(run, monkeypatch, capsys):
    from mmreason import cli

    def refuse(*_args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report.os, "replace", refuse)  # what a read-only folder does (root writes anyway)
    with pytest.raises(PermissionError, match=f"cannot write the report into {run} \\(not writable\\); choose"):
        report.write_report(run, load_task_files=False)
    assert not list(run.glob(".report.html.*"))  # no temp file left behind
    monkeypatch.setattr("sys.argv", ["mmreason", "report", str(run)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr()
    assert info.value.code == 2 and "Traceback" not in out.out + out.err
    assert "error: cannot write the report into" in out.out.replace("\n", " ")
