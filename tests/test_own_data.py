"""Bring your own data: the layouts users already hold, read as training reads them (splits, hub layout,
save_to_disk, arrow, peer formats, column mapping, media root), with no medium silently dropped, per-stage data and
prompt overrides; `data check` and `data convert` end to end."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.config import ConfigError, RunConfig, from_dict, validate
from mmreason.data.entries import check_disjoint, read_entry
from mmreason.data.locate import DataError
from mmreason.data.prepare import make_sample
from mmreason.data.records import check_records
from mmreason.data.sample import SampleContext
from mmreason.data.stream import SampleStream, Source
from mmreason.registry import get_task
from mmreason.runs.run import build_streams

runner = CliRunner()


def png(color: str = "red", size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, "white")
    img.paste(Image.new("RGB", (10, 10), color), (5, 5))
    img.save(buf, format="PNG")
    return buf.getvalue()


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_parts(sample) -> list:
    """The user turn's content kinds and texts, in order."""
    user = next(m for m in sample.messages if m["role"] == "user")
    return [c["type"] if c["type"] != "text" else c["text"] for c in user["content"]]


@pytest.fixture
def vlm_r1(tmp_path):
    """VLM-R1 REC rows: `image` relative to a separate image root, the box as a string, a caption."""
    root = tmp_path / "coco" / "train2014"
    root.mkdir(parents=True)
    (root / "COCO_1.jpg").write_bytes(png("red", (64, 48)))
    rows = [
        {"id": 1, "image": "COCO_1.jpg", "problem": "the red square", "solution": "[5, 5, 15, 15]",
         "normal_caption": "a red square"},
        {"id": 2, "image": "COCO_1.jpg", "problem": "the red square", "solution": "<answer>[4,4,16,16]</answer>",
         "normal_caption": "a red square"},
    ]
    return jsonl(tmp_path / "rec" / "refcoco_train.jsonl", rows), root


