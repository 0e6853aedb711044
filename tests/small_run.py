"""A small real run (tiny model, counting + grounding, one GRPO stage with evaluations before and after) for the
inspection and report tests, trained once per test session through the `mmreason train` CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.data.synthetic import make_synthetic

TASKS = ("counting", "grounding")
STEPS, PROMPTS, GROUP = 3, 2, 3
MAX_VAL = 2


def build_small_run(base: Path) -> Path:
    """Train the run under `base` (once: later calls reuse it) and return its run directory."""
    run_dir, done = base / "runs" / "small", base / "done"
    if done.is_file():
        return run_dir
    data = []
    for task in TASKS:
        make_synthetic(task, base / "data" / task, n=24, seed=0)
        folder = base / "data" / task
        data.append(
            {"task": task, "train": str(folder / "train.jsonl"), "val": str(folder / "val.jsonl"), "max_val": MAX_VAL}
        )
    cfg = {
        "name": "small",
        "output_dir": str(base / "runs"),
        "think": True,
        "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": data,
        "grpo": {"steps": STEPS, "prompts_per_step": PROMPTS, "group_size": GROUP, "max_new_tokens": 8},
        "eval": {"max_new_tokens": 8, "batch_size": 4},
    }
    path = base / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    result = CliRunner().invoke(app, ["train", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    done.touch()
    return run_dir
