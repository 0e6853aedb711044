"""What every training stage does the same way: build its optimizer and scheduler, wrap them for this launch, take
an optimizer step with one rule for non-finite losses, gradients and weights, stop after too many skipped updates,
show a progress bar, and evaluate / checkpoint every so many steps (ending the stage at a held-out target).

Weights are checked finite after every update (one fused norm per trainable tensor, one sync). An update that
leaves a non-finite weight is undone from a copy of the trainable parameters taken just before it, and counts as a
skipped update. The copy is kept when the trainable parameters take at most `ROLLBACK_MAX_BYTES` (LoRA adapters, a
small model) and the optimizer states are not sharded; otherwise such an update stops the run, before any checkpoint
could hold it.
"""

from __future__ import annotations

import logging
import math
import weakref
from typing import Any

import torch

from mmreason.runs.run import Run
from mmreason.train.checkpoint import checkpoint
from mmreason.train.dist import ENGINE_DIR
from mmreason.train.verify import tensors_finite

log = logging.getLogger(__name__)

ROLLBACK_MAX_BYTES = 1 << 30
# optimizer -> its copy of the trainable parameters (None: too large, or sharded states: no undo)
_COPIES: weakref.WeakKeyDictionary[Any, list[torch.Tensor] | None] = weakref.WeakKeyDictionary()


class TrainingStopped(RuntimeError):
    """Training cannot usefully go on (e.g. too many non-finite updates in a row); the message says why."""


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_ratio: float, total: int) -> Any:
    from transformers import get_scheduler

    warmup = int(math.ceil(warmup_ratio * total))
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=max(total, 1))


def stage_optimizer(run: Run, cfg: Any, resume_state: Any = None) -> tuple[Any, Any]:
    """A training stage's (optimizer, lr scheduler) from its config section (lr, weight_decay, scheduler,
    warmup_ratio, steps, max_grad_norm): AdamW over the trainable parameters, restored by `resume_state` on a
    resume, then prepared for this launch (`prepare_training`)."""
    optimizer = make_optimizer(run.policy.trainable_parameters(), cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.scheduler, cfg.warmup_ratio, cfg.steps)
    if resume_state is not None:
        resume_state(optimizer, scheduler)
    return prepare_training(run, optimizer, cfg.max_grad_norm), scheduler


def prepare_training(run: Run, optimizer: Any, max_grad_norm: float | None = None) -> Any:
    """Wrap the policy and its optimizer for this launch (DDP / DeepSpeed / FSDP through accelerate; unchanged in
    one process): sets `run.train_model` (the model the loss goes through) and returns the optimizer to step.
    A DeepSpeed resume (`Run.engine_resume`) loads the checkpoint's engine state into the new engine.

    The LR scheduler is not prepared: accelerate would step it once per process and a step, not once a step.
    """
    plain = run.dist is None or (
        run.world_size == 1 and not run.dist.shards_state and run.dist.acc.mixed_precision == "no"
    )
    if plain:
        run.train_model = None
        return optimizer
    if run.train_model is not None and run.dist.deepspeed:  # a previous stage's engine
        run.dist.release(run.train_model)
    run.train_model, optimizer = run.dist.prepare(run.policy.model, optimizer, max_grad_norm=max_grad_norm)
    if run.engine_resume is not None:  # DeepSpeed resume: weights (+ optimizer shards) go into the engine itself
        ckpt, with_optimizer = run.engine_resume
        run.engine_resume = None  # once: a later stage starts from its own fresh optimizer
        run.dist.load_engine_state(run.train_model, ckpt / ENGINE_DIR, with_optimizer)
    return optimizer


def backward(run: Run, loss: torch.Tensor) -> bool:
    """Backpropagate `loss` unless it is non-finite on some rank (decided on all ranks together: one rank skipping
    a backward the others run would hang them; under DeepSpeed the engine also steps inside its backward).
    Returns whether the backward ran."""
    if run.sum(float(not torch.isfinite(loss.detach()).all())) > 0:
        log.warning("non-finite loss (%s): backward and update skipped", float(loss.detach().sum()))
        return False
    if run.dist is not None:
        run.dist.backward(loss)
    else:
        loss.backward()
    return True


