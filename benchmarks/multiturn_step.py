"""One multi-turn GRPO step with tool calls that return images, mmreason vs TRL's GRPOTrainer tool loop: time and
peak memory, interleaved in one process (the harness of grpo_step.py), plus where mmreason's step time goes.

The rollout is the zoom-in grounding pattern of "thinking with images": every trajectory calls `zoom_in` twice (each
call returns the crop of the prompt's image as a new image in a tool turn), then answers; G trajectories per
prompt. Both frameworks train the same random-init tiny Qwen3-VL (hidden 256, 4 text layers, vision depth 4; the
family whose chat template TRL can parse tool calls from) with the same prompts, image, tool (mmreason's own
`zoom_in`, so the crops and their sizes are identical), G, lengths and loss settings (DAPO token-mean, beta 0, one
iteration). A random model does not call tools by itself, so both are *scripted*: the tokens of each turn are
forced (TRL: a logits processor on its `generate`; mmreason: its token draw), the same text in both, and all the
model compute (prefill, decoding, tool turns, scoring, backward) is real. A step is the rollout + rewards + loss
forward/backward + gradient clip + optimizer step.

Contenders:
- `mmreason`: grpo.share_prefix=true: each prompt prefilled once for its G trajectories, each trajectory's cache
  kept across its tool turns (only new tokens and new images are encoded), and the loss shares each prompt's
  prefill (`rollout.turn_state`);
- `mmreason-reencode`: grpo.share_prefix=false: every turn re-encodes the whole conversation, every image included,
  and the loss scores whole trajectories (the path before kept state);
- `trl`: GRPOTrainer(tools=[zoom_in]) with transformers generate, whose tool loop appends the tool's message (the
  image as a content part) and generates again from the whole conversation.

Where mmreason's step time goes, part by part: benchmarks/profile_split.py.

    .venv/bin/python benchmarks/multiturn_step.py                    # G=8, 2 prompts, 5 timed steps each
    .venv/bin/python benchmarks/multiturn_step.py --device cuda      # on a GPU (bf16)

Needs TRL (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_step import MMStep, build_model, fresh, interleaved  # noqa: E402

from mmreason.config import GRPOConfig  # noqa: E402
from mmreason.data.sample import Sample  # noqa: E402
from mmreason.models.family import get_family  # noqa: E402
from mmreason.rollout import multiturn, turn_state  # noqa: E402
from mmreason.rollout.tools import ToolBudget, ToolCall, run_tool  # noqa: E402
from mmreason.rollout.types import SamplingParams  # noqa: E402
from mmreason.train import grpo  # noqa: E402
from mmreason.train.rl import group_advantages  # noqa: E402

ARCH = "qwen3_vl"
PROMPT = "Where is the red square? Zoom in to look closer, then answer with its box inside <answer></answer> tags."
CALLS = ([0, 0, 224, 224], [112, 112, 336, 336])  # the two zooms, pixels of the prompt image
ANSWER = "<answer>[112, 112, 336, 336]</answer>"
TOOL_PIXELS = 224 * 224  # each crop is resized to at most this: 7 x 7 = 49 vision tokens (32-pixel merged patches)


def _call_text(bbox: list[int]) -> str:
    return '<tool_call>\n{"name": "zoom_in", "arguments": {"bbox": ' + json.dumps(bbox) + "}}\n</tool_call>"


def make_samples(n: int, side: int = 448) -> list[Sample]:
    """n prompts on one side x side image (a red square on grey: the content does not matter to a random model);
    the zoom boxes stay inside its top-left 336 x 336."""
    image = Image.new("RGB", (side, side), (128, 128, 128))
    image.paste((220, 30, 30), (112, 112, 336, 336))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    out = []
    for i in range(n):
        sample = Sample(f"s{i}", "grounding", messages, [image], columns={"solution": [[112, 112, 336, 336]]})
        sample.meta.update(epoch=0, position=i)
        out.append(sample)
    return out


def budget() -> ToolBudget:
    return ToolBudget(max_turns=2, max_pixels=TOOL_PIXELS, min_pixels=32 * 32, family=get_family(ARCH))


# ------------------------------------------------------------------------------------------------ scripts
ACTIVE: list[Any] = [None]  # the script of the step running now (each contender has its own)


def scripted_draw(*args: Any, **kwargs: Any) -> Any:
    return ACTIVE[0](*args, **kwargs)


class MMScript:
    """mmreason's token draw (`prefix.next_tokens`, as both rollout paths call it) replaced by the script: each
    prompt's rows play the segments in lockstep; the model's logits are computed and ignored."""

    def __init__(self, tok: Any, end: str):
        texts = [_call_text(CALLS[0]), _call_text(CALLS[1]), ANSWER + end]
        self.segments = [tok.encode(t, add_special_tokens=False) for t in texts]
        self.reset()

    def reset(self) -> None:
        self.where: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.keep: list[torch.Generator] = []  # the generators seen this step (their ids stay valid)

    def __call__(self, logits, temperature, top_p, greedy, banned, generators=None):
        gen = generators[0]
        self.keep.append(gen)
        seg, pos = self.where[id(gen)]
        if pos == len(self.segments[seg]):
            seg, pos = seg + 1, 0
        self.where[id(gen)] = [seg, pos + 1]
        token = self.segments[seg][pos]
        return torch.full((logits.shape[0],), token, dtype=torch.long, device=logits.device), logits[:, 0]


def trl_forcing(model: Any, tok: Any) -> None:
    """TRL's `generate` with a logits processor that forces the script: a row's segment is the number of images in
    its input so far minus the prompt's one (each tool turn brings one), its position the tokens generated in this
    call; every tool-call segment ends with the end of turn, as the Qwen chat template parses a tool call."""
    from transformers import LogitsProcessor, LogitsProcessorList

    end = tok.convert_tokens_to_ids("<|im_end|>")
    texts = [_call_text(CALLS[0]), _call_text(CALLS[1]), ANSWER]
    segments = [tok.encode(t, add_special_tokens=False) + [end] for t in texts]
    vision_start = tok.convert_tokens_to_ids("<|vision_start|>")

    class Forced(LogitsProcessor):
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            out = torch.full_like(scores, float("-inf"))
            for r in range(input_ids.shape[0]):
                seg = min(int((input_ids[r, : self.start] == vision_start).sum()) - 1, len(segments) - 1)
                pos = input_ids.shape[1] - self.start
                out[r, segments[seg][pos] if pos < len(segments[seg]) else end] = 0.0
            return out

    original = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        kwargs["logits_processor"] = LogitsProcessorList([Forced(kwargs["input_ids"].shape[1])])
        return original(*args, **kwargs)

    model.generate = generate


# ------------------------------------------------------------------------------------------------ mmreason
def mm_config(args: argparse.Namespace, share: bool) -> GRPOConfig:
    return GRPOConfig(prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_new_tokens,
                      lr=1e-5, eps_low=0.2, eps_high=0.28, loss_agg="token_mean", beta=0.0, num_iterations=1,
                      scale_std=True, share_prefix=share)


def answer_reward(texts: list[str]) -> list[float]:
    return [float(ANSWER in t) for t in texts]


class MTStep(MMStep):
    """mmreason's multi-turn GRPO step: `grpo.run_grpo`'s body for a tool task (minus the store and metrics). The
    single-turn step's policy, optimizer and reference, with the multi-turn scoring path, seeded sampling (each
    prompt's rows then draw together, as the script needs) and the script."""

    def __init__(self, model: Any, processor: Any, samples: list[Sample], cfg: GRPOConfig, device: torch.device):
        super().__init__(model, processor, samples, cfg, device)
        path = "shared_trajectory" if cfg.share_prefix else "trajectory"
        self.plan = grpo.ScoringPlan(path, path)
        self.params = SamplingParams(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=0)
        self.script = MMScript(processor.tokenizer, get_family(ARCH).turn_end)

    def __call__(self) -> None:
        cfg, g, policy = self.cfg, self.cfg.group_size, self.policy
        self.script.reset()
        ACTIVE[0] = self.script
        b = budget()
        rollout = multiturn.tool_rollout(policy.model, policy.processor, self.samples, ("zoom_in",), self.params,
                                         self.device, keep_state=cfg.share_prefix, max_turns=2,
                                         min_pixels=b.min_pixels, max_pixels=b.max_pixels)
        calls = [t.tool_calls for t in rollout.trajectories]
        if calls != [2] * len(calls):
            raise RuntimeError(f"the script did not run: tool calls per trajectory {calls}")
        total = answer_reward(rollout.texts)
        adv = group_advantages(torch.tensor(total, device=self.device), g, scale_std=cfg.scale_std)
        mask = grpo.loss_mask_for(rollout, torch.ones_like(adv, dtype=torch.bool), cfg.mask_truncated)
        self.last, _ = grpo.update_policy(self.run, self.optimizer, self.reference, rollout, adv, mask, cfg,
                                          self.plan)
        self.last["sequence_len"] = float(rollout.sequences["attention_mask"].sum(-1).float().mean())


