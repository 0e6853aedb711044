"""End-to-end tests of what a run reports besides metrics.jsonl: experiment trackers (TensorBoard for real, W&B
offline), train.log, the report's SFT plots, one rollout-store schema per run, `mmreason eval` taking the run's
settings without overwriting another evaluation's rows, and the task / reward files a run remembers."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmreason.cli import app, main
from mmreason.config import TRACKERS, ConfigError, load_config
from mmreason.runs import store
from mmreason.runs.trackers import tracker_key

runner = CliRunner()
TINY = {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136}


def _invoke(args: list[str]):
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _write_config(folder: Path, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("data")
    for task in ("counting", "grounding"):
        make_synthetic(task, out / task, n=16, seed=0)
    # one unreadable training line: its warning must reach train.log
    with open(out / "counting" / "train.jsonl", "a") as f:
        f.write("not json\n")
    return out


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, data) -> Path:
    """SFT then GRPO on a counting + grounding mixture, reported to TensorBoard (trained once for the module)."""
    base = tmp_path_factory.mktemp("tracked")
    entries = [{"task": t, "train": str(data / t / "train.jsonl"), "val": str(data / t / "val.jsonl"), "max_val": 1}
               for t in ("counting", "grounding")]
    cfg = {
        "name": "tracked", "output_dir": str(base / "runs"), "think": False, "stages": ["sft", "grpo"], "model": TINY,
        "data": entries, "report_to": ["tensorboard"],
        "sft": {"steps": 2, "batch_size": 2},
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"max_new_tokens": 4, "batch_size": 4},
    }
    _invoke(["train", str(_write_config(base, cfg))])
    return base / "runs" / "tracked"


def test_tensorboard_gets_every_metric_of_every_stage_and_the_eval_pictures(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tracked_run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    lines = _metrics(tracked_run)
    assert {m["stage"] for m in lines} >= {"sft", "grpo", "eval-before", "eval-after-s00-sft", "eval-after-s01-grpo"}
    for line in lines:  # every number of every metrics line, under its metrics.jsonl key
        for key, value in line.items():
            if key not in ("stage", "step", "time", "label") and isinstance(value, int | float):
                assert tracker_key(line["stage"], key) in scalars, (line["stage"], key)
    # one increasing step axis over the stages: sft steps 1-2, then grpo step 3; evaluations at the step before
    assert [e.step for e in acc.Scalars("sft/loss")] == [1, 2]
    assert [e.step for e in acc.Scalars("grpo/reward_mean")] == [3]
    assert [e.step for e in acc.Scalars("eval/counting/accuracy")] == [0, 2, 3]
    assert [round(e.value, 6) for e in acc.Scalars("sft/lr")] == [round(m["lr"], 6) for m in lines
                                                                  if m["stage"] == "sft"]
    images = set(acc.Tags()["images"])
    assert {"eval/counting/sample_0", "eval/grounding/sample_0"} <= images
    assert len(acc.Images("eval/counting/sample_0")) == 3  # before, after the SFT stage, after the GRPO stage


def test_train_log_holds_log_records_and_one_line_per_metrics_line(tracked_run):
    text = (tracked_run / "train.log").read_text()
    assert text.startswith("--- ") and "\r" not in text and "it/s" not in text  # no progress-bar redraws
    assert "WARNING mmreason.runs.run: skipping training record" in text
    for stage, step in (("sft", 1), ("sft", 2), ("grpo", 1), ("eval-before", 0), ("eval-after-s01-grpo", 0)):
        assert f"INFO mmreason.runs.run: {stage} step {step}: " in text


def test_the_report_plots_the_sft_loss_grad_norm_and_lr(tracked_run):
    from mmreason.runs import inspection as ins
    from mmreason.runs.report import sft_curves

    html = (tracked_run / "report.html").read_text()
    assert "SFT statistics" in html and 'alt="SFT curves"' in html and "SFT curves unavailable" not in html
    fig = sft_curves(ins.load_run(tracked_run))
    assert [ax.get_title() for ax in fig.axes] == ["sft loss", "sft grad_norm", "sft lr"]
    assert all(len(ax.lines[0].get_xdata()) == 2 for ax in fig.axes)


def test_the_rollout_store_has_one_schema_read_whole_by_pandas_pyarrow_and_datasets(tracked_run, tmp_path):
    from datasets import load_dataset

    folder = tmp_path / "run"
    shutil.copytree(tracked_run / "rollouts", folder / "rollouts")
    # a later evaluation scored with a reward the run never declared widens every shard already written
    row = store.read(folder).iloc[0].to_dict()
    row.update(stage="eval-extra", step=0, reward_brand_new=1.0)
    store.RolloutStore(folder).append([row], "eval-extra", 0)
    shards = sorted((folder / "rollouts").glob("*.parquet"))
    schemas = [pq.read_schema(p).remove_metadata() for p in shards]
    assert len(shards) > 3 and all(s.equals(schemas[0]) for s in schemas)
    names = schemas[0].names
    assert {"reward_format_nothink", "reward_count_match", "reward_iou", "reward_brand_new"} <= set(names)
    expected = store.read(folder)
    frame = pd.read_parquet(folder / "rollouts")
    table = pads.dataset(folder / "rollouts", format="parquet").to_table()
    hf = load_dataset("parquet", data_dir=str(folder / "rollouts"), split="train", cache_dir=str(tmp_path / "hf"))
    for columns, rows in ((list(frame.columns), len(frame)), (table.column_names, table.num_rows),
                          (hf.column_names, hf.num_rows)):
        assert columns == names and rows == len(expected)
    # a reward that does not apply to a row's task is null there (NaN in pandas), never a missing column
    counting = expected[expected["task"] == "counting"]
    assert counting["reward_iou"].isna().all() and counting["reward_count_match"].notna().all()


def test_a_named_tracker_that_is_not_installed_stops_before_training_with_one_line(tmp_path, data, monkeypatch,
                                                                                   capsys):
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = next((n for n in TRACKERS if n not in available), None)
    if missing is None:
        pytest.skip("every tracker is installed here")
    cfg = {"name": "t", "output_dir": str(tmp_path / "runs"), "stages": ["grpo"], "model": TINY,
           "report_to": ["tensorboard", missing], "data": [{"task": "counting", "train": str(data / "counting" /
                                                                                              "train.jsonl")}]}
    monkeypatch.setattr(sys, "argv", ["mmreason", "train", str(_write_config(tmp_path, cfg))])
    with pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr().out
    assert stop.value.code == 2 and "Traceback" not in out
    (line,) = [x for x in out.splitlines() if x.startswith("error:")]
    assert f"report_to names {missing}" in line and "mmreason[tracking]" in line
    assert not (tmp_path / "runs" / "t").exists()  # nothing was loaded or written
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        load_config(_write_config(tmp_path / "typo", {**cfg, "report_to": ["tensorbord"]}))


def test_wandb_offline_gets_the_metrics_and_pictures(tmp_path, data, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {
        "name": "wb", "output_dir": str(tmp_path / "runs"), "think": False, "stages": ["grpo"], "model": TINY,
        "data": [{"task": "counting", "train": str(data / "counting" / "train.jsonl"),
                  "val": str(data / "counting" / "val.jsonl"), "max_val": 2}],
        "report_to": ["wandb"], "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"max_new_tokens": 4, "at_start": False},
    }
    _invoke(["train", str(_write_config(tmp_path, cfg))])
    (log_file,) = (tmp_path / "runs" / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    raw = log_file.read_bytes()
    for key in (b"grpo/loss", b"grpo/reward_mean", b"eval/counting/accuracy", b"eval/counting/sample_0"):
        assert key in raw, key


# ------------------------------------------------------------------------------------------------ mmreason eval


@pytest.fixture(scope="module")
def nothink_run(tmp_path_factory, data) -> Path:
    """A no-think run trained on 56x56 images with 4-token completions."""
    base = tmp_path_factory.mktemp("nothink")
    cfg = {
        "name": "nothink", "output_dir": str(base / "runs"), "think": False, "stages": ["grpo"], "model": TINY,
        "data": [{"task": "counting", "train": str(data / "counting" / "train.jsonl"),
                  "val": str(data / "counting" / "val.jsonl"), "max_val": 2}],
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"max_new_tokens": 3, "batch_size": 2, "at_start": False},
    }
    _invoke(["train", str(_write_config(base, cfg))])
    return base / "runs" / "nothink"


def _eval_rows(run_dir: Path, stage: str) -> pd.DataFrame:
    return store.read(run_dir, stage=stage)


def _stage_of(output: str) -> str:
    return output.rsplit("(stage ", 1)[1].split(")")[0]


def test_eval_takes_the_runs_prompt_style_pixel_budget_and_length_and_says_so(nothink_run, data):
    val = str(data / "counting" / "val.jsonl")
    result = _invoke(["eval", str(nothink_run), "--data", val, "--limit", "2"])
    out = result.output
    assert "think: False (run)" in out and "pixels: 3136..3136 (run/run)" in out
    assert "max_new_tokens: 3 (run)" in out and "format_nothink=" in out and "format=" not in out
    rows = _eval_rows(nothink_run, _stage_of(out))
    assert len(rows) == 2 and (rows["completion_len"] <= 3).all()
    assert rows["reward_format_nothink"].notna().all()
    assert "<think>" not in rows["prompt"].iloc[0]
    # a flag overrides the run: a 448x448 budget makes the same prompts 252 vision tokens longer
    big = _invoke(["eval", str(nothink_run), "--data", val, "--limit", "2", "--min-pixels", "200704",
                   "--max-pixels", "200704", "--max-new-tokens", "2"])
    assert "pixels: 200704..200704 (flag/flag)" in big.output and "max_new_tokens: 2 (flag)" in big.output
    wide = _eval_rows(nothink_run, _stage_of(big.output))
    assert (wide["prompt_len"].to_numpy() - rows["prompt_len"].to_numpy() == 256 - 4).all()


def test_evals_of_two_files_with_one_stem_keep_their_own_rows(nothink_run, data, tmp_path):
    records = (data / "counting" / "val.jsonl").read_text().splitlines()
    files = []
    for name, part in (("a", records[:1]), ("b", records[:2])):
        (tmp_path / name).mkdir()
        for r in part:  # the images beside each copy
            image = json.loads(r)["image"]
            (tmp_path / name / image).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / "counting" / image, tmp_path / name / image)
        (tmp_path / name / "val.jsonl").write_text("\n".join(part) + "\n")
        files.append(str(tmp_path / name / "val.jsonl"))
    stages = [_stage_of(_invoke(["eval", str(nothink_run), "--data", f]).output) for f in files]
    assert stages[0] != stages[1] and all("-val-" in s for s in stages)
    assert [len(_eval_rows(nothink_run, s)) for s in stages] == [1, 2]
    again = _stage_of(_invoke(["eval", str(nothink_run), "--data", files[0]]).output)
    assert again == stages[0] and len(_eval_rows(nothink_run, again)) == 1  # the same evaluation replaces its own


# ------------------------------------------------------------------------------------------------ the user's files

TASK_FILE = '''
from typing import Any

from PIL import Image

from mmreason import Sample, SampleContext, Task, register_reward, register_task
from mmreason.rewards import extract_answer
from mmreason.tasks.base import answer_instruction, wrap_target
from mmreason.tasks.common import record_id, single_image, user_messages


@register_reward("trk_match")
def trk_match(completions: list[str], solution: list[str], **_: Any) -> list[float]:
    return [float((extract_answer(c) or "").strip() == s) for c, s in zip(completions, solution, strict=True)]


def trk_length(completions: list[str], **_: Any) -> list[float]:
    return [min(len(c) / 10, 1.0) for c in completions]


@register_task("trk_colour")
class TrkColour(Task):
    answer_format = "red or blue"
    rewards = {"format": 0.5, "trk_match": 1.0}
    metric_names = ("accuracy",)
    required_fields = ("image", "solution")

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        image, ref = single_image(record, rid, ctx, self.name)
        return Sample(id=rid, task=self.name, messages=user_messages("Colour?" + answer_instruction(ctx.think), 1),
                      images=[image.image], target=wrap_target(record["solution"], ctx.think),
                      columns={"solution": record["solution"]}, media=[ref])

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        scores = trk_match(completions, [s.columns["solution"] for s in samples])
        return {"accuracy": sum(scores) / max(len(scores), 1)}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        return sample.images[0]
'''


def _colour_data(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(8):
        label = ("red", "blue")[i % 2]
        Image.new("RGB", (56, 56), label).save(folder / "images" / f"{i}.png")
        lines.append(json.dumps({"id": f"c{i}", "image": f"images/{i}.png", "solution": label}))
    (folder / "train.jsonl").write_text("\n".join(lines[:6]) + "\n")
    (folder / "val.jsonl").write_text("\n".join(lines[6:]) + "\n")
    return folder


def _forget_task_file() -> None:
    """As a new process would be: the task file's task and reward unknown, its module not imported."""
    from mmreason.registry import REWARDS, TASKS

    TASKS.remove("trk_colour")
    REWARDS.remove("trk_match")
    for name in [m for m in sys.modules if m.startswith("mmreason_user_trk_task")]:
        del sys.modules[name]


