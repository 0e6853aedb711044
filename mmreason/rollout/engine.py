"""Rollouts: encode a batch of prompts, sample G completions per prompt, and score token log-probs.

Sampling prefills each prompt once and shares its KV cache across the G samples (`mmreason.rollout.prefix`); HF
`generate` on repeated prompt rows stays available (`share_prefix=False`). `completion_logprobs` is the unshared
scoring forward (prompt rows repeated G times), the reference `prefix.shared_completion_logprobs` is tested against.

Shapes: P prompts, G completions each, B = P * G rows (row b belongs to prompt b // G), Lp prompt length
(left-padded), T completion length (right-padded). Vision inputs are concatenated per image in row order,
exactly as the HF processor lays them out; `PromptBatch.media_rows` records how many rows of each media key every
prompt has (its patches and grids for Qwen, one row per image or video frame for the fixed-size families).
"""

from __future__ import annotations

from typing import Any

import torch

from mmreason.data.sample import Sample
from mmreason.models.family import family_for_processor
from mmreason.processors import MEDIA_KEYS, TOKEN_TYPE_KEYS, build_inputs, collate
from mmreason.rollout.prefix import sample_shared
from mmreason.rollout.types import PromptBatch, Rollout, SamplingParams, single_turn_rollout
from mmreason.train.rl import sampling_logits, token_entropy, token_logprobs


def encode_prompts(processor: Any, samples: list[Sample], device: torch.device) -> PromptBatch:
    """Chat template + processor for each sample, collated with left padding for generation."""
    rows = [build_inputs(processor, s.messages, images=s.images or None, video=s.video) for s in samples]
    batch = collate(rows, pad_id=processor.tokenizer.pad_token_id, side="left")
    batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    media_rows = {k: [len(r[k]) if k in r else 0 for r in rows] for k in MEDIA_KEYS if k in batch}
    n_images, n_videos = [len(s.images) for s in samples], [int(s.video is not None) for s in samples]
    return PromptBatch(batch, n_images, n_videos, samples, media_rows)


def prompt_seed(seed: int, sample: Sample) -> int:
    """A prompt's sampling seed: (run seed, the sample's epoch and position in the data stream) hashed to 63 bits."""
    key = (int(seed), int(sample.meta.get("epoch", 0)), int(sample.meta.get("position", 0)))
    return ((key[0] * 1_000_003 + key[1]) * 1_000_000_007 + key[2]) & (2**63 - 1)


def prompt_generators(seed: int, samples: list[Sample], device: torch.device) -> list[torch.Generator]:
    """One sampling RNG per prompt, seeded by `prompt_seed`: a prompt's G completions are then the same whichever
    process, batch or resume generates them."""
    gens = []
    for s in samples:
        g = torch.Generator(device=device)
        g.manual_seed(prompt_seed(seed, s))
        gens.append(g)
    return gens


def repeat_prompts(batch: PromptBatch, g: int) -> dict[str, torch.Tensor]:
    """Each prompt's rows and vision inputs repeated g times in place (prompt i -> rows i*g .. i*g+g-1)."""
    per_token = ("input_ids", "attention_mask", *TOKEN_TYPE_KEYS)
    out = {k: v.repeat_interleave(g, dim=0) for k, v in batch.inputs.items() if k in per_token}
    for key, counts in batch.media_rows.items():
        chunks = batch.inputs[key].split(counts)
        out[key] = torch.cat([chunk for chunk in chunks for _ in range(g)])
    missing = [k for k in MEDIA_KEYS if k in batch.inputs and k not in out]
    if missing:
        raise ValueError(f"the prompt batch has {missing} but no media_rows for them (encode it with encode_prompts)")
    return out


def suppressed_token_ids(processor: Any) -> list[int]:
    """The vision placeholder tokens sampling excludes (the processor's model family says which)."""
    return family_for_processor(processor).suppressed_token_ids(processor.tokenizer)


def eos_token_ids(processor: Any, model: Any) -> list[int]:
    """The tokens that end a completion: the model's generation EOS ids plus its family's end of turn."""
    return family_for_processor(processor).eos_token_ids(processor.tokenizer, model.generation_config.eos_token_id)