# ------------------------------------------------------------------------------------------------ TRL
TRL_CALLS = [0]  # zoom_in calls TRL's tool loop made (checked: 2 per trajectory and step)

def trl_trainer(model: Any, processor: Any, samples: list[Sample], args: argparse.Namespace, steps: int):
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer
    from trl.chat_template_utils import qwen3_vl_chat_template

    processor.chat_template = processor.tokenizer.chat_template = qwen3_vl_chat_template
    image = samples[0].images[0]

    def zoom_in(bbox: list[int]) -> list:
        """Crop a region of the image and enlarge it.

        Args:
            bbox: the region [x1, y1, x2, y2] in pixels of the image
        """
        TRL_CALLS[0] += 1
        result = run_tool(ToolCall("zoom_in", {"bbox": bbox}), samples[0], ("zoom_in",), budget())
        return [{"type": "image", "image": result.images[0]}, {"type": "text", "text": result.text}]

    def reward(completions: list, **_: Any) -> list[float]:
        return answer_reward([str(c[-1].get("content", "")) for c in completions])

    rows = [{"prompt": s.messages, "images": [image]} for s in samples]
    config = TRLConfig(
        output_dir=str(Path(args.workdir) / "trl"), per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.max_completion_length, temperature=1.0, top_p=1.0,
        top_k=0, learning_rate=1e-5, lr_scheduler_type="constant", loss_type="dapo", epsilon=0.2,
        epsilon_high=0.28, beta=0.0, num_iterations=1, scale_rewards="group", max_grad_norm=1.0,
        gradient_checkpointing=False, max_steps=steps, shuffle_dataset=False, use_vllm=False, report_to="none",
        save_strategy="no", logging_steps=10**6, disable_tqdm=True, use_cpu=args.device == "cpu",
        bf16=args.device == "cuda", seed=0, max_tool_calling_iterations=2,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config,
                          train_dataset=Dataset.from_list(rows * steps), processing_class=processor, tools=[zoom_in])
    trl_forcing(trainer.model, processor.tokenizer)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed steps per contender (after one warm-up)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per turn (mmreason)")
    parser.add_argument("--max-completion-length", type=int, default=512, help="TRL's budget for all turns")
    parser.add_argument("--image-size", type=int, default=448,
                        help="side of the prompt image in pixels (a multiple of 32; 448: 196 vision tokens)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--workdir", default="/tmp/mmreason-multiturn-bench")
    parser.add_argument("--out", type=Path, default=None, help="write the results as json here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base, processor = build_model("tiny", dtype, arch=ARCH, device="cpu")
    samples = make_samples(args.prompts, args.image_size)
    # TRL lets the processor resize its images: raise the processor's pixel limit to the image, so that TRL sees the
    # pixels mmreason sees (mmreason hands the processor images it has already sized and turns resizing off)
    size = dict(processor.image_processor.size)
    size["longest_edge"] = max(size.get("longest_edge") or 0, args.image_size**2)
    processor.image_processor.size = size
    multiturn.next_tokens = turn_state.next_tokens = scripted_draw
    steps = {name: MTStep(fresh(base, device), processor, samples, mm_config(args, share), device)
             for name, share in (("mmreason", True), ("mmreason-reencode", False))}
    result: dict[str, Any] = {"device": str(device), "arch": ARCH, "group": args.group, "prompts": args.prompts,
                              "image_size": args.image_size,
                              "torch_threads": torch.get_num_threads()}
    trainer = trl_trainer(fresh(base, device), processor, samples, args, args.reps + 1)
    series = interleaved(trainer, steps, device)
    result["steps"] = {name: s.summary() for name, s in series.items()}
    trl = result["steps"]["trl"]
    trl["tool_calls_per_trajectory"] = TRL_CALLS[0] / ((args.reps + 1) * args.prompts * args.group)
    if trl["tool_calls_per_trajectory"] != 2:
        raise RuntimeError(f"TRL's script did not run: {trl['tool_calls_per_trajectory']} calls per trajectory")
    for name in steps:
        # each mmreason step ran right after a TRL step: the median of these pairwise ratios is robust to load from
        # other processes that drifts during the run
        pairs = zip(series[name].seconds[1:], series["trl"].seconds[1:], strict=True)
        result["steps"][name]["time_vs_trl"] = statistics.median(a / b for a, b in pairs)
        result["steps"][name]["memory_vs_trl"] = result["steps"][name]["peak_mb"] / max(trl["peak_mb"], 1e-9)
        result["steps"][name]["sequence_len"] = steps[name].last.get("sequence_len")
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
