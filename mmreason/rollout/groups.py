"""Some groups of several rollouts as one `Rollout` (online filtering keeps some groups of each refill round and trains
on them together, `mmreason.train.online_filter`).

A group (one prompt's G rows) is taken whole, in the order given. Single-turn rollouts: the kept prompts are encoded
again as one batch (`encode_prompts`: exactly the inputs a batch of those samples gets, media rows included), and the
completion tensors are right-padded to the widest round (pad id, mask 0, log-prob 0), which changes no log-prob
of a completion token. Multi-turn rollouts are laid out again from their trajectories (`trajectories_rollout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mmreason.rollout.engine import encode_prompts
from mmreason.rollout.multiturn import trajectories_rollout
from mmreason.rollout.types import Rollout

Part = tuple[Rollout, Sequence[int]]  # a rollout and the indices of the groups (prompts) taken from it


def take_groups(parts: Sequence[Part], processor: Any, device: torch.device) -> Rollout:
    """The listed groups of `parts`, in order, as one rollout (all parts share the group size and engine kind)."""
    parts = [(r, groups) for r, groups in parts if len(groups)]
    if not parts:
        raise ValueError("take_groups: no group to take")
    g = parts[0][0].group_size
    if any(r.group_size != g or r.multi_turn != parts[0][0].multi_turn for r, _ in parts):
        raise ValueError("take_groups: the rollouts differ in group size or kind (single / multi-turn)")
    rows = [(r, i * g + j) for r, groups in parts for i in groups for j in range(g)]
    pad_id = processor.tokenizer.pad_token_id
    if parts[0][0].multi_turn:
        return trajectories_rollout([r.trajectories[b] for r, b in rows], g, pad_id, device)
    prompts = encode_prompts(processor, [r.prompts.samples[i] for r, groups in parts for i in groups], device)
    logprobs = None
    if all(r.sampler_logprobs is not None for r, _ in parts):
        logprobs = _rows(parts, lambda r: r.sampler_logprobs, 0.0)
    columns = {k: [r.columns[k][b] for r, b in rows] for k in parts[0][0].columns}
    return Rollout(
        group_size=g,
        texts=[r.texts[b] for r, b in rows],
        completion_mask=_rows(parts, lambda r: r.completion_mask, 0),
        truncated=torch.cat([_select(r.truncated, groups, g) for r, groups in parts]),
        prompt_lengths=[r.prompt_lengths[b] for r, b in rows],
        sampler_logprobs=logprobs,
        prompts=prompts,
        completion_ids=_rows(parts, lambda r: r.completion_ids, pad_id),
        columns=columns,
    )


def _select(values: torch.Tensor, groups: Sequence[int], g: int) -> torch.Tensor:
    """The rows [len(groups) * G, ...] of the listed groups."""
    index = torch.tensor([i * g + j for i in groups for j in range(g)], dtype=torch.long, device=values.device)
    return values.index_select(0, index)


def _rows(parts: Sequence[Part], get: Any, pad: float) -> torch.Tensor:
    """A [B, T] tensor of each part's kept rows, right-padded with `pad` to the widest part."""
    width = max(get(r).shape[1] for r, _ in parts)
    chunks = []
    for r, groups in parts:
        rows = _select(get(r), groups, r.group_size)
        chunks.append(F.pad(rows, (0, width - rows.shape[1]), value=pad))
    return torch.cat(chunks)
