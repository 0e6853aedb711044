"""A complete user task in one file: "which of the two shapes is larger, left or right?".

Register it with `--task-file examples/larger_shape.py` on any `mmreason` command, e.g.
    mmreason tasks --task-file examples/larger_shape.py
    mmreason train my_config.yaml --task-file examples/larger_shape.py

Records: {"image": "pair_001.png", "solution": "left" | "right"}.
"""

from __future__ import annotations

from typing import Any

from mmreason.processors import fetch_image
from mmreason.rewards import extract_answer
from PIL import Image

from mmreason import Sample, SampleContext, Task, register_reward, register_task
from mmreason.tasks.base import answer_instruction, wrap_target
from mmreason.tasks.viz import caption_bar

SIDES = ("left", "right")


def parse_side(completion: str) -> str | None:
    """'left' or 'right' from the <answer> tag (case-insensitive), else None."""
    answer = extract_answer(completion)
    if answer is None:
        return None
    word = answer.strip().strip(".").lower()
    return word if word in SIDES else None


@register_reward("larger_side")
def larger_side(completions: list[str], solution: list[str], **_: Any) -> list[float]:
    """1.0 when the answered side matches the truth, else 0.0 (unparsable answers score 0)."""
    return [float(parse_side(c) == s) for c, s in zip(completions, solution, strict=True)]


@register_task("larger_shape")
class LargerShapeTask(Task):
    answer_format = "left or right"
    rewards = {"format": 0.5, "larger_side": 1.0}
    metric_names = ("accuracy",)
    required_fields = ("image", "solution")

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = str(record.get("id", record["image"]))
        if record["solution"] not in SIDES:
            raise ValueError(f"record {rid!r}: field 'solution' must be 'left' or 'right', got {record['solution']!r}")
        image = fetch_image(ctx.base_dir / record["image"], ctx.min_pixels, ctx.max_pixels)
        prompt = "Which shape is larger, the left one or the right one? Answer left or right."
        return Sample(
            id=rid,
            task=self.name,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": prompt + answer_instruction(ctx.think)}],
                }
            ],
            images=[image.image],
            target=wrap_target(record["solution"], ctx.think),
            columns={"solution": record["solution"]},
            media=[record["image"]],
        )

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        scores = larger_side(completions, [s.columns["solution"] for s in samples])
        return {"accuracy": sum(scores) / max(len(scores), 1)}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        said = parse_side(completion) or "(no answer)"
        return caption_bar(sample.images[0], [f"answer: {said}", f"truth: {sample.columns['solution']}"])
