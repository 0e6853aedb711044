"""The vLLM rollout backend's own logic, on CPU: seeds, prompts, the conversion of vLLM outputs into a `Rollout`, the
weights pushed into the engine (names and merged LoRA values), the truncated importance weights in the loss, and the
config checks. vLLM itself needs a CUDA GPU: `test_vllm_grpo_on_gpu` runs it for real where one (and vllm) is present.

The conversion tests feed `to_rollout` objects with the fields of vLLM's `RequestOutput` / `CompletionOutput` /
`Logprob` (outputs, token_ids, logprobs as one {token id: Logprob} per generated token): the fields the backend reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from image_prompts import image_prompts
from mmreason.processors import render_prompt
from transformers import AutoModelForImageTextToText

from mmreason.config import ConfigError, load_config
from mmreason.data.sample import Sample
from mmreason.rollout.engine import encode_prompts, eos_token_ids, generate, prompt_seed, suppressed_token_ids
from mmreason.rollout.types import SamplingParams
from mmreason.rollout.vllm import (
    allowed_token_ids,
    completion_seeds,
    engine_weights,
    to_rollout,
    vllm_name,
    vllm_prompts,
)
from mmreason.train.rl import grpo_loss, truncated_is_weights

CPU = torch.device("cpu")


@dataclass
class Logprob:  # vllm.sequence.Logprob's fields
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput's fields the backend reads
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput] = field(default_factory=list)


def _samples() -> list[Sample]:
    a, b = image_prompts()
    a.meta, b.meta = {"epoch": 0, "position": 3}, {"epoch": 1, "position": 0}  # where they sit in the data stream
    return [a, b]


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


# --- seeds, prompts, allowed tokens ---------------------------------------------------------------------------------


def test_completion_seeds_are_per_prompt_and_distinct_within_a_group():
    a, b = _samples()
    seeds = completion_seeds(7, [a, b], 3)
    assert seeds[:3] == [prompt_seed(7, a) + j for j in range(3)]
    assert len(set(seeds)) == 6
    # a prompt's seeds do not depend on the batch it sits in, and change with the run seed
    assert completion_seeds(7, [b, a], 3)[3:] == seeds[:3]
    assert completion_seeds(7, [b], 3) == seeds[3:]
    assert set(completion_seeds(8, [a], 3)).isdisjoint(seeds[:3])


def test_vllm_prompts_carry_the_chat_text_and_the_resized_images(tiny_processor):
    samples = _samples()
    prompts = vllm_prompts(tiny_processor, samples, 3136, 12544)
    assert [p["prompt"] for p in prompts] == [render_prompt(tiny_processor, s.messages) for s in samples]
    assert prompts[1]["prompt"].count("<|image_pad|>") == 2  # one placeholder per image: vLLM expands them
    assert prompts[1]["multi_modal_data"]["image"] == samples[1].images  # the very images the HF encoding used
    assert prompts[0]["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 12544}
    text_only = Sample("t", "counting", [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert "multi_modal_data" not in vllm_prompts(tiny_processor, [text_only], 3136, 12544)[0]


def test_vllm_prompts_refuse_video_naming_the_sample(tiny_processor):
    clip = Sample("clip-7", "temporal", [{"role": "user", "content": [{"type": "video"}]}], video=object())
    with pytest.raises(ValueError, match=r"'clip-7'.*temporal.*video.*grpo.rollout: hf"):
        vllm_prompts(tiny_processor, [clip], 3136, 12544)


@pytest.mark.parametrize(
    "vocab, suppressed, expected",
    [(5, [1, 3], [0, 2, 4]), (3, [], [0, 1, 2]), (3, [7], [0, 1, 2]), (2, [0, 1], [])],
)
def test_allowed_token_ids(vocab, suppressed, expected):
    assert allowed_token_ids(vocab, suppressed) == expected


def test_allowed_tokens_exclude_the_vision_placeholders(tiny_processor, model):
    banned = suppressed_token_ids(tiny_processor)
    allowed = allowed_token_ids(model.get_output_embeddings().weight.shape[0], banned)
    assert banned and not set(banned) & set(allowed)
    assert len(allowed) + len(banned) == model.get_output_embeddings().weight.shape[0]


# --- vLLM outputs -> Rollout ----------------------------------------------------------------------------------------


def _outputs(token_rows: list[list[int]], logps: list[list[float]] | None = None) -> list[RequestOutput]:
    outs = []
    for i, tokens in enumerate(token_rows):
        lp = None if logps is None else [{t: Logprob(v, 1)} for t, v in zip(tokens, logps[i], strict=True)]
        outs.append(RequestOutput([CompletionOutput(tokens, lp)]))
    return outs


def test_to_rollout_pads_masks_and_places_logprobs(tiny_processor, model):
    batch = encode_prompts(tiny_processor, _samples(), CPU)
    eos = eos_token_ids(tiny_processor, model)
    pad = tiny_processor.tokenizer.pad_token_id
    hello = tiny_processor.tokenizer.encode("hello there")
    rows = [hello + [eos[0]], hello[:1], [], hello + [eos[-1], 5, 6]]  # ended, truncated, empty, stop then junk
    logps = [[-0.5 - k for k in range(len(r))] for r in rows]
    r = to_rollout(batch, 2, _outputs(rows, logps), eos, tiny_processor.tokenizer)
    t = len(rows[3])
    assert r.completion_ids.shape == (4, t) and r.group_size == 2 and r.prompts is batch
    assert r.completion_mask.tolist()[0] == [1] * len(rows[0]) + [0] * (t - len(rows[0]))
    assert r.completion_mask[3].sum() == len(hello) + 1  # up to and including the first EOS
    assert r.truncated.tolist() == [False, True, True, False]
    assert (r.completion_ids[r.completion_mask == 0] == pad).all()
    assert r.texts[0] == tiny_processor.tokenizer.decode(hello, skip_special_tokens=True) and r.texts[2] == ""
    assert r.sampler_logprobs[0, : len(rows[0])].tolist() == pytest.approx(logps[0])
    assert r.sampler_logprobs[3, len(hello) + 1 :].abs().sum() == 0  # zero off the mask


def test_to_rollout_without_logprobs_and_with_a_wrong_count(tiny_processor, model):
    batch = encode_prompts(tiny_processor, _samples(), CPU)
    eos = eos_token_ids(tiny_processor, model)
    r = to_rollout(batch, 1, _outputs([[eos[0]], [1, eos[0]]]), eos, tiny_processor.tokenizer)
    assert r.sampler_logprobs.abs().sum() == 0 and r.completion_mask.tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="3 outputs for 2 prompts x 2 samples"):
        to_rollout(batch, 2, _outputs([[1], [1], [1]]), eos, tiny_processor.tokenizer)


def test_a_vllm_shaped_rollout_trains_like_the_hf_one(tiny_processor, tiny_dir):
    """The same completions and sampler log-probs, once as the HF sampler's Rollout and once through `to_rollout`:
    the GRPO update (with the vLLM importance weights, all ~1 here since the sampler is the trained model) is the
    same."""
    from mmreason.config import GRPOConfig
    from mmreason.models.policy import Policy, Reference
    from mmreason.runs.run import Run
    from mmreason.train.grpo import ScoringPlan, update_policy

    batch = encode_prompts(tiny_processor, _samples(), CPU)
    policy_a = Policy.wrap(AutoModelForImageTextToText.from_pretrained(tiny_dir), tiny_processor)
    eos = eos_token_ids(tiny_processor, policy_a.model)
    torch.manual_seed(0)
    hf = generate(policy_a.model, tiny_processor, batch, SamplingParams(3, 6, temperature=0.9))
    rows = [ids[m.bool()].tolist() for ids, m in zip(hf.completion_ids, hf.completion_mask, strict=True)]
    logps = [lp[m.bool()].tolist() for lp, m in zip(hf.sampler_logprobs, hf.completion_mask, strict=True)]
    vl = to_rollout(batch, 3, _outputs(rows, logps), eos, tiny_processor.tokenizer)
    assert vl.texts == hf.texts and torch.equal(vl.truncated, hf.truncated)

    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, -0.2])
    results = []
    for backend, rollout in (("hf", hf), ("vllm", vl)):
        policy = Policy.wrap(AutoModelForImageTextToText.from_pretrained(tiny_dir), tiny_processor)
        cfg = GRPOConfig(rollout=backend, max_new_tokens=6, temperature=0.9)
        opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
        mask = rollout.completion_mask
        plan = ScoringPlan("shared_prefix", "shared_prefix")
        upd, applied = update_policy(Run.local(policy), opt, Reference(policy, 0.0), rollout, adv, mask, cfg, plan)
        results.append((upd, applied, policy.model.state_dict()))
    (upd_hf, ok_hf, w_hf), (upd_vl, ok_vl, w_vl) = results
    assert ok_hf == ok_vl == [True]
    assert upd_vl["is_weight_mean"] == pytest.approx(1.0, abs=1e-4) and "is_weight_mean" not in upd_hf
    assert upd_vl["loss"] == pytest.approx(upd_hf["loss"], rel=1e-4, abs=1e-6)
    assert all(torch.allclose(w_hf[k], w_vl[k], atol=1e-6) for k in w_hf)


# --- weights pushed into the engine ---------------------------------------------------------------------------------


def _checkpoint_names(folder: Path) -> set[str]:
    from safetensors import safe_open

    names: set[str] = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    return names


def _as_saved(model, names: dict[str, torch.Tensor]) -> set[str]:
    """The names transformers writes to a checkpoint for these in-memory names (its own reverse key mapping)."""
    from transformers.core_model_loading import revert_weight_conversion

    return set(revert_weight_conversion(model, dict(names)))


def test_weights_go_under_the_checkpoint_names(tiny_dir, model):
    sent = dict(engine_weights(model))
    params = dict(model.named_parameters())
    assert sent.keys() == params.keys() and all(sent[k].data_ptr() == params[k].data_ptr() for k in sent)  # no copies
    # transformers' names, which map one to one onto the checkpoint's (a tied lm_head is not saved)
    assert _as_saved(model, sent) - {"lm_head.weight"} == _checkpoint_names(tiny_dir)


def test_lora_weights_reach_the_engine_merged_and_the_model_stays_untouched(tiny_dir):
    import copy

    from mmreason.config import ModelConfig
    from mmreason.models.policy import apply_lora

    model = apply_lora(AutoModelForImageTextToText.from_pretrained(tiny_dir), ModelConfig())
    with torch.no_grad():  # non-zero adapters, so merging changes the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sent = dict(engine_weights(model))
    assert not any("lora_" in k or "base_layer" in k or k.startswith("base_model") for k in sent)
    base = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert sent.keys() == dict(base.named_parameters()).keys()  # the plain model's names, adapters merged away
    assert len(sent) == sum("lora_" not in k for k, _ in model.named_parameters())
    assert all(torch.allclose(sent[k], expected[k], atol=1e-6) for k in sent)  # the merged weights ...
    merged = [k for k in sent if not torch.allclose(sent[k], _base(before, k))]
    # ... differ from the base exactly where adapters sit: the language model's linear layers (vision tower frozen)
    assert merged and all(k.startswith("model.language_model.layers.") and k.endswith("_proj.weight") for k in merged)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # never merged into the training weights


def _base(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The wrapped model's base tensor for a checkpoint name (PEFT: base_model.model.<name>, .base_layer)."""
    wrapped = "base_model.model." + name
    layer = wrapped.rsplit(".", 1)
    for key in (wrapped, f"{layer[0]}.base_layer.{layer[1]}"):
        if key in state:
            return state[key]
    raise KeyError(name)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("model.language_model.layers.0.mlp.up_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight"),
        ("base_model.model.model.visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.attn.qkv.weight"),
        (
            "base_model.model.model.language_model.layers.1.self_attn.q_proj.base_layer.weight",
            "model.language_model.layers.1.self_attn.q_proj.weight",
        ),
        ("model.layers.0._checkpoint_wrapped_module.mlp.weight", "model.layers.0.mlp.weight"),
    ],
)
def test_vllm_name(name, expected):
    assert vllm_name(name) == expected


