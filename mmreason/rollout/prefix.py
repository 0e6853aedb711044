"""Shared prompt prefixes: each prompt (and its vision tokens) is encoded once per group of G completions.

In GRPO the G completions of a prompt share its prompt and media, and for visual tasks the prompt (hundreds to
thousands of vision tokens) is far longer than a completion. This module owns the one-prompt-many-completions
forward used by both the rollout sampler and the loss:

1. `prompt_positions`: the prompts' rotary positions (Qwen2-VL / Qwen2.5-VL 3-D multimodal positions from the
   model's own `get_rope_index`) and the position where each prompt's text continues;
2. `prefill`: one forward over the P prompts (vision encoder included) whose cache is then repeated G times
   along the batch (`repeat_cache`, differentiable: the backward sums the G copies' gradients, so the gradients
   are those of G separate prompt forwards): attention keys/values, and for hybrid models (Qwen3.5's Gated
   DeltaNet layers) each linear-attention layer's convolution and recurrent states;
3. `extend`: completion tokens on top of that cache with explicit positions (never the model's `rope_deltas`
   state) and the attention mask prompt-padding + completion mask.

`sample_shared` is the rollout sampler on top (temperature / top-p / suppressed tokens / EOS, as HF sampling), and
`shared_completion_logprobs` the drop-in equivalent of `rollout.completion_logprobs` for the loss.

Shapes: P prompts, G completions each, B = P * G rows (row b belongs to prompt b // G), Lp prompt length
(left-padded), T completion length, V vocabulary size.

What this does not cover: gradient checkpointing (transformers drops the KV cache of checkpointed layers, so the
caller must use the unshared path; `extend` raises rather than silently attending to nothing). Multi-turn
trajectories, whose continuations hold tool turns and their images, build on these pieces in
`mmreason.rollout.turn_state`. Hybrid caches give the unshared log-probs (left
padding too: the linear-attention layers zero padded positions, so a padded prompt's states are its unpadded ones),
but the GRPO loss of a hybrid-cache family repeats the prompts (`train.grpo.scoring_plan` says why).
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin

from mmreason.models.policy import family_of, unwrap_model
from mmreason.train.rl import sampling_logits, token_entropy, token_logprobs

# get_rope_index arguments, when the processor produced them (second_per_grid_ts is Qwen2.5-VL's, for videos).
_ROPE_KEYS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def _rope_owner(model: Any) -> Any | None:
    """The module that holds `get_rope_index` (the inner model of a 3-D rotary family), through any wrappers."""
    base = unwrap_model(model)
    for module in (base, getattr(base, "model", None)):
        if module is not None and hasattr(module, "get_rope_index"):
            return module
    return None


def prompt_positions(model: Any, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Rotary positions of left-padded prompts -> (position_ids, next_pos [P]).

    position_ids is [3, P, Lp] (temporal, height, width) for Qwen-VL models, computed by the model's own
    `get_rope_index` from the prompt's `mm_token_type_ids` and media grids, or [P, Lp] (1-D, from the attention
    mask) for a model without one. Padding positions are 0 (they are masked anyway). next_pos is the position of
    each prompt's first completion token: completion tokens are text that continues the prompt's last (text)
    token, so token j sits at next_pos + j on all three axes, exactly as `get_rope_index` places it over the full
    prompt + completion sequence (the unshared scoring, and SFT). HF generate's `rope_deltas` continue after the
    largest position instead; the two differ only when a video's temporal positions run past the text after it.
    """
    position_ids = sequence_positions(model, inputs)
    if position_ids.dim() == 3:
        return position_ids, position_ids[0, :, -1] + 1  # left padding: the last column is the last prompt token
    return position_ids, inputs["attention_mask"].long().sum(-1)


def sequence_positions(model: Any, inputs: dict[str, Tensor]) -> Tensor:
    """Rotary positions of padded sequences (left or right padding; padding positions are masked, their values
    arbitrary): [3, N, L] from the model's own `get_rope_index` for Qwen-VL models, else [N, L] counted along the
    attention mask. The one place positions are computed outside the model's forward."""
    mask = inputs["attention_mask"]
    if family_of(model).rope == "mrope":
        owner = _rope_owner(model)
        if owner is None or "mm_token_type_ids" not in inputs:  # 1-D positions would be silently wrong here
            raise TypeError(f"{type(model).__name__}: 3-D rotary positions need get_rope_index and mm_token_type_ids")
        extra = {k: inputs[k] for k in _ROPE_KEYS if k in inputs}
        position_ids, _ = owner.get_rope_index(inputs["input_ids"], attention_mask=mask, **extra)
        return position_ids
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_positions(next_pos: Tensor, group_size: int, start: int, length: int, three_d: bool) -> Tensor:
    """Positions of completion tokens start .. start+length-1 of every row: next_pos [P] -> [3, B, length] (or
    [B, length] for 1-D models)."""
    steps = torch.arange(start, start + length, device=next_pos.device)
    pos = next_pos.repeat_interleave(group_size)[:, None] + steps
    return pos.unsqueeze(0).expand(3, -1, -1) if three_d else pos


