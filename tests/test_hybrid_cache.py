"""Hybrid caches in the shared prompt prefix (mmreason.rollout.prefix), on the tiny Qwen3.5 model (Gated DeltaNet
linear-attention layers before a full-attention layer): a prompt's cache repeated G times is the cache of the
repeated prompts, layer by layer and in the completions' log-probs (left padding and images included); the sampler's
log-probs are the scoring forward's; the GRPO loss of a hybrid-cache family repeats the prompts; and the shared loss,
where a caller asks for it, has the unshared path's gradients up to the float32 rounding of the linear-attention
kernel's decay gradients. Also: prompts written for this family open no thinking block."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from mmreason.processors import render_prompt, resize_image
from PIL import Image
from transformers.cache_utils import LinearAttentionCacheLayerMixin

import mmreason.models.family as family
from mmreason.config import GRPOConfig
from mmreason.data.sample import Sample
from mmreason.models.policy import Policy
from mmreason.models.tiny import build_tiny
from mmreason.rollout.engine import (
    completion_logprobs,
    encode_prompts,
    eos_token_ids,
    generate,
    repeat_prompts,
    suppressed_token_ids,
)
from mmreason.rollout.prefix import prefill, prompt_positions, shared_completion_logprobs
from mmreason.rollout.types import SamplingParams, completion_mask_from_ids
from mmreason.runs.run import Run
from mmreason.train.grpo import ScoringPlan, scoring_plan

G = 3
CHUNK = 64  # the chunk length of transformers' chunked Gated DeltaNet kernel
# the parameters of the linear-attention decay g = -exp(A_log) * softplus(in_proj_a(x) + dt_bias)
DECAY_PARAMETERS = ("linear_attn.A_log", "linear_attn.dt_bias", "linear_attn.in_proj_a.weight")
EPS = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module", autouse=True)
def _qwen3_5_supported():
    """Qwen3.5 among the supported families for these tests, whether or not `FAMILY_MODULES` lists it."""
    with pytest.MonkeyPatch.context() as patch:
        if "qwen3_5" not in family.FAMILY_MODULES:
            patch.setattr(family, "FAMILY_MODULES", (*family.FAMILY_MODULES, "qwen3_5"))
        yield


@functools.cache
def _tiny():
    model, processor = build_tiny(arch="qwen3_5", hidden_size=64, layers=3, vision_depth=2, seed=1)
    return model.eval(), processor


@pytest.fixture
def tiny(_qwen3_5_supported):
    return _tiny()


def _samples() -> list[Sample]:
    """A short one-image prompt (much left padding) and a two-image prompt longer than a kernel chunk."""
    factor = family.get_family("qwen3_5").image_factor

    def image(size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
        return resize_image(Image.new("RGB", size, color), factor * factor, factor * factor * 16, factor).image

    def msg(n: int, text: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}]

    a, b = image((64, 64), (200, 30, 30)), image((128, 96), (30, 200, 30))
    long = "Find the box of the red square. Output the bounding box as [x1, y1, x2, y2]. " * 3
    return [Sample("a", "counting", msg(1, "How many?"), [a]), Sample("b", "grounding", msg(2, long), [b, a])]


def _completions(processor, model, b: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random completions [b, t] (no vision tokens), one ending early with EOS."""
    gen = torch.Generator().manual_seed(0)
    banned = set(suppressed_token_ids(processor))
    vocab = torch.tensor([i for i in range(len(processor.tokenizer)) if i not in banned])
    ids = vocab[torch.randint(len(vocab), (b, t), generator=gen)]
    eos = eos_token_ids(processor, model)
    ids[1, min(2, t - 1)] = eos[0]
    mask, _ = completion_mask_from_ids(ids, eos)
    return ids.masked_fill(mask == 0, processor.tokenizer.pad_token_id), mask


