"""The `classification` task (CLS-RL): an image -> its category label, optionally chosen from a list of options.

Record: {"image": str | [str], "solution": str (label), "options": [str]?, "synonyms": [str]?, "problem": str?,
"id"?, "reasoning"?}. With options the gold label must be one of them (case-insensitive). CLS-RL's no-thinking
variant is the same task built with SampleContext(think=False) (the format reward becomes `format_nothink`).
Rewards (weights): format 0.5, cls_match 1.0 (normalised label match, synonyms accepted).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import register_task
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    answer_card,
    field_error,
    load_images,
    mean,
    optional_text,
    reasoning_of,
    record_id,
    require_text,
    score,
    user_messages,
)

DEFAULT_QUESTION = "What is the category of the main object in this image?"


def string_list(record: dict[str, Any], rid: str, name: str) -> list[str]:
    """An optional list of non-empty strings (absent -> [])."""
    value = record.get(name)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise field_error(rid, name, "a list of non-empty strings", value)
    return [v.strip() for v in value]


def _norm(label: str) -> str:
    return " ".join(label.lower().split())


@register_task("classification")
class ClassificationTask(Task):
    answer_format = "the category label (one of the options when they are given)"
    rewards = {"format": 0.5, "cls_match": 1.0}
    metric_names = ("accuracy",)
    required_fields = ("image", "solution")

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        label = require_text(record, rid, "solution")
        options = string_list(record, rid, "options")
        synonyms = string_list(record, rid, "synonyms")
        if options and _norm(label) not in {_norm(o) for o in options}:
            raise field_error(rid, "solution", f"one of the options {options}", label)
        images, refs, _ = load_images(record, rid, ctx)
        question = optional_text(record, rid, "problem", DEFAULT_QUESTION)
        choose = f" Choose one of: {', '.join(options)}." if options else " Answer with the category name."
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(question + choose + answer_instruction(ctx.think), n_images=len(images)),
            images=[im.image for im in images],
            target=wrap_target(label, ctx.think, reasoning_of(record, rid)),
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
