"""The `multiple_choice` task: image(s), a question and lettered options -> the letter of the right option.

Record: {"image": str | [str]} or {"images": [str]}, "problem": str, "options": [str, ...] (2 to 26),
"solution": "B" (a letter; the text of exactly one option is also accepted), "id"?, "reasoning"?}. The options and
the solution are checked by `mmreason.rewards.choice` (`check_options`, `check_choice`): the gold is read by the
same rule the `choice_match` reward reads answers with. Options are shown one per line as "A. ...".
Rewards (weights): format 0.5, choice_match 1.0.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import register_task
from mmreason.rewards.choice import LETTERS, check_choice, check_options, format_choice, predicted_choice
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


def render_options(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


@register_task("multiple_choice")
class MultipleChoiceTask(Task):
    answer_format = "the letter of the correct option (A, B, C, ...)"
    rewards = {"format": 0.5, "choice_match": 1.0}
    metric_names = ("accuracy",)
    required_fields = ("problem", "options", "solution")
    record_fields = {
        "image | images": "one or more images",
        "problem": "the question",
        "options": "2 to 26 option texts",
        "solution": "a letter, or the text of one option",
    }

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        problem = require_text(record, rid, "problem")
        options = checked(rid, check_options, require(record, rid, "options"), name="options")
        letter = checked(rid, check_choice, require(record, rid, "solution"), options)
        images, refs, _ = load_images(record, rid, ctx, names=("image", "images"))
        prompt = (f"{problem}\nOptions:\n{render_options(options)}\nAnswer with the option's letter."
                  + answer_instruction(ctx.think))
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(prompt, n_images=len(images)),
            images=[im.image for im in images],
            target=wrap_target(format_choice(letter), ctx.think, reasoning_of(record, rid)),
            columns={"solution": letter, "options": options},
            media=refs,
        )

    def check_record(self, record: dict[str, Any], ctx: SampleContext) -> list[str]:
        if record.get("image") is None and record.get("images") is None:
            return ["missing field(s) image or images"]
        return super().check_record(record, ctx)

    def valid_answer(self, completion: str, columns: dict[str, Any]) -> bool:
        return predicted_choice(completion, columns.get("options")) is not None  # one letter among the options

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        return {"accuracy": mean(score("choice_match", completions, samples))}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        letter = sample.columns["solution"]
        text = sample.columns["options"][LETTERS.index(letter)]
        return answer_card(sample, completion, "choice_match", f"{letter}. {text}")
