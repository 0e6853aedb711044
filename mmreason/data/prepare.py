"""From a data row to a task's record, and from a record to the Sample a stage trains on.

Owns what a data entry (`data[i]` of a config) changes on the way: the peer format's adapter
(`mmreason.data.formats`), the column mapping (task field -> the user's column), the gold answer's normalisation
(`<answer>`-wrapped answers, `<think>` reasoning), the media check (a media column the task would not read is an
error, never silently dropped), the prompt overrides of the entry (a system prompt, a prompt template), and a
record's verbatim SFT target, its `sft_target` field (`apply_target`).

Order for a row: column mapping (so an adapter or a task sees the names it reads), then the adapter, then the
normalisation. `make_sample` is the one way every stage, evaluation and `data check` turn a record into a Sample,
and where a record is held to the context's `RecordLimits` (images counted before any is loaded; prompt text, vision
and gold-answer tokens once the sample is built): an oversized record fails like any bad record, before it can
reach a forward pass. `record_limits` derives a run's limits from its model's context length.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmreason.data.budget import apply_budget
from mmreason.data.sample import DEFAULT_CONTEXT_TOKENS, MAX_IMAGES, RecordLimits, Sample, SampleContext, user_messages
from mmreason.rewards.parse import extract_answer, extract_think, short_repr

MEDIA_FIELDS = ("image", "images", "video", "videos")  # record fields that hold media
SFT_TARGET = "sft_target"  # a record's verbatim SFT assistant text, replacing the one built from its gold answer
TEMPLATE_FIELDS = ("prompt", "instruction")  # what a prompt template may use besides the record's own fields
# text over this many characters per token of its bound is refused before tokenizing (and without a tokenizer):
# prose averages about 4 characters per token, so only text far over the bound is caught by characters alone
MAX_CHARS_PER_TOKEN = 8
VIDEO_FRAMES_PER_TOKEN = 2  # video frames are folded in pairs into one temporal patch (qwen-vl-utils FRAME_FACTOR)


@dataclass(frozen=True)
class RowPlan:
    """How the rows of one data entry become records: `fmt` (a peer format's name) and `columns` (task field ->
    the user's column). Calling it on a row returns the record; a row it cannot use raises ValueError."""

    fmt: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        record = map_columns(row, self.columns)
        if self.fmt:
            from mmreason.data.formats import adapt  # the adapters are needed only by entries that name a format

            record = adapt(record, self.fmt)
        return normalise_gold(record)


def map_columns(row: dict[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """The row with each mapped column renamed to its task field (`{solution: answer}`: answer -> solution).

    The source column is dropped unless it is itself a target, so a record never carries the same media twice.
    """
    if not columns:
        return row
    missing = [f"{col!r} (for {name!r})" for name, col in columns.items() if col not in row]
    if missing:
        have = ", ".join(sorted(k for k in row if not k.startswith("_"))) or "no fields"
        raise ValueError(f"column {', '.join(missing)} of data.columns not found; the row has: {have}")
    out = dict(row)
    for col in set(columns.values()) - set(columns):
        del out[col]
    out.update({name: row[col] for name, col in columns.items()})
    return out


def normalise_gold(record: dict[str, Any]) -> dict[str, Any]:
    """A `solution` written as a completion (`<think>...</think><answer>...</answer>`) -> the answer alone, and its
    reasoning into `reasoning` when the record has none. Other values are left to the task's checks (which read
    e.g. a box string "[x1, y1, x2, y2]" as a list)."""
    solution = record.get("solution")
    if not isinstance(solution, str) or "</answer>" not in solution:
        return record
    answer = extract_answer(solution)
    if answer is None:
        return record
    out = dict(record, solution=answer)
    reasoning = extract_think(solution)
    if reasoning and not out.get("reasoning"):
        out["reasoning"] = reasoning
    return out


def has_media(value: Any) -> bool:
    return value is not None and value != "" and not (isinstance(value, (list, tuple)) and not value)


def unread_media(record: dict[str, Any], task: Any) -> str | None:
    """A problem line when the record holds media in a field the task does not read, else None."""
    reads = tuple(getattr(task, "media_fields", ("image", "images")))
    for name in MEDIA_FIELDS:
        if name not in reads and has_media(record.get(name)):
            what = f"it reads {', '.join(map(repr, reads))}" if reads else "it reads no media"
            return (f"field {name!r} holds media that the {task.name} task does not read ({what}); map it onto a "
                    "field the task reads (data.columns) or remove it")
    return None


def make_sample(task: Any, record: dict[str, Any], ctx: SampleContext) -> Sample:
    """The record's Sample for `task`, with the context's prompt overrides applied; raises ValueError (or the
    task's own error) for a record that cannot become one, media it would not read included."""
    problem = unread_media(record, task)
    if problem is not None:
        raise ValueError(problem)
    check_image_count(_record_images(record), ctx.limits)  # before any image is loaded
    sample = apply_budget(apply_prompt_overrides(task.to_sample(record, ctx), record, ctx), record, ctx.budget)
    sample = apply_target(sample, record)
    check_sample_size(sample, ctx)
    return sample


def apply_target(sample: Sample, record: dict[str, Any]) -> Sample:
    """The sample with the record's `sft_target`, when it has one, as its SFT assistant text, verbatim: a completion
    kept by rejection sampling (`mmreason data distill`) trains exactly as it was sampled, whatever the task's gold
    answer would be formatted as (its `solution` still feeds the rewards). Not `target`: tables often have a column
    of that name meaning something else."""
    target = record.get(SFT_TARGET)
    if target is None:
        return sample
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"field {SFT_TARGET!r} must be the SFT assistant text (a non-empty string), got "
                         f"{short_repr(target, 80)}")
    sample.target = target
    return sample


# ------------------------------------------------------------------------------------------------- record limits


class RecordTooLarge(ValueError):
    """A record over one of its context's `RecordLimits`: the message names the bound and the config key."""


def record_limits(
    model: Any, family: str, context_tokens: int | None, completion_tokens: int, tokenizer: Any = None
) -> RecordLimits:
    """The limits of a run's records: `model` is its `ModelConfig` (each `max_*` key: 0 derives it), `family` the
    model family's name, `context_tokens` the model's context length (its config's max_position_embeddings; None:
    unknown, DEFAULT_CONTEXT_TOKENS) and `completion_tokens` the longest completion the run generates.

    Derived: max_prompt_tokens = context - completion_tokens, at most DEFAULT_CONTEXT_TOKENS (a longer prompt could
    not be completed, and one far longer than any visual-reasoning prompt is a data error, not a memory bill);
    max_vision_tokens = max_prompt_tokens; max_images = what max_vision_tokens holds of images at min_pixels, at
    most MAX_IMAGES; max_target_tokens = max_prompt_tokens.
    """
    context = context_tokens or DEFAULT_CONTEXT_TOKENS
    prompt = model.max_prompt_tokens or max(1, min(context - completion_tokens, DEFAULT_CONTEXT_TOKENS))
    vision = model.max_vision_tokens or prompt
    images = model.max_images or max(1, min(MAX_IMAGES, vision // min_image_tokens(family, model.min_pixels)))
    return RecordLimits(prompt, vision, images, model.max_target_tokens or prompt, tokenizer)


def min_image_tokens(family: str, min_pixels: int) -> int:
    """Vision tokens of the smallest image a family's processor takes (a fixed square for InternVL and Gemma 3)."""
    from mmreason.models.family import get_family

    fam = get_family(family)
    if fam.fixed_image_size:
        return (fam.fixed_image_size // fam.image_factor) ** 2
    return max(1, math.ceil(min_pixels / fam.image_factor**2))


def _record_images(record: dict[str, Any]) -> int:
    """Images a record refers to (its `image` and `images` fields), counted without loading any."""
    count = 0
    for name in ("image", "images"):
        value = record.get(name)
        if isinstance(value, (list, tuple)):
            count += len(value)
        elif has_media(value):
            count += 1
    return count


def check_image_count(count: int, limits: RecordLimits) -> None:
    if limits.max_images is not None and count > limits.max_images:
        raise RecordTooLarge(f"record too large: {count} images, more than the {limits.max_images} allowed "
                             "(model.max_images)")


def vision_tokens(sample: Sample, family: str) -> int:
    """Vision tokens of the sample's images and video, from their resized sizes and the family's patch x merge."""
    from mmreason.models.family import get_family

    factor = get_family(family).image_factor
    total = sum((image.width // factor) * (image.height // factor) for image in sample.images)
    if sample.video is not None and sample.video.frames:
        width, height = sample.video.frames[0].size
        total += math.ceil(len(sample.video.frames) / VIDEO_FRAMES_PER_TOKEN) * (width // factor) * (height // factor)
    return total


def check_sample_size(sample: Sample, ctx: SampleContext) -> None:
    """RecordTooLarge when the built sample is over one of `ctx.limits` (see `RecordLimits`)."""
    limits = ctx.limits
    check_image_count(len(sample.images), limits)
    vision = vision_tokens(sample, ctx.model_family)
    if limits.max_vision_tokens is not None and vision > limits.max_vision_tokens:
        raise RecordTooLarge(f"record too large: {vision} vision tokens, more than the {limits.max_vision_tokens} "
                             "allowed (model.max_vision_tokens)")
    if limits.max_prompt_tokens is not None:
        over = _text_over(_messages_text(sample.messages), limits.max_prompt_tokens - vision, limits.tokenizer)
        if over:
            raise RecordTooLarge(f"record too large: the prompt has {over} and {vision} vision tokens, over the bound "
                                 f"of {limits.max_prompt_tokens} tokens (model.max_prompt_tokens)")
    if limits.max_target_tokens is not None and sample.target:
        over = _text_over(sample.target, limits.max_target_tokens, limits.tokenizer)
        if over:
            raise RecordTooLarge(f"record too large: the gold answer has {over}, over the bound of "
                                 f"{limits.max_target_tokens} tokens (model.max_target_tokens)")


def _text_over(text: str, budget: int, tokenizer: Any) -> str | None:
    """How much text `text` is when it needs more than `budget` tokens ("N characters of text", "N text tokens"),
    else None: by characters first (cheap, no tokenizer needed), then exactly with the tokenizer when there is one."""
    if len(text) > max(0, budget) * MAX_CHARS_PER_TOKEN:
        return f"{len(text)} characters of text"
    if tokenizer is None:
        return None
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return f"{tokens} text tokens" if tokens > budget else None


def _messages_text(messages: list[dict[str, Any]]) -> str:
    """The text of every turn (system, user, earlier assistant turns) joined: what the prompt's text tokens are."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return "\n".join(p for p in parts if p)


def apply_prompt_overrides(sample: Sample, record: dict[str, Any], ctx: SampleContext) -> Sample:
    """The sample with the context's prompt template (for the user turn) and system prompt (or the record's own
    `system`) applied; unchanged when there are none."""
    if ctx.prompt_template:
        text = render_template(ctx.prompt_template, record, sample, ctx)
        user = user_messages(text, len(sample.images), sample.video is not None)[0]
        index = next(i for i, m in enumerate(sample.messages) if m["role"] == "user")
        sample.messages = [*sample.messages[:index], user, *sample.messages[index + 1:]]
    system = ctx.system_prompt or record.get("system")
    if isinstance(system, str) and system.strip() and sample.messages[0]["role"] != "system":
        sample.messages = [{"role": "system", "content": [{"type": "text", "text": system.strip()}]},
                           *sample.messages]
    return sample


def render_template(template: str, record: dict[str, Any], sample: Sample, ctx: SampleContext) -> str:
    """`template` filled with `{prompt}` (the task's own prompt text), `{instruction}` (the answer-format
    instruction) and the record's text and number fields; an unknown field is a ValueError listing the known."""
    from mmreason.tasks.base import answer_instruction  # tasks import this package: import at call time

    fields = {k: v for k, v in record.items() if not k.startswith("_") and isinstance(v, (str, int, float))}
    fields.update(prompt=sample.prompt_text, instruction=answer_instruction(ctx.think).strip())
    try:
        return string.Formatter().vformat(template, (), fields)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"prompt_template uses {{{exc.args[0]}}}, which this record does not have; known: "
                         f"{', '.join(sorted(fields))}") from None
    except ValueError as exc:
        raise ValueError(f"prompt_template {short_repr(template, 80)} is not a valid format string: {exc} "
                         "(write literal braces as {{ and }})") from None