# --- truncated importance weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "train, sampler, mask, cap, expected",
    [
        ([[0.0, -1.0]], [[0.0, -1.0]], [[1, 1]], 2.0, [[1.0, 1.0]]),  # same distribution
        ([[-1.0, -1.0]], [[-2.0, -0.5]], [[1, 1]], 5.0, [[2.718282, 0.606531]]),  # exp(train - sampler)
        ([[0.0, 0.0]], [[-3.0, -0.1]], [[1, 1]], 2.0, [[2.0, 1.105171]]),  # capped
        ([[0.0, 5.0]], [[-3.0, -9.0]], [[1, 0]], 2.0, [[2.0, 1.0]]),  # off the mask: 1
        ([[-50.0]], [[0.0]], [[1]], 2.0, [[2.061154e-09]]),  # log ratio clamped at -20
    ],
)
def test_truncated_is_weights_golden(train, sampler, mask, cap, expected):
    w = truncated_is_weights(torch.tensor(train), torch.tensor(sampler), torch.tensor(mask), cap)
    assert w.tolist()[0] == pytest.approx(expected[0], rel=1e-5)


def test_truncated_is_weights_errors_and_no_gradient():
    x = torch.zeros(2, 3, requires_grad=True)
    w = truncated_is_weights(x, torch.zeros(2, 3), torch.ones(2, 3), 2.0)
    assert not w.requires_grad
    with pytest.raises(ValueError, match="sampler_logp"):
        truncated_is_weights(x, torch.zeros(2, 4), torch.ones(2, 3), 2.0)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_is_weights(x, torch.zeros(2, 3), torch.ones(2, 3), 0.0)


