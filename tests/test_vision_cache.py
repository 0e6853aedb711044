"""Vision features computed once per GRPO step (mmreason.models.vision_cache), on tiny Qwen2.5-VL and Qwen3-VL models
(Qwen3-VL feeds DeepStack features into its decoder too): with a frozen vision tower the cached step gives exactly the
uncached log-probs and gradients (num_iterations=2, beta > 0, full-copy and LoRA references) while the encoder runs
once per step instead of five times; a trainable vision tower is cached in no-grad passes only; and a short GRPO run
through `mmreason train` with frozen vision trains exactly as without the cache, one encoder run per step."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from mmreason.processors import resize_image
from mmreason.processors.video import VideoClip
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmreason.config import GRPOConfig, ModelConfig
from mmreason.data.sample import Sample
from mmreason.models.family import get_family
from mmreason.models.policy import Policy, Reference, apply_lora, freeze_parts
from mmreason.models.tiny import build_tiny
from mmreason.models.vision_cache import step_cache
from mmreason.rollout.engine import encode_prompts, generate
from mmreason.rollout.types import Rollout, SamplingParams
from mmreason.runs.run import Run
from mmreason.train import grpo
from mmreason.train.grpo import ScoringPlan, loss_mask_for, rollout_logprobs, update_policy

G = 3
ARCHS = ("qwen2_5_vl", "qwen3_vl")
PATHS = ("shared_prefix", "repeated_prompt")
CFG = dict(num_iterations=2, beta=0.1, lr=0.1, max_new_tokens=6, temperature=0.9)
# uncached, a step runs the encoder in sampling, old-policy and reference log-probs and each of the 2 updates
UNCACHED_RUNS = 5


@functools.cache
def _tiny(arch: str):
    model, processor = build_tiny(None, arch, seed=1)
    return model.eval(), processor


def _samples(arch: str) -> list[Sample]:
    family = get_family(arch)

    def image(size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
        factor = family.image_factor
        return resize_image(Image.new("RGB", size, color), factor * factor, factor * factor * 16, family=family).image

    def msg(n: int, text: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}]

    a, b = image((64, 64), (200, 30, 30)), image((96, 64), (30, 200, 30))
    return [
        Sample("a", "counting", msg(1, "How many shapes?"), [a]),
        Sample("b", "counting", msg(2, "How many?"), [b, a]),  # two images, more left padding
    ]


def _video_samples(arch: str) -> list[Sample]:
    """An image prompt and a 4-frame video prompt (get_video_features; Qwen3-VL's calls its get_image_features)."""
    side = 2 * get_family(arch).image_factor
    frames = [Image.new("RGB", (side, side), (40 * i, 100, 200 - 40 * i)) for i in range(4)]
    clip = VideoClip(frames, [0.0, 0.5, 1.0, 1.5], 2.0, 2.0, 2.0, (side, side), (side, side), [0, 1, 2, 3], 4)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When?"}]}]
    return [_samples(arch)[0], Sample("v", "counting", messages, [], video=clip)]


def _policy(arch: str, frozen: bool = True, lora: bool = False) -> Policy:
    model, processor = _tiny(arch)
    model = copy.deepcopy(model)
    if lora:
        cfg = ModelConfig()
        cfg.lora.enabled = True
        torch.manual_seed(0)  # the adapters' random init
        model = apply_lora(model, cfg)
    if frozen:
        freeze_parts(model, get_family(arch), ["vision_tower", "projector"])
    return Policy.wrap(model, processor)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of every gradient it steps with (one dict per update)."""

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]], lr: float) -> None:
        super().__init__([p for _, p in named], lr=lr)
        self.named, self.grads = named, []

    def step(self, closure=None):
        self.grads.append({n: p.grad.clone() for n, p in self.named if p.grad is not None})
        return super().step(closure)


def _step(
    policy: Policy, path: str, cache: bool, cfg: GRPOConfig, samples: list[Sample] | None = None
) -> tuple[Rollout, dict, RecordingSGD, object]:
    """One GRPO step as run_grpo takes it: sampling, then update_policy (old / reference log-probs, 2 updates)."""
    reference = Reference(policy, cfg.beta)
    named = [(n, p) for n, p in policy.model.named_parameters() if p.requires_grad]
    optimizer = RecordingSGD(named, cfg.lr)
    processor = policy.processor
    with step_cache([policy.model, reference.copy], cache) as vision:
        prompts = samples if samples is not None else _samples(policy.family.name)
        batch = encode_prompts(processor, prompts, torch.device("cpu"))
        rollout = generate(policy.model, processor, batch, SamplingParams(G, 6, temperature=0.9, seed=0))
        adv = torch.linspace(-1.0, 1.0, rollout.completion_ids.shape[0])
        mask = loss_mask_for(rollout, torch.ones_like(adv, dtype=torch.bool), mask_truncated=False)
        plan = ScoringPlan(path, path)
        upd, applied = update_policy(Run.local(policy), optimizer, reference, rollout, adv, mask, cfg, plan)
    assert applied == [True, True]
    return rollout, upd, optimizer, vision


class EncoderCalls:
    """Counts forwards of the vision tower (any model's) while installed."""

    def __init__(self) -> None:
        self.n = 0

    def __enter__(self) -> EncoderCalls:
        def hook(module, args, output):
            if type(module).__name__.endswith(("VisionTransformerPretrainedModel", "VisionModel")):
                self.n += 1

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_vision_cached_step_is_exact_and_encodes_once(arch, path):
    cfg = GRPOConfig(**CFG)
    runs = {}
    for cache in (False, True):
        policy = _policy(arch)
        with EncoderCalls() as calls:
            rollout, upd, optimizer, vision = _step(policy, path, cache, cfg)
        runs[cache] = (rollout, upd, optimizer, policy.model.state_dict(), calls.n, vision)
    (r0, u0, o0, w0, n0, _), (r1, u1, o1, w1, n1, vision) = runs[False], runs[True]
    assert torch.equal(r0.completion_ids, r1.completion_ids) and torch.equal(r0.sampler_logprobs, r1.sampler_logprobs)
    assert u0 == u1  # loss, kl, ratio, entropy, grad_norm: the same floats
    assert len(o0.grads) == len(o1.grads) == 2
    for g0, g1 in zip(o0.grads, o1.grads, strict=True):
        assert g0.keys() == g1.keys() and all(torch.equal(g0[n], g1[n]) for n in g0), "gradients differ"
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    assert n0 == UNCACHED_RUNS
    # the repeated-prompt loss builds G-times repeated pixels: one more encoder run for those, then reused
    assert n1 == (1 if path == "shared_prefix" else 2) and vision.encoder_runs == n1
    assert vision.hits == UNCACHED_RUNS - n1 and not vision.entries  # emptied when the step closed


@pytest.mark.parametrize("arch", ARCHS)
def test_video_features_are_cached_too(arch):
    cfg = GRPOConfig(**CFG)
    runs = []
    for cache in (False, True):
        policy = _policy(arch)
        with EncoderCalls() as calls:
            _, upd, optimizer, _ = _step(policy, "shared_prefix", cache, cfg, _video_samples(arch))
        runs.append((calls.n, upd, optimizer.grads, policy.model.state_dict()))
    (n0, u0, grads0, w0), (n1, u1, grads1, w1) = runs
    assert (n0, n1) == (2 * UNCACHED_RUNS, 2) and u0 == u1  # the image batch and the video batch, once each
    assert all(torch.equal(a[n], b[n]) for a, b in zip(grads0, grads1, strict=True) for n in a)
    assert all(torch.equal(w0[n], w1[n]) for n in w0)


@pytest.mark.parametrize("arch", ARCHS)
def test_log_probs_of_every_pass_are_the_uncached_ones(arch):
    """Sampling, old policy, reference (full copy) and the loss forward's log-probs and gradients, pass by pass."""
    cfg = GRPOConfig(**CFG)
    policy = _policy(arch)
    reference = Reference(policy, cfg.beta)
    batch = encode_prompts(policy.processor, _samples(arch), torch.device("cpu"))
    rollout = generate(policy.model, policy.processor, batch, SamplingParams(G, 6, temperature=0.9, seed=0))
    banned = policy.family.suppressed_token_ids(policy.tokenizer)
    results = []
    for cache in (False, True):
        with step_cache([policy.model, reference.copy], cache):
            generate(policy.model, policy.processor, batch, SamplingParams(G, 6, temperature=0.9, seed=0))
            with torch.no_grad():
                old, _ = rollout_logprobs(policy.model, rollout, "shared_prefix", 0.9, banned)
                ref, _ = rollout_logprobs(reference.copy, rollout, "shared_prefix", 0.9, banned)
            policy.model.zero_grad()
            logp, _ = rollout_logprobs(policy.model, rollout, "shared_prefix", 0.9, banned)
            (logp * rollout.completion_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
        results.append((old, ref, logp.detach(), grads))
    (old0, ref0, logp0, g0), (old1, ref1, logp1, g1) = results
    assert torch.equal(old0, old1) and torch.equal(ref0, ref1) and torch.equal(logp0, logp1)
    assert g0 and g0.keys() == g1.keys() and all(torch.equal(g0[n], g1[n]) for n in g0)


def test_a_lora_reference_shares_the_policys_features():
    """LoRA leaves the vision tower frozen and its reference is the policy with adapters off: one run per step."""
    cfg = GRPOConfig(**CFG)
    runs = []
    for cache in (False, True):
        policy = _policy("qwen2_5_vl", frozen=False, lora=True)
        with EncoderCalls() as calls:
            _, upd, optimizer, _ = _step(policy, "shared_prefix", cache, cfg)
        runs.append((calls.n, upd, optimizer.grads))
    (n0, u0, grads0), (n1, u1, grads1) = runs
    assert (n0, n1) == (UNCACHED_RUNS, 1) and u0 == u1
    assert all(torch.equal(a[n], b[n]) for a, b in zip(grads0, grads1, strict=True) for n in a)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_trainable_vision_tower_is_cached_in_no_grad_passes_only(arch):
    cfg = GRPOConfig(**CFG)
    runs = []
    for cache in (False, True):
        policy = _policy(arch, frozen=False)
        with EncoderCalls() as calls:
            _, upd, optimizer, vision = _step(policy, "shared_prefix", cache, cfg)
        runs.append((calls.n, upd, optimizer.grads, vision))
    (n0, u0, grads0, _), (n1, u1, grads1, vision) = runs
    # sampling stores, the old-policy pass reuses; the full-copy reference (its vision weights are not the trained
    # policy's) and both grad passes run the encoder themselves
    assert (n0, n1) == (UNCACHED_RUNS, 4) and (vision.encoder_runs, vision.hits) == (2, 1)
    assert u0 == u1
    vision_grads = [n for n in grads1[0] if get_family(arch).part_of(n) != "language_model"]
    assert vision_grads and all(grads1[0][n].abs().sum() > 0 for n in vision_grads)  # the encoder's graph was there
    assert all(torch.equal(a[n], b[n]) for a, b in zip(grads0, grads1, strict=True) for n in a)


def test_an_update_or_an_in_place_change_invalidates_an_entry():
    policy = _policy("qwen2_5_vl", frozen=False)
    batch = encode_prompts(policy.processor, _samples("qwen2_5_vl"), torch.device("cpu"))
    pixels, grid = batch.inputs["pixel_values"], batch.inputs["image_grid_thw"]
    inner = policy.model.model
    with step_cache([policy.model], True) as vision, torch.no_grad():
        first = inner.get_image_features(pixels, grid, return_dict=True).pooler_output
        inner.get_image_features(pixels.clone(), grid, return_dict=True)  # equal content: reused
        assert (vision.encoder_runs, vision.hits) == (1, 1)
        with torch.enable_grad():  # trainable vision in a grad pass: computed, not stored
            inner.get_image_features(pixels, grid, return_dict=True)
        assert (vision.encoder_runs, vision.hits, len(vision.entries)) == (1, 1, 1)
        torch.optim.SGD(inner.visual.parameters(), lr=0.0).step()  # no gradients: nothing moves ...
        for p in inner.visual.parameters():
            p.add_(0.0)  # ... but an in-place update bumps the weights' versions, as an optimizer step does
        inner.get_image_features(pixels, grid, return_dict=True)
        assert vision.encoder_runs == 2
        pixels.mul_(1.0)  # the argument itself changed in place
        again = inner.get_image_features(pixels, grid, return_dict=True).pooler_output
        assert vision.encoder_runs == 3
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert "get_image_features" not in vars(inner)  # the model's own method again after the step


def _grpo_config(tmp_path: Path, data: Path, name: str, cache: bool) -> Path:
    # a reward that tells the random model's completions apart, so that the updates move the weights
    reward = tmp_path / "parity.py"
    reward.write_text("def parity(completions, **kwargs):\n    return [float(len(c) % 2) for c in completions]\n")
    cfg = {
        "name": name, "output_dir": str(tmp_path / "runs"), "stages": ["grpo"], "think": False, "seed": 0,
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136, "freeze_vision_tower": True,
                  "freeze_projector": True},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "rewards": {f"{reward}:parity": 1.0}}],
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 3, "max_new_tokens": 8, "num_iterations": 2,
                 "beta": 0.04, "lr": 1e-3, "cache_vision": cache},
        "eval": {"at_start": False},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_a_frozen_vision_grpo_run_trains_exactly_as_without_the_cache(tmp_path, monkeypatch):
    from mmreason.cli import app
    from mmreason.data.synthetic import make_synthetic

    monkeypatch.setattr("mmreason.train.stages.write_run_report", lambda run_dir: None)  # plots: seconds, not tested

    data = make_synthetic("counting", tmp_path / "data", n=8, seed=0)
    calls, weights = {}, {}
    for name, cache in (("uncached", False), ("cached", True)):
        with EncoderCalls() as counter:
            result = CliRunner().invoke(app, ["train", str(_grpo_config(tmp_path, data, name, cache))])
        assert result.exit_code == 0, result.output
        calls[name] = counter.n
        ckpt = sorted((tmp_path / "runs" / name / "checkpoints").iterdir())[-1]
        weights[name] = load_file(ckpt / "model.safetensors")
    assert calls == {"uncached": 2 * UNCACHED_RUNS, "cached": 2}  # 2 steps, no evaluation
    a, b = weights["uncached"], weights["cached"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before = load_file(next((tmp_path / "runs" / ".cache").rglob("model.safetensors")))
    assert any(not torch.equal(before[k], b[k]) for k in b)  # it did train
    assert grpo.step_cache is step_cache
