"""`mmreason train`: run the config's stages in order (e.g. sft then grpo), with held-out evaluation before and
after each stage, atomic checkpoints, and `--resume` from the latest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from mmreason.config import RunConfig
from mmreason.models.policy import build_policy, describe_trainable, ensure_tiny, parameter_counts
from mmreason.runs.folder import left_behind
from mmreason.runs.lock import RunFolderError, RunLocked, check_run_name, hold_run_folder, release_run_folder
from mmreason.runs.run import (
    Run,
    build_streams,
    load_run_files,
    load_val,
    open_store,
    prepare_run_dir,
    read_history,
    require_clean_data,
    sample_context,
    seed_everything,
    user_files_info,
)
from mmreason.runs.trackers import Trackers, check_trackers, close_run_log, open_run_log
from mmreason.train.checkpoint import (
    checkpoint,
    clear_previous_run,
    find_resume_point,
    restore_training_state,
    resume_from,
)
from mmreason.train.dist import Dist, mixed_precision_for
from mmreason.train.dryrun import check_sources
from mmreason.train.early_stop import target_text
from mmreason.train.evaluate import evaluate
from mmreason.train.grpo import run_grpo
from mmreason.train.rejection import plan_line, run_rejection_sft
from mmreason.train.sft import run_sft

log = logging.getLogger(__name__)
console = Console(stderr=True)

STAGE_FNS = {"sft": run_sft, "grpo": run_grpo, "rejection_sft": run_rejection_sft}


def plan(cfg: RunConfig) -> str:
    """Human-readable plan of a run (printed by --dry-run)."""
    lines = [
        f"run {cfg.name!r} -> {cfg.run_dir}",
        f"model: {cfg.model.name} ({cfg.model.dtype}, lora={cfg.model.lora.enabled})",
    ]
    for d in cfg.data:
        extra = "".join(f" {k}={getattr(d, k)}" for k in ("format", "columns", "media_dir", "stages")
                        if getattr(d, k))
        lines.append(f"task {d.task}: train={d.train} val={d.val} weight={d.weight}{extra}")
    for i, stage in enumerate(cfg.stages):
        sc = getattr(cfg, stage)
        extra = (
            f", G={sc.group_size}, prompts/step={sc.prompts_per_step}, beta={sc.beta}, loss_agg={sc.loss_agg}"
            f", rollout={sc.rollout}"
            if stage == "grpo"
            else f", batch={sc.batch_size}x{sc.grad_accum}"
            if stage == "sft"
            else plan_line(sc)
        )
        until = f" (or until {target_text(sc.stop_at)})" if sc.stop_at.metric else ""
        lines.append(f"stage {i}: {stage} for {sc.steps} steps{until}, lr={sc.lr}{extra}")
    return "\n".join(lines)



def make_dist(cfg: RunConfig) -> Dist:
    """The accelerate wrapper (one process too); mixed precision follows the model dtype on GPUs."""
    return Dist(cfg.device, mixed_precision_for(cfg.model.dtype, cfg.device))


def claim_run_folder(cfg: RunConfig, dist: Dist, resume: bool, overwrite: bool) -> None:
    """Rank 0 holds the run folder for this launch (`mmreason.runs.lock`) and checks that a fresh start into a folder
    holding an earlier run was asked for (--overwrite); on a refusal every rank raises the same one-line error."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: continue the run, or replace it")
    verdict = None
    if dist.is_main:
        try:
            hold_run_folder(cfg.run_dir)
            left = left_behind(cfg.run_dir) if not (resume or overwrite) else None
            if left:
                release_run_folder(cfg.run_dir)
                raise RunFolderError(
                    f"{cfg.run_dir} already holds a run ({left.describe()}): pass --resume to continue it or "
                    "--overwrite to replace it (its files are then deleted)"
                )
        except RunFolderError as exc:
            verdict = (isinstance(exc, RunLocked), str(exc))
    verdict = dist.gather_objects([verdict] if dist.is_main else [])[0]
    if verdict is not None:
        locked, message = verdict
        raise (RunLocked if locked else RunFolderError)(message)