def test_importance_weights_scale_the_policy_gradient_term_only():
    torch.manual_seed(0)
    logp = torch.randn(2, 3, requires_grad=True)
    old, ref = logp.detach() + 0.05, logp.detach() - 0.1
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 3)
    common = dict(eps_low=0.2, eps_high=0.28, loss_agg="token_mean")
    plain, plain_stats = grpo_loss(logp, old, adv, mask, **common)
    same, _ = grpo_loss(logp, old, adv, mask, is_weights=torch.ones(2, 3), **common)
    double, stats = grpo_loss(logp, old, adv, mask, is_weights=torch.full((2, 3), 2.0), **common)
    assert stats["is_weight_mean"] == 2.0 and "is_weight_mean" not in plain_stats
    assert float(same) == pytest.approx(float(plain)) and float(double) == pytest.approx(2 * float(plain))
    kl_only = grpo_loss(logp, old, adv, mask, beta=0.5, ref_logp=ref, **common)[0] - plain
    with_kl, _ = grpo_loss(logp, old, adv, mask, beta=0.5, ref_logp=ref, is_weights=torch.full((2, 3), 2.0), **common)
    assert float(with_kl) == pytest.approx(2 * float(plain) + float(kl_only), rel=1e-4)  # KL term not reweighted
    with pytest.raises(ValueError, match="is_weights"):
        grpo_loss(logp, old, adv, mask, is_weights=torch.ones(3, 3), **common)


