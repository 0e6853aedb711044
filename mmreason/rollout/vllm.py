"""The optional vLLM rollout engine (`grpo.rollout: vllm`): the same rollout interface as
`mmreason.rollout.engine.generate` (a `Rollout` of G completions per prompt), sampled by a vLLM engine colocated
with the trainer on each process's GPU.

vLLM is imported only when this backend is chosen. Each process runs its own engine for its own share of prompts
(vLLM's `external_launcher` executor, tensor parallel size 1), so the data layout across ranks is the one of the HF
backend (`mmreason.train.dist`). Before every rollout the policy's current weights are pushed into the engine (LoRA
adapters merged first, ZeRO-3 shards gathered by the caller), so vLLM always samples from the policy being trained.

What stays the trainer's: prompts are encoded by the HF processor for the loss exactly as with the HF backend, and
vLLM gets the same chat-template text and the same already-resized images (its own resize is an identity under the
run's pixel budget), so both see the same prompt tokens. Sampling is seeded per completion from the prompt's seed
(`mmreason.rollout.engine.prompt_seed`), vision placeholder tokens are excluded (`allowed_token_ids`), and vLLM reports
the sampled tokens' log-probs after temperature (`logprobs_mode="processed_logprobs"`): the loss corrects the remaining
sampler/trainer mismatch with truncated importance weights (`mmreason.train.rl.truncated_is_weights`).

Not covered: video prompts, multi-turn tool rollouts and the fixed-size-image families (InternVL, Gemma 3) (clear
errors; use `grpo.rollout: hf`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from mmreason.config import RunConfig
from mmreason.data.sample import Sample
from mmreason.models.family import family_for_processor
from mmreason.processors import render_prompt
from mmreason.rollout.engine import prompt_seed
from mmreason.rollout.types import PromptBatch, Rollout, SamplingParams, single_turn_rollout

log = logging.getLogger(__name__)

# prefixes that wrappers (PEFT, activation checkpointing) add to parameter names; vLLM loads HF checkpoint names
_WRAPPER_PREFIXES = ("base_model.model.", "_checkpoint_wrapped_module.")


def completion_seeds(seed: int, samples: list[Sample], group_size: int) -> list[int]:
    """One vLLM sampling seed per completion (P * G, prompt-major): the prompt's seed plus the completion index, so
    a prompt's G completions differ from each other and do not depend on the batch, the process or a resume."""
    return [(prompt_seed(seed, s) + j) & (2**63 - 1) for s in samples for j in range(group_size)]


def vllm_prompts(processor: Any, samples: list[Sample], min_pixels: int, max_pixels: int) -> list[dict[str, Any]]:
    """One vLLM prompt per sample: the chat-template text (media as single placeholders, expanded by vLLM) and the
    sample's images, already resized to the run's budget (the same pixel budget is passed so vLLM keeps their size)."""
    family = family_for_processor(processor)
    if family.fixed_image_size:
        # vLLM's own processing of these families (InternVL's dynamic tiling, Gemma 3's pan-and-scan) is not held to
        # the one tile per image the trainer scores: the sampled tokens would see other vision inputs
        raise ValueError(f"grpo.rollout: vllm does not take {family.label} models yet; use grpo.rollout: hf")
    prompts = []
    for s in samples:
        if s.video is not None:
            raise ValueError(
                f"sample {s.id!r} (task {s.task}): grpo.rollout: vllm does not take video prompts yet; "
                "use grpo.rollout: hf for video tasks"
            )
        prompt: dict[str, Any] = {"prompt": render_prompt(processor, s.messages)}
        if s.images:
            prompt["multi_modal_data"] = {"image": list(s.images)}
            prompt["mm_processor_kwargs"] = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        prompts.append(prompt)
    return prompts


def allowed_token_ids(vocab_size: int, suppressed: list[int]) -> list[int]:
    """Every token id of the model's vocabulary but the vision placeholders (which a completion must never hold)."""
    banned = set(suppressed)
    return [i for i in range(vocab_size) if i not in banned]


def _sampled_logprob(position: Any, token: int) -> float:
    """The sampled token's log-prob from one position of vLLM's `CompletionOutput.logprobs` ({token id: Logprob})."""
    entry = position[token]
    return float(getattr(entry, "logprob", entry))


def to_rollout(
    prompts: PromptBatch, group_size: int, outputs: list[Any], eos_ids: list[int], tokenizer: Any
) -> Rollout:
    """vLLM `RequestOutput`s (P * G of them, prompt-major, one completion each) -> a `Rollout`.

    Completion ids are right-padded; the mask covers tokens up to and including the first EOS (vLLM keeps the stop
    token in `token_ids`), truncated = no EOS, as for every engine (`types.single_turn_rollout`). Sampler log-probs
    [B, T] are vLLM's sampled-token log-probs (0 off the mask).
    """
    if len(outputs) != prompts.size * group_size:
        raise ValueError(f"vLLM returned {len(outputs)} outputs for {prompts.size} prompts x {group_size} samples")
    seqs = [out.outputs[0] for out in outputs]
    t = max([len(s.token_ids) for s in seqs] + [1])
    ids = torch.full((len(seqs), t), tokenizer.pad_token_id, dtype=torch.long)
    logprobs = torch.zeros(len(seqs), t, dtype=torch.float32)
    for b, seq in enumerate(seqs):
        tokens = list(seq.token_ids)
        ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        if seq.logprobs is not None:  # one {token: Logprob} per generated token
            sampled = [_sampled_logprob(pos, x) for pos, x in zip(seq.logprobs, tokens, strict=True)]
            logprobs[b, : len(tokens)] = torch.tensor(sampled, dtype=torch.float32)
    device = prompts.inputs["input_ids"].device
    return single_turn_rollout(prompts, group_size, ids.to(device), eos_ids, tokenizer, logprobs.to(device))


