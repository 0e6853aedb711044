"""Cold-start SFT: train on the gold assistant turn of each sample, with prompt and media tokens masked out.

One loop: batch -> inputs with an assistant mask -> token-mean cross-entropy over assistant tokens (normalised over
the whole accumulation window) -> clip -> step, with periodic eval and checkpoints.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from mmreason.config import SFTConfig
from mmreason.data.sample import Sample
from mmreason.processors import build_inputs, collate
from mmreason.runs.run import Run, data_metrics, log_metrics, take_samples
from mmreason.train.dist import split_per_rank
from mmreason.train.rl import token_logprobs
from mmreason.train.step import (
    backward,
    optimizer_step,
    peak_memory_mb,
    periodic,
    stage_optimizer,
    step_bar,
    stop_if_diverging,
)

log = logging.getLogger(__name__)


def sft_batch(processor: Any, samples: list[Sample], device: torch.device) -> dict[str, torch.Tensor]:
    """Prompt + gold assistant turn for each sample, right-padded, with `assistant_mask` [B, L]."""
    rows = [
        build_inputs(processor, s.messages, images=s.images or None, video=s.video, assistant_text=s.target)
        for s in samples
    ]
    batch = collate(rows, pad_id=processor.tokenizer.pad_token_id, side="right")
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


def sft_token_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL of the assistant tokens and their count: (loss_sum [], n_tokens [])."""
    inputs = {k: v for k, v in batch.items() if k != "assistant_mask"}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    mask = batch["assistant_mask"][:, 1:].float()
    nll = -token_logprobs(logits, targets)
    return (nll * mask).sum(), mask.sum()


def _take_trainable(run: Run, n: int) -> list[Sample]:
    """n samples that have a gold target (tasks without one cannot be cold-started)."""
    samples = [s for s in take_samples(run, n) if s.target is not None]
    return samples or take_samples(run, n)


def run_sft(
    run: Run, cfg: SFTConfig, stage_index: int, start_step: int = 0, resume_state: Any = None
) -> tuple[Any, Any, int]:
    """Train `cfg.steps` optimizer steps (continuing from `start_step` on resume), fewer when a held-out target
    (`cfg.stop_at`) is reached first; (optimizer, scheduler, the step it ended at)."""
    optimizer, scheduler = stage_optimizer(run, cfg, resume_state)
    split_per_rank(cfg.batch_size, run.world_size, "sft.batch_size")  # fail before the first step, not in it
    run.policy.model.train()
    bad_updates, done = 0, start_step
    bar = step_bar(run, "sft", stage_index, start_step, cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        metrics = sft_step(run, cfg, optimizer)
        bad_updates = bad_updates + 1 if metrics["updates_skipped"] else 0
        stop_if_diverging(bad_updates, cfg.max_bad_updates, "sft", step + 1)
        scheduler.step()
        dt = time.perf_counter() - t0
        metrics.update(
            lr=scheduler.get_last_lr()[0],
            tokens_per_s=metrics["tokens"] / dt,
            step_time=dt,
            peak_memory_mb=peak_memory_mb(run.device),
            **data_metrics(run),
        )
        log_metrics(run, "sft", step + 1, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        done = step + 1
        if periodic(run, cfg, stage_index, "sft", done, optimizer, scheduler):
            break
    bar.close()
    return optimizer, scheduler, done


def sft_step(run: Run, cfg: SFTConfig, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """One optimizer step over `grad_accum` micro-batches; a non-finite loss or gradient skips the update.

    batch_size is global: with R processes each takes batch_size / R samples per micro-batch, and the loss is
    divided by the GLOBAL assistant-token count times R (DDP averages gradients over ranks), so the update equals
    one process's on the whole batch. Under DeepSpeed keep grad_accum at 1 (its engine steps on every backward).
    """
    local = split_per_rank(cfg.batch_size, run.world_size, "sft.batch_size")
    micro = [sft_batch(run.policy.processor, _take_trainable(run, local), run.device) for _ in range(cfg.grad_accum)]
    return sft_update(run, micro, optimizer, cfg.max_grad_norm)


def sft_update(
    run: Run, micro: list[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer, max_grad_norm: float
) -> dict[str, float]:
    """One optimizer update on `micro` (`sft_batch` outputs; every rank passes as many): the token-mean
    cross-entropy of their assistant tokens over all ranks and micro-batches; a non-finite loss or gradient skips
    it. Also the update of rejection-sampling SFT (`mmreason.train.rejection`), whose targets are kept completions.
    Returns {"loss", "tokens", "grad_norm", "updates_skipped"}."""
    n_tokens = max(run.sum(sum(b["assistant_mask"][:, 1:].sum() for b in micro)), 1.0)
    total, finite = 0.0, True
    for batch in micro:
        loss_sum, _ = sft_token_loss(run.model, batch)
        # every micro-batch's backward (or the skip of a non-finite one) is decided on all ranks together
        finite = backward(run, loss_sum / n_tokens * run.world_size) and finite
        total += float(loss_sum.detach())
    step = optimizer_step(run, optimizer, finite, max_grad_norm)
    return {"loss": run.sum(total) / n_tokens, "tokens": int(n_tokens), **step}