def easyr1_folder(tmp_path: Path) -> Path:
    """An EasyR1/verl hub-layout folder: data/train-*.parquet and data/test-*.parquet with `images: list[Image]`."""
    folder = tmp_path / "geo3k"
    (folder / "data").mkdir(parents=True)
    features = datasets.Features({"images": [datasets.Image()], "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    for split, counts in (("train", [1, 2, 3]), ("test", [4])):
        rows = {"images": [[{"bytes": png(), "path": None}] for _ in counts],
                "problem": ["<image>How many shapes are in the image?" for _ in counts],
                "answer": [str(c) for c in counts]}
        ds = datasets.Dataset.from_dict(rows, features=features)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


# ----------------------------------------------------------------------------------------------- readers


def test_hub_layout_splits_never_mix_and_images_are_read(tmp_path):
    folder = easyr1_folder(tmp_path)
    entry = {"task": "counting", "train": str(folder), "val": str(folder), "format": "easyr1"}
    train, val = read_entry(entry, "train"), read_entry(entry, "val")
    assert [r["solution"] for r in train] == ["1", "2", "3"] and [r["solution"] for r in val] == ["4"]
    sample = make_sample(get_task("counting"), train[0], train.context(SampleContext()))
    assert len(sample.images) == 1
    assert "<image>" not in sample.prompt_text and text_parts(sample)[0] == "image"
    check_disjoint([entry])  # train and test splits: disjoint
    with pytest.raises(DataError, match=r"data\[0\]\.val reads the same data as data\[0\]\.train"):
        check_disjoint([{**entry, "val": f"{folder}@train"}])


def test_column_mapping_alone_reads_the_images_column(tmp_path):
    folder = easyr1_folder(tmp_path)
    ds = read_entry({"train": str(folder), "columns": {"solution": "answer"}}, "train")
    assert not check_records(ds, "counting")
    assert "answer" not in ds[0] and ds[0]["solution"] == "1"


def test_unread_media_and_orphan_placeholders_are_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    ds = read_entry({"train": str(jsonl(tmp_path / "d.jsonl", [
        {"id": "v", "image": "a.png", "video": "clip.mp4", "problem": "How many?", "solution": 1},
        {"id": "p", "problem": "What is <image> 2+2?", "solution": "4"},
        {"id": "two", "image": "a.png", "problem": "<image> and <image>: how many?", "solution": 1},
        {"id": "ok", "image": "a.png", "problem": "<image> How many?", "solution": 1},
        {"id": "ok2", "image": "a.png", "problem": "How many?", "solution": 1},
    ]))}, "train")
    problems = {p.id: p.message for p in check_records(ds, "counting")}
    assert "field 'video' holds media that the counting task does not read" in problems["v"]
    assert "2 <image>" in problems["two"]
    math = {p.id: p.message for p in check_records(ds, "math")}
    assert "1 <image> and 0 <video> placeholder(s) for 0 image(s)" in math["p"]
    # under data_errors: skip they are drawn, skipped and counted, never trained without their media
    stream = SampleStream([Source("counting", ds, ctx=SampleContext())], seed=0)
    assert {s.id for _, s in stream.take(6)} == {"ok", "ok2"}
    assert stream.skipped >= 6 and "counting: ValueError" in stream.skip_reasons


def test_save_to_disk_arrow_and_split_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    rows = {"image": [str(tmp_path / "a.png")] * 3, "problem": ["How many?"] * 3, "solution": [1, 1, 1]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "validation":
                               datasets.Dataset.from_dict({k: v[:1] for k, v in rows.items()})})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert len(read_entry({"train": str(tmp_path / "saved")}, "train")) == 3
    assert len(read_entry({"train": "x", "val": str(tmp_path / "saved")}, "val")) == 1
    with pytest.raises(DataError, match=r"no split 'dev' \(it has 'train', 'validation'\)"):
        read_entry({"train": f"{tmp_path / 'saved'}@dev"}, "train")
    arrow = next((tmp_path / "saved" / "train").glob("*.arrow"))
    ds = read_entry({"train": str(arrow)}, "train")
    assert len(ds) == 3 and not check_records(ds, "counting")


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # read at import time by both libraries: set them too, so no connection is tried (and retried) at all
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"some-user/some-set: not a local file or folder, and loading it as a "
                                        r"Hugging Face hub dataset \(split 'train'\) failed"):
        read_entry({"train": "some-user/some-set"}, "train")


# ---------------------------------------------------------------------------------------- formats, mapping


def test_vlm_r1_rec_with_media_root_and_box_strings(vlm_r1):
    file, root = vlm_r1
    entry = {"task": "grounding", "train": str(file), "format": "vlm_r1", "media_dir": str(root)}
    ds = read_entry(entry, "train")
    assert not check_records(ds, "grounding")
    sample = make_sample(get_task("grounding"), ds[1], ds.context(SampleContext()))
    assert sample.columns["solution"] == [[4.0, 4.0, 16.0, 16.0]]
    # without the media root every line names the missing file
    problems = check_records(read_entry({**entry, "media_dir": None}, "train"), "grounding")
    assert len(problems) == 2 and "COCO_1.jpg" in problems[0].message


@pytest.mark.parametrize("solution, expected", [
    ("[5, 5, x, 15]", "field 'solution' must be a list of [x1, y1, x2, y2] boxes"),
    ("[5, 5, 15]", "field 'solution' must be a list of [x1, y1, x2, y2] boxes"),
    ("<answer>[15, 5, 5, 15]</answer>", "boxes with x1 <= x2"),
])
def test_malformed_box_strings_are_named(tmp_path, solution, expected):
    (tmp_path / "a.png").write_bytes(png())
    ds = read_entry({"train": str(jsonl(tmp_path / "d.jsonl", [{"image": "a.png", "problem": "the square",
                                                                  "solution": solution}]))}, "train")
    (problem,) = check_records(ds, "grounding")
    assert problem.line == 1 and expected in problem.message


