"""Rollouts on the tiny model: G completions per prompt, vision inputs repeated per group, and scoring log-probs
that match generation's (which needs mm_token_type_ids over the completion: the 3-D multimodal positions)."""

from __future__ import annotations

import pytest
import torch
from image_prompts import image_prompts
from transformers import AutoModelForImageTextToText

from mmreason.rollout.engine import (
    completion_logprobs,
    encode_prompts,
    eos_token_ids,
    generate,
    repeat_prompts,
    suppressed_token_ids,
)
from mmreason.rollout.types import SamplingParams

_samples = image_prompts


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


def test_repeat_prompts_keeps_each_prompts_images_with_its_rows(tiny_processor):
    batch = encode_prompts(tiny_processor, _samples(), torch.device("cpu"))
    rows = repeat_prompts(batch, 3)
    assert rows["input_ids"].shape[0] == 6
    grids = rows["image_grid_thw"].tolist()
    # prompt a (one 56x56 image) x3, then prompt b (84x56 + 56x56) x3
    assert grids == [[1, 4, 4]] * 3 + [[1, 4, 6], [1, 4, 4]] * 3
    assert rows["pixel_values"].shape[0] == sum(t * h * w for t, h, w in grids)


def test_scoring_logprobs_match_generation(model, tiny_processor):
    batch = encode_prompts(tiny_processor, _samples(), torch.device("cpu"))
    torch.manual_seed(0)
    rollout = generate(model, tiny_processor, batch, SamplingParams(3, 6, temperature=0.7))
    rows = repeat_prompts(batch, 3)
    banned = suppressed_token_ids(tiny_processor)
    logp, entropy = completion_logprobs(
        model, rows, rollout.completion_ids, rollout.completion_mask, 0.7, with_entropy=True, suppressed=banned
    )
    # reference: the logits generation itself sampled from (same seed -> same tokens), with the same processing
    torch.manual_seed(0)
    out = model.generate(
        **batch.inputs,
        num_return_sequences=3,
        max_new_tokens=6,
        do_sample=True,
        temperature=0.7,
        top_k=0,
        suppress_tokens=banned,
        eos_token_id=eos_token_ids(tiny_processor, model),
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tiny_processor.tokenizer.pad_token_id,
    )
    t = rollout.completion_ids.shape[1]
    assert torch.equal(
        out.sequences[:, -t:][rollout.completion_mask.bool()], rollout.completion_ids[rollout.completion_mask.bool()]
    )
    logits = torch.stack(out.logits, 1).float() / 0.7
    logits[..., banned] = torch.finfo(logits.dtype).min
    ref = torch.log_softmax(logits, -1).gather(-1, rollout.completion_ids[..., None]).squeeze(-1)
    mask = rollout.completion_mask.bool()
    torch.testing.assert_close(logp[mask], ref[mask], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(entropy[mask]).all()
    # without mm_token_type_ids the positions silently fall back to 1-D and the log-probs drift
    no_mm = {k: v for k, v in rows.items() if k != "mm_token_type_ids"}
    drift, _ = completion_logprobs(
        model, no_mm, rollout.completion_ids, rollout.completion_mask, 0.7, suppressed=banned
    )
    assert (drift[mask] - ref[mask]).abs().max() > 1e-3


def test_per_prompt_generators_make_samples_independent_of_the_batch(model, tiny_processor):
    """A prompt's G samples depend on its own seed only: alone or beside another prompt, on any process."""
    samples = _samples()
    for i, s in enumerate(samples):
        s.meta.update(epoch=0, position=i)
    cpu = torch.device("cpu")

    def roll(prompts: list, seed: int):
        batch = encode_prompts(tiny_processor, prompts, cpu)
        return generate(model, tiny_processor, batch, SamplingParams(3, 6, seed=seed))

    both = roll(samples, 7)
    torch.manual_seed(123)  # the global RNG plays no part
    alone = roll(samples[1:], 7)
    assert both.texts[3:] == alone.texts
    other_seed = roll(samples[1:], 8)
    assert other_seed.texts != alone.texts
