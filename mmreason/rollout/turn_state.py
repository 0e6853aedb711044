"""Multi-turn rollouts that keep their state across tool turns, and the multi-turn loss over shared prompts.

Sampling (`sample_kept`): each prompt (its images and the tool instructions) is prefilled once and its KV cache
repeated for its G trajectories (`prefix.prefill`). Every turn then runs only new tokens on top of each
trajectory's own cache: the sampled segment token by token, then the end of that segment and the tool's answer
(its text and its new images) as one chunk. Trajectories that have ended leave the batch (their cache rows are
dropped). `multiturn.sample_trajectories` instead re-encodes every trajectory, every earlier image included, at
every turn; both sample the same tokens from the same per-prompt generators (tests/test_turn_state.py).

Scoring (`shared_trajectory_logprobs`): the G trajectories of a prompt share one prefill of it; the rest of every
trajectory (the policy's segments and the tool turns, tool images included) runs as one continuation forward on
top of that cache, its vocabulary projection only where a policy token is predicted (a tool turn's hundreds of
vision tokens never reach the lm_head). The log-probs come back in `multiturn.trajectory_logprobs`' layout
([B, L-1] over the right-padded full sequences) and equal them on the policy's tokens up to float rounding,
gradients included (every other position is 0).

Sampling decodes under inference mode into a growable cache (`prefix.growable`); the tool turns are built outside
inference mode, since their tensors feed the loss later.

Positions: every token sits where the model's own rule puts it over the trajectory's whole sequence
(`prefix.sequence_positions`: Qwen's 3-D `get_rope_index`, else 1-D), so a cached turn sees exactly the positions
of the re-encoding path and of the loss. The loss slices them from the full sequences; sampling computes a tool
turn's on the new chunk alone and shifts them to the row's next position, which is where the rule puts them.

Within a turn, rows that stopped earlier wait with masked padding in their cache rows: holes that the attention
mask hides from every later token. A hybrid cache cannot skip them (`multiturn.keeps_state`).

Shapes: P prompts, G trajectories each, B = P * G rows, R the rows still running, V the vocabulary; L the longest
full trajectory, C the longest continuation (a trajectory after its prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmreason.data.sample import Sample
from mmreason.models.policy import family_of
from mmreason.processors import TOKEN_TYPE_KEYS, collate
from mmreason.rollout.engine import eos_token_ids, suppressed_token_ids
from mmreason.rollout.multiturn import (
    TOOL_CALL_END,
    Trajectory,
    TurnLayout,
    advance,
    batch_inputs,
    begin,
    close,
    row_inputs,
)
from mmreason.rollout.prefix import growable, next_tokens, prefill, prompt_positions, sequence_positions
from mmreason.rollout.tools import ToolBudget
from mmreason.rollout.types import SamplingParams
from mmreason.train.rl import sampling_logits, token_entropy, token_logprobs


@dataclass
class _Rows:
    """The running trajectories' shared cache: row k of every tensor belongs to trajectory rows[k]."""

    cache: Any
    mask: Tensor  # [R, cache length] 1 on the tokens a row attends to, 0 on its padding and holes
    rows: list[int]  # the trajectory index of each cache row
    fed: list[int]  # how many of each trajectory's tokens the cache holds
    fed_media: list[int]  # how many of its vision chunks
    next_pos: Tensor  # [R] the position of each row's next text token
    logits: Tensor  # [R, V] each row's next-token logits
    three_d: bool  # 3-D rotary positions (Qwen-VL)
    types: Tensor | None  # [R, cache length] the cached tokens' types, where they shape the mask (Gemma 3)

    def keep(self, keep: list[int]) -> None:
        """Drop every cache row not in `keep` (indices into the current rows)."""
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.reorder_cache(index)
        self.mask, self.next_pos, self.logits = self.mask[index], self.next_pos[index], self.logits[index]
        self.types = None if self.types is None else self.types[index]
        self.rows = [self.rows[k] for k in keep]
        self.fed = [self.fed[k] for k in keep]
        self.fed_media = [self.fed_media[k] for k in keep]


