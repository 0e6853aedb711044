"""The `classification` task (CLS-RL): an image -> its category label, optionally chosen from a list of options.

Record: {"image": str | [str], "solution": str (label), "options": [str]?, "synonyms": [str]?, "problem": str?,
"id"?, "reasoning"?}. With options the gold label must match one of them as an answer would (case, accents,
punctuation and a leading article ignored); label, options and synonyms are checked by
`mmreason.rewards.classification`. CLS-RL's no-thinking variant is the same task built with
SampleContext(think=False) (the format reward becomes `format_nothink`).
Rewards (weights): format 0.5, cls_match 1.0 (normalised label match, synonyms accepted).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import register_task
from mmreason.rewards.classification import check_label, check_label_list, format_label
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    answer_card,
    checked,
    load_images,
    mean,
    optional_text,
    reasoning_of,
    record_id,
    require,
    score,
    user_messages,
)

DEFAULT_QUESTION = "What is the category of the main object in this image?"


@register_task("classification")
class ClassificationTask(Task):
    answer_format = "the category label (one of the options when they are given)"
    rewards = {"format": 0.5, "cls_match": 1.0}
    metric_names = ("accuracy",)
    required_fields = ("image", "solution")
    record_fields = {
        "image | images": "one or more images",
        "solution": "the label",
        "options?": "labels to choose from",
        "synonyms?": "other accepted names of the label",
        "problem?": "the question (default: what is shown)",
    }

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        solution = require(record, rid, "solution")
        options = checked(rid, check_label_list, record.get("options"), name="options")
        synonyms = checked(rid, check_label_list, record.get("synonyms"), name="synonyms")
        label = checked(rid, check_label, solution, options=options)
        images, refs, _ = load_images(record, rid, ctx)
        question = optional_text(record, rid, "problem", DEFAULT_QUESTION)
        choose = f" Choose one of: {', '.join(options)}." if options else " Answer with the category name."
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(question + choose + answer_instruction(ctx.think), n_images=len(images)),
            images=[im.image for im in images],
            target=wrap_target(format_label(label), ctx.think, reasoning_of(record, rid)),
            # synonyms is always present so a batch's columns line up whether or not records carry it
            columns={"solution": label, "synonyms": synonyms},
            media=refs,
        )

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        return {"accuracy": mean(score("cls_match", completions, samples))}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        truth = sample.columns["solution"]
        if sample.columns.get("synonyms"):
            truth += f" (also: {', '.join(sample.columns['synonyms'])})"
        return answer_card(sample, completion, "cls_match", truth)
