"""Record-reading helpers shared by the built-in tasks: ids, field checks with clear errors, media loading, messages.

Every error raised here is a `RecordError` whose message starts with `record '<id>': field '<name>'`, so a bad line in
a data file can be found and fixed without a traceback. Records without an "id" get a stable content-hash id.
Ground-truth fields are checked by their answer type's `check_*` in `mmreason.rewards` (the rules the rewards apply
to their columns), through `checked`, which restates a check's error as the record's error.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from mmreason.data.sample import Sample, SampleContext, user_messages  # noqa: F401 (tasks import it here)
from mmreason.models.family import FamilyError, ModelFamily, get_family
from mmreason.processors import MediaError, fetch_image
from mmreason.registry import get_reward
from mmreason.rewards import extract_answer
from mmreason.rewards.parse import format_number as fmt_num
from mmreason.rewards.parse import short_repr
from mmreason.tasks import viz
from mmreason.tasks.base import NO_THINK_SUFFIX, THINK_SUFFIX, answer_validity

URI_PREFIXES = ("data:", "http://", "https://", "file://")
T = TypeVar("T")


class RecordError(ValueError):
    """A record that cannot become a sample; the message names the record id and the field."""


def clip_text(text: str, limit: int = 120) -> str:
    """`text` on one line, cut to `limit` characters (for captions: model output can be huge)."""
    flat = " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def record_id(record: dict[str, Any], task: str) -> str:
    """The record's "id", or a stable hash of its content (same record -> same id on every run)."""
    rid = record.get("id")
    if rid is not None and str(rid).strip():
        return str(rid)
    blob = json.dumps(record, sort_keys=True, default=repr).encode()
    return f"{task}-{hashlib.sha1(blob).hexdigest()[:10]}"


def field_error(rid: str, name: str, expected: str, got: Any = None, *, show_got: bool = True) -> RecordError:
    """`record 'x': field 'name' must be <expected>, got <repr>`."""
    tail = f", got {short_repr(got)}" if show_got else ""
    return RecordError(f"record {rid!r}: field {name!r} must be {expected}{tail}")


def require(record: dict[str, Any], rid: str, name: str) -> Any:
    if name not in record or record[name] is None:
        raise RecordError(f"record {rid!r}: missing field {name!r}")
    return record[name]


def require_text(record: dict[str, Any], rid: str, name: str) -> str:
    value = require(record, rid, name)
    if not isinstance(value, str) or not value.strip():
        raise field_error(rid, name, "a non-empty string", value)
    return value.strip()


def optional_text(record: dict[str, Any], rid: str, name: str, default: str = "") -> str:
    value = record.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise field_error(rid, name, "a string", value)
    return value.strip() or default


def checked(rid: str, check: Callable[..., T], value: Any, *args: Any, name: str = "solution", **kwargs: Any) -> T:
    """`check(value, *args, name=name, **kwargs)` (an answer type's ground-truth check) for a record's field.

    The check's ValueError becomes this record's RecordError: `record 'x': field 'name' must be <expected>, got ...`.
    """
    try:
        return check(value, *args, name=name, **kwargs)
    except ValueError as exc:
        expected = getattr(exc, "expected", None)
        if expected is None:
            raise RecordError(f"record {rid!r}: field {name!r}: {exc}") from None
        raise field_error(rid, getattr(exc, "column", None) or name, expected, getattr(exc, "value", None)) from None


# ---------------------------------------------------------------- media


def media_sources(record: dict[str, Any], rid: str, names: Sequence[str] = ("image", "images")
                  ) -> tuple[str, list[Any]]:
    """The first present field of `names` as a list of media sources (one path, or a list of them)."""
    for name in names:
        if record.get(name) is not None:
            value = record[name]
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            if not items:
                raise field_error(rid, name, "a media path or a non-empty list of them", value)
            return name, items
    raise RecordError(f"record {rid!r}: missing field {' or '.join(map(repr, names))}")


def _resolve(src: Any, base_dir: Path) -> tuple[Any, str]:
    """A source fetch_image accepts plus the reference kept in `Sample.media`.

    Paths are relative to the data file's folder; `datasets` rows may carry PIL images or {"bytes", "path"} dicts.
    """
    if isinstance(src, dict) and ("bytes" in src or "path" in src):
        if src.get("bytes") is not None:
            return src["bytes"], str(src.get("path") or "<bytes>")
        src = src["path"]
    if isinstance(src, str) and src.startswith(URI_PREFIXES):
        # the processors handle (or clearly refuse) URIs; resolving them as relative paths would hide that
        return src, "<data URI>" if src.startswith("data:") else src
    if isinstance(src, (str, Path)):
        path = Path(base_dir) / Path(src).expanduser()
        return path, str(path)
    if isinstance(src, Image.Image):
        return src, "<PIL image>"
    if isinstance(src, (bytes, bytearray)):
        return bytes(src), "<bytes>"
    return src, short_repr(src, 40)


