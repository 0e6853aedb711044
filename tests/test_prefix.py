"""Shared prompt prefixes (mmreason.rollout.prefix): one prefill per prompt whose KV cache the G completions share, in
the sampler and in the loss. Each is checked against the unshared path (prompt rows repeated G times) on the tiny
Qwen2.5-VL and Qwen2-VL models: images of different sizes, a multi-image prompt, a video, left padding, 3-D
multimodal positions."""

from __future__ import annotations

import functools

import pytest
import torch
from mmreason.processors import load_video
from PIL import Image

from mmreason.data.sample import Sample
from mmreason.models.tiny import build_tiny
from mmreason.rollout.engine import (
    completion_logprobs,
    encode_prompts,
    eos_token_ids,
    generate,
    repeat_prompts,
    score_inputs,
    suppressed_token_ids,
)
from mmreason.rollout.prefix import completion_positions, prompt_positions, shared_completion_logprobs
from mmreason.rollout.types import SamplingParams, completion_mask_from_ids
from mmreason.train.rl import grpo_loss

G = 3


def _samples() -> list[Sample]:
    def msg(n: int, text: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}]

    a = Image.new("RGB", (56, 56), (200, 30, 30))
    b = Image.new("RGB", (84, 56), (30, 200, 30))
    c = Image.new("RGB", (112, 84), (30, 30, 200))
    return [
        Sample("a", "counting", msg(1, "How many shapes are in the image? Count the objects."), [a]),
        Sample("b", "counting", msg(2, "Which is larger?"), [b, c]),  # multi-image, shorter text
        Sample("c", "counting", msg(1, "How many?"), [c]),  # the shortest: most left padding
    ]


def _with_video() -> list[Sample]:
    """An image prompt and a video prompt whose temporal positions (16 frames, 8 temporal patches, 4 positions
    apart) run past the few text tokens after the video: where `rope_deltas`-style continuation would go wrong."""
    frames = [Image.new("RGB", (56, 56), (15 * i, 100, 255 - 15 * i)) for i in range(16)]
    clip = load_video(frames, fps=2.0, source_fps=2.0, min_pixels=28 * 28)
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "How many?"}]}]
    return [_samples()[0], Sample("v", "counting", video, video=clip)]


SAMPLE_SETS = {"images": _samples, "image-and-video": _with_video}


@functools.cache
def _tiny(arch: str):
    model, processor = build_tiny(arch=arch, hidden_size=64, layers=2, vision_depth=2, seed=1)
    return model.eval(), processor


@pytest.fixture(params=["qwen2_5_vl", "qwen2_vl"])
def tiny(request):
    return _tiny(request.param)


@pytest.fixture
def tiny25():
    return _tiny("qwen2_5_vl")