def optimizer_step(run: Run, optimizer: Any, losses_finite: bool, max_grad_norm: float) -> dict[str, float]:
    """Clip the accumulated gradients and step, unless a loss was non-finite (`losses_finite` False: see `backward`)
    or the gradient norm is; either way the gradients are cleared.

    Returns {"grad_norm", "updates_skipped" (0 or 1)}. DeepSpeed may report no norm, and sharded optimizer states
    (ZeRO / FSDP) check their own overflow, so only a reported non-finite norm of unsharded states skips. An update
    that leaves non-finite weights is undone, or stops the run where it cannot be (see the module doc).
    """
    norm = float("nan")
    applied = losses_finite
    params = run.policy.trainable_parameters()
    if losses_finite:
        if run.dist is not None:
            raw = run.dist.clip_grad_norm(params, max_grad_norm)
        else:
            raw = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        norm = float("nan") if raw is None else float(raw)
        sharded = run.dist is not None and run.dist.shards_state
        applied = math.isfinite(norm) or raw is None or sharded
        if not applied:
            log.warning("non-finite gradient norm: update skipped")
    if applied:
        copy = _copy_before_update(run, optimizer, params)
        optimizer.step()
        if run.sum(float(not tensors_finite(params))) > 0:
            _undo_update(optimizer, params, copy)
            applied = False
    optimizer.zero_grad(set_to_none=True)
    return {"grad_norm": norm, "updates_skipped": float(not applied)}


def _copy_before_update(run: Run, optimizer: Any, params: list[torch.nn.Parameter]) -> list[torch.Tensor] | None:
    """Copy the trainable parameters into buffers kept per optimizer (allocated at its first update), or None
    where no undo is possible or affordable (see the module doc)."""
    if optimizer not in _COPIES:
        size = sum(p.numel() * p.element_size() for p in params)
        sharded = run.dist is not None and run.dist.shards_state
        _COPIES[optimizer] = None if sharded or size > ROLLBACK_MAX_BYTES else [torch.empty_like(p) for p in params]
    copy = _COPIES[optimizer]
    if copy is not None:
        with torch.no_grad():
            torch._foreach_copy_(copy, [p.detach() for p in params])
    return copy


def _undo_update(optimizer: Any, params: list[torch.nn.Parameter], copy: list[torch.Tensor] | None) -> None:
    """Put the weights from before a non-finite update back (and restart the optimizer states it made non-finite),
    or stop the run when there is no copy."""
    lr = (getattr(optimizer, "param_groups", None) or [{}])[0].get("lr", "?")
    if copy is None:
        raise TrainingStopped(
            f"an update at lr={lr} left non-finite weights, and none of the trainable parameters are copied to undo "
            "it (sharded optimizer states, or more than ROLLBACK_MAX_BYTES of them); nothing was checkpointed after "
            "it. The last checkpoint is intact; lower the learning rate, then continue with --resume."
        )
    with torch.no_grad():
        torch._foreach_copy_([p.detach() for p in params], copy)
    restarted = _restart_non_finite_states(optimizer)
    log.warning(
        "non-finite weights after the update (lr=%s): update undone%s", lr,
        f", the optimizer states of {restarted} parameter(s) restarted" if restarted else "",
    )


def _restart_non_finite_states(optimizer: Any) -> int:
    """Drop the per-parameter optimizer states holding a non-finite value (AdamW rebuilds them at the next step)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
    state = getattr(inner, "state", {})
    bad = [
        p for p, st in state.items()
        if not tensors_finite(v for v in st.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    ]
    for p in bad:
        del state[p]
    return len(bad)


def stop_if_diverging(bad_updates: int, limit: int, stage: str, step: int) -> None:
    """Raise TrainingStopped once `limit` updates in a row were skipped for a non-finite loss, gradient or
    resulting weights."""
    if bad_updates >= limit:
        raise TrainingStopped(
            f"{stage} stopped at step {step}: {bad_updates} updates in a row were skipped for a non-finite loss, "
            f"gradient or weights ({stage}.max_bad_updates={limit}). The last checkpoint is intact; lower {stage}.lr "
            "or check the data and rewards, then continue with --resume."
        )


def step_bar(run: Run, stage: str, stage_index: int, start_step: int, steps: int) -> Any:
    """The stage's progress bar over steps start_step..steps (shown by rank 0 only)."""
    from tqdm.auto import tqdm

    return tqdm(
        range(start_step, steps),
        desc=f"{stage} [{stage_index}]",
        initial=start_step,
        total=steps,
        disable=not run.is_main,
    )


def periodic(run: Run, cfg: Any, stage_index: int, stage: str, step: int, optimizer: Any, scheduler: Any) -> bool:
    """Held-out evaluation every `cfg.eval_every` and a checkpoint every `cfg.save_every` steps (the stage's last
    step is evaluated and checkpointed by the stage loop itself). True when the stage ends here: this evaluation
    reached its `stop_at` target (`mmreason.train.early_stop`); the stage's end then evaluates and checkpoints."""
    from mmreason.train.early_stop import should_stop
    from mmreason.train.evaluate import evaluate

    if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
        results = evaluate(run, label=f"s{stage_index:02d}-{stage}", step=step)
        if should_stop(run, cfg.stop_at, results, stage, step):
            return True
    if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
        checkpoint(run, stage_index, stage, step, optimizer, scheduler, done=False)
    return False


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # resource is POSIX-only
        return float("nan")