def test_trl_conversational_prompt_and_messages_sft_set(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    trl = jsonl(tmp_path / "trl.jsonl", [{
        "prompt": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}],
        "image": "a.png", "solution": "1"}])
    ds = read_entry({"train": str(trl), "format": "trl"}, "train")
    sample = make_sample(get_task("counting"), ds[0], ds.context(SampleContext()))
    assert sample.messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert text_parts(sample)[0] == "image"
    chat = jsonl(tmp_path / "cot.jsonl", [{
        "messages": [{"role": "user", "content": "<image>How many shapes?"},
                     {"role": "assistant", "content": "<think>one red square</think><answer>1</answer>"}],
        "images": ["a.png"]}])
    ds = read_entry({"train": str(chat), "format": "messages"}, "train")
    sample = make_sample(get_task("counting"), ds[0], ds.context(SampleContext()))
    assert ds[0]["solution"] == "1" and ds[0]["reasoning"] == "one red square"
    assert sample.target == "<think>one red square</think><answer>1</answer>"


def test_wrong_column_names_fail_with_one_line(tmp_path):
    folder = easyr1_folder(tmp_path)
    with pytest.raises(DataError, match=r"none of its 3 row\(s\) can be used; .*column 'label' \(for 'solution'\) "
                                        r"of data.columns not found; the row has: answer, images, problem"):
        read_entry({"train": str(folder), "columns": {"solution": "label"}}, "train")


def test_prompt_template_and_system_prompt(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    ds = read_entry({"train": str(jsonl(tmp_path / "d.jsonl", [
        {"image": "a.png", "problem": "How many?", "solution": 1, "hint": "count the squares"}]))}, "train")
    ctx = ds.context(SampleContext(system_prompt="You count.", prompt_template="<image>{problem} ({hint}) "
                                   "{instruction}"))
    sample = make_sample(get_task("counting"), ds[0], ctx)
    assert sample.messages[0]["role"] == "system"
    assert text_parts(sample) == ["image", "How many? (count the squares) " + "Give the final answer inside "
                                  "<answer> </answer> tags."] or "(count the squares)" in text_parts(sample)[1]
    bad = ds.context(SampleContext(prompt_template="{nope}"))
    (problem,) = check_records(ds, "counting", bad)
    assert "prompt_template uses {nope}" in problem.message and "hint" in problem.message


# ------------------------------------------------------------------------------------------ config, stages


def _cfg(tmp_path: Path, data: list[dict], stages=("sft", "grpo")) -> RunConfig:
    cfg = from_dict(RunConfig, {"output_dir": str(tmp_path / "runs"), "stages": list(stages), "data": data})
    validate(cfg)
    return cfg


def test_per_stage_data_gives_each_stage_its_stream(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    sft = jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "How many?"},
                                                       {"role": "assistant", "content": "<answer>1</answer>"}],
                                          "image": "a.png"}])
    rl = jsonl(tmp_path / "rl.jsonl", [{"image": "a.png", "problem": "How many?", "solution": 1}] * 2)
    cfg = _cfg(tmp_path, [{"task": "counting", "train": str(sft), "format": "messages", "stages": ["sft"]},
                          {"task": "counting", "train": str(rl), "stages": ["grpo"]}])
    streams = build_streams(cfg, SampleContext())
    assert streams["sft"] is not streams["grpo"]
    assert [len(s.dataset) for s in streams["sft"].sources] == [1]
    assert [len(s.dataset) for s in streams["grpo"].sources] == [2]
    shared = build_streams(_cfg(tmp_path, [{"task": "counting", "train": str(rl)}]), SampleContext())
    assert shared["sft"] is shared["grpo"]
    with pytest.raises(ConfigError, match="no data entry feeds the grpo stage"):
        _cfg(tmp_path, [{"task": "counting", "train": str(rl), "stages": ["sft"]}])
    with pytest.raises(ConfigError, match=r"data\[0\].format must be one of .*did you mean 'easyr1'"):
        _cfg(tmp_path, [{"task": "counting", "train": str(rl), "format": "easyr"}])


