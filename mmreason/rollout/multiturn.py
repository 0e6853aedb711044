"""Multi-turn rollouts with tools ("thinking with images"): generate until the policy calls a tool, run it, append
its result (text and new images) as a tool turn, and resume, up to `max_turns` tool calls per trajectory.

Trajectories are kept at the token level (the policy's own tokens are never re-tokenized), with a `policy_mask`
that is 1 only on tokens the policy generated: tool-output tokens (text and vision) carry no loss. The tool turn is
rendered as a user turn `<tool_response>...</tool_response>` so it works with any chat template.

`sample_trajectories` re-encodes each trajectory, every image so far included, at every turn (HF generate);
`mmreason.rollout.turn_state` keeps each trajectory's cache across turns instead (`tool_rollout(keep_state=True)`)
and scores with each prompt encoded once per group (`TurnLayout`). Both take and return the `Trajectory` of this
module.

Shapes: B trajectories (P prompts x G), L the longest full sequence; `trajectory_batch` lays rows out right-padded
with every row's images concatenated in row order, the order the model assigns them to placeholders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import LogitsProcessor

from mmreason.data.sample import Sample, with_user_text
from mmreason.models.family import family_for_processor
from mmreason.models.policy import family_of
from mmreason.processors import MEDIA_KEYS, build_inputs, collate, processor_inputs
from mmreason.rollout.engine import eos_token_ids, prompt_generators, suppressed_token_ids
from mmreason.rollout.prefix import next_tokens
from mmreason.rollout.tools import ToolBudget, ToolError, ToolResult, parse_tool_call, run_tool
from mmreason.rollout.types import Rollout, SamplingParams
from mmreason.train.rl import sampling_logits, token_entropy, token_logprobs

TOOL_CALL_END = "</tool_call>"
TOOL_DOCS = {
    "zoom_in": 'zoom_in: {"image": 1, "bbox": [x1, y1, x2, y2]} crops a region of an image (pixels), enlarged',
    "crop_video": 'crop_video: {"start": s, "end": e} shows more frames of the video between s and e seconds',
    "select_frames": 'select_frames: {"frames": [i, ...]} shows frames i (1-based) of the video in more detail',
}


def tool_instructions(allowed: tuple[str, ...]) -> str:
    """The sentence appended to the prompt that tells the model how to call its tools."""
    docs = "; ".join(TOOL_DOCS.get(name, name) for name in allowed)
    return (
        ' Before answering you may call a tool by writing <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
        f" and reading its result. Tools: {docs}."
    )


def with_tools(messages: list[dict[str, Any]], allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    """A copy of the chat messages with the tool instructions added to the last user text."""
    return with_user_text(messages, tool_instructions(allowed))


@dataclass
class Trajectory:
    """One sampled conversation: tokens, which of them the policy wrote, and the media they refer to."""

    sample: Sample
    ids: list[int]
    mm: list[int]  # per-token vision types (0 on text), fed to the model under `token_type_key`
    policy: list[int]
    vision: list[dict[str, torch.Tensor]]  # processor outputs whose media keys feed the model, in order
    token_type_key: str | None = "mm_token_type_ids"  # the model family's (None: the model takes no token types)
    segments: list[str] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    tool_images: list[Image.Image] = field(default_factory=list)
    tool_calls: int = 0
    tool_errors: int = 0
    budget_exceeded: bool = False
    truncated: bool = False
    done: bool = False

    @property
    def answer(self) -> str:
        """The final assistant segment: what the task's answer rewards score."""
        return self.segments[-1] if self.segments else ""


def _token_types(inputs: dict[str, torch.Tensor], key: str | None) -> list[int]:
    """The per-token vision types of one processed row under the family's `key` (zeros when it has none)."""
    ids = inputs["input_ids"][0]
    return inputs[key][0].tolist() if key is not None and key in inputs else [0] * len(ids)


