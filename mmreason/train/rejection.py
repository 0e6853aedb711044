"""Rejection-sampling SFT (Metis-RISE's SFT after RL; rejection-sampled cold-start data): the `rejection_sft` stage,
and the keep rule it shares with `mmreason data distill` (`mmreason.train.distill`).

One step: draw `rejection_sft.prompts_per_step` prompts from the stage's data stream, sample `samples_per_prompt`
(N) completions of each with the current policy through GRPO's engine (`grpo.sample_rollout`: the backend
`grpo.rollout` names, single-turn, each prompt on its own RNG seeded by its stream position), score them with
GRPO's rewards (`grpo.score_mixture`: each task's configured reward weights; no reward schedule), keep those the
keep rule passes, and take one SFT update with the kept completions as the assistant targets (`sft.sft_batch`,
`sft.sft_update`: the SFT stage's cross-entropy on the assistant turn). A step that kept nothing makes no update.

The keep rule (`kept_rows`): a completion is kept when it was not truncated (it ended with EOS within
max_new_tokens: SFT on a cut completion would teach stopping mid-answer), is not blank, and its total reward is at
least the threshold (`reward_threshold`): `min_reward` when given, else its task's best total, the sum of the task's
positive reward weights (every reward at 1, the best score of the built-in rewards). With `shortest_only`, only the
shortest kept completion of each prompt stays (fewest tokens; the first sampled on a tie).

Which data the stage reads: `mmreason.data.entries.stage_entries` (the entries that feed GRPO, unless an entry
names rejection_sft in its `stages`). Several processes: prompts_per_step and batch_size are global; every rank
runs as many micro-batches as the rank that kept most (a rank with fewer runs a forward with no loss on one of its
own prompts), so DDP's gradient all-reduce always matches, and the loss is the token mean over every rank's kept
completions. Under DeepSpeed make batch_size at least prompts_per_step x N (one micro-batch: its engine steps on
every backward), as SFT keeps grad_accum at 1.

Logged every step: `rejection_sft/kept` (completions kept), `rejection_sft/kept_share` (of all sampled),
`rejection_sft/prompts_kept` (prompts with at least one kept), `rejection_sft/updated` (1 when an update was
applied), `loss` and `tokens` (of the kept targets; NaN and 0 without an update), reward means over all sampled
completions, completion lengths (all, and kept), truncation rate, lr, time and memory. The kept completions go to
the rollout store as stage `rejection_sft-<stage index>`. Resume is exact: the stream cursor, RNG, optimizer and
scheduler are in every checkpoint and sampling depends on the prompts' stream positions only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from mmreason.config import RejectionSFTConfig
from mmreason.data.sample import Sample
from mmreason.rollout.types import Rollout, SamplingParams
from mmreason.runs.run import Run, data_metrics, log_metrics, reward_weights, take_samples
from mmreason.train.dist import split_per_rank
from mmreason.train.grpo import ScoringPlan, gather_rows, sample_rollout, score_mixture, store_rows
from mmreason.train.sft import sft_batch, sft_update
from mmreason.train.step import (
    peak_memory_mb,
    periodic,
    stage_optimizer,
    step_bar,
    stop_if_diverging,
)

log = logging.getLogger(__name__)

KIND = "rejection_sft"
# totals are weighted sums of floats: a completion at the threshold must not fail it by rounding
TOLERANCE = 1e-9
# rejection sampling trains on single-turn completions: GRPO's engine, never its multi-turn tool trajectories
SINGLE_TURN = ScoringPlan("shared_prefix", "shared_prefix")


# ------------------------------------------------------------------------------------------------ the keep rule


def reward_threshold(weights: dict[str, float], min_reward: float | None) -> float:
    """The total reward a completion needs to be kept: `min_reward`, or (None) the best total of a task with these
    reward weights, the sum of its positive weights."""
    if min_reward is not None:
        return float(min_reward)
    return math.fsum(w for w in weights.values() if w > 0)


def kept_rows(
    texts: Sequence[str],
    total: Sequence[float],
    lengths: Sequence[int],
    truncated: Sequence[bool],
    thresholds: Sequence[float],
    group_size: int,
    shortest_only: bool,
) -> list[int]:
    """The rows kept (module doc) of P prompts x `group_size` completions (row b of prompt b // group_size), in row
    order; thresholds: one per prompt."""
    kept: list[int] = []
    for i, threshold in enumerate(thresholds):
        rows = [
            b for b in range(i * group_size, (i + 1) * group_size)
            if not truncated[b] and texts[b].strip() and total[b] >= threshold - TOLERANCE
        ]
        if shortest_only and rows:
            rows = [min(rows, key=lambda b: (lengths[b], b))]
        kept += rows
    return kept


# ------------------------------------------------------------------------------------------------ the stage


def sampling_params(run: Run, cfg: RejectionSFTConfig) -> SamplingParams:
    """N completions per prompt, each prompt on its own RNG from the run seed and its stream position (as GRPO)."""
    return SamplingParams(cfg.samples_per_prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=run.cfg.seed)


def run_rejection_sft(
    run: Run, cfg: RejectionSFTConfig, stage_index: int, start_step: int = 0, resume_state: Any = None
) -> tuple[Any, Any, int]:
    """Train `cfg.steps` steps of rejection-sampling SFT (continuing from `start_step` on resume), fewer when a
    held-out target (`cfg.stop_at`) is reached first; (optimizer, scheduler, the step it ended at)."""
    optimizer, scheduler = stage_optimizer(run, cfg, resume_state)
    # fail before the first step, not in it
    split_per_rank(cfg.prompts_per_step, run.world_size, f"{KIND}.prompts_per_step")
    split_per_rank(cfg.batch_size, run.world_size, f"{KIND}.batch_size")
    run.policy.model.train()
    params, stage = sampling_params(run, cfg), f"{KIND}-{stage_index}"
    bad_updates, done = 0, start_step
    bar = step_bar(run, KIND, stage_index, start_step, cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        metrics, rows = rejection_step(run, cfg, optimizer, params, stage, step + 1)
        if metrics[f"{KIND}/kept"]:  # a step without kept completions tried no update
            bad_updates = bad_updates + 1 if metrics["updates_skipped"] else 0
        stop_if_diverging(bad_updates, cfg.max_bad_updates, KIND, step + 1)
        with warnings.catch_warnings():  # torch warns when a step that kept nothing made no update before it
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            scheduler.step()  # the schedule follows the stage's steps, updated or not
        dt = time.perf_counter() - t0
        metrics.update(
            lr=scheduler.get_last_lr()[0],
            tokens_per_s=metrics["tokens"] / dt,
            step_time=dt,
            peak_memory_mb=peak_memory_mb(run.device),
            **data_metrics(run),
        )
        log_metrics(run, KIND, step + 1, metrics)
        if run.is_main and rows:
            run.store.append(rows, stage, step + 1)
        bar.set_postfix(kept=f"{metrics[f'{KIND}/kept_share']:.2f}", loss=f"{metrics['loss']:.3f}")
        done = step + 1
        if periodic(run, cfg, stage_index, KIND, done, optimizer, scheduler):
            break
    bar.close()
    return optimizer, scheduler, done


def rejection_step(
    run: Run, cfg: RejectionSFTConfig, optimizer: Any, params: SamplingParams, stage: str, step: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One step (module doc) -> (its metrics, the store rows of every rank's kept completions)."""
    n = cfg.samples_per_prompt
    samples = take_samples(run, split_per_rank(cfg.prompts_per_step, run.world_size, f"{KIND}.prompts_per_step"))
    with run.generation_context():  # the unwrapped policy samples (ZeRO-3: its shards gathered meanwhile)
        rollout = sample_rollout(run, run.cfg.grpo, samples, params, SINGLE_TURN)
    named, total = score_mixture(run, samples, rollout)
    lengths = rollout_lengths(rollout)
    truncated = [bool(t) for t in rollout.truncated.tolist()]
    thresholds = [reward_threshold(reward_weights(run, s.task), cfg.min_reward) for s in samples]
    kept = kept_rows(rollout.texts, total, lengths, truncated, thresholds, n, cfg.shortest_only)
    targets = [dataclasses.replace(samples[b // n], target=rollout.texts[b]) for b in kept]
    filler = dataclasses.replace(samples[0], target=rollout.texts[0])
    update = train_on_kept(run, cfg, optimizer, targets, filler)
    metrics = {**step_metrics(run, named, total, lengths, truncated, kept, n), **update}
    if not metrics[f"{KIND}/kept"] and run.is_main:
        log.info("%s step %d: no completion kept, no update", KIND, step)
    rows = store_rows(run, samples, rollout, named, total, torch.zeros(len(total)), stage, step)
    return metrics, gather_rows(run, [rows[b] for b in kept])


def train_on_kept(
    run: Run, cfg: RejectionSFTConfig, optimizer: Any, targets: list[Sample], filler: Sample
) -> dict[str, float]:
    """One SFT update on the kept samples (their targets the kept completions), in micro-batches of the rank's share
    of batch_size; none when no rank kept anything. `filler`: a sample of this rank's own, forwarded with no loss
    when it has fewer micro-batches than another rank (module doc)."""
    if not run.sum(len(targets)):
        return {"loss": float("nan"), "tokens": 0, "grad_norm": float("nan"), "updates_skipped": 0.0,
                f"{KIND}/updated": 0.0}
    size = split_per_rank(cfg.batch_size, run.world_size, f"{KIND}.batch_size")
    processor, device = run.policy.processor, run.device
    micro = [sft_batch(processor, targets[i:i + size], device) for i in range(0, len(targets), size)]
    for _ in range(int(max(run.gather([len(micro)]))) - len(micro)):
        batch = sft_batch(processor, [filler], device)
        batch["assistant_mask"].zero_()  # carries no loss: it only keeps this rank's backward count
        micro.append(batch)
    update = sft_update(run, micro, optimizer, cfg.max_grad_norm)
    return {**update, f"{KIND}/updated": 1.0 - update["updates_skipped"]}


def step_metrics(
    run: Run,
    named: dict[str, list],
    total: list[float],
    lengths: list[int],
    truncated: list[bool],
    kept: list[int],
    n: int,
) -> dict[str, float]:
    """What was sampled and kept over every rank (one gather: the ranks' tasks, hence reward names, may differ)."""
    local = {
        "drawn": len(total), "kept": len(kept), "prompts": len(total) // n,
        "prompts_kept": len({b // n for b in kept}),
        "total": math.fsum(total), "total_sq": math.fsum(t * t for t in total), "len": sum(lengths),
        "kept_len": sum(lengths[b] for b in kept), "truncated": sum(truncated),
        "rewards": {k: [v for v in scores if v is not None] for k, scores in named.items()},
    }
    parts = run.gather([local])
    add = {k: sum(p[k] for p in parts) for k in local if k != "rewards"}
    drawn, kept_count = max(add["drawn"], 1), add["kept"]
    mean = add["total"] / drawn
    metrics = {
        f"{KIND}/kept": float(kept_count),
        f"{KIND}/kept_share": kept_count / drawn,
        f"{KIND}/prompts_kept": float(add["prompts_kept"]),
        f"{KIND}/prompts_kept_share": add["prompts_kept"] / max(add["prompts"], 1),
        "reward_mean": mean,
        "reward_std": math.sqrt(max(add["total_sq"] / drawn - mean * mean, 0.0)),
        "completion_len_mean": add["len"] / drawn,
        "kept_len_mean": add["kept_len"] / kept_count if kept_count else float("nan"),
        "truncated_rate": add["truncated"] / drawn,
    }
    for name in sorted({k for p in parts for k in p["rewards"]}):
        values = [v for p in parts for v in p["rewards"].get(name, [])]
        metrics[f"reward/{name}_mean"] = math.fsum(values) / len(values) if values else float("nan")
    return metrics


def rollout_lengths(rollout: Rollout) -> list[int]:
    """Tokens of each completion (its EOS included)."""
    return [int(x) for x in rollout.completion_mask.sum(-1).tolist()]


def plan_line(cfg: RejectionSFTConfig) -> str:
    """The stage's settings in the plan `mmreason train --dry-run` prints."""
    threshold = "each task's best total" if cfg.min_reward is None else f"{cfg.min_reward:g}"
    return (f", N={cfg.samples_per_prompt}, prompts/step={cfg.prompts_per_step}, min_reward={threshold}"
            f", shortest_only={cfg.shortest_only}, batch={cfg.batch_size}")
