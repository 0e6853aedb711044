"""GRPO step time with a frozen vision tower, num_iterations=2 and beta > 0: the step's vision features computed once
(grpo.cache_vision, mmreason.models.vision_cache) against today's path, which runs the encoder in every forward.

A step is what run_grpo does between drawing prompts and logging: encode the prompts, sample G completions per prompt
(shared-prefix sampling), then `update_policy` (old-policy and full-copy reference log-probs, num_iterations AdamW
updates), inside `step_cache` or not. Rewards are left out: random advantages, the same for both. Both contenders
start from the same weights and draw the same prompts and samples (per-prompt seeds); they alternate step by step, so
load from other processes hits both alike, and the first steps are warm-ups. Since the cache is exact, the two end
with bit-identical weights: checked at the end.

The model is a small Qwen2.5-VL (or `--arch qwen3_vl`) whose vision tower is not trivial next to its language model
(hidden 128, 8 blocks by default), on 224 x 224 images (256 patches, 64 vision tokens each), so that the encoder is a
visible share of a step, as it is for real VLMs on large images.

    .venv/bin/python benchmarks/frozen_vision.py                      # CPU, both scoring paths, markdown table
    .venv/bin/python benchmarks/frozen_vision.py --steps 6 --paths shared_prefix
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from mmreason.processors import resize_image
from PIL import Image

from mmreason.config import GRPOConfig
from mmreason.data.sample import Sample
from mmreason.models.family import family_module, get_family
from mmreason.models.policy import Policy, Reference, freeze_parts
from mmreason.models.tiny import build_config, build_processor, build_tokenizer
from mmreason.models.vision_cache import step_cache
from mmreason.rollout.engine import encode_prompts, generate
from mmreason.rollout.types import SamplingParams
from mmreason.runs.run import Run
from mmreason.train.grpo import ScoringPlan, loss_mask_for, update_policy
from mmreason.train.step import make_optimizer

PROMPT = "How many shapes are in the image? Answer with the number inside <answer></answer> tags."


def build_model(arch: str, vision_hidden: int, vision_depth: int, hidden: int, layers: int) -> tuple[Any, Any]:
    """The family's tiny config with a wider and deeper vision tower, random init (seed 0), and its processor."""
    tokenizer = build_tokenizer(arch)
    processor = build_processor(tokenizer, arch=arch)
    config = build_config(tokenizer, arch, hidden, layers, vision_depth)
    vision = config.vision_config
    vision.hidden_size, vision.intermediate_size, vision.num_heads = vision_hidden, 4 * vision_hidden, 4
    torch.manual_seed(0)
    model = family_module(arch).tiny_model(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    freeze_parts(model, get_family(arch), ["vision_tower", "projector"])
    return model.train(), processor


def make_samples(arch: str, n: int, size: int, step: int) -> list[Sample]:
    """n one-image prompts of random pixels, size x size (a multiple of the family's image factor), drawn from
    (step, index): both contenders get the same ones."""
    factor = get_family(arch).image_factor
    gen = torch.Generator().manual_seed(step)
    samples = []
    for i in range(n):
        pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
        image = resize_image(Image.fromarray(pixels), factor * factor, size * size, factor).image
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        samples.append(Sample(f"s{step}-{i}", "counting", messages, [image], meta={"epoch": step, "position": i}))
    return samples


class Contender:
    """One policy (with its full-copy reference and AdamW) taking GRPO steps with or without the vision cache."""

    def __init__(self, base: Any, processor: Any, cfg: GRPOConfig, cache: bool, path: str) -> None:
        self.policy = Policy.wrap(copy.deepcopy(base), processor)
        self.reference = Reference(self.policy, cfg.beta)
        self.optimizer = make_optimizer(self.policy.trainable_parameters(), cfg.lr, cfg.weight_decay)
        self.cfg, self.cache, self.plan = cfg, cache, ScoringPlan(path, "shared_prefix")
        self.times: list[float] = []
        self.encoder_runs: list[int] = []

    def step(self, samples: list[Sample], step: int) -> None:
        cfg, policy = self.cfg, self.policy
        params = SamplingParams(cfg.group_size, cfg.max_new_tokens, cfg.temperature, seed=step)
        t0 = time.perf_counter()
        with step_cache([policy.model, self.reference.copy], self.cache) as vision:
            batch = encode_prompts(policy.processor, samples, torch.device("cpu"))
            rollout = generate(policy.model, policy.processor, batch, params)
            b = rollout.completion_ids.shape[0]
            adv = torch.randn(b, generator=torch.Generator().manual_seed(step))
            mask = loss_mask_for(rollout, torch.ones(b, dtype=torch.bool), mask_truncated=False)
            run = Run.local(policy)
            update_policy(run, self.optimizer, self.reference, rollout, adv, mask, cfg, self.plan)
        self.times.append(time.perf_counter() - t0)
        self.encoder_runs.append(vision.encoder_runs if vision is not None else -1)


def encoder_seconds(model: Any, samples: list[Sample], processor: Any) -> float:
    """One vision-encoder forward over a step's images (no grad), median of 3."""
    batch = encode_prompts(processor, samples, torch.device("cpu"))
    inner = model.model
    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            inner.get_image_features(batch.inputs["pixel_values"], batch.inputs["image_grid_thw"])
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_path(args: argparse.Namespace, base: Any, processor: Any, path: str) -> dict[str, Any]:
    cfg = GRPOConfig(
        group_size=args.group_size, max_new_tokens=args.max_new_tokens, num_iterations=2, beta=0.04, lr=1e-4,
        temperature=1.0,
    )
    off, on = Contender(base, processor, cfg, False, path), Contender(base, processor, cfg, True, path)
    for step in range(args.warmup + args.steps):
        samples = make_samples(args.arch, args.prompts, args.image_size, step)
        for contender in (off, on) if step % 2 == 0 else (on, off):  # alternate who goes first
            contender.step(samples, step)
    pairs = zip(off.policy.model.parameters(), on.policy.model.parameters(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    t_off, t_on = (statistics.median(c.times[args.warmup :]) for c in (off, on))
    enc = encoder_seconds(base, make_samples(args.arch, args.prompts, args.image_size, 0), processor)
    return {
        "path": path, "off_s": t_off, "on_s": t_on, "ratio": t_on / t_off, "encoder_s": enc,
        "runs_on": statistics.median(on.encoder_runs[args.warmup :]), "identical": same,
    }


def table(rows: list[dict[str, Any]], steps: int) -> str:
    lines = [
        f"| loss scoring path | step, cache off (s) | step, cache on (s) | on / off | one encoder pass (s) | "
        f"encoder runs per step, on (off: 5) | weights identical after {steps} steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['path']} | {r['off_s']:.2f} | {r['on_s']:.2f} | {r['ratio']:.2f} | {r['encoder_s']:.3f} | "
            f"{r['runs_on']:g} | {'yes' if r['identical'] else 'NO'} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5"])
    p.add_argument("--paths", nargs="+", default=["shared_prefix", "repeated_prompt"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per contender (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--vision-hidden", type=int, default=128)
    p.add_argument("--vision-depth", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128, help="language model hidden size")
    p.add_argument("--layers", type=int, default=2, help="language model layers")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base, processor = build_model(args.arch, args.vision_hidden, args.vision_depth, args.hidden, args.layers)
    rows = [bench_path(args, base, processor, path) for path in args.paths]
    print(
        f"\n{args.arch}: vision {args.vision_depth} x {args.vision_hidden}, text {args.layers} x {args.hidden}; "
        f"{args.prompts} prompts x G={args.group_size}, {args.image_size}x{args.image_size} images, "
        f"{args.max_new_tokens} new tokens; num_iterations=2, beta=0.04; CPU, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; medians of {args.steps} steps after {args.warmup} warm-up\n"
    )
    print(table(rows, args.warmup + args.steps))


if __name__ == "__main__":
    main()