@torch.no_grad()
def generate(
    model: Any, processor: Any, batch: PromptBatch, params: SamplingParams, *, share_prefix: bool = True
) -> Rollout:
    """Sample `params.group_size` completions per prompt (pure temperature / top-p sampling: top_k is off so the
    sampling distribution is the one the importance ratios assume).

    share_prefix (default): each prompt is prefilled once and its KV cache shared by its G samples
    (`mmreason.rollout.prefix.sample_shared`), which also returns the sampled tokens' log-probs; with `params.seed`
    each prompt samples from its own RNG (`prompt_generators`), so its completions do not depend on its batch,
    process or a resume. Otherwise HF `generate` with num_return_sequences=G, which repeats the prompt and its images
    G times before the prefill (and applies the checkpoint's generation_config processors too, e.g. a repetition
    penalty, which the scoring ignores) and samples from the global RNG.
    """
    eos = eos_token_ids(processor, model)
    was_training = model.training
    model.eval()
    logprobs = None
    if share_prefix:
        generators = None if params.seed is None else prompt_generators(params.seed, batch.samples, _device(batch))
        completion, logprobs = sample_shared(
            model,
            batch.inputs,
            params.group_size,
            max_new_tokens=params.max_new_tokens,
            eos_ids=eos,
            pad_id=processor.tokenizer.pad_token_id,
            temperature=params.temperature,
            top_p=params.top_p,
            greedy=params.greedy,
            suppressed=suppressed_token_ids(processor),
            generators=generators,
        )
    else:
        completion = _hf_generate(model, processor, batch, params)
    if was_training:
        model.train()
    return single_turn_rollout(batch, params.group_size, completion, eos, processor.tokenizer, logprobs)


def _device(batch: PromptBatch) -> torch.device:
    return batch.inputs["input_ids"].device


def _hf_generate(model: Any, processor: Any, batch: PromptBatch, params: SamplingParams) -> torch.Tensor:
    """HF generate with the prompt rows repeated G times -> completion ids [B, T] (the unshared baseline)."""
    kwargs = dict(
        max_new_tokens=params.max_new_tokens,
        pad_token_id=processor.tokenizer.pad_token_id,
        eos_token_id=eos_token_ids(processor, model),
        suppress_tokens=suppressed_token_ids(processor),
    )
    if params.greedy:
        kwargs.update(do_sample=False, num_beams=1)
    else:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    out = model.generate(**batch.inputs, num_return_sequences=params.group_size, use_cache=True, **kwargs)
    return out[:, batch.inputs["input_ids"].shape[1] :]


def score_inputs(prompt_rows: dict[str, torch.Tensor], completion_ids: torch.Tensor, completion_mask: torch.Tensor):
    """Prompt rows (already repeated to B) + completions -> model inputs for the scoring forward.

    The token types (mm_token_type_ids, token_type_ids) must cover the completion too (zeros): without them
    Qwen2.5-VL silently falls back to 1-D positions (and Gemma 3 to a causal mask over its image tokens), and the
    scored log-probs no longer match generation's.
    """
    inputs = dict(prompt_rows)
    inputs["input_ids"] = torch.cat([prompt_rows["input_ids"], completion_ids], dim=1)
    inputs["attention_mask"] = torch.cat(
        [prompt_rows["attention_mask"], completion_mask.to(prompt_rows["attention_mask"])], 1
    )
    for key in TOKEN_TYPE_KEYS:
        if key in prompt_rows:
            zeros = torch.zeros_like(completion_ids, dtype=prompt_rows[key].dtype)
            inputs[key] = torch.cat([prompt_rows[key], zeros], dim=1)
    return inputs


def completion_logprobs(
    model: Any,
    prompt_rows: dict[str, torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    suppressed: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, T] of the completion tokens under `model` (and their entropies if asked).

    Only the last T + 1 positions' logits are materialised (`logits_to_keep`): the prompt's logits are never needed.
    Logits are divided by the sampling temperature and the `suppressed` tokens removed, so the ratios compare the
    distributions actually sampled from.
    """
    t = completion_ids.shape[1]
    inputs = score_inputs(prompt_rows, completion_ids, completion_mask)
    logits = model(**inputs, logits_to_keep=t + 1, use_cache=False).logits[:, :-1]
    logits = sampling_logits(logits, temperature, suppressed)  # the distribution generation sampled from
    logp = token_logprobs(logits, completion_ids)
    return logp, (token_entropy(logits) if with_entropy else None)
