"""The `Task` base: what a visual task bundles (record -> sample, rewards and weights, metrics, visualize).

A task is registered with `@register_task("name")` on a subclass; the registry keeps one instance.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmreason.data.prepare import make_sample
from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import TASKS, RegistryError
from mmreason.rewards.format import format_completion

THINK_SUFFIX = (
    " First think about the question inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags."
)
NO_THINK_SUFFIX = " Give only the final answer inside <answer> </answer> tags."
# a required media field is present when any of its spellings is (one image, or a list of them)
FIELD_ALTERNATIVES = {"image": ("image", "images"), "video": ("video", "videos")}


def answer_instruction(think: bool) -> str:
    return THINK_SUFFIX if think else NO_THINK_SUFFIX


def wrap_target(answer: str, think: bool, reasoning: str = "") -> str:
    """The gold assistant text for SFT in the task's answer format (`mmreason.rewards.format.format_completion`)."""
    return format_completion(answer, think, reasoning)


class Task:
    """Base of every task. Subclasses set the class attributes and override `to_sample`, `metrics`, `visualize`.

    rewards: reward name -> weight of the total reward (the first one is usually `format`, or `format_nothink`).
    answer_format: one line shown by `mmreason tasks` and in docs.
    metric_names: the keys `metrics` returns.
    required_fields: record fields `check_record` insists on.
    tools: names of tools a multi-turn rollout may call for this task.
    record_fields: field -> what it holds, for docs and `mmreason tasks` ("a | b": either name; "?": optional;
        every record may also carry "id", "reasoning" (SFT) and "system").
    media_fields: the record fields whose media the task reads; media in any other of image/images/video/videos
        is an error of the record (`mmreason.data.prepare.unread_media`), never silently dropped.
    """

    name: str = ""
    answer_format: str = ""
    rewards: dict[str, float] = {}
    metric_names: tuple[str, ...] = ()
    required_fields: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    media_fields: tuple[str, ...] = ("image", "images")
    record_fields: dict[str, str] = {}

    def reward_weights(self, think: bool = True) -> dict[str, float]:
        """Default rewards for the prompt style: the no-think style swaps `format` for `format_nothink`."""
        weights = dict(self.rewards)
        if not think and "format" in weights:
            weights["format_nothink"] = weights.pop("format")
        return weights

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        raise NotImplementedError

    def valid_answer(self, completion: str, columns: dict[str, Any]) -> bool:
        """Whether the completion's answer is a valid answer of the task (it parses as one: a count, boxes inside
        the image, a permutation of the tiles, ...), given the sample's reward columns. The format rewards pay only
        for a valid answer (`mmreason.rewards.format`). The default accepts any answer: the layout check alone."""
        return True

    def check_record(self, record: dict[str, Any], ctx: SampleContext) -> list[str]:
        """Problems of one record (empty when fine); the default builds the sample and reports what fails."""
        missing = [f for f in self.required_fields if not any(a in record for a in FIELD_ALTERNATIVES.get(f, (f,)))]
        if missing:
            have = ", ".join(sorted(k for k in record if not k.startswith("_") and k != "id")) or "no fields"
            return [f"missing field(s) {', '.join(missing)}; the record has: {have} (name yours with data.columns, "
                    f"e.g. {{{missing[0]}: your_column}})"]
        try:
            make_sample(self, record, ctx)  # as training builds it: media check and prompt overrides included
        except Exception as exc:  # every failure becomes a listed problem, not a crash
            return [str(exc)]
        return []

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        raise NotImplementedError

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        raise NotImplementedError


def answer_validity(samples: list[Sample], completions: list[str], group_size: int) -> list[bool]:
    """`Task.valid_answer` of each completion against its sample's columns: the `answer_valid` column the format
    rewards read. A check that raises could not read the answer (invalid); a task that is not registered has no
    check (valid: the layout alone decides)."""
    tasks: dict[str, Any] = {}
    for name in {s.task for s in samples}:
        try:
            tasks[name] = TASKS.get(name)
        except RegistryError:
            tasks[name] = None
    out = []
    for i, completion in enumerate(completions):
        sample = samples[i // group_size]
        task = tasks[sample.task]
        try:
            out.append(True if task is None else bool(task.valid_answer(completion, sample.columns)))
        except Exception:  # noqa: BLE001 - an unreadable answer is not a valid one
            out.append(False)
    return out