def prefill(model: Any, inputs: dict[str, Tensor], position_ids: Tensor, group_size: int) -> tuple[Tensor, Any]:
    """One forward over the P prompts -> (logits at each prompt's last position [P, V], cache with B rows).

    The cache's per-sequence state is repeated G times along the batch (`repeat_cache`); under grad the repeat is
    part of the graph, so gradients flow back to the single prompt forward.
    """
    out = model(**inputs, position_ids=position_ids, use_cache=True, logits_to_keep=1)
    cache = out.cache
    if cache is None or cache.get_seq_length() != inputs["input_ids"].shape[1]:
        raise RuntimeError(
            "the prompt forward filled no KV cache (gradient checkpointing drops it): use the unshared path"
        )
    ids = inputs["input_ids"]
    repeat_cache(cache, torch.arange(ids.shape[0], device=ids.device).repeat_interleave(group_size))
    return out.logits[:, -1], cache


def repeat_cache(cache: Any, rows: Tensor) -> None:
    """Make row b of the cache a copy of its row rows[b], in every layer (the shared prefix: rows [B] = prompt of
    each completion row, p -> rows p*G .. p*G+G-1).

    Attention layers hold keys/values; linear-attention layers (hybrid models such as Qwen3.5) hold a convolution
    and a recurrent state per sequence. `reorder_cache` (an index_select per state: differentiable, its backward
    sums the G copies' gradients) is the one row operation every transformers cache layer implements;
    `batch_repeat_interleave` is missing from linear-attention layers. The repeated linear-attention layers then
    replace their recurrent state instead of writing it in place (`_replace_recurrent_state`).
    """
    cache.reorder_cache(rows)
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            layer.update_recurrent_state = MethodType(_replace_recurrent_state, layer)


def growable(cache: Any) -> Any:
    """Let the cache's plain attention layers grow into preallocated buffers (doubling when full) instead of
    concatenating their whole keys and values at every new token, which makes decoding quadratic in copies; the
    values are the same. For sampling only (no grad): the buffers are written in place. Sliding-window, hybrid and
    other layers keep their own update."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer and layer.is_initialized:
            layer.buffers = [layer.keys, layer.values]
            layer.update = MethodType(_buffered_update, layer)
            layer.reorder_cache = MethodType(_buffered_reorder, layer)
    return cache


def _buffered_update(layer: Any, keys: Tensor, values: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    n, add = layer.keys.shape[-2], keys.shape[-2]
    if n + add > layer.buffers[0].shape[-2]:
        capacity = max(2 * layer.buffers[0].shape[-2], n + add)
        grown = []
        for old in layer.buffers:
            new = old.new_empty(*old.shape[:2], capacity, old.shape[-1])
            new[..., :n, :] = old[..., :n, :]
            grown.append(new)
        layer.buffers = grown
    layer.buffers[0][..., n : n + add, :] = keys
    layer.buffers[1][..., n : n + add, :] = values
    layer.keys, layer.values = (b[..., : n + add, :] for b in layer.buffers)
    return layer.keys, layer.values


def _buffered_reorder(layer: Any, rows: Tensor) -> None:
    n = layer.keys.shape[-2]
    layer.buffers = [b.index_select(0, rows.to(b.device)) for b in layer.buffers]
    layer.keys, layer.values = (b[..., :n, :] for b in layer.buffers)


def _replace_recurrent_state(layer: Any, recurrent_states: Tensor, state_idx: int = 0, **kwargs: Any) -> Tensor:
    """A linear-attention layer's recurrent-state update that stores the new state instead of copying it into the
    old one: under grad the old state (the repeated prompt state) is saved by the Gated DeltaNet kernel for its
    backward, and an in-place write would invalidate it."""
    layer.recurrent_states[state_idx] = recurrent_states
    return recurrent_states


def extend(model: Any, cache: Any, ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
    """Run tokens ids [B, n] on top of `cache` -> logits [B, n, V]; the cache grows by n.

    attention_mask [B, cache length + n] covers the cached prompt (its left padding) and the new tokens.
    """
    expected = cache.get_seq_length() + ids.shape[1]
    out = model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True)
    if cache.get_seq_length() != expected:
        # the model ignored the cache (another transformers API, or a checkpointed layer dropped it): the tokens
        # would have attended to nothing but themselves
        raise RuntimeError(f"the shared cache was not extended (length {cache.get_seq_length()}, {expected=})")
    return out.logits


def shared_completion_logprobs(
    model: Any,
    prompt_inputs: dict[str, Tensor],
    group_size: int,
    completion_ids: Tensor,
    completion_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    suppressed: list[int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs [B, T] of the completion tokens (and entropies [B, T] if asked), each prompt encoded once.

    prompt_inputs are the P prompts' model inputs (not repeated); completion_ids / completion_mask [B, T]. Equal
    to `rollout.completion_logprobs` on the G-times repeated prompts, gradients included, at about 1/G of the
    prompt's compute and activation memory. The first completion token is scored by the prompt's last logits, the
    others by the completion forward on tokens 0 .. T-2 over the shared cache.
    """
    position_ids, next_pos = prompt_positions(model, prompt_inputs)
    first, cache = prefill(model, prompt_inputs, position_ids, group_size)
    parts = [first.repeat_interleave(group_size, dim=0)[:, None]]  # [B, 1, V]
    t = completion_ids.shape[1]
    if t > 1:
        prompt_mask = prompt_inputs["attention_mask"].repeat_interleave(group_size, dim=0)
        mask = torch.cat([prompt_mask, completion_mask[:, :-1].to(prompt_mask)], dim=1)
        positions = completion_positions(next_pos, group_size, 0, t - 1, position_ids.dim() == 3)
        parts.append(extend(model, cache, completion_ids[:, :-1], mask, positions))
    logp, entropy = [], []
    for i, logits in enumerate(parts):  # scored part by part: no [B, T, V] concatenation of the logits
        scaled = sampling_logits(logits, temperature, suppressed)
        logp.append(token_logprobs(scaled, completion_ids[:, i : i + logits.shape[1]]))
        if with_entropy:
            entropy.append(token_entropy(scaled))
    return torch.cat(logp, dim=1), (torch.cat(entropy, dim=1) if with_entropy else None)


