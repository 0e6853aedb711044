"""From a data row to a task's record, and from a record to the Sample a stage trains on.

Owns what a data entry (`data[i]` of a config) changes on the way: the peer format's adapter
(`mmreason.data.formats`), the column mapping (task field -> the user's column), the gold answer's normalisation
(`<answer>`-wrapped answers, `<think>` reasoning), the media check (a media column the task would not read is an
error, never silently dropped), and the prompt overrides of the entry (a system prompt, a prompt template).

Order for a row: column mapping (so an adapter or a task sees the names it reads), then the adapter, then the
normalisation. `make_sample` is the one way every stage, evaluation and `data check` turn a record into a Sample.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmreason.data.sample import Sample, SampleContext, user_messages
from mmreason.rewards.parse import extract_answer, extract_think, short_repr

MEDIA_FIELDS = ("image", "images", "video", "videos")  # record fields that hold media
TEMPLATE_FIELDS = ("prompt", "instruction")  # what a prompt template may use besides the record's own fields


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
    sample = task.to_sample(record, ctx)
    return apply_prompt_overrides(sample, record, ctx)


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
