"""Held-out evaluation: greedy generations on each task's validation samples, the task's metrics, and the
generations written to the rollout store (stage `eval-<label>`) so reports can show them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mmreason.data.sample import Sample
from mmreason.registry import get_task
from mmreason.rollout.engine import encode_prompts, generate
from mmreason.rollout.scoring import score_completions
from mmreason.rollout.types import SamplingParams
from mmreason.runs.run import Run, log_metrics
from mmreason.runs.store import completion_row

log = logging.getLogger(__name__)


def generate_greedy(policy: Any, samples: list[Sample], max_new_tokens: int, batch_size: int) -> list[str]:
    texts: list[str] = []
    for i in tqdm(range(0, len(samples), batch_size), desc="eval", leave=False):
        chunk = samples[i : i + batch_size]
        prompts = encode_prompts(policy.processor, chunk, policy.device)
        greedy = SamplingParams(1, max_new_tokens, greedy=True)
        texts += generate(policy.model, policy.processor, prompts, greedy).texts
    return texts


def eval_rows(
    run_name: str, stage: str, samples: list[Sample], texts: list[str], named: dict, total: list
) -> list[dict]:
    """Store rows of greedy generations: one per sample, its own group, no advantage and no token counts (the
    completion's length is its character count)."""
    return [
        completion_row(
            s,
            text,
            run=run_name,
            stage=stage,
            step=0,
            group_id=i,
            completion_index=0,
            reward_total=total[i],
            rewards={n: v[i] for n, v in named.items()},
            advantage=0.0,
            prompt_len=0,
            completion_len=len(text),
            truncated=False,
        )
        for i, (s, text) in enumerate(zip(samples, texts, strict=True))
    ]


@torch.no_grad()
def evaluate_samples(
    policy: Any,
    task_name: str,
    samples: list[Sample],
    weights: dict[str, float],
    max_new_tokens: int,
    batch_size: int,
    errors: Any,
) -> tuple[dict[str, float], list[str], dict, list]:
    """Task metrics (plus each reward's mean) of greedy generations on `samples`."""
    task = get_task(task_name)
    texts = generate_greedy(policy, samples, max_new_tokens, batch_size)
    metrics = dict(task.metrics(texts, samples))
    named, total = score_completions(weights, samples, texts, 1, errors)
    for name, scores in named.items():
        vals = [v for v in scores if v is not None]
        metrics[f"reward/{name}"] = sum(vals) / len(vals) if vals else float("nan")
    metrics["reward_total"] = sum(total) / max(len(total), 1)
    return metrics, texts, named, total


def evaluate(run: Run, label: str) -> dict[str, dict[str, float]]:
    """Evaluate every task with a held-out split; log `eval/<task>/<metric>` and store the generations.

    With several processes rank 0 alone evaluates (greedy generation on the unwrapped model needs no collective);
    the others log an empty row so every rank's history keeps the same length, then all meet at a barrier.
    """
    from mmreason.runs.run import reward_weights

    results: dict[str, dict[str, float]] = {}
    stage = f"eval-{label}"
    if not run.is_main and not run.shards_params:
        log_metrics(run, stage, 0, {"label": label})
        run.barrier()
        return results
    rows: list[dict] = []
    for task_name, samples in run.val.items():
        if not samples:
            continue
        with run.generation_context():  # ZeRO-3 / FSDP: every rank evaluates, rank 0 alone writes
            metrics, texts, named, total = evaluate_samples(
                run.policy,
                task_name,
                samples,
                reward_weights(run, task_name),
                run.cfg.eval.max_new_tokens,
                run.cfg.eval.batch_size,
                run.reward_errors,
            )
        results[task_name] = metrics
        rows += eval_rows(run.cfg.name, stage, samples, texts, named, total)
    if rows and run.is_main:
        run.store.append(rows, stage, 0)
    flat = {f"eval/{t}/{k}": v for t, m in results.items() for k, v in m.items()}
    log_metrics(run, stage, 0, {"label": label, **flat})
    run.barrier()
    return results


def eval_checkpoint(
    target: Path, task_name: str, data: str | Path | dict, limit: int, max_new_tokens: int, batch_size: int,
    think: bool = True,
) -> tuple[dict[str, float], Path]:
    """`mmreason eval`: metrics of a run's latest checkpoint (or a checkpoint folder) on held-out data.

    data: a data reference, or a data entry's fields (`val`, `val_split`, `format`, `columns`, `media_dir`).

    Generations go to the run directory's rollout store under stage `eval-<checkpoint>-<data stem>`.
    """
    from mmreason.config import ModelConfig
    from mmreason.data.entries import entry_context, read_entry
    from mmreason.data.records import build_samples
    from mmreason.data.sample import SampleContext
    from mmreason.models.policy import load_checkpoint_policy
    from mmreason.rollout.scoring import RewardErrors
    from mmreason.runs.store import RolloutStore
    from mmreason.train.checkpoint import latest_checkpoint

    target = Path(target)
    ckpt = latest_checkpoint(target) if (target / "checkpoints").is_dir() else target
    if ckpt is None or not (ckpt / "config.json").is_file() and not (ckpt / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{target} is neither a run directory with a checkpoint nor a checkpoint folder")
    run_dir = target if ckpt != target else ckpt.parent.parent
    policy = load_checkpoint_policy(ckpt, ModelConfig())
    task = get_task(task_name)
    ctx = SampleContext(think=think, model_family=policy.family.name)
    entry = data if isinstance(data, dict) else {"val": str(data)}
    dataset = read_entry(entry, "val")
    samples, problems = build_samples(dataset, task, entry_context(entry, ctx), limit=limit or None)
    for problem in [*dataset.problems, *problems]:
        log.warning("skipping record: %s", problem)
    if not samples:
        raise ValueError(f"no usable records in {dataset.source} for task {task_name!r}")
    metrics, texts, named, total = evaluate_samples(
        policy, task_name, samples, task.reward_weights(think), max_new_tokens, batch_size, RewardErrors()
    )
    stage = f"eval-{ckpt.name}-{Path(dataset.source.split('@')[0]).stem}"
    RolloutStore(run_dir).append(eval_rows(run_dir.name, stage, samples, texts, named, total), stage, 0)
    return metrics, run_dir
