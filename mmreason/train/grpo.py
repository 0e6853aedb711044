"""GRPO: sample G completions per prompt, score them with the task's rule rewards, and take clipped policy-gradient
steps on group-relative advantages (GRPO / Dr.GRPO / DAPO options; maths in `mmreason.train.rl`).

One loop per step: rollout -> rewards -> advantages -> (optional) old/ref log-probs -> num_iterations updates ->
metrics, rollout store rows, checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import torch

from mmreason.config import ConfigError, GRPOConfig
from mmreason.data.sample import Sample
from mmreason.models.policy import Reference
from mmreason.registry import get_task
from mmreason.rollout.engine import (
    Rollout,
    completion_logprobs,
    encode_prompts,
    generate,
    prompt_generators,
    repeat_prompts,
    suppressed_token_ids,
)
from mmreason.rollout.multiturn import ToolRollout, tool_rollout, turns_json
from mmreason.rollout.prefix import shared_completion_logprobs
from mmreason.rollout.scoring import score_completions
from mmreason.runs.run import (
    Run,
    checkpoint,
    data_metrics,
    log_metrics,
    make_optimizer,
    make_scheduler,
    peak_memory_mb,
    prepare_training,
    reward_weights,
    step_bar,
    stop_if_diverging,
    take_samples,
)
from mmreason.runs.store import completion_row
from mmreason.train.dist import split_per_rank
from mmreason.train.rl import group_advantages, grpo_loss, truncated_is_weights, zero_variance_groups

log = logging.getLogger(__name__)


def score_mixture(
    run: Run, samples: list[Sample], texts: list[str], g: int, rollout: Any = None
) -> tuple[dict[str, list], list[float]]:
    """Rewards for a batch that may mix tasks: each task's rewards on its own rows, None elsewhere. A multi-turn
    rollout adds the configured tool rewards, fed by each trajectory's tool-call columns."""
    tools = isinstance(rollout, ToolRollout)
    extra = rollout.columns() if tools else {}
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_task[s.task].append(i)
    named: dict[str, list] = {}
    total = [0.0] * len(texts)
    for task, idx in by_task.items():
        rows = [i * g + j for i in idx for j in range(g)]
        weights = {**reward_weights(run, task), **(run.cfg.grpo.tools.rewards if tools else {})}
        task_named, task_total = score_completions(
            weights,
            [samples[i] for i in idx],
            [texts[r] for r in rows],
            g,
            run.reward_errors,
            run.cfg.strict_rewards,
            {k: [v[r] for r in rows] for k, v in extra.items()},
        )
        for name, scores in task_named.items():
            col = named.setdefault(name, [None] * len(texts))
            for r, s in zip(rows, scores, strict=True):
                col[r] = s
        for r, t in zip(rows, task_total, strict=True):
            total[r] = t
    return named, total


def _stats(values: list[float | None]) -> tuple[float, float]:
    x = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if x.numel() == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(unbiased=False))


