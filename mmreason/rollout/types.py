"""The rollout contract: what every engine (shared-prefix sampler, HF generate, multi-turn tools, vLLM) takes and
returns. `SamplingParams` is the one sampling-parameters object all engines take; `Rollout` is the one result type.

Shapes: P prompts, G completions each, B = P * G rows (row b belongs to prompt b // G), Lp prompt length
(left-padded), T completion length (right-padded); a multi-turn rollout scores whole trajectories of length L, and
its T is L - 1 (the next-token positions of the full sequence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from mmreason.data.sample import Sample

# How the loss and the no-grad passes score a rollout's tokens:
# shared_prefix: each prompt encoded once per group, its KV cache repeated for the G completions (rollout.prefix);
# repeated_prompt: the prompt rows repeated G times (the plain forward; also under gradient checkpointing, which
# drops the KV cache, and under DDP, whose hooks allow one forward per backward);
# trajectory: full multi-turn sequences, tool turns between the policy's tokens (rollout.multiturn);
# shared_trajectory: multi-turn, each prompt encoded once per group and the rest of every trajectory on top of its
# cache (rollout.turn_state).
ScoringPath = Literal["shared_prefix", "repeated_prompt", "trajectory", "shared_trajectory"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: every engine takes this object."""

    group_size: int  # G completions per prompt
    max_new_tokens: int  # per completion (per turn for multi-turn rollouts)
    temperature: float = 1.0  # the loss scores the temperature-scaled distribution sampled from
    top_p: float = 1.0  # nucleus sampling (top_k stays off so ratios see the distribution sampled from)
    greedy: bool = False  # argmax decoding (evaluation)
    seed: int | None = None  # per-prompt RNGs from (seed, the sample's stream position); None: the global RNG


@dataclass
class PromptBatch:
    """Left-padded prompt inputs of P samples plus how many images/videos each sample carries."""

    inputs: dict[str, torch.Tensor]
    n_images: list[int]
    n_videos: list[int]
    samples: list[Sample] = field(default_factory=list)  # the samples encoded (their stream positions seed sampling)
    # rows of each media key (pixel_values, image_grid_thw, ...) per prompt, to repeat each prompt's media with it
    media_rows: dict[str, list[int]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.inputs["input_ids"].shape[0])


@dataclass
class Rollout:
    """G sampled completions per prompt, from any engine.

    completion_mask marks the policy's own tokens (the ones that carry loss): up to and including the first EOS of a
    single-turn completion; every assistant token of a multi-turn trajectory (tool turns masked out).
    """

    group_size: int
    texts: list[str]  # [B] the final answers the task rewards score
    completion_mask: torch.Tensor  # [B, T] long 0/1
    truncated: torch.Tensor  # [B] bool: no EOS within the budget (or a tool budget exceeded)
    prompt_lengths: list[int]  # [B] prompt tokens before the first completion token
    # [B, T] float32 log-probs of the sampled tokens under the temperature-scaled, vision-token-suppressed
    # distribution (0 off the mask), as the sampler saw them; None when the engine does not report them
    sampler_logprobs: torch.Tensor | None = None
    prompts: PromptBatch | None = None  # single-turn: the P encoded prompts
    completion_ids: torch.Tensor | None = None  # single-turn: [B, T] right-padded with the pad id
    sequences: dict[str, torch.Tensor] | None = None  # multi-turn: right-padded full trajectories [B, L] to score
    trajectories: list[Any] | None = None  # multi-turn: the `multiturn.Trajectory` of each row (turns, tool images)
    columns: dict[str, list] = field(default_factory=dict)  # extra per-row reward columns (tool-call counts)
    layout: Any = None  # multi-turn: the `multiturn.TurnLayout` the shared-prompt scoring reads

    @property
    def multi_turn(self) -> bool:
        return self.trajectories is not None


def completion_mask_from_ids(ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids -> (mask up to and including the first EOS [B, T], truncated [B] = no EOS at all)."""
    is_eos = torch.isin(ids, torch.tensor(eos_ids, device=ids.device))
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0
    mask = (~seen_before).long()
    return mask, ~is_eos.any(-1)


def single_turn_rollout(
    prompts: PromptBatch,
    group_size: int,
    ids: torch.Tensor,
    eos_ids: list[int],
    tokenizer: Any,
    sampler_logprobs: torch.Tensor | None = None,
) -> Rollout:
    """Raw completion ids [B, T] of any single-turn engine -> a Rollout: cut at the first EOS (kept), padded after
    it, decoded without special tokens; sampler log-probs zeroed off the mask."""
    pad = tokenizer.pad_token_id
    mask, truncated = completion_mask_from_ids(ids, eos_ids)
    ids = ids.masked_fill(mask == 0, pad)
    texts = tokenizer.batch_decode([row[m.bool()] for row, m in zip(ids, mask, strict=True)], skip_special_tokens=True)
    prompt_len = prompts.inputs["attention_mask"].sum(-1).tolist()
    return Rollout(
        group_size=group_size,
        texts=texts,
        completion_mask=mask,
        truncated=truncated,
        prompt_lengths=[int(n) for n in prompt_len for _ in range(group_size)],
        sampler_logprobs=None if sampler_logprobs is None else sampler_logprobs * mask,
        prompts=prompts,
        completion_ids=ids,
    )