def start(processor: Any, sample: Sample, allowed: tuple[str, ...] = ()) -> Trajectory:
    messages = with_tools(sample.messages, allowed) if allowed else sample.messages
    prompt = build_inputs(processor, messages, images=sample.images or None, video=sample.video)
    ids = prompt["input_ids"][0].tolist()
    key = family_for_processor(processor).token_type_key
    media = {k: v for k, v in prompt.items() if k in MEDIA_KEYS}
    return Trajectory(sample, ids, _token_types(prompt, key), [0] * len(ids), [media], token_type_key=key)


def _fresh_copy(t: Trajectory) -> Trajectory:
    """A trajectory of its own from a just-started one: its token lists copied, its prompt's vision inputs shared
    (never written to)."""
    return Trajectory(t.sample, list(t.ids), list(t.mm), list(t.policy), list(t.vision), t.token_type_key)


def tool_turn(processor: Any, result: ToolResult) -> dict[str, Any]:
    """Tokens, per-token vision types ("token_types") and vision inputs ("media") of the end of the assistant turn +
    a user turn holding the tool's answer + the next assistant header, as the processor's model family writes them;
    the processor expands the images' placeholders (and adds no BOS: this is the middle of a conversation)."""
    family = family_for_processor(processor)
    out = processor_inputs(processor, family.tool_turn(result.text, len(result.images)), result.images)
    media = {k: v for k, v in out.items() if k in MEDIA_KEYS}
    return {"input_ids": out["input_ids"], "token_types": _token_types(out, family.token_type_key), "media": media}


