"""GRPO maths: per-token log-probs and entropy, group advantages, the clipped surrogate, k3 KL and loss aggregation.

Small pure tensor functions with no model, optimizer or trainer state, so each can be checked against numbers
worked out by hand. Shapes: B = number of completions = n_groups * G (the G completions of one prompt are
contiguous), T = completion length (padded), V = vocabulary size. `mask` is the completion mask (1 on completion
tokens up to and including EOS, 0 on padding); it may be bool or float.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmreason.config import LOSS_AGGREGATIONS

# exp() of a log-ratio beyond this overflows float32 into inf, and inf * 0-advantage is NaN; the ratio is clipped
# long before this anyway, so clamping the log-ratio only changes values whose gradient is already zero.
_MAX_LOG_RATIO = 20.0


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each chosen token: logits [B,T,V], tokens [B,T] -> float32 [B,T].

    Computed as `logit[token] - logsumexp(logits)` one sequence at a time, so no [B,T,V] log-softmax (nor a
    float32 copy of bf16 logits) is materialised at once: under no_grad (old / reference log-probs) the peak
    extra memory is one [T,V] float32 row. With grad, autograd keeps each row's float32 copy for backward, so
    bound B*T per call by micro-batching. Apply any sampling temperature to `logits` before calling.
    """
    _check_logits(logits, tokens)
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row = row_logits.float()
        chosen = row.gather(-1, row_tokens.long().unsqueeze(-1)).squeeze(-1)
        rows.append(chosen - torch.logsumexp(row, dim=-1))
    if not rows:
        return torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
    return torch.stack(rows)


def sampling_logits(logits: Tensor, temperature: float = 1.0, suppressed: Sequence[int] | None = None) -> Tensor:
    """The logits of the distribution completions are sampled from (before top-p): [..., V] -> float32 [..., V].

    Divided by the sampling temperature, with the `suppressed` tokens (which sampling never draws) set to the most
    negative finite value: their probability is exactly 0 and entropy stays free of 0 * inf. Modifies `logits` in
    place when it is already float32 and temperature is 1 (callers pass a forward's output they do not keep).
    """
    out = logits.float()
    if temperature != 1.0:
        out = out / temperature
    if suppressed:
        out[..., list(suppressed)] = torch.finfo(out.dtype).min
    return out


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position: logits [B,T,V] -> float32 [B,T].

    H = logsumexp(z) - sum(softmax(z) * z), one sequence at a time (same memory reasoning as `token_logprobs`).
    """
    if logits.dim() != 3:
        raise ValueError(f"token_entropy: logits must be [B,T,V], got shape {tuple(logits.shape)}")
    rows = []
    for row_logits in logits:
        row = row_logits.float()
        lse = torch.logsumexp(row, dim=-1)
        rows.append(lse - (torch.softmax(row, dim=-1) * row).sum(-1))
    if not rows:
        return torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)
    return torch.stack(rows)


def group_advantages(rewards: Tensor, group_size: int, scale_std: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages: rewards [B] -> float32 [B].

    GRPO: `(r - mean_g) / (std_g + eps)`; Dr.GRPO (`scale_std=False`): `r - mean_g`. The std is the unbiased
    one (divides by G - 1, torch.std's default), as TRL's GRPOTrainer computes it; hence group_size >= 2.
    A group whose rewards are all equal gets advantage exactly 0 for every completion: the mean of G equal floats
    is not always that float (float32 gives up to 2.4e-3 after std scaling on a group of 0.7s), so such groups
    are zeroed explicitly, and the rest are computed in float64 before the cast to float32.
    """
    grouped = _grouped(rewards, group_size, "group_advantages").double()
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_std:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    flat = (grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)).expand_as(centered)
    return centered.masked_fill(flat, 0.0).float().reshape(-1)


