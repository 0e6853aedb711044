"""One GRPO step, mmreason vs TRL's GRPOTrainer: time and peak memory, interleaved in one process.

Both train the same random-init model of one family (Qwen2.5-VL by default, `--arch`; same weights, processor,
prompts, images, G, lengths and loss settings) for a few steps; a step is generation + rewards + loss
forward/backward + gradient clip + optimizer step. The frameworks alternate step by step (a TRL step, then
mmreason's steps, from a TrainerCallback), so load from other processes hits both alike; the first step of each is a
warm-up and not counted. Medians over the repetitions.

Contenders: `mmreason` (grpo.share_prefix=true: each prompt and its images are encoded once per group, in the
rollout and in the loss), `mmreason-unshared` (grpo.share_prefix=false: the prompt rows are repeated G times, as
TRL does), and `trl` (GRPOTrainer, use_vllm=False, transformers generate).

Peak memory is per step, above what was resident before it: on CUDA `torch.cuda.max_memory_allocated`; on a CPU
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs after returning freed heap with malloc_trim).

The objective check feeds identical tensors (one mmreason rollout: prompts, images, completions, advantages, and
off-policy old log-probs so that clipping is active) to TRL's own `_compute_loss` and to mmreason's scoring +
`grpo_loss`, for the three matched loss aggregations.

    .venv/bin/python benchmarks/grpo_step.py                                   # CPU: the tiny preset
    .venv/bin/python benchmarks/grpo_step.py --arch qwen3_vl                   # CPU: the tiny Qwen3-VL
    .venv/bin/python benchmarks/grpo_step.py --preset mid --groups 8 16        # CPU: ~100M, Qwen2.5-VL proportions
    .venv/bin/python benchmarks/grpo_step.py --device cuda --preset 3b         # GPU: bf16, Qwen2.5-VL-3B shapes
    .venv/bin/python benchmarks/grpo_step.py --device cuda --preset 3b --arch qwen3_vl   # Qwen3-VL-4B shapes

Needs TRL (`pip install -e '.[bench]'`); `--no-trl` times mmreason alone.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmreason.processors import resize_image
from PIL import Image

from mmreason.config import GRPOConfig
from mmreason.data.sample import Sample
from mmreason.models.family import family_names, get_family
from mmreason.models.policy import Policy, Reference
from mmreason.registry import get_task, resolve_reward
from mmreason.rollout.engine import encode_prompts, generate, repeat_prompts, suppressed_token_ids
from mmreason.rollout.scoring import RewardErrors, score_completions
from mmreason.rollout.types import SamplingParams
from mmreason.runs.run import Run
from mmreason.train.grpo import ScoringPlan, loss_mask_for, rollout_logprobs, update_policy
from mmreason.train.rl import group_advantages, grpo_loss
from mmreason.train.step import make_optimizer

PROMPT = "How many shapes are in the image? Answer with the number inside <answer></answer> tags."
TASK = "counting"
# (width, height) of the images of one prompt; 448 x 448 is 256 vision tokens after the 2 x 2 merge
IMAGE_SIZES = {1: [(448, 448)], 2: [(448, 448), (448, 336)]}
# TRL loss_type <-> mmreason grpo.loss_agg: the same aggregations (rl.aggregate_loss documents each)
MATCHED_LOSSES = {"dapo": "token_mean", "grpo": "seq_mean_token_mean", "dr_grpo": "seq_mean_token_sum_norm"}


# ------------------------------------------------------------------------------------------------ model and data
# The `3b` preset per family: a real checkpoint's text and vision shapes, random init. The vocabulary stays the tiny
# tokenizer's (~1k ids, not 152k): ids the tokenizer cannot decode must never be sampled. Qwen3-VL has no 3B model;
# its 4B is the nearest.
SHAPES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "qwen2_5_vl": (
        "Qwen2.5-VL-3B-Instruct",
        dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        ),
        dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
        ),
    ),
    "qwen3_vl": (
        "Qwen3-VL-4B-Instruct",
        dict(
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=262144,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            out_hidden_size=2560,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
        ),
    ),
}


# The `mid` preset: about 100M parameters with Qwen2.5-VL-3B's proportions (vision ~20% of the weights, a windowed
# vision tower with full attention every 3rd block, GQA text layers), where on a CPU model compute dominates a step
# rather than Python overhead; with 448x448 images (256 vision tokens each).
MID_SHAPES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "qwen2_5_vl": (
        "Qwen2.5-VL proportions, ~100M",
        dict(hidden_size=640, intermediate_size=3456, num_hidden_layers=12, num_attention_heads=10,
             num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}),
        dict(depth=6, hidden_size=512, intermediate_size=1368, num_heads=8, out_hidden_size=640,
             fullatt_block_indexes=[2, 5], window_size=112),
    ),
}
PRESET_SHAPES = {"3b": SHAPES, "mid": MID_SHAPES}


def shaped_config(arch: str, tokenizer: Any, preset: str = "3b") -> Any:
    """The `3b` (or `mid`) preset's config of family `arch`: the family's tiny config (its token ids, patch and
    merge sizes) with the text and vision shapes `PRESET_SHAPES` gives (3b: the checkpoint's, Qwen2.5-VL-3B: 36 x
    2048 text layers, 32 x 1280 vision blocks; Qwen3-VL-4B: 36 x 2560, 24 x 1024 with DeepStack)."""
    from mmreason.models.tiny import build_config

    tiny = build_config(tokenizer, arch)
    _, text, vision = PRESET_SHAPES[preset][arch]
    tree = tiny.to_dict()
    tree["text_config"].pop("layer_types", None)  # derived from the layer count: rebuilt for the new one
    tree["text_config"].update(text)
    tree["vision_config"].update(vision)
    return type(tiny).from_dict(tree)


def build_model(
    preset: str, dtype: torch.dtype, arch: str = "qwen2_5_vl", device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """The benchmark model of the family `arch`, its weights initialised on `device`, and its processor. tiny:
    mmreason.models.tiny.build_tiny(hidden 256, 4 layers, vision depth 4), where a step on a CPU is dominated by
    model compute rather than Python overhead; 3b: `shaped_config` (3-4B parameters, random init: on a GPU in
    seconds, on a CPU in minutes)."""
    from transformers import AutoModelForImageTextToText

    from mmreason.models.tiny import build_tiny

    if preset == "tiny":
        model, processor = build_tiny(arch=arch, hidden_size=256, layers=4, vision_depth=4, seed=0)
        return model.to(device=device, dtype=dtype).train(), processor
    _, processor = build_tiny(arch=arch, hidden_size=64, layers=1, vision_depth=1, seed=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(shaped_config(arch, processor.tokenizer, preset), dtype=dtype)
    return model.train(), processor


def fresh(base: Any, device: torch.device) -> Any:
    """A contender's own copy of the initial weights, on its device."""
    return copy.deepcopy(base).to(device)