def _completions(processor, model, b: int, t: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random completions [b, t] (no vision tokens), some ending early with EOS, some truncated."""
    gen = torch.Generator().manual_seed(seed)
    banned = set(suppressed_token_ids(processor))
    vocab = [i for i in range(len(processor.tokenizer)) if i not in banned]
    ids = torch.tensor(vocab)[torch.randint(len(vocab), (b, t), generator=gen)]
    eos = eos_token_ids(processor, model)
    if t >= 3:
        ids[0, 2] = eos[0]  # stops after 3 tokens
        ids[b // 2, t - 2] = eos[0]
    mask, _ = completion_mask_from_ids(ids, eos)
    return ids.masked_fill(mask == 0, processor.tokenizer.pad_token_id), mask


@pytest.mark.parametrize("samples", list(SAMPLE_SETS))
def test_positions_continue_the_full_sequences_rope_index(tiny, samples):
    model, processor = tiny
    batch = encode_prompts(processor, SAMPLE_SETS[samples](), torch.device("cpu"))
    assert (batch.inputs["attention_mask"] == 0).any(), "the samples must exercise left padding"
    p = batch.size
    ids, mask = _completions(processor, model, p * G, 7)
    pos, next_pos = prompt_positions(model, batch.inputs)
    comp = completion_positions(next_pos, G, 0, 7, three_d=True)
    full = score_inputs(repeat_prompts(batch, G), ids, mask)
    extra = {k: full[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in full}
    ref, _ = model.model.get_rope_index(
        full["input_ids"], mm_token_type_ids=full["mm_token_type_ids"], attention_mask=full["attention_mask"], **extra
    )
    lp = pos.shape[-1]
    torch.testing.assert_close(ref[:, :, :lp], pos.repeat_interleave(G, dim=1))
    valid = mask.bool()[None].expand(3, -1, -1)
    torch.testing.assert_close(ref[:, :, lp:][valid], comp[valid])


def test_greedy_shared_sampler_gives_the_unshared_tokens(tiny):
    model, processor = tiny
    batch = encode_prompts(processor, _samples(), torch.device("cpu"))
    shared = generate(model, processor, batch, SamplingParams(2, 8, greedy=True))
    # HF greedy search returns one sequence per prompt: both copies of each shared group must equal it
    plain = generate(model, processor, batch, SamplingParams(1, 8, greedy=True), share_prefix=False)
    t = plain.completion_ids.shape[1]
    assert shared.completion_ids.shape[1] == t
    for j in range(2):
        assert torch.equal(shared.completion_ids[j::2], plain.completion_ids)
        assert torch.equal(shared.completion_mask[j::2], plain.completion_mask)
        assert shared.texts[j::2] == plain.texts


@pytest.mark.parametrize(("samples", "top_p"), [("images", 1.0), ("images", 0.9), ("image-and-video", 1.0)])
def test_sampled_logprobs_match_the_scoring_forward(tiny, samples, top_p):
    model, processor = tiny
    batch = encode_prompts(processor, SAMPLE_SETS[samples](), torch.device("cpu"))
    torch.manual_seed(0)
    rollout = generate(model, processor, batch, SamplingParams(G, 10, temperature=0.7, top_p=top_p))
    banned = suppressed_token_ids(processor)
    ids, mask = rollout.completion_ids, rollout.completion_mask
    assert not torch.isin(ids, torch.tensor(banned)).any()
    ref, _ = completion_logprobs(model, repeat_prompts(batch, G), ids, mask, 0.7, suppressed=banned)
    m = mask.bool()
    torch.testing.assert_close(rollout.sampler_logprobs[m], ref[m], atol=1e-4, rtol=1e-4)
    assert (rollout.sampler_logprobs[~m] == 0).all()
    torch.manual_seed(0)
    again = generate(model, processor, batch, SamplingParams(G, 10, temperature=0.7, top_p=top_p))
    assert torch.equal(again.completion_ids, ids)  # a seed fixes the samples


def _loss_and_grads(model, logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor):
    model.zero_grad(set_to_none=True)
    old = logp.detach() - 0.05 * torch.linspace(-1, 1, logp.numel()).view_as(logp)  # some ratios clip
    loss, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, loss_agg="seq_mean_token_mean")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("samples", "t"), [("images", 9), ("images", 1), ("image-and-video", 6)])
def test_shared_loss_and_gradients_equal_the_unshared_path(tiny, samples, t):
    model, processor = tiny
    batch = encode_prompts(processor, SAMPLE_SETS[samples](), torch.device("cpu"))
    b = batch.size * G
    ids, mask = _completions(processor, model, b, t, seed=1)
    banned = suppressed_token_ids(processor)
    adv = torch.linspace(-1.5, 1.5, b)
    model.train()
    try:
        plain, plain_ent = completion_logprobs(
            model, repeat_prompts(batch, G), ids, mask, 0.8, with_entropy=True, suppressed=banned
        )
        plain_loss, plain_grads = _loss_and_grads(model, plain, mask, adv)
        shared, shared_ent = shared_completion_logprobs(
            model, batch.inputs, G, ids, mask, 0.8, with_entropy=True, suppressed=banned
        )
        shared_loss, shared_grads = _loss_and_grads(model, shared, mask, adv)
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    m = mask.bool()
    torch.testing.assert_close(shared[m], plain[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_ent[m], plain_ent[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_loss, plain_loss, atol=1e-6, rtol=1e-5)
    assert shared_grads.keys() == plain_grads.keys()
    assert any(k.startswith("model.visual") for k in shared_grads), "the vision encoder must get gradients too"
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_extend_refuses_a_cache_the_model_ignored(tiny):
    from mmreason.rollout.prefix import extend

    model, _ = tiny

    class Frozen:  # a cache whose length never grows: what a checkpointed layer or another API would leave
        def get_seq_length(self) -> int:
            return 5

    with pytest.raises(RuntimeError, match="not extended"):
        extend(
            lambda **kw: type("Out", (), {"logits": None})(),
            Frozen(),
            torch.zeros(2, 1, dtype=torch.long),
            torch.ones(2, 6, dtype=torch.long),
            torch.zeros(3, 2, 1, dtype=torch.long),
        )


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5.x renamed gradient_checkpointing_*
def test_gradient_checkpointing_is_detected_and_refused(tiny):
    from mmreason.train.grpo import _checkpointing

    model, processor = tiny
    batch = encode_prompts(processor, _samples()[:1], torch.device("cpu"))
    ids, mask = _completions(processor, model, G, 4)
    assert not _checkpointing(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # as build_policy
    model.train()
    try:
        assert _checkpointing(model)  # run_grpo then scores the loss on repeated prompts
        with pytest.raises(RuntimeError, match="KV cache"):
            shared_completion_logprobs(model, batch.inputs, G, ids, mask)
    finally:
        model.gradient_checkpointing_disable()
        model.eval()


def test_grpo_update_is_the_same_with_and_without_prefix_sharing(tiny25):
    import copy

    from mmreason.config import GRPOConfig
    from mmreason.models.policy import Policy, Reference
    from mmreason.runs.run import Run
    from mmreason.train.grpo import ScoringPlan, loss_mask_for, update_policy

    model, processor = tiny25
    batch = encode_prompts(processor, _samples(), torch.device("cpu"))
    torch.manual_seed(0)
    rollout = generate(model, processor, batch, SamplingParams(G, 6, temperature=0.9))
    adv = torch.linspace(-1.0, 1.0, 3 * G)
    mask = loss_mask_for(rollout, torch.ones(3 * G, dtype=torch.bool), mask_truncated=False)
    # several updates per rollout (old log-probs) and a KL term (reference log-probs): every scoring call is shared
    cfg = GRPOConfig(num_iterations=2, beta=0.1, lr=0.1, max_new_tokens=6)
    weights, metrics = [], []
    for share in (True, False):
        policy = Policy.wrap(copy.deepcopy(model), processor, "tiny")
        # SGD: the weights move by the gradients themselves (Adam's first step, lr * sign(g), would magnify the
        # float noise of near-zero gradients)
        optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=cfg.lr)
        cfg.share_prefix = share
        reference = Reference(policy, cfg.beta)
        path = "shared_prefix" if share else "repeated_prompt"
        plan = ScoringPlan(path, path)
        upd, applied = update_policy(Run.local(policy), optimizer, reference, rollout, adv, mask, cfg, plan)
        assert applied == [True, True]
        weights.append(policy.model.state_dict())
        metrics.append(upd)
    for key in ("loss", "kl", "entropy", "ratio_mean"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], rel=1e-4, abs=1e-6), key
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, atol=1e-6, rtol=1e-4, msg=name)


def test_a_growable_cache_holds_what_concatenation_holds():
    """The samplers' buffered KV cache against transformers' concatenating one: the same keys and values after
    tokens that outgrow the buffer twice and a row reorder (rows dropped and repeated) in between."""
    from transformers.cache_utils import DynamicCache

    from mmreason.rollout.prefix import growable

    torch.manual_seed(0)
    steps = [torch.randn(3, 2, n, 4) for n in (5, 1, 1, 7, 1, 30)]
    plain, grown = DynamicCache(), DynamicCache()
    plain.update(steps[0], steps[0] + 1, 0)
    grown.update(steps[0], steps[0] + 1, 0)
    growable(grown)
    for i, k in enumerate(steps[1:]):
        if i == 2:  # drop row 1, repeat row 2: the layout turn_state's keep and prefix's repeat produce
            rows = torch.tensor([0, 2, 2])
            plain.reorder_cache(rows)
            grown.reorder_cache(rows)
        pk, pv = plain.update(k, k + 1, 0)
        gk, gv = grown.update(k, k + 1, 0)
        assert torch.equal(pk, gk) and torch.equal(pv, gv)
    layer = grown.layers[0]
    assert layer.keys.data_ptr() == layer.buffers[0].data_ptr()  # the keys are a view of the buffer
    assert layer.buffers[0].shape[-2] == 45  # capacity 5 -> 10 -> 20 -> 45 (doubling, or what one update needs)
    assert grown.get_seq_length() == plain.get_seq_length() == 45