def _start_rows(model: Any, trajs: list[Trajectory], group_size: int, pad_id: int) -> _Rows:
    """Prefill every prompt once (the first trajectory of each group) and repeat its cache for its G rows."""
    inputs = {k: v.to(model.device) for k, v in batch_inputs(trajs[::group_size], pad_id, "left").items()}
    positions, next_pos = prompt_positions(model, inputs)
    logits, cache = prefill(model, inputs, positions, group_size)
    growable(cache)
    mask = inputs["attention_mask"].repeat_interleave(group_size, dim=0)
    n = [len(t.ids) for t in trajs]
    key = trajs[0].token_type_key
    types = inputs[key].repeat_interleave(group_size, dim=0) if family_of(model).mask_from_token_types else None
    return _Rows(cache, mask, list(range(len(trajs))), n, [1] * len(trajs),
                 next_pos.repeat_interleave(group_size), logits.repeat_interleave(group_size, dim=0),
                 positions.dim() == 3, types)


def _draw(logits: Tensor, live: Tensor, gens: list[torch.Generator] | None, params: SamplingParams,
          banned: Tensor, pad_id: int) -> Tensor:
    """Next tokens [R] of the live rows (pad_id elsewhere): each prompt's live rows draw together, in row order,
    from that prompt's generator, as `multiturn.RowSampler` draws them inside HF generate."""
    tokens = torch.full((logits.shape[0],), pad_id, dtype=torch.long, device=logits.device)
    if gens is None:
        rows = live.nonzero().squeeze(1)
        tokens[rows] = next_tokens(logits[rows], params.temperature, params.top_p, params.greedy, banned)[0]
        return tokens
    for gen in dict.fromkeys(gens):  # each prompt once, in order of first row
        rows = [k for k, g in enumerate(gens) if g is gen and live[k]]
        if rows:
            drawn, _ = next_tokens(logits[rows], params.temperature, params.top_p, params.greedy, banned, [gen])
            tokens[rows] = drawn
    return tokens


def _feed_tokens(model: Any, st: _Rows, tokens: Tensor, real: Tensor) -> None:
    """One new token per row on top of the cache: the real rows' tokens at their next positions, masked padding
    (a hole) on the others. Text: no token types (a text token's mask is causal in every family)."""
    st.mask = torch.cat([st.mask, real.long()[:, None]], dim=1)
    if st.types is not None:
        st.types = torch.cat([st.types, torch.zeros_like(st.types[:, :1])], dim=1)
    pos = st.next_pos[:, None]
    out = model(input_ids=tokens[:, None], attention_mask=st.mask,
                position_ids=pos.unsqueeze(0).expand(3, -1, -1) if st.three_d else pos,
                cache=st.cache, use_cache=True)
    st.logits = out.logits[:, -1]
    st.next_pos = st.next_pos + real.long()
    st.fed = [f + int(r) for f, r in zip(st.fed, real.tolist(), strict=True)]


def _sample_segment(model: Any, st: _Rows, gens: list[torch.Generator] | None, params: SamplingParams,
                    stops: list[int], banned: Tensor, pad_id: int) -> list[tuple[list[int], bool]]:
    """One segment per running row, up to a stop token (EOS, end of turn, end of a tool call) or max_new_tokens:
    (tokens, stopped) per row. The last token drawn is not fed yet: the next chunk starts with it."""
    segments: list[list[int]] = [[] for _ in st.rows]
    stopped = [False] * len(st.rows)
    live = torch.ones(len(st.rows), dtype=torch.bool, device=st.mask.device)
    stop_ids = torch.tensor(stops, device=st.mask.device)
    for step in range(params.max_new_tokens):
        tokens = _draw(st.logits, live, gens, params, banned, pad_id)
        for k in live.nonzero().squeeze(1).tolist():
            segments[k].append(int(tokens[k]))
            stopped[k] = int(tokens[k]) in stops
        real, live = live, live & ~torch.isin(tokens, stop_ids)
        if step + 1 == params.max_new_tokens or not bool(live.any()):
            break
        _feed_tokens(model, st, tokens, real)
    return list(zip(segments, stopped, strict=True))