def make_samples(n_prompts: int, n_images: int, seed: int = 0, factor: int = 28) -> list[Sample]:
    """Prompts with random-pixel images (their content does not matter to a random-init model), resized to sides
    that are multiples of the family's image `factor` (448 x 448 stays as it is for 28 and 32)."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n_prompts):
        images = [
            resize_image(
                Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()),
                factor * factor,
                448 * 448,
                factor,
            ).image
            for w, h in IMAGE_SIZES[n_images]
        ]
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": PROMPT}]
        messages = [{"role": "user", "content": content}]
        samples.append(Sample(f"s{i}", TASK, messages, images, columns={"solution": 1 + i % 4}))
    return samples


# ------------------------------------------------------------------------------------------------ measurement
def _status_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Run fn once -> (seconds, peak memory in MiB above what was resident before it)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the peak below is this step's
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _status_kb("VmRSS")
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, (_status_kb("VmHWM") - base) / 1024


@dataclass
class Series:
    """Per-step times (s) and peak memory (MiB) of one contender; index 0 is the warm-up."""

    seconds: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)

    def add(self, sample: tuple[float, float]) -> None:
        self.seconds.append(sample[0])
        self.memory.append(sample[1])

    def summary(self) -> dict[str, float]:
        s, m = self.seconds[1:] or self.seconds, self.memory[1:] or self.memory
        return {"median_s": statistics.median(s), "min_s": min(s), "peak_mb": max(m), "n": len(s)}


# ------------------------------------------------------------------------------------------------ mmreason
class MMStep:
    """mmreason's GRPO step, the body of `grpo.run_grpo` (minus the store and metrics file writes)."""

    def __init__(self, model: Any, processor: Any, samples: list[Sample], cfg: GRPOConfig, device: torch.device):
        self.policy = Policy.wrap(model, processor, "bench")
        self.run = Run.local(self.policy)
        self.optimizer = make_optimizer(self.policy.trainable_parameters(), cfg.lr, cfg.weight_decay)
        self.reference = Reference(self.policy, cfg.beta)
        self.samples, self.cfg, self.device = samples, cfg, device
        path = "shared_prefix" if cfg.share_prefix else "repeated_prompt"
        self.plan = ScoringPlan(path, path)
        self.params = SamplingParams(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p)
        self.weights = get_task(TASK).reward_weights(think=False)
        self.last: dict[str, float] = {}

    def __call__(self) -> None:
        cfg, g, policy = self.cfg, self.cfg.group_size, self.policy
        prompts = encode_prompts(policy.processor, self.samples, self.device)
        rollout = generate(policy.model, policy.processor, prompts, self.params, share_prefix=cfg.share_prefix)
        _, total = score_completions(self.weights, self.samples, rollout.texts, g, RewardErrors())
        adv = group_advantages(torch.tensor(total, device=self.device), g, scale_std=cfg.scale_std)
        mask = loss_mask_for(rollout, torch.ones_like(adv, dtype=torch.bool), cfg.mask_truncated)
        self.last, _ = update_policy(self.run, self.optimizer, self.reference, rollout, adv, mask, cfg, self.plan)
        self.last["completion_len"] = float(rollout.completion_mask.sum(-1).float().mean())
        self.last["prompt_len"] = float(prompts.inputs["attention_mask"].sum(-1).float().mean())