def row_inputs(t: Trajectory, start: int, stop: int | None, vision: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Tokens start..stop of a trajectory as one processed row, with the vision inputs of `vision` (the chunks
    whose placeholders those tokens hold, in order)."""
    ids = t.ids[start:stop]
    row = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if t.token_type_key is not None:
        row[t.token_type_key] = torch.tensor([t.mm[start:stop]])
    for chunk in vision:
        for key, value in chunk.items():
            row[key] = torch.cat([row[key], value]) if key in row else value
    return row


def batch_inputs(trajs: list[Trajectory], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    """Collate trajectories (their current tokens and every image so far) for generation or scoring."""
    return collate([row_inputs(t, 0, None, t.vision) for t in trajs], pad_id=pad_id, side=side)


@dataclass
class TurnLayout:
    """Trajectories laid out for scoring with each prompt encoded once (`turn_state.shared_trajectory_logprobs`):
    the P prompts (left-padded, with their images) and each row's continuation, everything after its prompt (the
    policy's segments and the tool turns with their images; right-padded [B, C], images in row order).
    `positions` memoizes the continuation's rotary positions once a model has computed them."""

    prompts: dict[str, torch.Tensor]
    continuation: dict[str, torch.Tensor]
    prompt_lengths: torch.Tensor  # [B] unpadded prompt length of each row
    policy: torch.Tensor  # [B, C] bool: the continuation tokens the policy wrote (the only ones scored)
    group_size: int
    positions: dict[str, torch.Tensor] = field(default_factory=dict)


def turn_layout(trajs: list[Trajectory], group_size: int, pad_id: int, device: torch.device) -> TurnLayout:
    """Prompt + continuation layout of G trajectories per prompt (contiguous; a group's rows share their prompt)."""
    lengths = [t.policy.index(1) if 1 in t.policy else len(t.ids) for t in trajs]
    firsts = zip(trajs[::group_size], lengths[::group_size], strict=True)
    prompts = collate([row_inputs(t, 0, n, t.vision[:1]) for t, n in firsts], pad_id=pad_id, side="left")
    rows = zip(trajs, lengths, strict=True)
    rest = collate([row_inputs(t, n, None, t.vision[1:]) for t, n in rows], pad_id=pad_id, side="right")
    width = rest["input_ids"].shape[1]
    policy = torch.tensor([t.policy[n:] + [0] * (width - len(t.policy) + n) for t, n in zip(trajs, lengths,
                                                                                           strict=True)])
    return TurnLayout(
        {k: v.to(device) for k, v in prompts.items()},
        {k: v.to(device) for k, v in rest.items()},
        torch.tensor(lengths, device=device),
        policy.bool().to(device),
        group_size,
    )


def _segment(ids: torch.Tensor, stops: list[int], pad_id: int) -> tuple[list[int], bool]:
    """Generated ids -> (tokens up to and including the first stop token, stopped?)."""
    out = []
    for tok in ids.tolist():
        out.append(tok)
        if tok in stops:
            return out, True
    while out and out[-1] == pad_id:
        out.pop()
    return out, False


class RowSampler(LogitsProcessor):
    """Per-prompt seeded sampling inside HF `generate`: each row's next token is drawn from its own prompt's
    generator (`prefix.next_tokens`: suppressed tokens, temperature, top-p, as HF samples) and handed to greedy
    decoding as a one-hot score. HF's own sampling draws the whole batch from the global RNG, which would make a
    trajectory depend on the other rows of its batch.

    Only rows still generating draw (no stop token yet, below max_new_tokens), each prompt's live rows together in
    row order: what a prompt's generator yields then depends on its own trajectories alone, never on how long the
    batch's other rows keep HF's loop running.
    """

    def __init__(
        self,
        generators: list[torch.Generator],
        prompt_len: int,
        stops: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        suppressed: list[int],
    ) -> None:
        self.generators, self.prompt_len, self.max_new_tokens = generators, prompt_len, max_new_tokens
        self.stops, self.suppressed = stops, suppressed
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new = input_ids[:, self.prompt_len :]
        if new.shape[1] >= self.max_new_tokens:  # a step past the end (deferred stop checks): nothing is kept
            return scores
        live = ~torch.isin(new, torch.tensor(self.stops, device=new.device)).any(-1)
        banned = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        banned[self.suppressed] = True
        out = scores.clone()
        for gen in dict.fromkeys(self.generators):  # each prompt once, in order of first row
            rows = [i for i, g in enumerate(self.generators) if g is gen and live[i]]
            if not rows:
                continue
            tokens, _ = next_tokens(scores[rows], self.temperature, self.top_p, False, banned, [gen])
            out[rows] = float("-inf")
            out[rows, tokens] = 0.0
        return out


@torch.no_grad()
def generate_turn(
    model: Any,
    processor: Any,
    trajs: list[Trajectory],
    *,
    params: SamplingParams,
    generators: list[torch.Generator] | None = None,
) -> list[tuple[list[int], bool]]:
    """One sampled segment per active trajectory, stopping at EOS or at the end of a tool call.

    generators: one per trajectory (the rows of a prompt share their prompt's): seeded sampling through
    `RowSampler`; without them HF samples from the global RNG.
    """
    tok = processor.tokenizer
    stops = eos_token_ids(processor, model) + [tok.convert_tokens_to_ids(TOOL_CALL_END)]
    batch = {k: v.to(model.device) for k, v in batch_inputs(trajs, tok.pad_token_id, "left").items()}
    suppressed = suppressed_token_ids(processor)
    max_new_tokens, temperature, top_p = params.max_new_tokens, params.temperature, params.top_p
    sampling: dict[str, Any] = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    if params.greedy:
        sampling = dict(do_sample=False)
    elif generators is not None:
        length = batch["input_ids"].shape[1]
        sampler = RowSampler(generators, length, stops, max_new_tokens, temperature, top_p, suppressed)
        sampling = dict(do_sample=False, logits_processor=[sampler])  # greedy over the sampler's one-hot scores
    out = model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tok.pad_token_id,
        suppress_tokens=suppressed,
        **sampling,
    )
    new = out[:, batch["input_ids"].shape[1] :].cpu()
    return [_segment(row, stops, tok.pad_token_id) for row in new]


