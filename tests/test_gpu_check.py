"""The GPU acceptance check, on a CPU: `benchmarks/gpu_check.sh --dry-run` (the wheel folder, the imports and every
command line of the CUDA stages, none of which runs), the wheel-folder checks of `benchmarks/gpu_env.py`, and the
phase-timed GRPO run of `benchmarks/gpu_run.py` on the tiny model, so that the harness a GPU run relies on keeps
working between GPU runs."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmarks/ script as a module."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module


def _wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any", size: int = 64) -> dict:
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    with path.open("wb") as f:
        f.truncate(size)  # zeros: the checks read names, sizes and hashes, never the content
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"dist": name, "version": version, "file": path.name, "bytes": size, "sha256": digest}


def fake_wheels(gpu_env, folder: Path) -> Path:
    """A wheel folder as `make gpu-wheels` leaves it, with small stand-in files at the versions installed here."""
    folder.mkdir(parents=True)
    entries = []
    for dist, _, _ in gpu_env.WHEELS:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # e.g. TRL, a benchmark extra
            version = "1.0"
        entries.append(_wheel(folder, dist, version))
    (folder / gpu_env.MANIFEST).write_text(json.dumps({"wheels": entries}))
    return folder


def test_dry_run_checks_the_wheels_imports_and_command_lines(tmp_path, bench):
    wheels = fake_wheels(bench("gpu_env"), tmp_path / "wheels")
    out = tmp_path / "out"
    cmd = ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out), "--wheels", str(wheels)]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()[1:]]
    assert [s[0] for s in stages] == [
        "setup",
        "env",
        "tests",
        "bench",
        "run-qwen2_5_vl",
        "ckpt-qwen2_5_vl",
        "run-qwen3_vl",
        "check",
        "summary",
    ]
    assert all(s[1].startswith("ok") for s in stages), stages
    commands = (out / "commands.txt").read_text()
    assert "benchmarks/grpo_step.py --device cuda --preset 3b" in commands
    assert "--arch qwen3_vl" in commands and "--gradient-checkpointing" in commands and "-m gpu" in commands
    check = (out / "check.log").read_text()
    assert "3b qwen2_5_vl on cuda, 3.45B parameters" in check and "3b-qwen3_vl-nockpt, 20 steps" in check
    env_report = json.loads((out / "env.json").read_text())
    assert env_report["versions"]["torch"] and "attention" in env_report
    assert "| run-qwen3_vl | ok (dry run) |" in (out / "summary.md").read_text()


def test_dry_run_fails_on_a_bad_command_line(bench):
    gpu_env = bench("gpu_env")
    run = ["python3", "benchmarks/gpu_run.py", "run"]
    with pytest.raises(SystemExit):  # no 3b shapes for Gemma 3
        gpu_env.check_command([*run, "--preset", "3b", "--arch", "gemma3"], {})
    with pytest.raises(SystemExit):  # 420 is no multiple of Qwen3-VL's 32 pixels
        gpu_env.check_command([*run, "--arch", "qwen3_vl", "--image-size", "420"], {})
    with pytest.raises(ValueError, match="no gpu-marked test file"):
        gpu_env.check_command(["python3", "-m", "pytest", "-m", "gpu", "tests/test_rl.py"], {})


def test_wheel_folder_checks(tmp_path, bench):
    gpu_env = bench("gpu_env")
    absent = tmp_path / "absent"
    problems, notes = gpu_env.check_wheels(absent, allow_missing=True, compare_local=False)
    assert not problems and "make gpu-wheels" in notes[0]
    assert gpu_env.check_wheels(absent, allow_missing=False, compare_local=False)[0]

    folder = fake_wheels(gpu_env, tmp_path / "wheels")
    assert gpu_env.check_wheels(folder, allow_missing=False, compare_local=True)[0] == []
    manifest = json.loads((folder / gpu_env.MANIFEST).read_text())

    (folder / "extra-1.0-py3-none-any.whl").write_bytes(b"")  # a wheel the list does not name
    assert any("do not match" in p for p in gpu_env.check_wheels(folder, False, False)[0])
    (folder / "extra-1.0-py3-none-any.whl").unlink()

    for e in manifest["wheels"]:
        if e["dist"] in ("hjson", "transformers"):
            (folder / e["file"]).unlink()
    windows = _wheel(folder, "hjson", "3.1.0", tag="cp312-cp312-win_amd64")  # installs nowhere on the GPU machine
    big = _wheel(folder, "transformers", "5.24.0", size=61 * 2**20)
    entries = [e for e in manifest["wheels"] if e["dist"] not in ("hjson", "transformers")] + [windows, big]
    (folder / gpu_env.MANIFEST).write_text(json.dumps({"wheels": entries}))
    problems = gpu_env.check_wheels(folder, False, False)[0]
    assert any("does not install on CPython 3.12" in p for p in problems)
    assert any("over the 60 MiB limit" in p for p in problems)

    (folder / gpu_env.MANIFEST).write_text(json.dumps({"wheels": entries[1:]}))  # one listed wheel missing
    (folder / entries[0]["file"]).unlink()
    assert any("the wheel list changed" in p for p in gpu_env.check_wheels(folder, False, False)[0])


def test_phase_timed_grpo_run_on_the_tiny_model(tmp_path, bench):
    """The GPU run's harness on a CPU: the real GRPO loop with its phases timed, checkpointing off then on (the
    loss then repeats the prompts), and the summary table of both."""
    gpu_run = bench("gpu_run")
    out = tmp_path / "out"
    common = [
        "run",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--group-size",
        "2",
        "--max-new-tokens",
        "4",
        "--image-size",
        "56",
        "--workdir",
        str(tmp_path / "work"),
    ]
    gpu_run.main([*common, "--steps", "2", "--out", str(out / "run-tiny.json")])
    gpu_run.main([*common, "--steps", "1", "--gradient-checkpointing", "--out", str(out / "run-tiny-ckpt.json")])
    plain = json.loads((out / "run-tiny.json").read_text())
    ckpt = json.loads((out / "run-tiny-ckpt.json").read_text())
    assert len(plain["steps"]) == 2 and plain["summary"]["timed_steps"] == 1
    assert (plain["loss_path"], ckpt["loss_path"]) == ("shared_prefix", "repeated_prompt")
    for row in plain["steps"]:
        assert row["sampling_s"] > 0 and row["scoring_s"] > 0 and row["update_s"] > 0 and row["other_s"] >= 0
        assert row["completion_tokens"] > 0 and row["tokens_per_s"] > 0
    assert plain["params"] > 0 and plain["attn_implementation"] == "sdpa"
    text = gpu_run.summary(out)
    assert text.count("| tiny (qwen2_5_vl) |") == 2 and (out / "summary.json").is_file()