def test_a_run_remembers_its_task_and_reward_files_for_report_eval_and_resume(tmp_path):
    from mmreason.registry import TASKS
    from mmreason.runs.run import recorded_task_files

    task_file = tmp_path / "trk_task.py"
    task_file.write_text(TASK_FILE)
    colours = _colour_data(tmp_path / "colours")
    cfg = {
        "name": "own", "output_dir": str(tmp_path / "runs"), "think": False, "stages": ["grpo"], "model": TINY,
        "data": [{"task": "trk_colour", "train": str(colours / "train.jsonl"), "val": str(colours / "val.jsonl"),
                  "rewards": {"trk_match": 1.0, f"{task_file}:trk_length": 0.1}}],
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"max_new_tokens": 3, "at_start": False},
    }
    config = _write_config(tmp_path, cfg)
    try:
        _invoke(["train", str(config), "--task-file", str(task_file)])
        run_dir = tmp_path / "runs" / "own"
        info = json.loads((run_dir / "run.json").read_text())
        assert info["task_files"] == [str(task_file.resolve())] == info["reward_files"]
        assert (run_dir / info["file_copies"][str(task_file.resolve())]).read_text() == TASK_FILE

        _forget_task_file()
        (run_dir / "report.html").unlink()
        _invoke(["report", str(run_dir)])
        html = (run_dir / "report.html").read_text()
        assert "trk_colour" in TASKS and "unknown task" not in html and "unavailable" not in html

        _forget_task_file()
        out = _invoke(["eval", str(run_dir), "--limit", "2"]).output  # the run's only task and its held-out data
        assert "task files: " + str(task_file.resolve()) + " (run)" in out and "accuracy" in out

        _forget_task_file()
        _invoke(["train", str(config), "--resume"])
        log_text = (run_dir / "train.log").read_text()
        assert log_text.count("--- ") == 2 and "resuming from s00-grpo-step000001" in log_text
        task_file.unlink()  # the original gone, the run's own copy stands in for it
        assert recorded_task_files(run_dir) == [run_dir / "files" / "trk_task.py"]
    finally:
        _forget_task_file()
