"""The `Sample` every task produces and every trainer consumes, and the context a task builds it in.

A record (a JSONL line or a `datasets` row) becomes a Sample through `task.to_sample(record, ctx)`: chat messages
with media placeholders, the loaded media, the gold assistant text for SFT, and the answer columns the rewards read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

# `<image>` / `<video>` in a prompt's text mark where the media go (the convention of LLaVA-style datasets)
PLACEHOLDER_RE = re.compile(r"<(image|video)>")
# what a record is held to when no model says otherwise: a model of unknown context length is taken to attend over
# DEFAULT_CONTEXT_TOKENS tokens, and no record brings more than MAX_IMAGES images (`mmreason.data.prepare`)
DEFAULT_CONTEXT_TOKENS = 32768
MAX_IMAGES = 256


@dataclass(frozen=True)
class RecordLimits:
    """How large the Sample of one record may be; None: unbounded. `mmreason.data.prepare.make_sample` refuses a
    record over any of them (ValueError), so an oversized record is skipped and counted like any bad record.

    max_prompt_tokens: tokens of the prompt: its text (every turn) and its vision tokens.
    max_vision_tokens: vision tokens of the prompt's images and video (from their resized sizes).
    max_images: images of one record, counted before any is loaded.
    max_target_tokens: tokens of the gold assistant text (what SFT trains on).
    tokenizer: counts text tokens exactly when given; without one (`mmreason data check`, which loads no model)
        text is bounded by characters only, `mmreason.data.prepare.MAX_CHARS_PER_TOKEN` per token.
    """

    max_prompt_tokens: int | None = DEFAULT_CONTEXT_TOKENS
    max_vision_tokens: int | None = DEFAULT_CONTEXT_TOKENS
    max_images: int | None = MAX_IMAGES
    max_target_tokens: int | None = DEFAULT_CONTEXT_TOKENS
    tokenizer: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def unbounded(cls) -> RecordLimits:
        """No limit at all (rebuilding samples that were trained already, e.g. for a report)."""
        return cls(None, None, None, None)


@dataclass
class SampleContext:
    """What a task needs to turn a record into a Sample.

    think: ask for `<think>...</think><answer>...</answer>` (True) or the answer alone (False, CLS-RL no-thinking).
    model_family: a model family's name (`mmreason.models.family`): how images are resized and boxes written.
    base_dir: folder that relative media paths in records are resolved against (the data file's folder).
    system_prompt: a system turn put before every prompt (a data entry's `system_prompt`; else a record's `system`).
    prompt_template: replaces the task's user text: a format string over `{prompt}` (the task's own text),
        `{instruction}` (the answer-format instruction) and the record's fields, e.g. "{problem} {instruction}".
    limits: how large a record's sample may be (`RecordLimits`; a run derives them from its model and config).
    budget: reasoning-budget levels the prompt asks for (`mmreason.data.budget`; the run's `budget` config).
    """

    think: bool = True
    model_family: str = "qwen2_5_vl"
    base_dir: Path = field(default_factory=Path.cwd)
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 256
    video_fps: float | None = 2.0
    video_nframes: int | None = None
    video_min_frames: int = 4
    video_max_frames: int = 32
    video_total_pixels: int = 28 * 28 * 1024
    system_prompt: str | None = None
    prompt_template: str | None = None
    limits: RecordLimits = field(default_factory=RecordLimits)
    budget: Any = None  # a `mmreason.data.budget.Budget`: reasoning-budget tags asked for (None: none)


@dataclass
class Sample:
    """One prompt, ready for the processors and the rewards.

    messages: HF chat messages; user content is a list of {"type": "image"} / {"type": "video"} / {"type": "text"}.
    images: the prompt's images, already loaded and resized to the model's pixel budget, in placeholder order.
    video: sampled frames of the prompt's video (a `VideoClip` from mmreason.processors), or None.
    target: the gold assistant text (used by SFT; None when the task cannot write one).
    columns: answer fields passed to the rewards as keyword lists (e.g. solution, image_size, model_size).
    media: references (paths) of the media for the rollout store and reports.
    """

    id: str
    task: str
    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)
    video: Any = None
    target: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    media: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The user's text parts joined (for logs and the store)."""
        parts = []
        for m in self.messages:
            if m.get("role") != "user":
                continue
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            else:
                parts.extend(c.get("text", "") for c in content if c.get("type") == "text")
        return "\n".join(p for p in parts if p)


def with_user_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """A copy of the chat messages with `text` appended to the last user turn's last text part (a new text part,
    stripped, when the turn has none); the input is left as it is."""
    out = [dict(m) for m in messages]
    last = next(m for m in reversed(out) if m.get("role") == "user")
    if isinstance(last["content"], str):
        last["content"] += text
        return out
    content = [dict(c) for c in last["content"]]
    texts = [c for c in content if c.get("type") == "text"]
    if texts:
        texts[-1]["text"] = texts[-1]["text"] + text
    else:
        content.append({"type": "text", "text": text.strip()})
    last["content"] = content
    return out


def user_messages(text: str, n_images: int = 0, video: bool = False) -> list[dict[str, Any]]:
    """One user turn of `text` and its media.

    Without placeholders the media come first (in media order), then the text. When the text holds `<image>` /
    `<video>` placeholders, each medium goes where its placeholder is; the counts must then match the media exactly
    (ValueError otherwise: a placeholder without its image would be sent to the model as literal text).
    """
    marks = PLACEHOLDER_RE.findall(text)
    if not marks:
        content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
        if video:
            content.append({"type": "video"})
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]
    images, videos = marks.count("image"), marks.count("video")
    if images != n_images or videos != int(video):
        raise ValueError(
            f"the prompt text has {images} <image> and {videos} <video> placeholder(s) for {n_images} image(s) and "
            f"{int(video)} video(s); each medium needs exactly one placeholder (or use none to put media first)"
        )
    content = []
    for i, part in enumerate(PLACEHOLDER_RE.split(text)):
        if i % 2:  # split() puts each captured kind between the text pieces
            content.append({"type": part})
        elif part.strip():
            content.append({"type": "text", "text": part.strip()})
    return [{"role": "user", "content": content}]