def next_tokens(
    logits: Tensor,
    temperature: float,
    top_p: float,
    greedy: bool,
    banned: Tensor,
    generators: list[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """One sampling step, processed as HF's sampling does: logits [B, V] -> (tokens [B], log-probs [B]).

    banned [V] bool: suppressed tokens (-inf, as HF's SuppressTokensLogitsProcessor), then / temperature, then
    top-p (HF's TopPLogitsWarper: drop the low tail whose mass is <= 1 - top_p, keep at least one token), then
    softmax + multinomial (the same RNG draw as HF, so a seed gives the same samples). The log-probs are those of
    the temperature-scaled distribution without top-p, as `completion_logprobs` scores them. top_k is never applied.
    generators: one per prompt (its G rows are contiguous): each group draws from its own generator, so a prompt's
    samples do not depend on the other prompts of the batch (nor on which process generates them).
    """
    scores = logits.float().masked_fill(banned, float("-inf"))
    scaled = scores / temperature if temperature != 1.0 else scores
    if greedy:
        tokens = scores.argmax(dim=-1)
    else:
        filtered = _top_p(scaled, top_p) if top_p < 1.0 else scaled
        probs = torch.softmax(filtered, dim=-1)
        if generators:
            groups = probs.split(probs.shape[0] // len(generators))
            tokens = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(groups, generators, strict=True)])
            tokens = tokens.squeeze(1)
        else:
            tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(1)
    return tokens, logp


def _top_p(scores: Tensor, top_p: float) -> Tensor:
    sorted_scores, order = torch.sort(scores, descending=False)
    remove = sorted_scores.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


@torch.no_grad()
def sample_shared(
    model: Any,
    inputs: dict[str, Tensor],
    group_size: int,
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    suppressed: list[int] | None = None,
    generators: list[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample G completions per prompt with one prefill per prompt -> (token ids [B, T], log-probs [B, T]).

    Rows stop at their first EOS and are padded with pad_id after it (log-prob 0 there); the loop ends when every
    row has stopped or after max_new_tokens. The cache of each prompt is prefilled once and repeated G times.
    """
    position_ids, next_pos = prompt_positions(model, inputs)
    logits, cache = prefill(model, inputs, position_ids, group_size)
    growable(cache)
    logits = logits.repeat_interleave(group_size, dim=0)
    mask = inputs["attention_mask"].repeat_interleave(group_size, dim=0)
    b, device = mask.shape[0], mask.device
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
    banned[list(suppressed or [])] = True
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    tokens, logps = [], []
    for step in range(max_new_tokens):
        tok, logp = next_tokens(logits, temperature, top_p, greedy, banned, generators)
        tokens.append(tok.masked_fill(done, pad_id))
        logps.append(logp.masked_fill(done, 0.0))
        done = done | torch.isin(tokens[-1], eos)
        if step + 1 == max_new_tokens or bool(done.all()):
            break
        mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        positions = completion_positions(next_pos, group_size, step, 1, position_ids.dim() == 3)
        logits = extend(model, cache, tokens[-1][:, None], mask, positions)[:, -1]
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)