def store_rows(
    run: Run,
    samples: list[Sample],
    rollout: Rollout,
    named: dict,
    total: list,
    adv: torch.Tensor,
    stage: str,
    step: int,
) -> list[dict[str, Any]]:
    g = rollout.group_size
    multi = isinstance(rollout, ToolRollout)
    if multi:
        prompt_len = rollout.prompt_lengths
    else:
        prompt_len = [n for n in rollout.prompts.inputs["attention_mask"].sum(-1).tolist() for _ in range(g)]
    comp_len = rollout.completion_mask.sum(-1).tolist()
    rows = []
    for b, text in enumerate(rollout.texts):
        row = completion_row(
            samples[b // g],
            text,
            run=run.cfg.name,
            stage=stage,
            step=step,
            # the prompt's global position in the step (rank r holds positions r, r + R, ...)
            group_id=(b // g) * run.world_size + run.rank,
            completion_index=b % g,
            reward_total=total[b],
            rewards={n: v[b] for n, v in named.items()},
            advantage=adv[b],
            prompt_len=prompt_len[b],
            completion_len=comp_len[b],
            truncated=rollout.truncated[b],
        )
        if multi:
            # file names by global row (group_id * G + completion): ranks share the folder
            folder = run.run_dir / "tool_images" / f"{stage}-step{step}"
            row["turns"] = turns_json(rollout.trajectories[b], folder, row["group_id"] * g + b % g)
        rows.append(row)
    return rows


def loss_mask_for(rollout: Rollout, keep_rows: torch.Tensor, mask_truncated: bool) -> torch.Tensor:
    """[B, T] mask of tokens that carry loss: completion tokens of kept groups (minus truncated rows if asked)."""
    mask = rollout.completion_mask * keep_rows[:, None].long()
    if mask_truncated:
        mask = mask * (~rollout.truncated)[:, None].long()
    return mask


def run_grpo(
    run: Run, cfg: GRPOConfig, stage_index: int, start_step: int = 0, resume_state: Any = None
) -> tuple[Any, Any]:
    policy, g = run.policy, cfg.group_size
    stage = f"grpo-{stage_index}"
    # prompts_per_step is global: each rank takes its share, all G completions of a prompt on the same rank
    local_prompts = split_per_rank(cfg.prompts_per_step, run.world_size, "grpo.prompts_per_step")
    optimizer = make_optimizer(policy.trainable_parameters(), cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.scheduler, cfg.warmup_ratio, cfg.steps)
    if resume_state is not None:
        resume_state(optimizer, scheduler)
    optimizer = prepare_training(run, optimizer, cfg.max_grad_norm)
    if cfg.beta > 0 and run.shards_params and not policy.is_lora:  # a deep copy of sharded weights is no reference
        raise ConfigError("grpo.beta > 0 under ZeRO-3 / FSDP needs model.lora.enabled (the KL reference is the base)")
    reference = Reference(policy, cfg.beta)
    banned = suppressed_token_ids(policy.processor)
    share_loss = cfg.share_prefix and not _checkpointing(policy.model)
    if cfg.share_prefix and not share_loss:
        log.warning("grpo.share_prefix: gradient checkpointing drops the KV cache, so the loss repeats the prompts")
    # DDP registers a backward hook per forward: the shared loss's two forwards (prefill + extend) before one
    # backward would trip it, so several processes score the prompts repeated (same values up to rounding)
    share_loss = share_loss and run.world_size == 1
    bad_updates = 0
    bar = step_bar(run, "grpo", stage_index, start_step, cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        samples = take_samples(run, local_prompts)
        with run.generation_context():  # the unwrapped policy samples (ZeRO-3: its shards gathered meanwhile)
            rollout = sample_rollout(run, cfg, samples)
        named, total = score_mixture(run, samples, rollout.texts, g, rollout)
        rewards = torch.tensor(total, dtype=torch.float32, device=run.device)
        adv = group_advantages(rewards, g, scale_std=cfg.scale_std)
        keep_groups = ~zero_variance_groups(rewards, g) if cfg.dynamic_sampling else torch.ones_like(adv[::g]).bool()
        mask = loss_mask_for(rollout, keep_groups.repeat_interleave(g), cfg.mask_truncated)
        upd, applied = update_policy(policy, optimizer, reference, rollout, adv, mask, cfg, banned, share_loss, run)
        for ok in applied:
            bad_updates = 0 if ok else bad_updates + 1
        stop_if_diverging(bad_updates, cfg.max_bad_updates, "grpo", step + 1)
        scheduler.step()
        dt = time.perf_counter() - t0
        rows = gather_rows(run, store_rows(run, samples, rollout, named, total, adv, stage, step + 1))
        metrics = _step_metrics(run, rows, named, keep_groups, upd, dt)
        metrics["lr"] = scheduler.get_last_lr()[0]
        log_metrics(run, "grpo", step + 1, metrics)
        if run.is_main:
            run.store.append(rows, stage, step + 1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{upd.get('loss', float('nan')):.3f}")
        _periodic(run, cfg, stage_index, step + 1, optimizer, scheduler)
    return optimizer, scheduler


def allowed_tools(samples: list[Sample], cfg: GRPOConfig) -> list[tuple[str, ...]] | None:
    """Each sample's task tools when tool use is on and some task has tools; None for single-turn rollouts."""
    if not cfg.tools.enabled:
        return None
    allowed = [tuple(get_task(s.task).tools) for s in samples]
    return allowed if any(allowed) else None


def sample_rollout(run: Run, cfg: GRPOConfig, samples: list[Sample]) -> Rollout | ToolRollout:
    """G completions per prompt: multi-turn trajectories with tools when enabled, else one shared-prefix turn."""
    policy = run.policy
    allowed = allowed_tools(samples, cfg)
    if allowed is not None:
        return tool_rollout(
            policy.model,
            policy.processor,
            samples,
            cfg.group_size,
            allowed,
            run.device,
            max_turns=cfg.tools.max_turns,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            min_pixels=run.cfg.model.min_pixels,
            max_pixels=cfg.tools.max_pixels,
            generators=prompt_generators(run.cfg.seed, samples, run.device),  # every turn seeded per prompt
        )
    prompts = encode_prompts(policy.processor, samples, run.device)
    if cfg.rollout == "vllm":
        return vllm_engine(run).generate(policy, prompts, samples, cfg, run.cfg)
    return generate(
        policy.model,
        policy.processor,
        prompts,
        cfg.group_size,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        share_prefix=cfg.share_prefix,
        # per-prompt RNGs: a prompt's samples do not depend on its batch or process (and survive a resume)
        generators=prompt_generators(run.cfg.seed, samples, run.device) if cfg.share_prefix else None,
    )


def vllm_engine(run: Run) -> Any:
    """This process's vLLM engine (grpo.rollout: vllm), started from the policy's source at the first rollout."""
    if run.rollout_engine is None:
        from mmreason.rollout.vllm import VLLMRollout

        run.rollout_engine = VLLMRollout(run.cfg, run.policy.source, run.rank, run.world_size)
    return run.rollout_engine


def sampler_weights(cfg: GRPOConfig, rollout: Rollout, train_logp: torch.Tensor) -> torch.Tensor | None:
    """Truncated importance weights [B, T] of a vLLM rollout against the trainer's log-probs (None: no correction,
    the HF backend samples from the trained model itself)."""
    if cfg.rollout != "vllm" or cfg.vllm.importance_cap <= 0 or rollout.logprobs is None:
        return None
    return truncated_is_weights(train_logp, rollout.logprobs, rollout.completion_mask, cfg.vllm.importance_cap)


def update_policy(
    policy: Any,
    optimizer: Any,
    reference: Reference,
    rollout: Rollout,
    adv: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    banned: list[int],
    share_loss: bool,
    run: Run | None = None,
) -> tuple[dict[str, float], list[bool]]:
    """The policy updates on one rollout -> (metrics, whether each update was applied).

    Old-policy and reference log-probs first (no grad), then cfg.num_iterations clipped-surrogate steps (none when
    no token of any rank carries loss). adv [B], mask [B, T] of the tokens that carry loss.

    With R processes the loss is divided by the GLOBAL token (or sequence) count and multiplied by R, since DDP
    averages gradients over ranks: the update then equals one process's on the whole batch. A rank whose tokens
    all lost their loss (dynamic sampling) still runs forward/backward (a zero loss with a graph) so that DDP's
    gradient all-reduce does not hang. The reported loss and stats are reduced over ranks.
    """
    world = run.world_size if run is not None else 1
    total = run.sum if run is not None else float
    model = run.model if run is not None else policy.model
    global_tokens = total(mask.sum())
    count = global_tokens if cfg.loss_agg == "token_mean" else total(mask.shape[0])
    old_logp, ref_logp = _frozen_logprobs(policy, reference, rollout, cfg, banned)
    policy.model.train()
    upd: dict[str, float] = {}
    applied = []
    for it in range(cfg.num_iterations if global_tokens > 0 else 0):
        logp, entropy = rollout_logprobs(model, rollout, cfg.temperature, banned, share_loss, with_entropy=(it == 0))
        behaviour = old_logp if old_logp is not None else logp.detach()
        is_weights = sampler_weights(cfg, rollout, behaviour)
        loss, stats = grpo_loss(
            logp,
            behaviour,
            adv,
            mask,
            eps_low=cfg.eps_low,
            eps_high=cfg.eps_high,
            beta=cfg.beta,
            ref_logp=ref_logp,
            loss_agg=cfg.loss_agg,
            max_len=cfg.max_new_tokens,
            denominator=count / world,
            is_weights=is_weights,
        )
        if it == 0:
            upd["entropy"] = total((entropy.detach() * mask).sum()) / max(global_tokens, 1.0)
        applied.append(_update(policy, optimizer, loss, cfg.max_grad_norm, upd, run))
        # stats are per-rank token means: their rank average (exact when the ranks hold equal token counts)
        upd.update({"loss": total(loss.detach()) / world, **{k: total(v) / world for k, v in stats.items()}})
    return upd, applied


def rollout_logprobs(
    model: Any, rollout: Rollout, temperature: float, banned: list[int], share: bool, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] (and entropies) of the rollout's completions under `model`; with `share`, each prompt is
    encoded once per group (mmreason.rollout.prefix), else its rows are repeated G times (same values and
    gradients)."""
    if isinstance(rollout, ToolRollout):  # full trajectories: tool turns sit between the policy's tokens
        return rollout.logprobs(model, temperature, banned, with_entropy)
    args = (rollout.completion_ids, rollout.completion_mask, temperature)
    if share:
        prompts = rollout.prompts.inputs
        return shared_completion_logprobs(
            model, prompts, rollout.group_size, *args, with_entropy=with_entropy, suppressed=banned
        )
    rows = repeat_prompts(rollout.prompts, rollout.group_size)
    return completion_logprobs(model, rows, *args, with_entropy=with_entropy, suppressed=banned)


@torch.no_grad()
def _frozen_logprobs(
    policy: Any, reference: Reference, rollout: Rollout, cfg: GRPOConfig, banned: list[int]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The no-grad log-probs the loss compares against: old policy (only with several updates per rollout) and
    reference (only when beta > 0). No gradient, so the prefix is shared even under gradient checkpointing."""
    old_logp = ref_logp = None
    if cfg.num_iterations > 1:
        old_logp, _ = rollout_logprobs(policy.model, rollout, cfg.temperature, banned, cfg.share_prefix)
    if cfg.beta > 0:
        with reference.model() as ref:
            ref_logp, _ = rollout_logprobs(ref, rollout, cfg.temperature, banned, cfg.share_prefix)
    return old_logp, ref_logp


def _checkpointing(model: Any) -> bool:
    """Whether activation (gradient) checkpointing is on (through DDP-style `.module` wrappers); transformers 5.x
    renamed the flag."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(flag if flag is not None else getattr(model, "is_gradient_checkpointing", False))


def _update(
    policy: Any, optimizer: Any, loss: torch.Tensor, max_grad_norm: float, out: dict, run: Run | None = None
) -> bool:
    """backward + clip + step; a non-finite loss or gradient skips the update (returns False) with a warning.

    With several processes the skip is decided on all ranks together (one rank skipping the backward the others
    run would hang them), and backward / clipping go through accelerate (DDP, DeepSpeed, FSDP).
    """
    non_finite = float(not torch.isfinite(loss))
    if (run.sum(non_finite) if run is not None else non_finite) > 0:
        log.warning("non-finite GRPO loss (%s): update skipped", float(loss))
        optimizer.zero_grad(set_to_none=True)
        out["updates_skipped"] = out.get("updates_skipped", 0.0) + 1
        return False
    if run is not None and run.dist is not None:
        run.dist.backward(loss)
        norm = run.dist.clip_grad_norm(policy.trainable_parameters(), max_grad_norm)
    else:
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), max_grad_norm)
    norm = torch.as_tensor(float("nan") if norm is None else float(norm))  # DeepSpeed may report none
    out["grad_norm"] = float(norm)
    if not torch.isfinite(norm) and not (run is not None and run.dist is not None and run.dist.shards_state):
        log.warning("non-finite gradient norm: update skipped")
        optimizer.zero_grad(set_to_none=True)
        out["updates_skipped"] = out.get("updates_skipped", 0.0) + 1
        return False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return True


def gather_rows(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's store rows of one step, in global prompt order (group_id, then completion): exactly one row per
    completion, and the same order as a 1-process run with the same global batch."""
    if run.world_size == 1:
        return rows
    return sorted(run.gather(rows), key=lambda r: (r["group_id"], r["completion_index"]))


def _column(rows: list[dict[str, Any]], key: str) -> list[float | None]:
    """A reward column of the rows, None where the row's task has no such reward (NaN in the store)."""
    values = [row.get(key) for row in rows]
    return [None if v is None or v != v else float(v) for v in values]


def _step_metrics(
    run: Run, rows: list[dict[str, Any]], named: dict, keep: torch.Tensor, upd: dict, dt: float
) -> dict[str, float]:
    """Step metrics over the whole global batch: computed from the store rows gathered from every rank."""
    lengths = torch.tensor([float(r["completion_len"]) for r in rows])
    adv = torch.tensor([r["advantage"] for r in rows], dtype=torch.float32)
    names = list(named) + sorted({k[7:] for r in rows for k in r if k.startswith("reward_")} - set(named) - {"total"})
    metrics: dict[str, float] = {}
    for name in names:
        metrics[f"reward/{name}_mean"], metrics[f"reward/{name}_std"] = _stats(_column(rows, f"reward_{name}"))
    metrics["reward_mean"], metrics["reward_std"] = _stats([r["reward_total"] for r in rows])
    metrics.update(
        {
            "advantage_mean": float(adv.mean()),
            "advantage_std": float(adv.std(unbiased=False)),
            "advantage_abs_max": float(adv.abs().max()),
            "groups_kept": run.sum(keep.float().sum()) / run.sum(keep.numel()),
            "completion_len_mean": float(lengths.mean()),
            "completion_len_max": float(lengths.max()),
            "truncated_rate": sum(bool(r["truncated"]) for r in rows) / len(rows),
            "tokens_per_s": float(lengths.sum()) / dt,
            "step_time": dt,
            "peak_memory_mb": peak_memory_mb(run.device),
            **data_metrics(run),
            **upd,
        }
    )
    return metrics


def _periodic(run: Run, cfg: GRPOConfig, stage_index: int, step: int, optimizer: Any, scheduler: Any) -> None:
    from mmreason.train.evaluate import evaluate

    if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
        evaluate(run, label=f"s{stage_index:02d}-grpo-step{step}")
    if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
        checkpoint(run, stage_index, "grpo", step, optimizer, scheduler, done=False)
