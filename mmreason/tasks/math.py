"""The `math` task: a (possibly illustrated) math problem -> the final answer, checked with math-verify.

Record: {"problem": str, "solution": str | number (the final answer, plain or LaTeX; checked by
`mmreason.rewards.math_answer.check_solution`), "image": str | [str]?, "id"?, "reasoning"?}.
Rewards (weights): format 0.5, math_verify 1.0 (symbolic/numeric equivalence).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import register_task
from mmreason.rewards.math_answer import check_solution, format_math_answer
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


@register_task("math")
class MathTask(Task):
    answer_format = "the final answer: a number or a LaTeX expression"
    rewards = {"format": 0.5, "math_verify": 1.0}
    metric_names = ("accuracy",)
    required_fields = ("problem", "solution")
    record_fields = {
        "problem": "the question (<image> marks where figures go)",
        "solution": "the final answer, plain or LaTeX",
        "image | images?": "figures",
    }

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        problem = require_text(record, rid, "problem")
        solution = checked(rid, check_solution, require(record, rid, "solution"))
        images, refs = [], []
        if record.get("image") is not None:
            images, refs, _ = load_images(record, rid, ctx)
        prompt = (f"{problem} Give the final answer as a number or a LaTeX expression, without units."
                  + answer_instruction(ctx.think))
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(prompt, n_images=len(images)),
            images=[im.image for im in images],
            target=wrap_target(format_math_answer(solution), ctx.think, reasoning_of(record, rid)),
            columns={"solution": solution},
            media=refs,
        )

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        return {"accuracy": mean(score("math_verify", completions, samples))}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        return answer_card(sample, completion, "math_verify", sample.columns["solution"])