def mm_config(args: argparse.Namespace, g: int, share: bool) -> GRPOConfig:
    return GRPOConfig(
        prompts_per_step=args.prompts,
        group_size=g,
        max_new_tokens=args.max_new_tokens,
        lr=1e-5,
        eps_low=0.2,
        eps_high=0.28,
        loss_agg="token_mean",
        beta=0.0,
        num_iterations=1,
        scale_std=True,
        share_prefix=share,
    )


# ------------------------------------------------------------------------------------------------ TRL
def trl_rewards(weights: dict[str, float]) -> list[Callable[..., list[float]]]:
    """mmreason's reward functions in TRL's calling convention (conversational completions, dataset columns)."""

    def wrap(name: str) -> Callable[..., list[float]]:
        fn = resolve_reward(name)

        def reward(completions: list, solution: list, **_: Any) -> list[float]:
            scores = fn([c[0]["content"] for c in completions], solution=solution)
            return [0.0 if s is None else float(s) for s in scores]

        reward.__name__ = name
        return reward

    return [wrap(name) for name in weights]


def trl_trainer(model: Any, processor: Any, samples: list[Sample], args: argparse.Namespace, g: int, steps: int):
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    rows = [{"prompt": s.messages, "images": s.images, "solution": s.columns["solution"]} for s in samples]
    weights = get_task(TASK).reward_weights(think=False)
    config = TRLConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        per_device_train_batch_size=args.prompts * g,
        num_generations=g,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        loss_type="dapo",
        epsilon=0.2,
        epsilon_high=0.28,
        beta=0.0,
        num_iterations=1,
        scale_rewards="group",
        reward_weights=list(weights.values()),
        max_grad_norm=1.0,
        # TRL turns activation checkpointing on by default; mmreason (model.gradient_checkpointing) leaves it off:
        # like for like unless --trl-checkpointing
        gradient_checkpointing=args.trl_checkpointing,
        max_steps=steps,
        shuffle_dataset=False,
        use_vllm=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        bf16=args.device == "cuda",
        seed=0,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=trl_rewards(weights),
        args=config,
        train_dataset=Dataset.from_list(rows * steps),
        processing_class=processor,
    )