def vllm_name(name: str) -> str:
    """A parameter name of the (possibly PEFT-wrapped) policy as the plain transformers model names it: the names
    vLLM's Qwen2-VL / Qwen2.5-VL loaders map onto their modules (as they map the checkpoint's legacy names)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name.replace(".base_layer.", ".")


def engine_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of the policy's full weights under plain transformers names, for vLLM's `load_weights`.

    A LoRA policy's adapted weights are sent as base + delta (PEFT's `get_delta_weight` of the active adapters),
    computed one layer at a time and never written back: merging into the model and unmerging after would round the
    frozen base weights (bf16) a little on every sync. Adapter tensors themselves are not sent; nor are buffers
    (vLLM computes its own rotary tables).
    """
    lora_layers = {}
    if hasattr(model, "peft_config"):
        from peft.tuners.lora import LoraLayer

        lora_layers = {f"{n}.base_layer.weight": m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    for name, param in model.named_parameters():
        if lora_layers and "lora_" in name:
            continue
        value = param.data
        layer = lora_layers.get(name)
        if layer is not None:
            with torch.no_grad():
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        value = value + layer.get_delta_weight(adapter).to(value.dtype)
        yield vllm_name(name), value


def _set_launcher_env(rank: int, world_size: int) -> None:
    """vLLM's `external_launcher` executor joins the torch.distributed world of the launch; a single process
    started without a launcher gets the variables it reads."""
    from mmreason.train.dist import free_port

    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


class VLLMRollout:
    """A vLLM engine colocated with this process's trainer: `sync` pushes the policy's weights, `generate` samples."""

    def __init__(self, run_cfg: RunConfig, source: str, rank: int = 0, world_size: int = 1) -> None:
        self.min_pixels, self.max_pixels = run_cfg.model.min_pixels, run_cfg.model.max_pixels
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("grpo.rollout: vllm needs vLLM (pip install vllm) on a CUDA machine") from exc
        if not torch.cuda.is_available():
            raise RuntimeError("grpo.rollout: vllm needs a CUDA GPU; use grpo.rollout: hf on CPU")
        cfg = run_cfg.grpo.vllm
        _set_launcher_env(rank, world_size)
        self.cfg = cfg
        self.llm = LLM(
            model=source,
            dtype=run_cfg.model.dtype,
            seed=run_cfg.seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            enable_sleep_mode=cfg.enable_sleep_mode,
            distributed_executor_backend="external_launcher",
            limit_mm_per_prompt={"image": cfg.max_images, "video": 0},
            # the sampled tokens' log-probs after temperature: the distribution the importance weights compare with
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,  # the G requests of a prompt share its prefill
        )
        if cfg.enable_sleep_mode:
            self.llm.sleep(level=2)

    def _worker_model(self) -> Any:
        """The engine's model inside this process (external_launcher runs it in-process)."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError as exc:
            raise RuntimeError(
                "cannot reach the vLLM engine's model to load the policy's weights into it (this vLLM version moved "
                "llm_engine.model_executor.driver_worker.model_runner.model)"
            ) from exc

    def sync(self, model: Any) -> None:
        """Push the policy's current weights into the engine (call with ZeRO-3 shards gathered)."""
        if self.cfg.enable_sleep_mode:
            self.llm.wake_up(tags=["weights"])
        target = self._worker_model()
        for name, tensor in engine_weights(model):  # one tensor at a time: no second full copy of the weights
            target.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def generate(self, policy: Any, prompts: PromptBatch, params: SamplingParams) -> Rollout:
        """G completions per prompt, sampled by vLLM with the policy's current weights (synced first)."""
        from vllm import SamplingParams as VLLMSamplingParams

        from mmreason.rollout.engine import eos_token_ids, suppressed_token_ids

        self.sync(policy.model)
        if self.cfg.enable_sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        eos = eos_token_ids(policy.processor, policy.model)
        vocab = policy.model.get_output_embeddings().weight.shape[0]
        allowed = allowed_token_ids(vocab, suppressed_token_ids(policy.processor))
        per_completion = [
            VLLMSamplingParams(
                n=1,
                temperature=0.0 if params.greedy else params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=seed,
                stop_token_ids=eos,
                allowed_token_ids=allowed,
                logprobs=0,
            )
            for seed in completion_seeds(params.seed or 0, prompts.samples, params.group_size)
        ]
        texts = vllm_prompts(policy.processor, prompts.samples, self.min_pixels, self.max_pixels)
        requests = [p for p in texts for _ in range(params.group_size)]
        outputs = self.llm.generate(requests, sampling_params=per_completion, use_tqdm=False)
        if self.cfg.enable_sleep_mode:
            self.llm.sleep(level=2)
        return to_rollout(prompts, params.group_size, outputs, eos, policy.processor.tokenizer)