# ---------------------------------------------------------------------------------------------------- CLI


def test_data_check_and_convert_cli(tmp_path):
    folder = easyr1_folder(tmp_path)
    result = runner.invoke(app, ["data", "check", f"{folder}@test", "--task", "counting", "--format", "easyr1"])
    assert result.exit_code == 0, result.output
    assert "1 record(s)" in result.output
    result = runner.invoke(app, ["data", "check", str(folder), "--task", "counting", "--column", "solution=nope"])
    assert result.exit_code == 2 and result.output.count("\n") <= 2 and "column 'nope'" in result.output
    result = runner.invoke(app, ["data", "check", str(folder), "--task", "counting", "--split", "dev"])
    assert result.exit_code == 2 and "no 'dev' split (it has 'test', 'train'" in result.output
    result = runner.invoke(app, ["data", "check", str(folder), "--task", "counting"])  # images column unmapped
    assert result.exit_code == 2 and "missing field(s) solution; the record has: answer, images" in result.output
    out = tmp_path / "conv" / "train.jsonl"
    result = runner.invoke(app, ["data", "convert", str(folder), "--format", "easyr1", "--task", "counting",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 3 counting record(s)" in result.output and "3 media file(s)" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["images"][0].startswith("train_media/") and rows[0]["solution"] == "1"
    result = runner.invoke(app, ["data", "check", str(out), "--task", "counting"])
    assert result.exit_code == 0, result.output


def test_the_readme_data_example_is_a_valid_config(tmp_path):
    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own data", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    cfg = from_dict(RunConfig, yaml.safe_load(block))
    validate(cfg)
    assert [d.format for d in cfg.data] == ["vlm_r1", "easyr1", None]


def test_train_end_to_end_on_peer_formats_with_per_stage_data(tmp_path):
    """SFT on a chain-of-thought set in `messages` form, GRPO on an EasyR1 hub-layout folder (its test split held
    out), through `mmreason train`; the prompts keep their images and every stage resumes its own data."""
    import pandas as pd

    from mmreason.runs import inspection

    folder = easyr1_folder(tmp_path)
    (tmp_path / "a.png").write_bytes(png())
    cot = jsonl(tmp_path / "cot.jsonl", [{
        "messages": [{"role": "system", "content": "Count carefully."},
                     {"role": "user", "content": "<image>How many shapes are in the image?"},
                     {"role": "assistant", "content": "<think>one square</think><answer>1</answer>"}],
        "images": ["a.png"]}] * 4)
    cfg = {
        "name": "own", "output_dir": str(tmp_path / "runs"), "stages": ["sft", "grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(cot), "format": "messages", "stages": ["sft"]},
                 {"task": "counting", "train": str(folder), "val": str(folder), "format": "easyr1",
                  "stages": ["grpo"], "max_val": 1}],
        "sft": {"steps": 2, "batch_size": 2},
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"at_start": False, "max_new_tokens": 4},
    }
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg))
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "own"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} >= {"sft", "grpo"}
    rollouts = pd.concat(pd.read_parquet(f) for f in sorted((run_dir / "rollouts").glob("*.parquet")))
    grpo = rollouts[rollouts["stage"] == "grpo-1"]
    assert len(grpo) == 4 and not grpo["prompt"].str.contains("<image>").any()
    assert set(grpo["sample_id"]) <= {f"train-00000-of-00001-{i}" for i in (1, 2, 3)}  # never a test row
    state = json.loads((sorted((run_dir / "checkpoints").iterdir())[-1] / "state.json").read_text())
    assert set(state["stage_streams"][0]) == {"sft", "grpo"}
    view = inspection.load_run(run_dir)
    assert inspection.render_row(view, grpo.iloc[0]).size[0] > 0