# --- config and availability ----------------------------------------------------------------------------------------


def _cfg(tmp_path: Path, **grpo) -> Path:
    cfg = {"data": [{"task": "counting", "train": "x.jsonl"}], "grpo": grpo}
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    "grpo, message",
    [
        ({"rollout": "sglang"}, "grpo.rollout must be one of hf, vllm"),
        ({"rollout": "vllm", "tools": {"enabled": True}}, "does not run multi-turn tool rollouts"),
        ({"vllm": {"gpu_memory_utilization": 1.5}}, r"gpu_memory_utilization must be in \(0, 1\]"),
        ({"vllm": {"importance_cap": -1}}, "importance_cap must be >= 0"),
        ({"vllm": {"gpu_memory": 0.5}}, "did you mean 'gpu_memory_utilization'"),
    ],
)
def test_rollout_config_errors(tmp_path, grpo, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_cfg(tmp_path, **grpo))


def test_vllm_config_defaults(tmp_path):
    cfg = load_config(_cfg(tmp_path, rollout="vllm"))
    assert cfg.grpo.rollout == "vllm" and cfg.grpo.vllm.importance_cap == 2.0
    assert load_config(_cfg(tmp_path)).grpo.rollout == "hf"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_vllm_backend_says_what_it_needs_on_a_cpu_machine(tmp_path):
    from mmreason.rollout.vllm import VLLMRollout

    cfg = load_config(_cfg(tmp_path, rollout="vllm"))
    with pytest.raises((ImportError, RuntimeError), match=r"pip install vllm|needs a CUDA GPU"):
        VLLMRollout(cfg, "unused")