def _feed_chunks(model: Any, st: _Rows, trajs: list[Trajectory], pad_id: int) -> None:
    """Every running row's tokens not yet in the cache (the end of its segment, the tool turn and its images) as
    one left-padded chunk [R, n]. Positions: the model's own rule over the chunk alone, shifted to start at the row's
    next position. That is where the rule puts them over the whole sequence: text continues from the largest
    position so far, and an image's grid starts there (`get_rope_index`; 1-D positions simply count on)."""
    running = [trajs[r] for r in st.rows]
    device = st.mask.device
    rows = [row_inputs(t, f, None, t.vision[m:]) for t, f, m in zip(running, st.fed, st.fed_media, strict=True)]
    chunk = {k: v.to(device) for k, v in collate(rows, pad_id=pad_id, side="left").items()}
    mask = chunk["attention_mask"]
    pos = sequence_positions(model, chunk)
    pos = pos + (st.next_pos.view(1, -1, 1) if st.three_d else st.next_pos[:, None])
    key = running[0].token_type_key
    extra = {k: v for k, v in chunk.items() if k not in ("input_ids", "attention_mask", key)}  # the new images
    if st.types is not None:  # the whole sequence's types: transformers indexes them by cache position
        st.types = torch.cat([st.types, chunk[key].to(st.types)], dim=1)
        extra[key] = st.types
    elif key is not None:
        extra[key] = chunk[key]
    st.mask = torch.cat([st.mask, mask], dim=1)
    expected = st.cache.get_seq_length() + mask.shape[1]
    out = model(input_ids=chunk["input_ids"], attention_mask=st.mask, position_ids=pos, cache=st.cache,
                use_cache=True, logits_to_keep=1, **extra)
    if st.cache.get_seq_length() != expected:
        raise RuntimeError(f"the trajectory cache was not extended (length {st.cache.get_seq_length()}, {expected=})")
    st.logits = out.logits[:, -1]
    top = pos.amax(0) if st.three_d else pos  # [R, n] the largest position of each token over the three axes
    st.next_pos = top.masked_fill(mask == 0, -1).amax(-1) + 1
    st.fed, st.fed_media = [len(t.ids) for t in running], [len(t.vision) for t in running]


