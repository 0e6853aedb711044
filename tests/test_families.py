"""Every supported model family, end to end on its tiny offline model: SFT and GRPO steps (shared and repeated
prompts), shared-prefix log-probs against the full forward and the sampler's own, LoRA, a tool rollout and a tool
image in the family's own turns, a checkpoint that plain transformers reloads and generates with, and the grounding
round trip in the family's own box convention. Parametrized over `family_names()`: a family added to the list is
tested here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from family_models import FAMILIES, assert_same_update
from family_models import load as _load
from family_models import samples as _samples
from family_models import saved as _saved
from mmreason.processors import build_inputs
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmreason.config import GRPOConfig, ModelConfig
from mmreason.data.sample import Sample, SampleContext
from mmreason.models.family import get_family
from mmreason.models.policy import Policy, apply_lora
from mmreason.registry import get_reward, get_task
from mmreason.rollout import multiturn
from mmreason.rollout.engine import completion_logprobs, encode_prompts, generate, repeat_prompts
from mmreason.rollout.prefix import shared_completion_logprobs
from mmreason.rollout.types import SamplingParams
from mmreason.train.grpo import loss_mask_for, rollout_logprobs
from mmreason.train.sft import sft_batch, sft_token_loss

G = 3


@pytest.mark.parametrize("arch", FAMILIES)
def test_sft_step_trains_on_the_assistant_tokens(arch, tiny_root):
    model, processor = _load(arch, tiny_root)
    batch = sft_batch(processor, _samples(arch), torch.device("cpu"))
    loss_sum, n_tokens = sft_token_loss(model.train(), batch)
    loss_sum.backward()
    assert torch.isfinite(loss_sum) and int(n_tokens) > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("arch", FAMILIES)
def test_shared_prefix_logprobs_equal_the_full_forward_and_the_samplers(arch, tiny_root):
    model, processor = _load(arch, tiny_root)
    batch = encode_prompts(processor, _samples(arch), torch.device("cpu"))
    torch.manual_seed(0)
    rollout = generate(model, processor, batch, SamplingParams(G, 8, temperature=0.9))
    m = rollout.completion_mask.bool()
    args = (rollout.completion_ids, rollout.completion_mask, 0.9)
    banned = get_family(arch).suppressed_token_ids(processor.tokenizer)
    with torch.no_grad():
        shared, _ = shared_completion_logprobs(model, batch.inputs, G, *args, suppressed=banned)
        full, _ = completion_logprobs(model, repeat_prompts(batch, G), *args, suppressed=banned)
    torch.testing.assert_close(shared[m], full[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rollout.sampler_logprobs[m], full[m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
def test_grpo_step_is_the_same_shared_and_repeated(arch, tiny_root):
    model, processor = _load(arch, tiny_root)
    batch = encode_prompts(processor, _samples(arch), torch.device("cpu"))
    torch.manual_seed(0)
    rollout = generate(model, processor, batch, SamplingParams(G, 6, temperature=0.9))
    adv = torch.linspace(-1.0, 1.0, 2 * G)
    mask = loss_mask_for(rollout, torch.ones(2 * G, dtype=torch.bool), mask_truncated=False)
    cfg = GRPOConfig(num_iterations=2, beta=0.1, lr=0.1, max_new_tokens=6, temperature=0.9)
    assert_same_update(model, processor, rollout, adv, mask, cfg, ("shared_prefix", "repeated_prompt"))


@pytest.mark.parametrize("arch", FAMILIES)
def test_lora_trains_adapters_only(arch, tiny_root):
    model, processor = _load(arch, tiny_root)
    cfg = ModelConfig()
    cfg.lora.enabled = True
    policy = Policy.wrap(apply_lora(model, cfg), processor)
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    vision = get_family(arch).vision_modules
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(v in n for n in trainable for v in vision)
    assert any(v in n for n, _ in policy.model.named_parameters() for v in vision)  # the names are the model's
    batch = encode_prompts(processor, _samples(arch), torch.device("cpu"))
    rollout = generate(policy.model, processor, batch, SamplingParams(G, 4))
    logp, _ = rollout_logprobs(policy.model, rollout, "shared_prefix", 1.0, [])
    (logp * rollout.completion_mask).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_tool_rollout_scores_only_the_policys_tokens(arch, tiny_root):
    model, processor = _load(arch, tiny_root)
    sample = _samples(arch)[0]
    rollout = multiturn.tool_rollout(model, processor, [sample], ("zoom_in",), SamplingParams(2, 6, seed=1),
                                     torch.device("cpu"), max_turns=1)
    logp, _ = rollout_logprobs(model, rollout, "trajectory", 1.0, [])
    mask = rollout.completion_mask.bool()
    assert logp.shape == mask.shape and mask.any() and torch.isfinite(logp[mask]).all()
    assert all(t.policy.index(1) == n for t, n in zip(rollout.trajectories, rollout.prompt_lengths, strict=True))


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_tool_image_reaches_the_model_in_the_familys_turns(arch, tiny_root, monkeypatch):
    model, processor = _load(arch, tiny_root)
    family, tok = get_family(arch), processor.tokenizer
    call = '<tool_call>{"name": "zoom_in", "arguments": {"bbox": [0, 0, 40, 40]}}</tool_call>'
    script = iter([call, "<answer>3</answer>" + family.turn_end])

    def scripted_turn(model, processor, trajs, **_):  # the tiny model would not call the tool by itself
        ids = tok.encode(next(script), add_special_tokens=False)
        return [(ids, True) for _ in trajs]

    monkeypatch.setattr(multiturn, "generate_turn", scripted_turn)
    sample = _samples(arch)[0]
    (t,) = multiturn.sample_trajectories(model, processor, [sample], ("zoom_in",), SamplingParams(1, 64))
    assert t.tool_calls == 1 and t.tool_errors == 0 and t.done
    assert (t.tool_images[0].size == (family.fixed_image_size,) * 2) == (family.fixed_image_size is not None)
    header = tok.encode(f"{family.turn_start}{family.assistant_role}\n", add_special_tokens=False)
    first_answer = t.policy.index(1, t.policy.index(0, t.policy.index(1)))
    assert t.ids[first_answer - len(header) : first_answer] == header  # the tool turn reopens the assistant's
    if tok.bos_token_id is not None:
        assert t.ids.count(tok.bos_token_id) <= 1  # no BOS in the middle of the conversation
    batch = multiturn.scoring_batch([t], tok.pad_token_id, torch.device("cpu"))
    n_prompt_rows = len(build_inputs(processor, sample.messages, images=sample.images)["pixel_values"])
    assert len(batch["pixel_values"]) > n_prompt_rows  # the zoomed crop is fed to the model too
    if family.token_type_key is not None:
        assert batch[family.token_type_key].sum() > build_inputs(processor, sample.messages, images=sample.images)[
            family.token_type_key].sum()  # and its tokens are typed as image tokens
    logp, _ = multiturn.trajectory_logprobs(model, batch)
    mask = batch["policy_mask"][:, 1:].bool()
    assert torch.isfinite(logp[mask]).all() and int(mask.sum()) == sum(t.policy)


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_saved_checkpoint_reloads_in_plain_transformers_and_generates(arch, tiny_root, tmp_path):
    model, processor = _load(arch, tiny_root)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    inputs = build_inputs(processor, _samples(arch)[0].messages, images=_samples(arch)[0].images)
    out = again.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4 or out.shape[1] > inputs["input_ids"].shape[1]
    assert type(AutoProcessor.from_pretrained(tmp_path)).__name__ in get_family(arch).processor_classes


def _grounding_sample(arch: str, tmp_path: Path) -> Sample:
    # 224 is a multiple of every family's image factor and the box maps to whole numbers in every convention, so the
    # gold answer is exact (answers are written in integers)
    path = tmp_path / "scene.png"
    Image.new("RGB", (224, 224), (240, 240, 240)).save(path)
    record = {"id": "g", "image": str(path), "problem": "the red square", "solution": [[56, 28, 168, 112]]}
    return get_task("grounding").to_sample(record, SampleContext(think=False, model_family=arch, base_dir=tmp_path))


@pytest.mark.parametrize("arch", FAMILIES)
def test_grounding_round_trip_in_the_familys_convention(arch, tmp_path):
    sample = _grounding_sample(arch, tmp_path)
    family = get_family(arch)
    cols = {k: [v] for k, v in sample.columns.items()}
    assert get_reward("iou")([sample.target], **cols) == [pytest.approx(1.0)]
    assert sample.columns["coord_family"] == arch
    # the same box written in the other convention is not the answer
    other = "qwen2_vl" if family.box_convention == "absolute" else "qwen2_5_vl"
    wrong = _grounding_sample(other, tmp_path).target
    assert get_reward("iou")([wrong], **cols)[0] < 0.9
    # the processor's resized size is the size the reward maps coordinates with
    inputs = build_inputs(AutoProcessor.from_pretrained(_saved(arch, str(tmp_path))), sample.messages,
                          images=sample.images)
    if "image_grid_thw" in inputs:  # patches of the resized image
        _, h, w = inputs["image_grid_thw"][0].tolist()
        assert [w * family.patch_size, h * family.patch_size] == sample.columns["model_size"]
    else:  # one fixed-size tile per image: its pixels as the processor took them
        assert list(inputs["pixel_values"].shape[-2:])[::-1] == sample.columns["model_size"]
    assert json.dumps(sample.columns["model_size"]) == json.dumps(list(sample.images[0].size))


@pytest.mark.parametrize("arch", FAMILIES)
def test_tiny_model_command_builds_a_family_that_from_pretrained_loads(arch, tmp_path):
    from typer.testing import CliRunner

    from mmreason.cli import app

    result = CliRunner().invoke(app, ["tiny-model", str(tmp_path / arch), "--arch", arch])
    assert result.exit_code == 0, result.output
    assert f"{arch} model" in result.output
    processor = AutoProcessor.from_pretrained(tmp_path / arch)
    assert type(processor).__name__ in get_family(arch).processor_classes
    config = json.loads((tmp_path / arch / "config.json").read_text())
    assert config["model_type"] in get_family(arch).model_types