def _gpu_run_cfg(tmp_path: Path, tiny_dir: Path) -> dict:
    from mmreason.data.synthetic import make_synthetic

    make_synthetic("counting", tmp_path / "data", n=16, seed=0)
    return {
        "name": "vllm",
        "output_dir": str(tmp_path / "runs"),
        "stages": ["grpo"],
        "model": {"name": str(tiny_dir), "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(tmp_path / "data" / "train.jsonl")}],
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 8, "rollout": "vllm"},
        "eval": {"at_start": False},
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA device")
def test_vllm_engine_samples_from_the_synced_weights(tmp_path, tiny_dir, tiny_processor):
    """Perturb the trainer's weights, sync, sample with vLLM: the trainer scores vLLM's tokens with the log-probs
    vLLM reported (the engine holds the perturbed weights, not the ones it loaded from disk)."""
    pytest.importorskip("vllm")
    from mmreason.config import RunConfig, from_dict
    from mmreason.models.policy import Policy
    from mmreason.rollout.engine import completion_logprobs, repeat_prompts
    from mmreason.rollout.vllm import VLLMRollout

    run_cfg = from_dict(RunConfig, _gpu_run_cfg(tmp_path, tiny_dir))
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy = Policy.wrap(model, tiny_processor, str(tiny_dir))
    engine = VLLMRollout(run_cfg, str(tiny_dir))
    samples = _samples()[:1]
    batch = encode_prompts(tiny_processor, samples, torch.device("cuda"))
    g = run_cfg.grpo
    params = SamplingParams(g.group_size, g.max_new_tokens, g.temperature, g.top_p, seed=run_cfg.seed)
    rollout = engine.generate(policy, batch, params)
    with torch.no_grad():
        rows = repeat_prompts(batch, rollout.group_size)
        logp, _ = completion_logprobs(
            model,
            rows,
            rollout.completion_ids,
            rollout.completion_mask,
            run_cfg.grpo.temperature,
            suppressed=suppressed_token_ids(tiny_processor),
        )
    m = rollout.completion_mask.bool()
    assert m.any() and torch.allclose(logp[m], rollout.sampler_logprobs[m], atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM needs a CUDA device")
def test_vllm_grpo_on_gpu(tmp_path, tiny_dir):
    """A real 2-step GRPO run sampled by vLLM through the CLI: metrics with the importance weights, one store row
    per completion."""
    pytest.importorskip("vllm")
    import subprocess
    import sys

    from mmreason.runs import store
    (tmp_path / "cfg.yaml").write_text(json.dumps(_gpu_run_cfg(tmp_path, tiny_dir)))
    cmd = [sys.executable, "-m", "mmreason.cli", "train", str(tmp_path / "cfg.yaml")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    run_dir = tmp_path / "runs" / "vllm"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grpo_rows = [r for r in rows if r["stage"] == "grpo"]
    assert len(grpo_rows) == 2 and all(0.5 < r["is_weight_mean"] <= 2.0 for r in grpo_rows)
    assert len(store.read(run_dir)) == 2 * 2 * 4
