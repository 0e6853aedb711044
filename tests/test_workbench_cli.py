"""The everyday command line: fast help and version, one-line user errors, `--dry-run` checks and estimates, quiet
labelled output, the long held-out table, and an install that does not need decord."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmreason.cli import app, main

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("counting")
    make_synthetic("counting", out, n=24, seed=0)
    return out


def _config(tmp_path: Path, data: Path, *overrides: str) -> list[str]:
    cfg = {
        "name": "t",
        "output_dir": str(tmp_path / "runs"),
        "think": False,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl")}],
        "sft": {"steps": 1, "batch_size": 4},
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return [str(path), *overrides]


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """`mmreason ARGV` through the entry point (its user-error handling included): (exit code, stdout + stderr)."""
    monkeypatch.setattr(sys, "argv", ["mmreason", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out + out.err


# ------------------------------------------------------------------------------------------------- help, version


HELP_PROBE = """
import sys
from mmreason.cli import main
for argv in {argvs!r}:
    sys.argv = ["mmreason", *argv]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
print("LOADED", sorted(m for m in ("torch", "transformers", "pydantic", "numpy", "PIL") if m in sys.modules))
"""


def test_help_short_help_and_version_load_no_torch():
    argvs = [["--help"], ["-h"], ["--version"], ["train", "--help"], ["train", "-h"], ["data", "check", "-h"],
             ["data", "make", "synthetic", "--help"], ["eval", "-h"], ["tiny-model", "--help"], ["report", "-h"]]
    out = subprocess.run([sys.executable, "-c", HELP_PROBE.format(argvs=argvs)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"  # not even numpy: help needs no data code
    assert "--dry-run" in out.stdout and "--verbose" in out.stdout and "-h" in out.stdout


def test_version_is_the_package_metadata_version():
    from importlib import metadata

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"mmreason {metadata.version('mmreason')}"


def test_synthetic_task_names_in_the_help_are_the_makers():
    from mmreason.cli import SYNTHETIC_TASKS
    from mmreason.data.synthetic import MAKERS

    assert SYNTHETIC_TASKS == tuple(MAKERS)


# ------------------------------------------------------------------------------------------- one-line user errors


def _one_error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    assert "Traceback" not in out
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, out
    return errors[0]


def test_unknown_synthetic_task_is_one_line_with_a_suggestion(monkeypatch, capsys, tmp_path):
    code, out = _main(monkeypatch, capsys, "data", "make", "synthetic", "--task", "countng", "--out", str(tmp_path))
    assert code == 2
    line = _one_error_line(out)
    assert "no synthetic maker for task 'countng'" in line and "did you mean 'counting'" in line


def test_unreachable_model_is_one_line_naming_it(monkeypatch, capsys, tmp_path, counting_data):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network in tests: be quick about it
    args = _config(tmp_path, counting_data, "model.name=some/unreachable-id")
    code, out = _main(monkeypatch, capsys, "train", *args)
    assert code == 2
    line = _one_error_line(out)
    assert "model some/unreachable-id is neither a local folder nor reachable on the hub" in line


def test_missing_model_folder_is_one_line(monkeypatch, capsys, tmp_path, counting_data):
    missing = tmp_path / "no" / "such" / "model"
    code, out = _main(monkeypatch, capsys, "train", *_config(tmp_path, counting_data, f"model.name={missing}"),
                      "--dry-run")
    assert code == 2
    line = _one_error_line(out)
    assert f"model {missing} is neither a local folder (no such path) nor reachable on the hub" in line
    assert "save_pretrained" in line  # what model.name takes


def test_missing_data_fails_before_the_model_is_built(monkeypatch, capsys, tmp_path, counting_data):
    import mmreason.train.stages as stages

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was found missing")

    monkeypatch.setattr(stages, "build_policy", no_model)
    monkeypatch.setattr(stages, "ensure_tiny", no_model)
    missing = tmp_path / "qs" / "train.jsonl"
    code, out = _main(monkeypatch, capsys, "train", *_config(tmp_path, counting_data, f"data.0.train={missing}"))
    assert code == 2
    line = _one_error_line(out)
    assert f"data[0].train: {missing}: data file or folder does not exist" in line
    assert f"mmreason data make synthetic --task counting --out {missing.parent}" in line


def test_unknown_task_fails_before_the_model_is_built(monkeypatch, capsys, tmp_path, counting_data):
    import mmreason.train.stages as stages

    monkeypatch.setattr(stages, "build_policy", lambda *a, **k: pytest.fail("the model was built"))
    code, out = _main(monkeypatch, capsys, "train", *_config(tmp_path, counting_data, "data.0.task=countin"))
    assert code == 2
    assert "unknown task 'countin'" in _one_error_line(out)


# ------------------------------------------------------------------------------------------------------- dry run


def test_dry_run_checks_everything_and_estimates_memory(tmp_path, counting_data):
    result = runner.invoke(app, ["train", *_config(tmp_path, counting_data), "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tasks: counting (registered)" in out
    assert "model: tiny (built in memory): Qwen2.5-VL (Qwen2_5_VLProcessor)" in out
    assert f"data[0].train: {counting_data / 'train.jsonl'}: 22 record(s)" in out  # 24 records, 2 held out
    assert "media: 18 of 18 sampled record(s) build" in out  # 16 spread over train + the 2 held-out ones
    assert "vision tokens per sample: min 4, median 4, max 4 (28 px per token side)" in out  # 56 x 56 px
    assert "memory estimate per process" in out
    assert "sft (batch 4 x" in out and "grpo (2 prompts x G=4," in out and "rollout KV cache" in out
    assert "nothing was written" in out
    assert not (tmp_path / "runs").exists()  # not even the tiny model's cache


def test_dry_run_refuses_data_whose_media_cannot_be_read(monkeypatch, capsys, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps({"image": f"gone{i}.png", "problem": "How many?", "solution": 2}) + "\n"
                            for i in range(3)))
    cfg = _config(tmp_path, tmp_path, f"data.0.train={data}", "data.0.val=null")
    code, out = _main(monkeypatch, capsys, "train", *cfg, "--dry-run")
    assert code == 2
    assert "3 of 3 sampled record(s) cannot be built" in _one_error_line(out) and "gone0.png" in out


def test_memory_estimate_follows_its_formula():
    from types import SimpleNamespace

    from mmreason.config import load_config
    from mmreason.train.dryrun import ModelFacts, SampleSizes, estimate_memory

    cfg = load_config("quickstart", ["grpo.beta=0.04"])
    text = SimpleNamespace(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, vocab_size=1000, layer_types=None)
    facts = ModelFacts("x", None, None, SimpleNamespace(get_text_config=lambda: text), parameters=1000,
                       trainable=1000)
    sft, grpo = estimate_memory(cfg, facts, SampleSizes(vision=[4], prompt=[50], sft=[60]))
    b = 4  # float32
    assert sft.static == {"weights": 1000 * b, "gradients": 1000 * b, "AdamW states": 2000 * b}
    tokens = 16 * 60  # sft.batch_size x the longest prompt + answer
    assert sft.loss == {"activations": tokens * 2 * 17 * 64 * b, "logits": tokens * 1000 * (b + 4)}
    assert grpo.static["reference weights"] == 1000 * b  # beta > 0 without LoRA
    rows, seq = 8 * 8, 50 + 12
    assert grpo.rollout == rows * seq * 2 * 2 * 2 * 16 * b  # rows x tokens x 2 L kv_heads head_dim b
    shared = 8 * (50 + 8 * 12)  # the prompt prefix once per group in the loss forward
    assert grpo.loss["activations"] == shared * 2 * 17 * 64 * b
    assert grpo.peak == sum(grpo.static.values()) + max(grpo.rollout, sum(grpo.loss.values()))


# ------------------------------------------------------------------------------------------------ output, tables


def test_quiet_by_default_and_verbose_with_v():
    from mmreason.cli import configure_output

    root = logging.getLogger()
    level = root.level
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    deepspeed = logging.getLogger("DeepSpeed")
    handler = Keep()
    deepspeed.addHandler(handler)
    try:
        result = runner.invoke(app, ["tasks"])  # default: quiet
        assert result.exit_code == 0
        deepspeed.warning("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to ...")
        deepspeed.warning("a real DeepSpeed warning")
        assert seen == ["a real DeepSpeed warning"]
        from transformers.utils import logging as hf_logging

        assert not hf_logging.is_progress_bar_enabled()
        result = runner.invoke(app, ["-v", "tasks"])
        assert result.exit_code == 0
        deepspeed.warning("Setting accelerator to CPU.")
        assert seen[-1] == "Setting accelerator to CPU." and hf_logging.is_progress_bar_enabled()
        assert root.level == logging.INFO
    finally:
        deepspeed.removeHandler(handler)
        configure_output(False)
        root.setLevel(level)


def test_held_out_table_is_long_and_keeps_its_headers_in_80_columns():
    from rich.console import Console

    from mmreason.cli import _eval_table

    labels = ["before", "after-s00-sft", "after-s01-grpo", "after-s02-sft"]
    history = [{"stage": f"eval-{label}", "step": 0, "label": label, "eval/grounding/accuracy@0.5": 0.5,
                "eval/grounding/mean_iou": 0.25, "eval/counting/accuracy": 0.75} for label in labels]
    console = Console(width=80, record=True)
    console.print(_eval_table(history))
    text = console.export_text()
    assert "…" not in text and all(part in text for part in ("before", "s00-sft", "s01-grpo", "s02-sft"))
    rows = [[cell.strip() for cell in line.split("│")[1:3]] for line in text.splitlines() if "mean_iou" in line]
    assert rows == [["grounding", "mean_iou"]]


# -------------------------------------------------------------------------------------------------- installation


def test_decord_is_optional_where_it_has_no_wheel():
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (decord,) = [Requirement(r) for r in project["dependencies"] if r.startswith("decord")]
    platforms = {("x86_64", "linux"): True, ("AMD64", "win32"): True, ("aarch64", "linux"): False,
                 ("arm64", "darwin"): False, ("x86_64", "darwin"): False}
    for (machine, system), installed in platforms.items():
        assert decord.marker.evaluate({"platform_machine": machine, "sys_platform": system}) is installed
    assert {"ipykernel", "nbclient", "nbformat"} <= {Requirement(r).name for r in
                                                     project["optional-dependencies"]["notebooks"]}
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and project["license"] == "Apache-2.0"


def test_without_decord_pyav_reads_streams_without_timestamps(tmp_path, monkeypatch):
    av = pytest.importorskip("av")
    if "libx264" not in av.codecs_available:
        pytest.skip("needs PyAV's libx264 encoder")
    import numpy as np
    from mmreason.processors import decode, load_video, sample_indices

    path = tmp_path / "ramp.h264"  # a raw H.264 stream: its packets carry no timestamps
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "0", "preset": "medium", "g": "25"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(60):  # frame i has gray level 4 i + 4, so a decoded frame tells its index
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 4 * i + 4, np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode())
    monkeypatch.setitem(sys.modules, "decord", None)  # as on aarch64 and macOS: `import decord` fails
    monkeypatch.setattr(decode, "_read_decord", lambda *a: pytest.fail("decord was asked for"))
    frames, indices, total, _ = decode.read_frames(path, None, lambda n, rate: sample_indices(n, rate, nframes=6))
    assert total == 60 and indices == sample_indices(60, 10, nframes=6)
    assert [round((float(f.mean()) - 4) / 4) for f in frames] == indices
    clip = load_video(path, nframes=6, min_pixels=28 * 28)
    assert clip.frame_indices == indices and clip.total_frames == 60
