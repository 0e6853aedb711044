"""`mmreason train`: run the config's stages in order (e.g. sft then grpo), with held-out evaluation before and
after each stage, atomic checkpoints, and `--resume` from the latest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from mmreason.config import RunConfig
from mmreason.models.policy import build_policy, ensure_tiny, restore_weights
from mmreason.runs.run import (
    Run,
    build_stream,
    checkpoint,
    load_val,
    prepare_run_dir,
    require_clean_data,
    restore_training_state,
    sample_context,
    seed_everything,
)
from mmreason.runs.store import RolloutStore
from mmreason.train.checkpoint import complete_checkpoints, delete_checkpoints, latest_checkpoint, load_training_state
from mmreason.train.dist import ENGINE_DIR, Dist, mixed_precision_for
from mmreason.train.evaluate import evaluate
from mmreason.train.grpo import run_grpo
from mmreason.train.sft import run_sft

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
            f", rollout={sc.rollout}"
            if stage == "grpo"
            else f", batch={sc.batch_size}x{sc.grad_accum}"
        )
        lines.append(f"stage {i}: {stage} for {sc.steps} steps, lr={sc.lr}{extra}")
    return "\n".join(lines)


def _truncate_metrics(run_dir: Path, keep: int) -> None:
    """Drop metrics lines written after the checkpoint being resumed (they will be written again).

    The shorter file replaces the old one by rename: a crash here must not cost the lines the checkpoint counts.
    """
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)[:keep]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, path)


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_shards_after(run_dir: Path, keep: list[str]) -> RolloutStore:
    """Remove rollout shards written after the resumed checkpoint, so no step is ever duplicated or stale, and the
    temp files of shard or metrics writes a crash cut short."""
    folder = run_dir / "rollouts"
    for shard in folder.glob("*.parquet"):
        if shard.name not in keep:
            shard.unlink()
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for tmp in run_dir.glob(".metrics.jsonl.*.tmp"):
        tmp.unlink(missing_ok=True)
    return RolloutStore(run_dir)


def clear_previous_run(run_dir: Path) -> RolloutStore:
    """A run started from scratch replaces what an earlier run of the same name left: its metrics, rollout shards
    and checkpoints (an old checkpoint kept would outrank the new run's own on a later --resume)."""
    latest_checkpoint(run_dir)  # tidies the transient folders a killed writer left first
    old = complete_checkpoints(run_dir)
    if old or (run_dir / "metrics.jsonl").exists():
        console.print(
            f"starting {run_dir} from scratch: replacing the metrics, rollouts and {len(old)} checkpoint(s) of the "
            "run there (pass --resume to continue it instead)"
        )
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    delete_checkpoints(run_dir)
    return drop_shards_after(run_dir, [])


def resume_from(run: Run, ckpt: Path) -> dict[str, Any]:
    """Weights, RNG, data cursor and counters of `ckpt`; metrics lines and shards written after it are dropped
    (by rank 0; each rank restores its own data cursor).

    Under DeepSpeed the weights come from the checkpoint's engine state once the next stage has prepared its engine
    (`prepare_training`): under ZeRO-3 the live weights are partitioned, so that is the only way into them, and
    mid-stage the optimizer shards come along."""
    state = load_training_state(ckpt, None, None)
    if run.dist is not None and run.dist.deepspeed and (ckpt / ENGINE_DIR).is_dir():
        run.engine_resume = (ckpt, not state["stage_done"])
    else:
        restore_weights(run.policy, ckpt)
    streams = state.get("streams") or [state["stream"]]
    run.stream.load_state_dict(streams[run.rank] if len(streams) == run.world_size else state["stream"])
    run.reward_errors.load_state_dict(state.get("reward_errors", []))
    if run.is_main:
        _truncate_metrics(run.run_dir, state["history_len"])
        run.store = drop_shards_after(run.run_dir, state["store_shards"])
        console.print(f"resuming from {ckpt.name}")
    return state


def make_dist(cfg: RunConfig) -> Dist:
    """The accelerate wrapper (one process too); mixed precision follows the model dtype on GPUs."""
    return Dist(cfg.device, mixed_precision_for(cfg.model.dtype, cfg.device))


def setup(cfg: RunConfig, resume: bool, dist: Dist | None = None) -> tuple[Run, dict[str, Any] | None, Path | None]:
    dist = dist or make_dist(cfg)
    seed_everything(cfg.seed)  # a resumed run then restores the RNG states of its checkpoint
    device = str(dist.device) if dist.world_size > 1 else cfg.device
    cache = Path(cfg.output_dir) / ".cache"
    if cfg.model.name == "tiny":  # rank 0 builds the tiny model's cache folder (alone: no ZeRO-3 partitioning)
        with dist.main_first(), dist.without_zero_init():
            ensure_tiny(cfg.model, cache, cfg.seed)
    # every rank loads at once: under ZeRO-3 from_pretrained partitions the weights as it loads (collectives)
    policy = build_policy(cfg.model, cache_dir=cache, device=device, seed=cfg.seed)
    ctx = sample_context(cfg, policy.family, Path.cwd())
    if cfg.data_errors == "fatal":
        require_clean_data(cfg, ctx)  # every problem listed before anything is written or trained
    run_dir = cfg.run_dir
    if dist.is_main:
        prepare_run_dir(cfg)
        # what inspection tools need to rebuild samples from the store's ids: the model family and the data files
        info = {"family": policy.family, "model": policy.source, "data": [d.__dict__ for d in cfg.data]}
        (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
    dist.barrier()
    stream = build_stream(cfg, ctx, dist.rank, dist.world_size)
    run = Run(cfg, run_dir, policy, ctx, stream, load_val(cfg, ctx), RolloutStore(run_dir), dist=dist)
    # rank 0 alone tidies what a killed writer left (complete checkpoints are never touched, so all ranks agree)
    ckpt = latest_checkpoint(run_dir, cleanup=dist.is_main) if resume else None
    state = None
    if ckpt is not None:
        state = resume_from(run, ckpt)
    else:
        if resume and dist.is_main:
            console.print("no complete checkpoint found: starting from scratch")
        if dist.is_main:
            run.store = clear_previous_run(run_dir)
    dist.barrier()
    run.history = _history(run_dir)
    return run, state, ckpt


def train(cfg: RunConfig, resume: bool = False) -> Run:
    """Run every stage of `cfg`; returns the finished Run (its history holds all metrics)."""
    run, state, ckpt = setup(cfg, resume)
    run_stages(run, state, ckpt)
    run.train_model = None  # the engine (and its optimizer) go before the process group they use
    if run.dist is not None:
        run.dist.close()
    return run


def run_stages(run: Run, state: dict[str, Any] | None, ckpt: Path | None) -> None:
    """The stages of the run's config in order, from the resumed point when `state` is given, then its report."""
    cfg = run.cfg
    if state is None and cfg.eval.at_start:
        evaluate(run, label="before")
    run.barrier()
    for index, stage in enumerate(cfg.stages):
        start, restore = 0, None
        if state is not None:
            if index < state["stage_index"] or (index == state["stage_index"] and state["stage_done"]):
                continue
            if index == state["stage_index"]:
                start = state["step"]
                restore = lambda opt, sch, c=ckpt: restore_training_state(run, c, opt, sch)  # noqa: E731
        optimizer, scheduler = STAGE_FNS[stage](run, getattr(cfg, stage), index, start, restore)
        evaluate(run, label=f"after-s{index:02d}-{stage}")
        checkpoint(run, index, stage, getattr(cfg, stage).steps, optimizer, scheduler, done=True)
        state = None
    if run.is_main:
        write_run_report(run.run_dir)
    dump_rank_weights(run)
    run.barrier()


DUMP_ENV = "MMREASON_DUMP_WEIGHTS"


def dump_rank_weights(run: Run) -> Path | None:
    """Debug option: with MMREASON_DUMP_WEIGHTS=<folder> set, every rank saves its final weights to
    <folder>/rank<r>.pt, so a test can check that data-parallel replicas stayed identical. Under ZeRO-3 / FSDP the
    weights are gathered (collective) and saved where the gather delivers them (rank 0 under ZeRO-3)."""
    folder = os.environ.get(DUMP_ENV)
    if not folder:
        return None
    gathered = run.dist.model_state(run.model) if run.dist is not None else None
    if gathered is None and run.shards_params:
        return None  # the gathered weights went to another rank
    state = gathered if gathered is not None else run.policy.model.state_dict()
    path = Path(folder) / f"rank{run.rank}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state.items()}, path)
    return path


def write_run_report(run_dir: Path) -> Path | None:
    """The run's report.html; a failure is logged, never raised: the report must not cost a finished run."""
    try:
        from mmreason.runs.report import write_report

        return write_report(run_dir)
    except Exception as exc:  # any report failure is only a warning
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
