"""GRPO: sample G completions per prompt, score them with the task's rule rewards, and take clipped policy-gradient
steps on group-relative advantages (GRPO / Dr.GRPO / DAPO options; maths in `mmreason.train.rl`).

One loop per step: rollout -> rewards -> advantages -> (optional) old/ref log-probs -> num_iterations updates ->
metrics, rollout store rows, checkpoints. The rollout and rewards come from `online_filter.draw_batch`, which also
keeps the per-prompt statistics and, with grpo.filter, filters groups and refills the batch. Every engine returns the
one `Rollout` type; how its tokens are scored (shared prefix, repeated prompt, whole trajectories) is decided once per
stage (`scoring_plan`) and logged once.

Dropout is off in every forward of an update (old policy, reference, loss), as TRL and verl train RL: `dropout_off`
sets every `nn.Dropout` (LoRA's adapter dropout included) and every attention-dropout rate to 0 for the update and
restores them after, so a later SFT stage keeps its dropout and checkpoints keep their config. With dropout on, the
old-policy and loss forwards would draw different masks: the first iteration's importance ratio would be dropout
noise instead of exactly 1, and the clip would act on that noise. The model stays in train mode throughout (with
dropout off, train and eval compute the same values, and gradient checkpointing needs train mode), and the old
log-probs are computed along the loss's own scoring path, so the first iteration's ratio is exactly 1 in float32.
The reference pass keeps the frozen path (a shared prefix even where the loss repeats the prompts), so with
gradient checkpointing, several processes or a hybrid-cache family its first KL is float rounding (about 1e-12),
elsewhere exactly 0.
The metrics line carries `zero_var_groups/<task>`: the share of each task's groups whose completions all got the same
total reward (no learning signal).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mmreason.config import ConfigError, GRPOConfig
from mmreason.data.sample import Sample
from mmreason.data.schedule import schedule_metrics
from mmreason.models.policy import Reference, unwrap_model
from mmreason.models.vision_cache import step_cache
from mmreason.registry import get_task
from mmreason.rollout.engine import (
    completion_logprobs,
    encode_prompts,
    generate,
    repeat_prompts,
    suppressed_token_ids,
)
from mmreason.rollout.multiturn import keeps_state, tool_rollout, trajectory_logprobs, turns_json
from mmreason.rollout.prefix import shared_completion_logprobs
from mmreason.rollout.scoring import StepState, score_completions
from mmreason.rollout.turn_state import shared_trajectory_logprobs
from mmreason.rollout.types import Rollout, SamplingParams, ScoringPath
from mmreason.runs.run import Run, data_metrics, log_metrics, reward_weights
from mmreason.runs.store import completion_row
from mmreason.train.dist import split_per_rank
from mmreason.train.online_filter import draw_batch
from mmreason.train.prompt_stats import prompt_key
from mmreason.train.reward_schedule import scheduled_weights
from mmreason.train.rl import group_advantages, grpo_loss, loss_mask, truncated_is_weights, zero_variance_groups
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


@dataclass(frozen=True)
class ScoringPlan:
    """How a stage scores its rollouts' tokens: `loss` for the policy forward with gradients and the no-grad
    old-policy pass (the same path, so the first ratio is exactly 1), `frozen` for the no-grad reference pass
    (see `rollout.types.ScoringPath`)."""

    loss: ScoringPath
    frozen: ScoringPath


def uses_tools(run: Run, cfg: GRPOConfig) -> bool:
    """Whether the stage's rollouts are multi-turn: tool use is on and some task of the run has tools."""
    return cfg.tools.enabled and any(get_task(d.task).tools for d in run.cfg.data)