def interleaved(trainer: Any, others: dict[str, MMStep], device: torch.device) -> dict[str, Series]:
    """Train TRL; after each of its steps run one step of every mmreason contender (each measured alone)."""
    from transformers import TrainerCallback

    series = {"trl": Series(), **{name: Series() for name in others}}

    class Interleave(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            gc.collect()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                self.base = torch.cuda.memory_allocated(device)
            else:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                Path("/proc/self/clear_refs").write_text("5")
                self.base = _status_kb("VmRSS") * 1024
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
            else:
                peak = _status_kb("VmHWM") * 1024
            series["trl"].add((time.perf_counter() - self.t0, (peak - self.base) / 2**20))
            for name, step in others.items():
                series[name].add(measure(step, device))

    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its per-run log dump is not part of the table
    trainer.add_callback(Interleave())
    trainer.train()
    return series


def mm_only(others: dict[str, MMStep], steps: int, device: torch.device) -> dict[str, Series]:
    series = {name: Series() for name in others}
    for _ in range(steps):
        for name, step in others.items():
            series[name].add(measure(step, device))
    return series


# ------------------------------------------------------------------------------------------------ objective check
def trl_inputs(prompts: Any, rollout: Any, adv: torch.Tensor, old: torch.Tensor) -> dict[str, Any]:
    """An mmreason rollout in the layout TRL's `_compute_loss` takes (prompt rows repeated G times)."""
    g = rollout.group_size
    rows = repeat_prompts(prompts, g)
    mm = rows["mm_token_type_ids"]
    return {
        "prompt_ids": rows["input_ids"],
        "prompt_mask": rows["attention_mask"],
        "completion_ids": rollout.completion_ids,
        "completion_mask": rollout.completion_mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": rollout.completion_mask.sum(),
        "pixel_values": rows["pixel_values"],
        "image_grid_thw": rows["image_grid_thw"],
        "num_images": [n for n in prompts.n_images for _ in range(g)],
        "mm_token_type_ids": torch.cat([mm, torch.zeros_like(rollout.completion_ids, dtype=mm.dtype)], dim=1),
    }


def _varied_lengths(rollout: Any, seed: int = 0) -> None:
    """Cut the completions to different lengths (at least 4 tokens), so that the three aggregations differ."""
    t = rollout.completion_ids.shape[1]
    gen = torch.Generator().manual_seed(seed)
    for row, keep in enumerate(torch.randint(min(4, t), t + 1, (len(rollout.texts),), generator=gen).tolist()):
        rollout.completion_mask[row, keep:] = 0


def _gradients(model: Any, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad.flatten().float() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return torch.cat(grads)


def objective_check(trainer: Any, processor: Any, samples: list[Sample], g: int, max_len: int) -> list[dict]:
    """Loss (and its gradient) of the same rollout under TRL's `_compute_loss` and mmreason's scoring + grpo_loss.

    mmreason is run twice: over the full vocabulary as TRL scores ("full_vocab"), and as it trains, renormalised
    without the vision placeholder tokens that sampling suppresses ("default"). Old log-probs are each side's own
    log-probs plus the same noise, so ratios (and clipping) are the same."""
    model, device = trainer.model, trainer.accelerator.device
    prompts = encode_prompts(processor, samples, device)
    torch.manual_seed(1)
    rollout = generate(model, processor, prompts, SamplingParams(g, max_len))
    _varied_lengths(rollout)
    adv = group_advantages(torch.randn(len(rollout.texts), generator=torch.Generator().manual_seed(0)).to(device), g)
    mask, m = rollout.completion_mask, rollout.completion_mask.bool()
    banned = suppressed_token_ids(processor)
    noise = 0.3 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)).to(device)
    trainer.current_gradient_accumulation_steps = 1
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()  # the shared-prefix loss needs the KV cache (and the check no memory)
    model.train()
    out = []
    for trl_type, agg in MATCHED_LOSSES.items():
        row: dict[str, Any] = {"trl_loss_type": trl_type, "mmreason_loss_agg": agg}
        grads = {}
        for name, suppressed in (("full_vocab", []), ("default", banned)):
            logp, _ = rollout_logprobs(model, rollout, "shared_prefix", 1.0, suppressed)
            old = (logp.detach() + noise) * mask
            loss, _ = grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28, loss_agg=agg, max_len=max_len)
            row[f"mmreason_{name}"] = float(loss.detach())
            grads[name] = _gradients(model, loss)
            if name == "full_vocab":
                trl_old = old
        trainer.loss_type = trl_type
        trl_loss = trainer._compute_loss(model, trl_inputs(prompts, rollout, adv, trl_old))
        row["trl"] = float(trl_loss.detach())
        grads["trl"] = _gradients(model, trl_loss)
        for name in ("full_vocab", "default"):
            rel = (grads[name] - grads["trl"]).norm() / grads["trl"].norm()
            row[f"grad_rel_diff_{name}"] = float(rel)
        out.append(row)
    with torch.no_grad():
        inputs = trl_inputs(prompts, rollout, adv, trl_old)
        trl_logp, _, _ = trainer._get_per_token_logps_and_entropies(
            model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            mask.shape[1],
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            num_images=inputs["num_images"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
        )
        plain, _ = rollout_logprobs(model, rollout, "shared_prefix", 1.0, [])
    out.append({"max_abs_logp_diff_trl_vs_mmreason_full_vocab": float((trl_logp.float() - plain)[m].abs().max())})
    trainer.loss_type = "dapo"
    return out


# ------------------------------------------------------------------------------------------------ main
def run_config(args: argparse.Namespace, base: Any, processor: Any, g: int, n_images: int) -> dict[str, Any]:
    device = torch.device(args.device)
    samples = make_samples(args.prompts, n_images, factor=get_family(args.arch).image_factor)
    steps = args.reps + 1
    contenders = {"mmreason": MMStep(fresh(base, device), processor, samples, mm_config(args, g, True), device)}
    if args.unshared:
        unshared = mm_config(args, g, False)
        contenders["mmreason-unshared"] = MMStep(fresh(base, device), processor, samples, unshared, device)
    check = None
    if args.no_trl:
        series = mm_only(contenders, steps, device)
    else:
        trainer = trl_trainer(fresh(base, device), processor, samples, args, g, steps)
        series = interleaved(trainer, contenders, device)
        if args.check and g == args.check_group and n_images == 1:
            check = objective_check(trainer, processor, samples, g, args.max_new_tokens)
        del trainer
    result = {"G": g, "images": n_images, **{k: s.summary() for k, s in series.items()}}
    result["prompt_len"] = contenders["mmreason"].last.get("prompt_len")
    result["completion_len"] = contenders["mmreason"].last.get("completion_len")
    if "trl" in series:
        # each mmreason step ran right after a TRL step: the median of these pairwise ratios is robust to load from
        # other processes that drifts during the run
        pairs = zip(series["mmreason"].seconds[1:], series["trl"].seconds[1:], strict=True)
        result["ratio"] = statistics.median(a / b for a, b in pairs)
    if check is not None:
        result["objective_check"] = check
    return result


def table(results: list[dict[str, Any]]) -> str:
    names = [n for n in ("mmreason", "mmreason-unshared", "trl") if n in results[0]]
    head = "| G | images | prompt tokens | " + " | ".join(f"{n} s/step" for n in names)
    head += " | " + " | ".join(f"{n} peak MiB" for n in names) + (" | mmreason / trl |" if "trl" in names else " |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        cells = [str(r["G"]), str(r["images"]), f"{r['prompt_len']:.0f}"]
        cells += [f"{r[n]['median_s']:.2f}" for n in names] + [f"{r[n]['peak_mb']:.0f}" for n in names]
        if "trl" in names:
            cells.append(f"{r['ratio']:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=("tiny", "mid", "3b"), default="tiny")
    p.add_argument(
        "--arch", choices=family_names(), default="qwen2_5_vl", help=f"model family (3b preset: {', '.join(SHAPES)})"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    p.add_argument("--multi-image-group", type=int, default=8, help="G of the 2-image case (0: skip it)")
    p.add_argument("--prompts", type=int, default=1, help="prompts per step")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5, help="timed steps per contender (after one warm-up step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--unshared",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time mmreason with grpo.share_prefix=false (default: on for tiny, off for 3b: memory)",
    )
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--trl-checkpointing", action="store_true", help="TRL's default gradient_checkpointing=True")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True, help="objective check vs TRL")
    p.add_argument("--check-group", type=int, default=8)
    p.add_argument("--workdir", default="runs/bench")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.preset in PRESET_SHAPES and args.arch not in PRESET_SHAPES[args.preset]:
        p.error(f"--preset {args.preset} has the shapes of {', '.join(PRESET_SHAPES[args.preset])} only, not "
                f"{args.arch}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5.x renames (gradient checkpointing)
    if args.unshared is None:
        args.unshared = args.preset == "tiny"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # the 3b weights are initialised on the benchmark's device (on a CPU that takes minutes) and kept on the CPU:
    # each contender trains its own copy on the device
    init = device if args.preset == "3b" else "cpu"
    base, processor = build_model(args.preset, dtype, args.arch, device=init)
    base.to("cpu")
    configs = [(g, 1) for g in args.groups] + ([(args.multi_image_group, 2)] if args.multi_image_group else [])
    results = []
    for g, n_images in configs:
        results.append(run_config(args, base, processor, g, n_images))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.preset} preset ({args.arch}), {device}, {args.threads} threads, torch {torch.__version__}")
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