def _run_turns(model: Any, processor: Any, trajs: list[Trajectory], row_allowed: list[tuple[str, ...]],
               budgets: list[ToolBudget], gens: list[torch.Generator] | None, params: SamplingParams,
               max_turns: int) -> None:
    """Prefill, then turn after turn: a segment per running row, its tool call run, the rows that go on fed their
    new tokens. Under inference mode (less autograd bookkeeping per decoding step) except where the tool turns are
    built: their tensors (tool images) are inputs of the loss later. The vision cache keeps nothing computed in
    inference mode."""
    g, tok = params.group_size, processor.tokenizer
    pad_id = tok.pad_token_id
    stops = eos_token_ids(processor, model) + [tok.convert_tokens_to_ids(TOOL_CALL_END)]
    with torch.inference_mode():
        st = _start_rows(model, trajs, g, pad_id)
        banned = torch.zeros(st.logits.shape[-1], dtype=torch.bool, device=st.mask.device)
        banned[suppressed_token_ids(processor)] = True
        for turn in range(max_turns + 1):
            row_gens = None if gens is None else [gens[r // g] for r in st.rows]
            segments = _sample_segment(model, st, row_gens, params, stops, banned, pad_id)
            with torch.inference_mode(False):
                for r, (segment, stopped) in zip(st.rows, segments, strict=True):
                    advance(processor, trajs[r], segment, stopped, row_allowed[r], budgets[r])
            keep = [k for k, r in enumerate(st.rows) if not trajs[r].done]
            if not keep or turn == max_turns:
                return
            st.keep(keep)
            _feed_chunks(model, st, trajs, pad_id)


@torch.no_grad()
def sample_kept(
    model: Any,
    processor: Any,
    samples: list[Sample],
    allowed: tuple[str, ...] | list[tuple[str, ...]],
    params: SamplingParams,
    *,
    max_turns: int = 3,
    min_pixels: int = 28 * 28 * 4,
    max_pixels: int = 28 * 28 * 256,
) -> list[Trajectory]:
    """G multi-turn trajectories per sample (row b belongs to sample b // G), each prompt prefilled once and each
    trajectory's cache kept across its turns; the same arguments and trajectories as
    `multiturn.sample_trajectories` (with `params.seed`, the same tokens from the same per-prompt generators)."""
    trajs, row_allowed, budgets, gens = begin(model, processor, samples, allowed, params, max_turns, min_pixels,
                                              max_pixels)
    was_training = model.training
    model.eval()
    try:
        _run_turns(model, processor, trajs, row_allowed, budgets, gens, params, max_turns)
    finally:
        if was_training:
            model.train()
    close(trajs)
    return trajs


def _continuation_positions(model: Any, layout: TurnLayout, sequences: dict[str, Tensor]) -> Tensor:
    """Rotary positions [3, B, C] (or [B, C]) of every row's continuation, sliced from its full sequence's."""
    if "continuation" not in layout.positions:
        full = sequence_positions(model, sequences)
        width = layout.continuation["input_ids"].shape[1]
        index = layout.prompt_lengths[:, None] + torch.arange(width, device=full.device)
        index = index.clamp(max=full.shape[-1] - 1)
        index = index.expand(3, -1, -1) if full.dim() == 3 else index
        layout.positions["continuation"] = full.gather(-1, index)
    return layout.positions["continuation"]


def shared_trajectory_logprobs(
    model: Any,
    layout: TurnLayout,
    sequences: dict[str, Tensor],
    temperature: float = 1.0,
    suppressed: list[int] | None = None,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs [B, L-1] (and entropies) of every next token of the full trajectories `sequences` (right-padded,
    as `multiturn.scoring_batch` lays them out; mask them with its policy_mask[:, 1:]), each prompt encoded once.

    The continuation's first token is scored by its prompt's last logits, the others by the continuation forward
    over the shared cache; only the policy's tokens are scored: every other position is 0 (none carries loss)."""
    g = layout.group_size
    prompt_pos, _ = prompt_positions(model, layout.prompts)
    first, cache = prefill(model, layout.prompts, prompt_pos, g)
    cont = layout.continuation
    ids, cont_mask = cont["input_ids"], cont["attention_mask"]
    mask = torch.cat([layout.prompts["attention_mask"].repeat_interleave(g, dim=0), cont_mask], dim=1)
    extra = {k: v for k, v in cont.items() if k not in ("input_ids", "attention_mask")}
    key = next((k for k in TOKEN_TYPE_KEYS if k in cont), None)
    if key is not None and family_of(model).mask_from_token_types:  # indexed by cache position: the whole sequence's
        extra[key] = torch.cat([layout.prompts[key].repeat_interleave(g, dim=0), cont[key]], dim=1)
    positions = _continuation_positions(model, layout, sequences)
    # logits only where a policy token is predicted (row b's rest position k predicts its token k + 1): the tool
    # turns' tokens, often hundreds of vision tokens, never meet the vocabulary projection
    need = torch.cat([layout.policy[:, 1:], torch.zeros_like(layout.policy[:, :1])], dim=1)
    rest = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                 logits_to_keep=need, **extra).logits  # [N, V]: the kept positions, row by row
    first = sampling_logits(first.repeat_interleave(g, dim=0), temperature, suppressed)  # predicts token 0
    rest = sampling_logits(rest.reshape(-1, first.shape[-1]), temperature, suppressed)
    at_first = torch.zeros_like(layout.policy)
    at_first[:, 0] = True
    at_rest = torch.cat([torch.zeros_like(layout.policy[:, :1]), need[:, :-1]], dim=1)
    length = sequences["input_ids"].shape[1] - 1

    def laid_out(first_values: Tensor, rest_values: Tensor) -> Tensor:
        values = torch.zeros(ids.shape, dtype=first_values.dtype, device=ids.device)
        values = values.masked_scatter(at_first, first_values) + values.masked_scatter(at_rest, rest_values)
        return _to_sequence(values, cont_mask, layout.prompt_lengths, length)

    first, rest = first[:, None], rest[None]  # [B, 1, V] and [1, N, V]: the [B, T, V] layout of rl's functions
    logp = laid_out(token_logprobs(first, ids[:, :1]).flatten(), token_logprobs(rest, ids[at_rest][None]).flatten())
    entropy = laid_out(token_entropy(first).flatten(), token_entropy(rest).flatten()) if with_entropy else None
    return logp, entropy


def _to_sequence(values: Tensor, cont_mask: Tensor, prompt_lengths: Tensor, length: int) -> Tensor:
    """Per-continuation-token values [B, C] -> next-token positions of the full sequences [B, length]: the
    continuation's token k is predicted at position prompt_length - 1 + k; 0 elsewhere."""
    k = torch.arange(length, device=values.device)[None, :] - (prompt_lengths[:, None] - 1)
    inside = (k >= 0) & (k < cont_mask.sum(-1, keepdim=True))
    picked = values.gather(1, k.clamp(0, values.shape[1] - 1))
    return torch.where(inside, picked, torch.zeros((), dtype=values.dtype, device=values.device))