def scoring_plan(run: Run, cfg: GRPOConfig) -> ScoringPlan:
    """The stage's scoring paths, decided once (and logged once).

    With grpo.share_prefix the no-grad passes share each group's prompt prefix (multi-turn rollouts too,
    `_multi_turn_plan`); the loss does too, except under gradient checkpointing (transformers drops the KV cache
    of checkpointed layers), with several processes (DDP registers a backward hook per forward: the shared
    loss's two forwards, prefill + extend, before one backward would trip it) and for hybrid-cache families (with
    transformers' reference kernels the shared loss equals the repeated one up to float32 rounding, see
    tests/test_hybrid_cache.py, but the fast kernels that continue a linear-attention cache are decoding kernels:
    causal-conv1d's single-token state update writes in place and has no backward); those repeat the prompt rows
    (same values up to rounding)."""
    if uses_tools(run, cfg):
        plan = _multi_turn_plan(run, cfg)
    elif not cfg.share_prefix:
        plan = ScoringPlan("repeated_prompt", "repeated_prompt")
    elif run.policy.family.cache == "hybrid":
        if run.is_main:
            log.info(
                "grpo.share_prefix: %s caches linear-attention states, so the loss repeats the prompts "
                "(sampling and the no-grad passes share them)",
                run.policy.family.label,
            )
        plan = ScoringPlan("repeated_prompt", "shared_prefix")
    elif _checkpointing(run.policy.model):
        log.warning("grpo.share_prefix: gradient checkpointing drops the KV cache, so the loss repeats the prompts")
        plan = ScoringPlan("repeated_prompt", "shared_prefix")
    elif run.world_size > 1:
        plan = ScoringPlan("repeated_prompt", "shared_prefix")
    else:
        plan = ScoringPlan("shared_prefix", "shared_prefix")
    if run.is_main:
        log.info("grpo scoring: loss on %s, old/reference log-probs on %s", plan.loss, plan.frozen)
    return plan


def _multi_turn_plan(run: Run, cfg: GRPOConfig) -> ScoringPlan:
    """Multi-turn scoring: with grpo.share_prefix each prompt is encoded once per group and the rest of every
    trajectory runs on top of its cache (the loss too, under the single-turn loss's conditions); hybrid caches
    score whole trajectories (the rollout keeps no state for them either, `multiturn.keeps_state`)."""
    if not cfg.share_prefix or not keeps_state(run.policy.model):
        return ScoringPlan("trajectory", "trajectory")
    if _checkpointing(run.policy.model) or run.world_size > 1:
        return ScoringPlan("trajectory", "shared_trajectory")
    return ScoringPlan("shared_trajectory", "shared_trajectory")


def sampling_params(run: Run, cfg: GRPOConfig) -> SamplingParams:
    """The stage's sampling: per-prompt seeds from the run seed (a prompt's completions then do not depend on its
    batch, process or a resume)."""
    return SamplingParams(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=run.cfg.seed)