def advance(
    processor: Any, traj: Trajectory, segment: list[int], stopped: bool, allowed: tuple[str, ...], budget: ToolBudget
) -> None:
    """Append a generated segment; if it ends in a tool call, run the tool and append its turn."""
    tok = processor.tokenizer
    text = tok.decode(segment, skip_special_tokens=False)
    traj.ids += segment
    traj.mm += [0] * len(segment)
    traj.policy += [1] * len(segment)
    clean = tok.decode(segment, skip_special_tokens=True)
    traj.segments.append(clean)
    traj.turns.append({"role": "assistant", "text": clean})
    if not stopped:
        traj.truncated, traj.done = True, True
        return
    if not text.rstrip().endswith(TOOL_CALL_END):
        traj.done = True
        return
    if budget.used_turns >= budget.max_turns:
        traj.budget_exceeded, traj.done = True, True
        return
    budget.used_turns += 1
    try:
        result = run_tool(parse_tool_call(text), traj.sample, allowed, budget)
    except ToolError as exc:
        result = ToolResult(f"error: {exc}", ok=False)
    traj.tool_calls += int(result.ok)
    traj.tool_errors += int(not result.ok)
    traj.tool_images += result.images
    traj.turns.append({"role": "tool", "text": result.text, "n_images": len(result.images)})
    turn = tool_turn(processor, result)
    traj.ids += turn["input_ids"][0].tolist()
    traj.mm += turn["token_types"]
    traj.policy += [0] * turn["input_ids"].shape[1]
    if turn["media"]:
        traj.vision.append(turn["media"])