def _left_padded(rows: dict[str, torch.Tensor], n: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The same prompt rows with n more padding columns on the left (the same sequences, mathematically)."""
    out = dict(rows)
    b = rows["input_ids"].shape[0]
    out["input_ids"] = torch.cat([rows["input_ids"].new_full((b, n), pad_id), rows["input_ids"]], dim=1)
    for key in ("attention_mask", "mm_token_type_ids"):
        out[key] = torch.cat([rows[key].new_zeros(b, n), rows[key]], dim=1)
    return out


def _layer_states(layer) -> list[torch.Tensor]:
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        return [layer.conv_states[0], layer.recurrent_states[0]]
    return [layer.keys, layer.values]


def test_a_repeated_hybrid_cache_is_the_cache_of_the_repeated_prompts(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _samples(), torch.device("cpu"))
    lengths = batch.inputs["attention_mask"].sum(-1)
    assert lengths.max() > CHUNK and lengths.max() - lengths.min() > 10  # a chunk boundary, much left padding
    rows = repeat_prompts(batch, G)
    with torch.no_grad():
        _, shared = prefill(model, batch.inputs, prompt_positions(model, batch.inputs)[0], G)
        _, repeated = prefill(model, rows, prompt_positions(model, rows)[0], 1)
    kinds = {type(layer).__name__ for layer in shared.layers}
    assert any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in shared.layers), kinds
    for i, (a, b) in enumerate(zip(shared.layers, repeated.layers, strict=True)):
        for x, y in zip(_layer_states(a), _layer_states(b), strict=True):
            assert x.shape[0] == len(_samples()) * G
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=f"layer {i}")

    ids, mask = _completions(processor, model, batch.size * G, 6)
    with torch.no_grad():
        logp, _ = shared_completion_logprobs(model, batch.inputs, G, ids, mask, 0.9)
        full, _ = completion_logprobs(model, rows, ids, mask, 0.9)
        # each prompt alone (no padding): the padded prompt's states are its own
        alone = []
        for i, sample in enumerate(_samples()):
            own = encode_prompts(processor, [sample], torch.device("cpu")).inputs
            rows_of = slice(i * G, (i + 1) * G)
            alone.append(shared_completion_logprobs(model, own, G, ids[rows_of], mask[rows_of], 0.9)[0])
    m = mask.bool()
    torch.testing.assert_close(logp[m], full[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(alone)[m], full[m], atol=1e-5, rtol=1e-5)


def test_the_samplers_logprobs_are_the_scoring_forwards(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _samples(), torch.device("cpu"))
    rollout = generate(model, processor, batch, SamplingParams(G, 8, temperature=0.9, seed=3))
    m = rollout.completion_mask.bool()
    assert m.sum(-1).max() > 1  # single-token steps on the repeated cache
    banned = suppressed_token_ids(processor)
    with torch.no_grad():
        full, _ = completion_logprobs(
            model, repeat_prompts(batch, G), rollout.completion_ids, rollout.completion_mask, 0.9, suppressed=banned
        )
    torch.testing.assert_close(rollout.sampler_logprobs[m], full[m], atol=1e-5, rtol=1e-5)


def test_the_grpo_loss_of_a_hybrid_cache_family_repeats_the_prompts(tiny, caplog):
    model, processor = tiny
    policy = Policy.wrap(model, processor)
    assert policy.family.cache == "hybrid"
    with caplog.at_level(logging.INFO, logger="mmreason.train.grpo"):
        plan = scoring_plan(Run.local(policy), GRPOConfig())
    assert plan == ScoringPlan("repeated_prompt", "shared_prefix")
    assert "linear-attention" in caplog.text


def _grads(model, logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (logp * mask * torch.linspace(-1.0, 1.0, mask.shape[0])[:, None]).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("t", [7, 2])  # 2: the completion is one single-token step on the repeated cache
def test_the_shared_loss_has_the_unshared_gradients_up_to_decay_rounding(tiny, t):
    """The decay parameters' gradients are small sums of large terms of both signs, computed by the chunked
    kernel from cumulative log-decays (hundreds within a chunk for fast-decaying heads) in float32: where the
    sequence is cut into chunks changes them by float32 rounding. The shared path cuts at the prompt's end (and a
    single completion step goes through the recurrent kernel); a few more columns of left padding (the same
    sequences, mathematically) cut the unshared path elsewhere and change these gradients by as much. The tolerance
    is four times that change plus four float32 epsilons of the largest gradient (some of these gradients are no
    larger than that). Every other gradient is the unshared one to 1e-4."""
    model, processor = tiny
    batch = encode_prompts(processor, _samples(), torch.device("cpu"))
    rows = repeat_prompts(batch, G)
    ids, mask = _completions(processor, model, batch.size * G, t)
    pad = processor.tokenizer.pad_token_id
    model.train()
    try:
        plain, _ = completion_logprobs(model, rows, ids, mask)
        plain_grads = _grads(model, plain, mask)
        shared, _ = shared_completion_logprobs(model, batch.inputs, G, ids, mask)
        shared_grads = _grads(model, shared, mask)
        recut = [
            _grads(model, completion_logprobs(model, _left_padded(rows, n, pad), ids, mask)[0], mask) for n in (5, 40)
        ]
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    m = mask.bool()
    torch.testing.assert_close(shared[m], plain[m], atol=1e-5, rtol=1e-5)
    assert shared_grads.keys() == plain_grads.keys()
    scale = max(g.abs().max() for g in plain_grads.values())
    for name, grad in plain_grads.items():
        if name.endswith(DECAY_PARAMETERS):
            rounding = max((other[name] - grad).abs().max() for other in recut)
            assert (shared_grads[name] - grad).abs().max() <= 4 * rounding + 4 * EPS * scale, name
        else:
            torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_prompts_open_no_thinking_block(tiny):
    _, processor = tiny
    messages = _samples()[0].messages
    # the plain generation prompt, or the checkpoints' closed empty block (enable_thinking=False): never an open one
    assert render_prompt(processor, messages).endswith(("<|im_start|>assistant\n", "<think>\n\n</think>\n\n"))
    # the checkpoints' blocks, when a caller asks for them
    closed = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert closed.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    opened = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert opened.endswith("<|im_start|>assistant\n<think>\n")