def score_mixture(
    run: Run, samples: list[Sample], rollout: Rollout, state: StepState | None = None, stage_index: int | None = None
) -> tuple[dict[str, list], list[float]]:
    """Rewards for a batch that may mix tasks: each task's rewards on its own rows, None elsewhere. A multi-turn
    rollout adds the configured tool rewards, fed by the rollout's extra columns (tool-call counts). With a state
    and the stage's index, each task's weights follow `grpo.reward_schedule` (`mmreason.train.reward_schedule`).
    A reward that raises on its first call in this process stops the run (RewardError): it would never score."""
    texts, g, extra = rollout.texts, rollout.group_size, rollout.columns
    if run.cfg.budget.enabled:  # the budget's difficulty reward reads each prompt's pass rate so far
        rates = [run.prompt_stats.pass_rate(prompt_key(s)) for s in samples]
        extra = {**extra, "prompt_pass_rate": [rates[i // g] for i in range(len(texts))]}
    ids = completion_id_lists(rollout)
    tools = rollout.multi_turn
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_task[s.task].append(i)
    named: dict[str, list] = {}
    total = [0.0] * len(texts)
    for task, idx in by_task.items():
        rows = [i * g + j for i in idx for j in range(g)]
        weights = reward_weights(run, task)
        if state is not None and stage_index is not None:
            weights = scheduled_weights(weights, task, run.cfg.grpo.reward_schedule, stage_index, state.global_step,
                                        state.max_steps, run.cfg.think)
        weights = {**weights, **(run.cfg.grpo.tools.rewards if tools else {})}
        task_named, task_total = score_completions(
            weights,
            [samples[i] for i in idx],
            [texts[r] for r in rows],
            g,
            run.reward_errors,
            run.cfg.strict_rewards,
            {k: [v[r] for r in rows] for k, v in extra.items()},
            completion_ids=None if ids is None else [ids[r] for r in rows],
            trainer_state=state,
            first_call_fatal=True,
        )
        for name, scores in task_named.items():
            col = named.setdefault(name, [None] * len(texts))
            for r, s in zip(rows, scores, strict=True):
                col[r] = s
        for r, t in zip(rows, task_total, strict=True):
            total[r] = t
    return named, total


def completion_id_lists(rollout: Rollout) -> list[list[int]] | None:
    """Each row's own tokens (TRL-style rewards take them as `completion_ids`); None for multi-turn trajectories."""
    if rollout.completion_ids is None:
        return None
    mask = rollout.completion_mask.bool().cpu()
    return [row[m].tolist() for row, m in zip(rollout.completion_ids.cpu(), mask, strict=True)]


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
            prompt_len=rollout.prompt_lengths[b],
            completion_len=comp_len[b],
            truncated=rollout.truncated[b],
        )
        if rollout.multi_turn:
            # file names by global row (group_id * G + completion): ranks share the folder
            folder = run.run_dir / "tool_images" / f"{stage}-step{step}"
            row["turns"] = turns_json(rollout.trajectories[b], folder, row["group_id"] * g + b % g)
        rows.append(row)
    return rows


def loss_mask_for(rollout: Rollout, keep_rows: torch.Tensor, mask_truncated: bool) -> torch.Tensor:
    """[B, T] mask of tokens that carry loss: completion tokens of kept groups (minus truncated rows if asked)."""
    return loss_mask(rollout.completion_mask, keep_rows, rollout.truncated, mask_truncated)


def run_grpo(
    run: Run, cfg: GRPOConfig, stage_index: int, start_step: int = 0, resume_state: Any = None
) -> tuple[Any, Any, int]:
    """Train `cfg.steps` rollout steps (continuing from `start_step` on resume), fewer when a held-out target
    (`cfg.stop_at`) is reached first; (optimizer, scheduler, the step it ended at)."""
    policy, g = run.policy, cfg.group_size
    stage = f"grpo-{stage_index}"
    # prompts_per_step is global: each rank takes its share, all G completions of a prompt on the same rank
    local_prompts = split_per_rank(cfg.prompts_per_step, run.world_size, "grpo.prompts_per_step")
    optimizer, scheduler = stage_optimizer(run, cfg, resume_state)
    if cfg.beta > 0 and run.shards_params and not policy.is_lora:  # a deep copy of sharded weights is no reference
        raise ConfigError("grpo.beta > 0 under ZeRO-3 / FSDP needs model.lora.enabled (the KL reference is the base)")
    reference = Reference(policy, cfg.beta)
    plan, params = scoring_plan(run, cfg), sampling_params(run, cfg)
    banned = suppressed_token_ids(policy.processor)
    bad_updates, done = 0, start_step
    bar = step_bar(run, "grpo", stage_index, start_step, cfg.steps)
    for step in bar:
        t0 = time.perf_counter()
        # schedule: the step's plan from where training is and the pass rates so far (checkpointed: a resume redraws)
        run.stream.set_progress(stage_index, step, cfg.steps, run.prompt_stats)
        roll = functools.partial(scored_rollout, run, cfg, params=params, plan=plan, state=StepState(step, cfg.steps),
                                 stage_index=stage_index)
        # the step's image / video features, computed once for sampling, old / reference log-probs and the updates
        with step_cache([policy.model, reference.copy], cfg.cache_vision):
            batch = draw_batch(run, cfg, local_prompts, roll)  # filtered and refilled with grpo.filter
            samples, rollout, named, total = batch.samples, batch.rollout, batch.named, batch.total
            rewards = torch.tensor(total, dtype=torch.float32, device=run.device)
            adv = group_advantages(rewards, g, scale_std=cfg.scale_std)
            keep_groups = batch.keep & ~zero_variance_groups(rewards, g) if cfg.dynamic_sampling else batch.keep
            mask = loss_mask_for(rollout, keep_groups.repeat_interleave(g), cfg.mask_truncated)
            upd, applied = update_policy(run, optimizer, reference, rollout, adv, mask, cfg, plan, banned)
        for ok in applied:
            bad_updates = 0 if ok else bad_updates + 1
        stop_if_diverging(bad_updates, cfg.max_bad_updates, "grpo", step + 1)
        scheduler.step()
        dt = time.perf_counter() - t0
        rows = batch.with_pass_rates(store_rows(run, samples, rollout, named, total, adv, stage, step + 1))
        rows = gather_rows(run, rows)
        metrics = {**_step_metrics(run, rows, named, keep_groups, upd, dt), **batch.metrics,
                   **schedule_metrics(run.stream, run.sum)}
        metrics["lr"] = scheduler.get_last_lr()[0]
        log_metrics(run, "grpo", step + 1, metrics)
        if run.is_main:
            run.store.append(rows, stage, step + 1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{upd.get('loss', float('nan')):.3f}")
        done = step + 1
        if periodic(run, cfg, stage_index, "grpo", done, optimizer, scheduler):
            break
    bar.close()
    run.stream.set_progress(None)  # a later stage sharing the stream draws its unscheduled order
    return optimizer, scheduler, done


def scored_rollout(
    run: Run,
    cfg: GRPOConfig,
    samples: list[Sample],
    *,
    params: SamplingParams,
    plan: ScoringPlan,
    state: StepState,
    stage_index: int,
) -> tuple[Rollout, dict[str, list], list[float]]:
    """G completions per sample and their rewards (named, total): what a step draws, once or per refill round."""
    with run.generation_context():  # the unwrapped policy samples (ZeRO-3: its shards gathered meanwhile)
        rollout = sample_rollout(run, cfg, samples, params, plan)
    named, total = score_mixture(run, samples, rollout, state, stage_index)
    return rollout, named, total


def allowed_tools(samples: list[Sample]) -> list[tuple[str, ...]]:
    """Each sample's task tools (empty for a task without tools: its trajectories answer in one turn)."""
    return [tuple(get_task(s.task).tools) for s in samples]


def sample_rollout(run: Run, cfg: GRPOConfig, samples: list[Sample], params: SamplingParams, plan: ScoringPlan):
    """G completions per prompt from the stage's engine: multi-turn trajectories with tools, vLLM, or the HF model
    (one shared-prefix prefill per group with grpo.share_prefix, else HF generate on repeated prompts)."""
    policy = run.policy
    if plan.loss in ("trajectory", "shared_trajectory"):
        return tool_rollout(
            policy.model,
            policy.processor,
            samples,
            allowed_tools(samples),
            params,
            run.device,
            keep_state=cfg.share_prefix,
            max_turns=cfg.tools.max_turns,
            min_pixels=run.cfg.model.min_pixels,
            max_pixels=cfg.tools.max_pixels,
        )
    prompts = encode_prompts(policy.processor, samples, run.device)
    if cfg.rollout == "vllm":
        return vllm_engine(run).generate(policy, prompts, params)
    return generate(policy.model, policy.processor, prompts, params, share_prefix=cfg.share_prefix)


def vllm_engine(run: Run) -> Any:
    """This process's vLLM engine (grpo.rollout: vllm), started from the policy's source at the first rollout."""
    if run.rollout_engine is None:
        from mmreason.rollout.vllm import VLLMRollout

        run.rollout_engine = VLLMRollout(run.cfg, run.policy.source, run.rank, run.world_size)
    return run.rollout_engine


def sampler_weights(cfg: GRPOConfig, rollout: Rollout, train_logp: torch.Tensor) -> torch.Tensor | None:
    """Truncated importance weights [B, T] of a vLLM rollout against the trainer's log-probs (None: no correction,
    the HF engines sample from the trained model itself)."""
    if cfg.rollout != "vllm" or cfg.vllm.importance_cap <= 0 or rollout.sampler_logprobs is None:
        return None
    return truncated_is_weights(train_logp, rollout.sampler_logprobs, rollout.completion_mask, cfg.vllm.importance_cap)


def update_policy(
    run: Run,
    optimizer: Any,
    reference: Reference,
    rollout: Rollout,
    adv: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    plan: ScoringPlan,
    suppressed: list[int] | None = None,
) -> tuple[dict[str, float], list[bool]]:
    """The policy updates on one rollout -> (metrics, whether each update was applied).

    Old-policy and reference log-probs first (no grad), then cfg.num_iterations clipped-surrogate steps (none when
    no token of any rank carries loss). adv [B], mask [B, T] of the tokens that carry loss.

    With R processes the loss is divided by the GLOBAL token (or sequence) count and multiplied by R, since DDP
    averages gradients over ranks: the update then equals one process's on the whole batch. A rank whose tokens
    all lost their loss (dynamic sampling) still runs forward/backward (a zero loss with a graph) so that DDP's
    gradient all-reduce does not hang. The reported loss and stats are reduced over ranks. Every forward runs in
    train mode with dropout off (module doc).
    """
    run.policy.model.train()
    with dropout_off(run.policy.model):
        return _update_policy(run, optimizer, reference, rollout, adv, mask, cfg, plan, suppressed)


def _update_policy(
    run: Run,
    optimizer: Any,
    reference: Reference,
    rollout: Rollout,
    adv: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    plan: ScoringPlan,
    suppressed: list[int] | None,
) -> tuple[dict[str, float], list[bool]]:
    """`update_policy`'s updates, run inside its dropout-off block."""
    world, total = run.world_size, run.sum
    # the vision tokens sampling excluded (looked up here unless the stage passes them once for all its steps)
    banned = suppressed if suppressed is not None else suppressed_token_ids(run.policy.processor)
    global_tokens = total(mask.sum())
    count = global_tokens if cfg.loss_agg == "token_mean" else total(mask.shape[0])
    old_logp, ref_logp = _frozen_logprobs(run.policy, reference, rollout, cfg, banned, plan)
    upd: dict[str, float] = {}
    applied = []
    for it in range(cfg.num_iterations if global_tokens > 0 else 0):
        logp, entropy = rollout_logprobs(run.model, rollout, plan.loss, cfg.temperature, banned, with_entropy=it == 0)
        behaviour = old_logp if old_logp is not None else logp.detach()
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
            is_weights=sampler_weights(cfg, rollout, behaviour),
        )
        if it == 0:
            upd["entropy"] = total((entropy.detach() * mask).sum()) / max(global_tokens, 1.0)
        step = optimizer_step(run, optimizer, backward(run, loss), cfg.max_grad_norm)
        applied.append(not step["updates_skipped"])
        upd["grad_norm"] = step["grad_norm"]
        upd["updates_skipped"] = upd.get("updates_skipped", 0.0) + step["updates_skipped"]
        # stats are per-rank token means: their rank average (exact when the ranks hold equal token counts)
        upd.update({"loss": total(loss.detach()) / world, **{k: total(v) / world for k, v in stats.items()}})
    return upd, applied


def rollout_logprobs(
    model: Any,
    rollout: Rollout,
    path: ScoringPath,
    temperature: float,
    suppressed: list[int],
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] (and entropies) of the rollout's completion tokens under `model`, along `path`: each prompt
    encoded once per group (shared_prefix), its rows repeated G times (repeated_prompt; same values and gradients),
    or the whole multi-turn sequences (trajectory; T = L - 1, masked by `completion_mask`), each prompt encoded once
    per group under them (shared_trajectory; same values and gradients)."""
    if path == "trajectory":
        return trajectory_logprobs(model, rollout.sequences, temperature, suppressed, with_entropy)
    if path == "shared_trajectory":
        return shared_trajectory_logprobs(model, rollout.layout, rollout.sequences, temperature, suppressed,
                                          with_entropy)
    args = (rollout.completion_ids, rollout.completion_mask, temperature)
    if path == "shared_prefix":
        inputs, g = rollout.prompts.inputs, rollout.group_size
        return shared_completion_logprobs(model, inputs, g, *args, with_entropy=with_entropy, suppressed=suppressed)
    rows = repeat_prompts(rollout.prompts, rollout.group_size)
    return completion_logprobs(model, rows, *args, with_entropy=with_entropy, suppressed=suppressed)


@torch.no_grad()
def _frozen_logprobs(
    policy: Any, reference: Reference, rollout: Rollout, cfg: GRPOConfig, banned: list[int], plan: ScoringPlan
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The no-grad log-probs the loss compares against: old policy (only with several updates per rollout; along
    the loss's path) and reference (only when beta > 0; along the frozen path), both in the policy's mode with
    dropout off."""
    old_logp = ref_logp = None
    if cfg.num_iterations > 1:
        old_logp, _ = rollout_logprobs(policy.model, rollout, plan.loss, cfg.temperature, banned)
    if cfg.beta > 0:
        with reference.model() as ref, dropout_off(ref):
            ref.train(policy.model.training)
            ref_logp, _ = rollout_logprobs(ref, rollout, plan.frozen, cfg.temperature, banned)
    return old_logp, ref_logp


@contextlib.contextmanager
def dropout_off(model: Any) -> Iterator[None]:
    """Every dropout of the model at 0 inside the block, restored after: the `p` of each `nn.Dropout` (LoRA's
    adapter dropout included) and each numeric module attribute named like "*dropout*" (transformers' attention
    modules keep their attention-dropout rate as a float, e.g. `attention_dropout`). The config is left alone."""
    changed: list[tuple[Any, str, float]] = []
    for module in unwrap_model(model).modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            changed.append((module, "p", module.p))
        for name, value in vars(module).items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if "dropout" in name and numeric and value > 0:
                changed.append((module, name, value))
    for module, name, _ in changed:
        setattr(module, name, 0.0)
    try:
        yield
    finally:
        for module, name, value in changed:
            setattr(module, name, value)


def _checkpointing(model: Any) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5.x renamed the flag."""
    model = unwrap_model(model)
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(flag if flag is not None else getattr(model, "is_gradient_checkpointing", False))


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


def zero_variance_shares(rows: list[dict[str, Any]]) -> dict[str, float]:
    """`zero_var_groups/<task>`: per task, the share of its groups (store rows of one step) whose completions all
    got the same total reward, so every advantage is 0 and the group teaches nothing. A task whose share stays
    near 1 has stopped giving signal (always right, always wrong, or a reward that cannot tell answers apart)."""
    totals: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        totals[(str(row["task"]), int(row["group_id"]))].append(float(row["reward_total"]))
    flat: dict[str, list[bool]] = defaultdict(list)
    for (task, _), values in totals.items():
        flat[task].append(max(values) == min(values))
    return {f"zero_var_groups/{task}": sum(f) / len(f) for task, f in sorted(flat.items())}


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
            **zero_variance_shares(rows),
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
