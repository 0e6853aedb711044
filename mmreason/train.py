"""`mmreason train`: run the config's stages in order (e.g. sft then grpo), with held-out evaluation before and
after each stage, atomic checkpoints, and `--resume` from the latest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mmreason.checkpoint import latest_checkpoint, load_training_state
from mmreason.config import RunConfig
from mmreason.eval import evaluate
from mmreason.grpo import run_grpo
from mmreason.policy import build_policy, restore_weights
from mmreason.run import Run, build_stream, checkpoint, load_val, prepare_run_dir, sample_context
from mmreason.sft import run_sft
from mmreason.store import RolloutStore

log = logging.getLogger(__name__)
console = Console(stderr=True)

STAGE_FNS = {"sft": run_sft, "grpo": run_grpo}


def plan(cfg: RunConfig) -> str:
    """Human-readable plan of a run (printed by --dry-run)."""
    lines = [
        f"run {cfg.name!r} -> {cfg.run_dir}",
        f"model: {cfg.model.name} ({cfg.model.dtype}, lora={cfg.model.lora.enabled})",
    ]
    for d in cfg.data:
        lines.append(f"task {d.task}: train={d.train} val={d.val} weight={d.weight}")
    for i, stage in enumerate(cfg.stages):
        sc = getattr(cfg, stage)
        extra = (
            f", G={sc.group_size}, prompts/step={sc.prompts_per_step}, beta={sc.beta}, loss_agg={sc.loss_agg}"
            if stage == "grpo"
            else f", batch={sc.batch_size}x{sc.grad_accum}"
        )
        lines.append(f"stage {i}: {stage} for {sc.steps} steps, lr={sc.lr}{extra}")
    return "\n".join(lines)


def _truncate_metrics(run_dir: Path, keep: int) -> None:
    """Drop metrics lines written after the checkpoint being resumed (they will be written again)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:keep]
        path.write_text("".join(lines))


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_shards_after(run_dir: Path, keep: list[str]) -> RolloutStore:
    """Remove rollout shards written after the resumed checkpoint, so no step is ever duplicated or stale."""
    for shard in (run_dir / "rollouts").glob("*.parquet"):
        if shard.name not in keep:
            shard.unlink()
    return RolloutStore(run_dir)


def setup(cfg: RunConfig, resume: bool) -> tuple[Run, dict[str, Any] | None, Path | None]:
    run_dir = prepare_run_dir(cfg)
    policy = build_policy(cfg.model, cache_dir=Path(cfg.output_dir) / ".cache", device=cfg.device, seed=cfg.seed)
    ctx = sample_context(cfg, policy.family, Path.cwd())
    # what inspection tools need to rebuild samples from the store's ids: the model family and the data files
    info = {"family": policy.family, "model": policy.source, "data": [d.__dict__ for d in cfg.data]}
    (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
    run = Run(cfg, run_dir, policy, ctx, build_stream(cfg, ctx), load_val(cfg, ctx), RolloutStore(run_dir))
    ckpt = latest_checkpoint(run_dir) if resume else None
    state = None
    if ckpt is not None:
        state = load_training_state(ckpt, None, None)
        restore_weights(policy, ckpt)
        run.stream.load_state_dict(state["stream"])
        _truncate_metrics(run_dir, state["history_len"])
        run.store = drop_shards_after(run_dir, state["store_shards"])
        console.print(f"resuming from {ckpt.name}")
    elif (run_dir / "metrics.jsonl").exists():
        if resume:
            console.print("no complete checkpoint found: starting from scratch")
        (run_dir / "metrics.jsonl").unlink()
    run.history = _history(run_dir)
    return run, state, ckpt


def train(cfg: RunConfig, resume: bool = False) -> Run:
    """Run every stage of `cfg`; returns the finished Run (its history holds all metrics)."""
    run, state, ckpt = setup(cfg, resume)
    if state is None and cfg.eval.at_start:
        evaluate(run, label="before")
    for index, stage in enumerate(cfg.stages):
        start, restore = 0, None
        if state is not None:
            if index < state["stage_index"] or (index == state["stage_index"] and state["stage_done"]):
                continue
            if index == state["stage_index"]:
                start = state["step"]
                restore = lambda opt, sch, c=ckpt: load_training_state(c, opt, sch)  # noqa: E731
        optimizer, scheduler = STAGE_FNS[stage](run, getattr(cfg, stage), index, start, restore)
        evaluate(run, label=f"after-s{index:02d}-{stage}")
        checkpoint(run, index, stage, getattr(cfg, stage).steps, optimizer, scheduler, done=True)
        state = None
    write_run_report(run.run_dir)
    return run


def write_run_report(run_dir: Path) -> Path | None:
    """The run's report.html; a failure is logged, never raised: the report must not cost a finished run."""
    try:
        from mmreason.report import write_report

        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - any report failure is only a warning
        log.warning("could not write the report of %s: %s: %s", run_dir, type(exc).__name__, exc)
        return None


def eval_table(history: list[dict[str, Any]]) -> Table:
    """Rows = evaluation points (before, after each stage), columns = task metrics."""
    rows = [h for h in history if str(h.get("stage", "")).startswith("eval-")]
    keys = sorted({k for h in rows for k in h if k.startswith("eval/") and "/reward/" not in k})
    table = Table(title="held-out metrics")
    table.add_column("when")
    for k in keys:
        table.add_column(k.removeprefix("eval/"), justify="right")
    for h in rows:
        table.add_row(h.get("label", h["stage"]), *[f"{h[k]:.3f}" if k in h else "" for k in keys])
    return table
