"""Where mmreason's GRPO step time goes: the step split into sampling, rewards, old / reference log-probs, the loss
forward, backward and the optimizer step, for the single-turn step of grpo_step.py and the multi-turn tool step
of multiturn_step.py (both mmreason paths of each: shared / kept, and repeated / re-encoding).

Each part is timed by wrapping the function that does it (wall clock; on CUDA synchronised before and after), with
nesting counted once: the old / reference pass calls the scoring function the loss forward also uses, and counts
as its own part. "other" is the rest of the step (prompt encoding, advantages, masks). Medians over the timed steps
after one warm-up.

    .venv/bin/python benchmarks/profile_split.py                          # tiny single-turn G=8, multi-turn G=8
    .venv/bin/python benchmarks/profile_split.py --preset mid --groups 8   # single-turn at the mid preset
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpo_step  # noqa: E402
import multiturn_step  # noqa: E402

from mmreason.models.family import get_family  # noqa: E402
from mmreason.rollout import multiturn, turn_state  # noqa: E402
from mmreason.train import grpo  # noqa: E402

Part = tuple[Any, str]  # (module, function name) whose calls make one part
COMMON: dict[str, Part] = {
    "old / reference log-probs": (grpo, "_frozen_logprobs"),
    "loss forward": (grpo, "rollout_logprobs"),
    "backward": (grpo, "backward"),
    "optimizer step": (grpo, "optimizer_step"),
}
SINGLE: dict[str, Part] = {"sampling": (grpo_step, "generate"), "rewards": (grpo_step, "score_completions"), **COMMON}
MULTI: dict[str, Part] = {"sampling": (multiturn, "tool_rollout"), "rewards": (multiturn_step, "answer_reward"),
                          **COMMON}


def profiled(step: Callable[[], None], parts: dict[str, Part], steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per part over `steps` steps after one warm-up, and the step's total and the rest ("other")."""
    spent: dict[str, float] = defaultdict(float)
    inside: list[str] = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if inside:  # nested in another part: counted there
                return fn(*args, **kwargs)
            inside.append(name)
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                spent[name] += time.perf_counter() - t0
                inside.pop()

        return wrapper

    originals = {name: getattr(module, attr) for name, (module, attr) in parts.items()}
    for name, (module, attr) in parts.items():
        setattr(module, attr, timed(name, originals[name]))
    rows: list[dict[str, float]] = []
    try:
        for _ in range(steps + 1):
            spent.clear()
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            rows.append({**spent, "total": time.perf_counter() - t0})
    finally:
        for name, (module, attr) in parts.items():
            setattr(module, attr, originals[name])
    out = {k: statistics.median(r.get(k, 0.0) for r in rows[1:]) for k in [*parts, "total"]}
    out["other"] = out["total"] - sum(out[k] for k in parts)
    return out


def single_turn(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    base, processor = grpo_step.build_model(args.preset, dtype, "qwen2_5_vl", device="cpu")
    samples = grpo_step.make_samples(args.prompts, 1, factor=get_family("qwen2_5_vl").image_factor)
    out = {}
    for g in args.groups:
        cfg_args = argparse.Namespace(prompts=args.prompts, max_new_tokens=args.max_new_tokens)
        for name, share in (("mmreason", True), ("mmreason-unshared", False)):
            step = grpo_step.MMStep(grpo_step.fresh(base, device), processor, samples,
                                    grpo_step.mm_config(cfg_args, g, share), device)
            out[f"single-turn G={g} {name}"] = profiled(step, SINGLE, args.reps, device)
    return out


def multi_turn(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    base, processor = grpo_step.build_model("tiny", dtype, multiturn_step.ARCH, device="cpu")
    samples = multiturn_step.make_samples(args.prompts)
    multiturn.next_tokens = turn_state.next_tokens = multiturn_step.scripted_draw
    cfg_args = argparse.Namespace(prompts=args.prompts, group=args.multi_turn_group, max_new_tokens=64)
    out = {}
    for name, share in (("mmreason", True), ("mmreason-reencode", False)):
        step = multiturn_step.MTStep(grpo_step.fresh(base, device), processor, samples,
                                     multiturn_step.mm_config(cfg_args, share), device)
        out[f"multi-turn G={args.multi_turn_group} {name}"] = profiled(step, MULTI, args.reps, device)
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    parts = [*dict.fromkeys(k for r in results.values() for k in r if k not in ("total", "other")), "other"]
    lines = ["| step | total (s) | " + " | ".join(parts) + " |",
             "| --- | --- | " + " | ".join("---" for _ in parts) + " |"]
    for name, r in results.items():
        shares = " | ".join(f"{100 * r.get(p, 0.0) / r['total']:.0f}%" for p in parts)
        lines.append(f"| {name} | {r['total']:.2f} | {shares} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "mid", "3b"], help="the single-turn model")
    parser.add_argument("--groups", type=int, nargs="+", default=[8], help="single-turn G values")
    parser.add_argument("--multi-turn-group", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="single-turn completion length")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip", choices=["single", "multi"], default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results: dict[str, dict[str, float]] = {}
    if args.skip != "single":
        results.update(single_turn(args, device, dtype))
    if args.skip != "multi":
        results.update(multi_turn(args, device, dtype))
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
