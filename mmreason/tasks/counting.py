"""The `counting` task: an image and a question ("How many ...?") -> a whole number.

Record: {"image": str | [str], "problem": str, "solution": int >= 0 (an integral float or a digit string such as
"3" is accepted: `mmreason.rewards.counting.check_count`), "id"?, "reasoning"?}.
Rewards (weights): format 0.5, count_match 1.0 (exact integer match).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import register_task
from mmreason.rewards.counting import check_count, format_count, predicted_count
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    answer_card,
    checked,
    load_images,
    mean,
    reasoning_of,
    record_id,
    require,
    require_text,
    score,
    user_messages,
)


@register_task("counting")
class CountingTask(Task):
    answer_format = "a single whole number"
    rewards = {"format": 0.5, "count_match": 1.0}
    metric_names = ("accuracy",)
    required_fields = ("image", "problem", "solution")
    record_fields = {
        "image | images": "one or more images",
        "problem": "what to count",
        "solution": "a whole number from 0 to 1,000,000",
    }

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        problem = require_text(record, rid, "problem")
        count = checked(rid, check_count, require(record, rid, "solution"))
        images, refs, _ = load_images(record, rid, ctx)
        prompt = f"{problem} Answer with a single whole number." + answer_instruction(ctx.think)
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(prompt, n_images=len(images)),
            images=[im.image for im in images],
            target=wrap_target(format_count(count), ctx.think, reasoning_of(record, rid)),
            columns={"solution": count},
            media=refs,
        )

    def valid_answer(self, completion: str, columns: dict[str, Any]) -> bool:
        return predicted_count(completion) is not None  # one whole number

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        return {"accuracy": mean(score("count_match", completions, samples))}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        return answer_card(sample, completion, "count_match", format_count(sample.columns["solution"]))