def sample_trajectories(
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
    """G multi-turn trajectories per sample (row b belongs to sample b // G); `allowed` is one tuple of tool names
    for every sample, or one tuple per sample (each task allows its own tools).

    With `params.seed`, every turn of sample i's trajectories samples from sample i's own generator
    (`engine.prompt_generators`), so they do not depend on the other samples of the batch, nor on their turn counts.
    """
    group_size = params.group_size
    trajs, row_allowed, budgets, generators = begin(model, processor, samples, allowed, params, max_turns, min_pixels,
                                                    max_pixels)
    was_training = model.training
    model.eval()
    for _ in range(max_turns + 1):
        active = [i for i, t in enumerate(trajs) if not t.done]
        if not active:
            break
        segments = generate_turn(
            model,
            processor,
            [trajs[i] for i in active],
            params=params,
            generators=[generators[i // group_size] for i in active] if generators is not None else None,
        )
        for i, (segment, stopped) in zip(active, segments, strict=True):
            advance(processor, trajs[i], segment, stopped, row_allowed[i], budgets[i])
    close(trajs)
    if was_training:
        model.train()
    return trajs


def begin(
    model: Any,
    processor: Any,
    samples: list[Sample],
    allowed: tuple[str, ...] | list[tuple[str, ...]],
    params: SamplingParams,
    max_turns: int,
    min_pixels: int,
    max_pixels: int,
) -> tuple[list[Trajectory], list[tuple[str, ...]], list[ToolBudget], list[torch.Generator] | None]:
    """What every multi-turn sampler starts from: G trajectories per sample (their prompts with the tool
    instructions), each row's allowed tools and tool budget, and the per-prompt generators (None without a seed)."""
    g = params.group_size
    per_sample = allowed if isinstance(allowed, list) else [allowed] * len(samples)
    prompts = [start(processor, s, a) for s, a in zip(samples, per_sample, strict=True)]  # processed once
    trajs = [_fresh_copy(t) for t in prompts for _ in range(g)]
    row_allowed = [a for a in per_sample for _ in range(g)]
    family = family_for_processor(processor)
    budgets = [ToolBudget(max_turns, max_pixels, min_pixels, family=family) for _ in trajs]
    generators = None if params.seed is None else prompt_generators(params.seed, samples, model.device)
    return trajs, row_allowed, budgets, generators


def close(trajs: list[Trajectory]) -> None:
    """End the trajectories still calling tools after the last allowed turn (over the tool budget)."""
    for t in trajs:
        if not t.done:
            t.budget_exceeded, t.done = True, True


def trajectory_logprobs(
    model: Any,
    batch: dict[str, torch.Tensor],
    temperature: float = 1.0,
    suppressed: list[int] | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, L-1] (and entropies) of every next token of right-padded full trajectories, under the
    distribution sampling used (temperature, suppressed tokens); mask them with policy_mask[:, 1:]."""
    inputs = {k: v for k, v in batch.items() if k != "policy_mask"}
    logits = sampling_logits(model(**inputs, use_cache=False).logits[:, :-1], temperature, suppressed)
    logp = token_logprobs(logits, batch["input_ids"][:, 1:])
    return logp, (token_entropy(logits) if with_entropy else None)


def scoring_batch(trajs: list[Trajectory], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded full trajectories with `policy_mask` [B, L] (1 on the policy's tokens only)."""
    batch = batch_inputs(trajs, pad_id, "right")
    length = batch["input_ids"].shape[1]
    batch["policy_mask"] = torch.tensor([t.policy + [0] * (length - len(t.policy)) for t in trajs])
    return {k: v.to(device) for k, v in batch.items()}


def trajectory_columns(trajs: list[Trajectory]) -> dict[str, list]:
    """Per-trajectory columns for the tool rewards."""
    return {
        "tool_calls": [t.tool_calls for t in trajs],
        "tool_errors": [t.tool_errors for t in trajs],
        "budget_exceeded": [t.budget_exceeded for t in trajs],
    }


def turns_json(traj: Trajectory, image_dir: Path, row: int) -> str:
    """Every turn as JSON for the rollout store's `turns` column; the tool's images are saved as PNGs under
    `image_dir` and referenced by path in their turn (`images`)."""
    turns, pending = [], list(traj.tool_images)
    for k, turn in enumerate(traj.turns):
        turn = dict(turn)
        n = turn.pop("n_images", 0)
        if n:
            image_dir.mkdir(parents=True, exist_ok=True)
            turn["images"] = []
            for j, image in enumerate(pending[:n]):
                path = image_dir / f"row{row}-turn{k}-{j}.png"
                image.save(path)
                turn["images"].append(str(path))
            pending = pending[n:]
        turns.append(turn)
    return json.dumps(turns, ensure_ascii=False)


def tool_rollout(
    model: Any,
    processor: Any,
    samples: list[Sample],
    allowed: tuple[str, ...] | list[tuple[str, ...]],
    params: SamplingParams,
    device: torch.device,
    *,
    keep_state: bool = False,
    **kwargs: Any,
) -> Rollout:
    """Sample G multi-turn trajectories per sample (kwargs: max_turns and the tool image pixel budget) and lay
    them out as a `Rollout` scored on whole sequences: completion_mask [B, L-1] marks the policy's own tokens,
    aligned with the next-token log-probs of the full sequence.

    keep_state: each prompt prefilled once for its G trajectories and each trajectory's cache kept across its
    turns (`turn_state.sample_kept`), where the model's cache allows it (`keeps_state`); otherwise every turn
    re-encodes the whole conversation (`sample_trajectories`)."""
    if keep_state and keeps_state(model):
        from mmreason.rollout.turn_state import sample_kept  # turn_state builds on this module

        trajs = sample_kept(model, processor, samples, allowed, params, **kwargs)
    else:
        trajs = sample_trajectories(model, processor, samples, allowed, params, **kwargs)
    return trajectories_rollout(trajs, params.group_size, processor.tokenizer.pad_token_id, device)


def keeps_state(model: Any) -> bool:
    """Whether a trajectory's cache can be kept across turns: attention caches, whose masked holes (rows waiting
    while others finish their turn) change nothing. A hybrid cache's linear-attention state decays over masked
    positions too, so those families re-encode every turn."""
    return family_of(model).cache == "kv"


def trajectories_rollout(trajs: list[Trajectory], group_size: int, pad_id: int, device: torch.device) -> Rollout:
    """Sampled trajectories (G per prompt, contiguous) laid out as a `Rollout` scored on whole sequences (see
    `tool_rollout`); also how groups of several rollouts become one (`mmreason.rollout.groups`)."""
    batch = scoring_batch(trajs, pad_id, device)
    return Rollout(
        group_size=group_size,
        texts=[t.answer for t in trajs],
        completion_mask=batch.pop("policy_mask")[:, 1:].long(),
        truncated=torch.tensor([t.truncated or t.budget_exceeded for t in trajs], device=device),
        prompt_lengths=[t.policy.index(1) if 1 in t.policy else len(t.ids) for t in trajs],
        sequences=batch,
        trajectories=trajs,
        columns=trajectory_columns(trajs),
        layout=turn_layout(trajs, group_size, pad_id, device),
    )