def load_images(record: dict[str, Any], rid: str, ctx: SampleContext,
                names: Sequence[str] = ("image", "images")) -> tuple:
    """Load the record's image(s) and resize them as the context's model family takes them -> (list of ResizedImage,
    media references, field name)."""
    name, sources = media_sources(record, rid, names)
    loaded, refs = [], []
    for src in sources:
        resolved, ref = _resolve(src, ctx.base_dir)
        try:
            loaded.append(fetch_image(resolved, ctx.min_pixels, ctx.max_pixels, family=check_family(ctx)))
        except (MediaError, OSError, TypeError, ValueError) as exc:
            raise RecordError(f"record {rid!r}: field {name!r}: {exc}") from exc
        refs.append(ref)
    return loaded, refs, name


def single_image(record: dict[str, Any], rid: str, ctx: SampleContext, task: str) -> tuple:
    """Exactly one image (tasks whose answer refers to one picture's pixels) -> (ResizedImage, media reference)."""
    images, refs, name = load_images(record, rid, ctx)
    if len(images) != 1:
        raise field_error(rid, name, f"one image path for the {task} task (got {len(images)} images)", None,
                          show_got=False)
    return images[0], refs[0]


def check_family(ctx: SampleContext) -> ModelFamily:
    """The context's model family (ValueError naming the supported ones for an unknown name)."""
    try:
        return get_family(ctx.model_family)
    except FamilyError as exc:
        raise ValueError(f"SampleContext.model_family: {exc}") from None


def reasoning_of(record: dict[str, Any], rid: str) -> str:
    return optional_text(record, rid, "reasoning")


# ---------------------------------------------------------------- scoring for metrics / visualize


def score(reward: str | Callable[..., list], completions: Sequence[str], samples: Sequence[Sample]) -> list[float]:
    """Call a registered reward on (completion, sample) pairs with the samples' columns and the `answer_valid`
    column a run gives (`mmreason.tasks.base.answer_validity`); None -> nan."""
    if len(completions) != len(samples):
        raise ValueError(f"got {len(completions)} completions for {len(samples)} samples; they must pair up")
    if not samples:
        return []
    fn = get_reward(reward) if isinstance(reward, str) else reward
    keys = set().union(*(s.columns for s in samples))
    columns = {k: [s.columns.get(k) for s in samples] for k in keys}
    columns.setdefault("answer_valid", answer_validity(list(samples), list(completions), 1))
    values = fn(list(completions), **columns)
    return [float("nan") if v is None else float(v) for v in values]


def score_one(reward: str, completion: str, sample: Sample) -> float:
    return score(reward, [completion], [sample])[0]


def mean(values: Sequence[float]) -> float:
    """Mean over the applicable (non-nan) values; nan when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def rate(values: Sequence[float], threshold: float) -> float:
    """Fraction of applicable values >= threshold."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(v >= threshold for v in kept) / len(kept) if kept else float("nan")


def answer_card(sample: Sample, completion: str, reward: str, truth: str) -> Image.Image:
    """The prompt's image(s) with a caption of the parsed answer, the truth and the reward (text-answer tasks)."""
    if sample.images:
        views = [viz.enlarge(im, min_side=240)[0] for im in sample.images]
        board = views[0] if len(views) == 1 else viz.side_by_side(views, [f"image {i + 1}" for i in
                                                                          range(len(views))])
    else:
        board = Image.new("RGB", (320, 40), viz.BG)  # text-only prompt (e.g. math without a figure)
    answer = extract_answer(completion)
    value = score_one(reward, completion, sample)
    ok = not math.isnan(value) and value >= 1.0
    shown = clip_text(answer, 120) if answer is not None else "no <answer>...</answer> found (malformed completion)"
    question = sample.prompt_text.replace(THINK_SUFFIX.strip(), "").replace(NO_THINK_SUFFIX.strip(), "")
    return viz.caption_bar(board, [
        f"{reward}: {fmt_num(value, 3)}",
        (f"truth: {truth}", viz.TRUE_COLOR),
        (f"answer: {shown}", viz.TRUE_COLOR if ok else viz.PRED_COLOR),
        f"question: {clip_text(question, 200)}",
    ])