def setup(
    cfg: RunConfig,
    resume: bool,
    dist: Dist | None = None,
    task_files: Sequence[str | Path] = (),
    overwrite: bool = False,
) -> tuple[Run, dict[str, Any] | None, Path | None]:
    """The run of `cfg`, loaded and resumed (or started afresh), with its resumed state and checkpoint. Rank 0
    holds the run folder from here until `release_run_folder` (which `train` calls) or the process ends."""
    check_run_name(cfg.name)  # before accelerate starts: a name leaving output_dir is one line
    check_sources(cfg)  # a missing data file or unknown task fails in a second, before the model is built
    dist = dist or make_dist(cfg)
    claim_run_folder(cfg, dist, resume, overwrite)
    seed_everything(cfg.seed)  # a resumed run then restores the RNG states of its checkpoint
    device = str(dist.device) if dist.world_size > 1 else cfg.device
    cache = Path(cfg.output_dir) / ".cache"
    if cfg.model.name == "tiny":  # rank 0 builds the tiny model's cache folder (alone: no ZeRO-3 partitioning)
        with dist.main_first(), dist.without_zero_init():
            ensure_tiny(cfg.model, cache, cfg.seed)
    # every rank loads at once: under ZeRO-3 from_pretrained partitions the weights as it loads (collectives)
    policy = build_policy(cfg.model, cache_dir=cache, device=device, seed=cfg.seed)
    ctx = sample_context(cfg, policy.family.name, Path.cwd(), policy)
    if cfg.data_errors == "fatal":
        require_clean_data(cfg, ctx)  # every problem listed before anything is written or trained
    run_dir = cfg.run_dir
    if dist.is_main:
        prepare_run_dir(cfg)
        open_run_log(run_dir, append=resume)  # train.log: from here on, what the console shows
        console.print(f"trainable parameters: {describe_trainable(parameter_counts(policy.model, policy.family))}")
        # what inspection tools need to rebuild samples from the store's ids: the model family and the data files;
        # the task / reward files, so `report`, `eval` and --resume load them again
        info = {"family": policy.family.name, "model": policy.source, "data": [d.__dict__ for d in cfg.data],
                **user_files_info(run_dir, cfg, task_files)}
        (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
    dist.barrier()
    streams = build_streams(cfg, ctx, dist.rank, dist.world_size)
    run = Run(cfg, run_dir, policy, ctx, streams[cfg.stages[0]], load_val(cfg, ctx), open_store(cfg, run_dir),
              dist=dist, streams=streams)
    # the newest usable checkpoint of this run (rank 0 checks the files; all ranks load and agree)
    found = find_resume_point(run) if resume else None
    ckpt, state = found if found is not None else (None, None)
    if ckpt is not None:
        state = resume_from(run, ckpt, state)
    else:
        if resume and dist.is_main:
            console.print("no complete checkpoint of this run found: starting from scratch")
        if dist.is_main:
            clear_previous_run(run)  # records the fresh start before it deletes anything
    dist.barrier()
    run.history = read_history(run_dir)
    if dist.is_main:  # after a resume's history: the trackers' step axis goes on from it
        run.trackers = Trackers.start(cfg, run_dir, run.history)
    return run, state, ckpt


def train(
    cfg: RunConfig, resume: bool = False, task_files: Sequence[str | Path] = (), overwrite: bool = False
) -> Run:
    """Run every stage of `cfg`; returns the finished Run (its history holds all metrics). A run folder holding an
    earlier run needs `resume` (continue it) or `overwrite` (replace it).

    task_files: the `--task-file`s already loaded, recorded in run.json; a resumed run given none loads those it
    recorded itself.
    """
    check_trackers(cfg.report_to)  # a tracker named but not installed: one clear line before anything loads
    check_run_name(cfg.name)
    if resume and not task_files:
        task_files = load_run_files(cfg.run_dir)
    run, failure = None, None
    try:
        run, state, ckpt = setup(cfg, resume, task_files=task_files, overwrite=overwrite)
        run_stages(run, state, ckpt)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if run is not None and run.trackers is not None:
            run.trackers.close()
        close_run_log(cfg.run_dir, failure)
        release_run_folder(cfg.run_dir)
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
        run.use_stage(stage)
        # the step the stage ended at: its `steps`, or fewer where a held-out target (stop_at) was reached
        optimizer, scheduler, ended = STAGE_FNS[stage](run, getattr(cfg, stage), index, start, restore)
        evaluate(run, label=f"after-s{index:02d}-{stage}")
        checkpoint(run, index, stage, ended, optimizer, scheduler, done=True)
        state = None
    if run.is_main:
        write_run_report(run.run_dir)
    run.barrier()


def write_run_report(run_dir: Path) -> Path | None:
    """The run's report.html; a failure is logged, never raised: the report must not cost a finished run."""
    try:
        from mmreason.runs.report import write_report

        return write_report(run_dir)
    except Exception as exc:  # any report failure is only a warning
        log.warning("could not write the report of %s: %s: %s", run_dir, type(exc).__name__, exc)
        return None