def zero_variance_groups(rewards: Tensor, group_size: int, atol: float = 0.0) -> Tensor:
    """Groups whose rewards are all equal (within atol): rewards [B] -> bool [n_groups].

    These groups carry no learning signal (every advantage is 0); DAPO's dynamic sampling drops them.
    """
    grouped = _grouped(rewards, group_size, "zero_variance_groups")
    return (grouped.amax(dim=1) - grouped.amin(dim=1)) <= atol


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, adv: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """PPO/GRPO clipped objective per token: logp, old_logp [B,T], adv [B] -> (loss [B,T], clipped bool [B,T]).

    loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), ratio = exp(logp - old_logp).
    `clipped` marks tokens where the clipped branch is the active one (its gradient is zero there):
    ratio < 1 - eps_low with A < 0, or ratio > 1 + eps_high with A > 0 (TRL's clip-ratio definition).
    eps_high > eps_low is DAPO's clip-higher.
    """
    _check_same_shape(logp, old_logp, "old_logp")
    if adv.dim() != 1 or adv.shape[0] != logp.shape[0]:
        raise ValueError(f"clipped_surrogate: adv must be [B]={logp.shape[0]}, got shape {tuple(adv.shape)}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clipped_surrogate: eps_low and eps_high must be >= 0, got {eps_low}, {eps_high}")
    log_ratio = (logp - old_logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    a = adv.to(ratio.dtype).unsqueeze(1)
    unclipped = ratio * a
    clipped_obj = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * a
    loss = -torch.minimum(unclipped, clipped_obj)
    with torch.no_grad():
        clipped = ((ratio < 1.0 - eps_low) & (a < 0)) | ((ratio > 1.0 + eps_high) & (a > 0))
    return loss, clipped


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token: [B,T] -> [B,T], always >= 0.

    k3 = exp(ref - logp) - (ref - logp) - 1 (the estimator GRPO uses); 0 exactly where logp == ref_logp.
    """
    _check_same_shape(logp, ref_logp, "ref_logp")
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def aggregate_loss(
    per_token: Tensor, mask: Tensor, mode: str, max_len: int | None = None, denominator: float | None = None
) -> Tensor:
    """Reduce a per-token loss [B,T] over the completion mask [B,T] to a scalar.

    - "token_mean" (DAPO): sum over all completion tokens / number of completion tokens.
    - "seq_mean_token_mean" (GRPO): per-sequence token mean, then mean over the B sequences.
    - "seq_mean_token_sum_norm" (Dr.GRPO): per-sequence token sum / max_len (a constant: the configured max
      completion length, not the batch's padded length), then mean over the B sequences.
    Sequences with an all-zero mask count as sequences (with loss 0) in the seq_* modes, as in TRL.
    `denominator` replaces the token count ("token_mean") or the sequence count (seq_* modes): pass the global
    count when a batch is split into micro-batches, so that the accumulated gradient equals the full-batch one.
    """
    _check_same_shape(per_token, mask, "mask")
    if denominator is not None and not denominator > 0:
        raise ValueError(f"aggregate_loss: denominator must be > 0, got {denominator!r}")
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if mode == "token_mean":
        count = m.sum().clamp(min=1.0) if denominator is None else denominator
        return masked.sum() / count
    if mode == "seq_mean_token_mean":
        per_seq = masked.sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    elif mode == "seq_mean_token_sum_norm":
        if max_len is None or max_len <= 0:
            raise ValueError(
                f"aggregate_loss: mode 'seq_mean_token_sum_norm' needs max_len (the max completion length) > 0, "
                f"got {max_len!r}"
            )
        per_seq = masked.sum(dim=1) / float(max_len)
    else:
        raise ValueError(f"aggregate_loss: unknown mode {mode!r}; expected one of {', '.join(LOSS_AGGREGATIONS)}")
    count = per_seq.shape[0] if denominator is None else denominator
    return per_seq.sum() / max(count, 1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` [B,T] over the positions where mask [B,T] is set (0 when the mask is empty)."""
    _check_same_shape(values, mask, "mask")
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    beta: float = 0.0,
    ref_logp: Tensor | None = None,
    loss_agg: str = "token_mean",
    max_len: int | None = None,
    denominator: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The GRPO loss for one (micro-)batch: logp/old_logp/ref_logp/mask [B,T], adv [B] -> (scalar loss, stats).

    loss = aggregate(is_weights * clipped_surrogate + beta * k3_kl). `old_logp` and `ref_logp` must come without
    gradient (on-policy single update: pass `logp.detach()` as old_logp). is_weights [B,T] (no gradient): importance
    weights of a sampler that is not the trained model (`truncated_is_weights`); None = 1. stats (python floats,
    over completion tokens): clip_frac (with clip_low_frac / clip_high_frac), ratio_mean, kl (mean k3; 0.0
    without ref_logp), and is_weight_mean when is_weights are given.
    """
    if beta < 0:
        raise ValueError(f"grpo_loss: beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError("grpo_loss: beta > 0 needs ref_logp (the reference model's token log-probs)")
    per_token, clipped = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high)
    if is_weights is not None:
        _check_same_shape(logp, is_weights, "is_weights")
        per_token = per_token * is_weights.detach()
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else None
    if beta > 0 and kl is not None:
        per_token = per_token + beta * kl
    loss = aggregate_loss(per_token, mask, loss_agg, max_len=max_len, denominator=denominator)
    stats = _loss_stats(logp, old_logp, adv, mask, clipped, kl, eps_low, eps_high)
    if is_weights is not None:
        stats["is_weight_mean"] = masked_mean(is_weights.detach().float(), mask).item()
    return loss, stats


def truncated_is_weights(train_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling (TIS) of an off-model sampler: train_logp, sampler_logp, mask [B,T] -> [B,T].

    weights = min(exp(train_logp - sampler_logp), cap) on the mask, 1 off it, without gradient. The completions were
    drawn by another engine (vLLM) whose numerics differ from the trainer's; the policy-gradient term is reweighted
    towards the trainer's distribution, and the cap bounds the variance a rare token mismatch would bring.
    """
    _check_same_shape(train_logp, sampler_logp, "sampler_logp")
    _check_same_shape(train_logp, mask, "mask")
    if cap <= 0:
        raise ValueError(f"truncated_is_weights: cap must be > 0, got {cap}")
    with torch.no_grad():
        log_ratio = (train_logp.float() - sampler_logp.float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        weights = torch.exp(log_ratio).clamp(max=cap)
        return torch.where(mask.bool(), weights, torch.ones_like(weights))


def _loss_stats(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    clipped: Tensor,
    kl: Tensor | None,
    eps_low: float,
    eps_high: float,
) -> dict[str, float]:
    """Diagnostics of one loss call, as python floats averaged over completion tokens."""
    with torch.no_grad():
        ratio = torch.exp((logp - old_logp).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)).float()
        a = adv.unsqueeze(1)
        low = (ratio < 1.0 - eps_low) & (a < 0)
        high = (ratio > 1.0 + eps_high) & (a > 0)
        return {
            "clip_frac": masked_mean(clipped.float(), mask).item(),
            "clip_low_frac": masked_mean(low.float(), mask).item(),
            "clip_high_frac": masked_mean(high.float(), mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
            "kl": masked_mean(kl.detach().float(), mask).item() if kl is not None else 0.0,
        }


def loss_mask(completion_mask: Tensor, keep_rows: Tensor, truncated: Tensor, drop_truncated: bool) -> Tensor:
    """The tokens that carry loss: completion_mask [B, T] of the kept rows keep_rows [B] (dynamic sampling), minus
    the truncated rows truncated [B] when `drop_truncated` (DAPO's overlong filtering: a completion cut by the
    length limit is judged as an unfinished answer, so its reward is noise) -> [B, T] in completion_mask's dtype."""
    for name, rows in (("keep_rows", keep_rows), ("truncated", truncated)):
        if rows.dim() != 1 or rows.shape[0] != completion_mask.shape[0]:
            raise ValueError(f"loss_mask: {name} must be [B]={completion_mask.shape[0]}, got {tuple(rows.shape)}")
    keep = keep_rows.bool() & ~truncated.bool() if drop_truncated else keep_rows.bool()
    return completion_mask * keep.to(completion_mask.dtype).unsqueeze(1)


def _grouped(rewards: Tensor, group_size: int, fn: str) -> Tensor:
    """rewards [B] -> [n_groups, G], with errors that say what was expected."""
    if rewards.dim() != 1:
        raise ValueError(f"{fn}: rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"{fn}: group_size must be >= 2 (a group compares completions), got {group_size}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"{fn}: {rewards.shape[0]} rewards are not a multiple of group_size={group_size}")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"{fn}: rewards contain NaN or inf; total rewards must be finite numbers")
    return rewards.reshape(-1, group_size)


def _check_logits(logits: Tensor, tokens: Tensor) -> None:
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"token_logprobs: expected logits [B,T,V] and tokens [B,T], got {tuple(logits.shape)} and "
            f"{tuple(tokens.shape)}"
        )


def _check_same_shape(a: Tensor, b: Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name} must have shape {tuple(a.shape)} [B,T], got {tuple(b.shape)}")
