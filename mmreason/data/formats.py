"""Named adapters that turn one row of a peer toolkit's dataset into an mmreason record.

This module owns the field mapping only: which peer column becomes the question, the gold answer, the media, the
system prompt. It does not read files, load media, unwrap `<answer>` tags or parse box strings: `mmreason.data.prepare`
unwraps answers after the adapter, the tasks' checks read box strings, and media paths resolve against the data
entry's `media_dir` (a peer's separate image root). `adapt(row, fmt)` returns a new dict and leaves `row` untouched.

The record an adapter returns:
- "problem": the user's question text. `<image>` / `<video>` placeholders stay where the peer put them; content
  parts ([{"type": "image"}, {"type": "text", ...}]) become text with a placeholder at each media part. Text without
  placeholders means "media first", as TRL and VLM-R1 arrange it.
- "solution": the gold answer as the peer stores it (string, number, list).
- "image" / "images" / "video" / "videos": the media as stored (paths, {"bytes", "path"} dicts, bytes, PIL images);
  the peer's column name is kept. An empty list or None (a text-only row of a mixed dataset) is dropped.
- "system": the system prompt, when the row has a non-empty one.
- every other column passes through unchanged ("id", VLM-R1's "normal_caption" and "accu_reward_method", ...).

Chat rows (`messages`, `trl`, VLM-R1 conversations) must hold one user turn, optionally preceded by one system turn
and followed by assistant turns (consecutive ones are joined, as ms-swift does). Several user turns, tool turns and
audio are refused: a task record is one question with one answer.

Where each layout is defined (re-check there when a peer changes):
- vlm_r1: om-ai-lab/VLM-R1 README.md ("For your own data"), src/open-r1-multimodal/src/open_r1/grpo_jsonl.py
  (conversations jsonl: `image` str or list relative to --image_folders, conversations[0] human, [1] gpt),
  src/open-r1-multimodal/src/open_r1/grpo_rec.py, sft.py and src/eval/test_rec_r1.py (RefCOCO rows: `image`,
  `problem`, `solution` [x1, y1, x2, y2] in original pixels, `normal_caption`; VLM-R1 issue #11 shows a full row).
- easyr1: hiyouga/EasyR1 verl/utils/dataset.py (RLHFDataset: splits the prompt on `<image>` / `<video>`; images are
  paths relative to image_dir, {"bytes"} dicts or bytes; an empty list is a text-only row), verl/trainer/config.py
  and examples/config.yaml (prompt_key "problem" in the examples, "prompt" by default; answer_key "answer";
  image_key "images"; video_key "videos").
- trl: huggingface/trl docs/source/dataset_formats.md ("Vision datasets", prompt-only and prompt-completion types),
  docs/source/grpo_trainer.md, trl/data_utils.py (prepare_multimodal_messages: string content gets the images before
  the first user text), examples/scripts/grpo_vlm.py (columns image, problem, solution; `solution` feeds
  trl/rewards/accuracy_rewards.py).
- messages: modelscope/ms-swift docs/source_en/Customization/Custom-dataset.md and
  swift/dataset/preprocessor/core.py (MessagesPreprocessor: role/from, content/value, user/human,
  assistant/gpt/bot, "conversation(s)" aliases, system/system_prompt columns, OpenAI and Anthropic image blocks);
  docs/source_en/BestPractices/GRPO-Multi-Modal-Training.md (a `solution` column is the gold answer, the assistant
  turn is dropped); hiyouga/LLaMA-Factory data/README.md and src/llamafactory/data/converter.py (sharegpt
  `conversations` with `system` / `tools` columns; a leading system turn overrides the `system` column).
- swift_grounding: ms-swift Custom-dataset.md ("Grounding"), swift/template/base.py (normalize_bbox, the sequential
  <ref-object> / <bbox> replacement) and swift/dataset/preprocessor/core.py (_check_objects: 2 or 4 coordinates,
  swapped corners reordered). bbox_type is "real" (pixels, the default) or "norm1" (0-1); only "real" is converted
  here, because mmreason keeps boxes in original pixels and the image size is not known at this stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]

IMAGE_TAG, VIDEO_TAG = "<image>", "<video>"
REF_TAG, BOX_TAG = "<ref-object>", "<bbox>"
USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "bot"})
SYSTEM_ROLES = frozenset({"system"})
TOOL_ROLES = frozenset({"tool", "tool_call", "tool_response", "function_call", "function", "function_response",
                        "observation", "observations"})
CHAT_COLUMNS = ("messages", "conversations", "conversation")  # ms-swift reads all three as "messages"
_MISSING = object()


class FormatError(ValueError):
    """A row that does not have the layout of the named format; the message names the field and what was expected."""


def _short(value: Any, limit: int = 80) -> str:
    """repr() cut to `limit` characters: a bad value can be a whole image's bytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad(name: str, expected: str, value: Any = _MISSING) -> FormatError:
    got = "nothing" if value is _MISSING else _short(value)
    return FormatError(f"field {name!r}: expected {expected}, got {got}")


def _as_row(row: Any) -> Row:
    if not isinstance(row, Mapping):
        raise FormatError(f"row: expected a dict (one JSON object or table row), got {_short(row)}")
    return dict(row)


# ----------------------------------------------------------------------------------------------------- media


def _check_media(name: str, value: Any) -> int:
    """The number of media items in column `name` (FormatError for a bad shape)."""
    plural = name.endswith("s")
    if plural and not isinstance(value, (list, tuple)):
        raise _bad(name, f"a list of {name} (paths, {{bytes, path}} dicts or bytes)", value)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for i, item in enumerate(items):
        where = f"{name}[{i}]" if isinstance(value, (list, tuple)) else name
        if item is None or isinstance(item, (bool, int, float)):
            raise _bad(where, "a path, a {bytes, path} dict or bytes", item)
        if isinstance(item, Mapping) and item.get("bytes") is None and not item.get("path"):
            raise _bad(where, "a {bytes, path} dict with bytes or a path", item)
    return len(items)


def _media_column(out: Row, names: tuple[str, str]) -> tuple[str | None, int]:
    """Check the row's media column among `names` (singular, plural); drop empty ones -> (name, count)."""
    present = [n for n in names if out.get(n) is not None and not _is_empty_list(out[n])]
    for n in names:
        if n not in present:
            out.pop(n, None)
    if len(present) > 1:
        raise FormatError(f"field {names[1]!r}: expected one of {names[0]!r} / {names[1]!r}, got both")
    if not present:
        return None, 0
    return present[0], _check_media(present[0], out[present[0]])


def _is_empty_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 0


def _check_placeholders(text: str, name: str, n_images: int, n_videos: int) -> None:
    """Placeholders, when the text has any, must match the media one to one (no placeholders: media first)."""
    for tag, count, kind in ((IMAGE_TAG, n_images, "image"), (VIDEO_TAG, n_videos, "video")):
        found = text.count(tag)
        if found and found != count:
            raise FormatError(
                f"field {name!r}: expected one {tag} placeholder per {kind} ({count} {kind}s), got {found}")


def _attach_media(out: Row, text_field: str, images: list[Any], videos: list[Any]) -> None:
    """Put media carried inside content parts into "images" / "videos", check the columns and the placeholders."""
    for carried, names in ((images, ("image", "images")), (videos, ("video", "videos"))):
        if carried:
            if any(out.get(n) is not None and not _is_empty_list(out[n]) for n in names):
                raise FormatError(f"field {text_field!r}: expected {names[1]} either in content parts or in an "
                                  f"{names[0]!r} / {names[1]!r} column, got both")
            out[names[1]] = list(carried)
    _, n_images = _media_column(out, ("image", "images"))
    _, n_videos = _media_column(out, ("video", "videos"))
    _check_placeholders(out["problem"], text_field, n_images, n_videos)


# ----------------------------------------------------------------------------------------------------- chats


@dataclass
class Chat:
    """One single-turn chat: system text, user text with placeholders, the assistant answer (or _MISSING)."""

    system: str | None
    problem: str
    answer: Any
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)


def _load_turns(value: Any, name: str) -> Any:
    # table formats (CSV, some parquet writers) store the turns as a JSON string
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _bad(name, "a list of chat turns (or its JSON text)", value) from None
    return value


def _expand_pairs(turns: list[Any]) -> list[Any]:
    """ms-swift's sharegpt pairs [{"human": q, "assistant": a}] -> role/content turns; other turns unchanged."""
    out: list[Any] = []
    for turn in turns:
        if isinstance(turn, Mapping) and not ({"role", "from", "content", "value"} & turn.keys()):
            user = next((turn[k] for k in ("human", "user") if k in turn), _MISSING)
            reply = next((turn[k] for k in ("assistant", "gpt", "bot") if k in turn), _MISSING)
            if user is not _MISSING:
                out.append({"role": "user", "content": user})
                if reply is not _MISSING and reply is not None:
                    out.append({"role": "assistant", "content": reply})
                continue
        out.append(turn)
    return out


def _turn(turn: Any, where: str) -> tuple[str, Any]:
    if not isinstance(turn, Mapping):
        raise _bad(where, "a turn {role, content} or {from, value}", turn)
    role = turn.get("role", turn.get("from"))
    if not isinstance(role, str):
        raise _bad(f"{where}.role", "a role string (user/human, assistant/gpt/bot, system)", role)
    role = role.strip().lower()
    if turn.get("tool_calls") or role.replace("-", "_") in TOOL_ROLES:
        raise FormatError(f"field {where!r}: expected a system, user or assistant turn, got a tool turn or tool call "
                          "(tool use is not supported in task records)")
    return role, turn.get("content", turn.get("value"))


def _part_payload(part: Mapping[str, Any], kind: str, where: str) -> Any:
    """The media a content part carries itself (TRL/transformers keys, OpenAI image_url, Anthropic source)."""
    if kind == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, Mapping) else url
        if not isinstance(url, str) or not url:
            raise _bad(f"{where}.image_url", "a URL string or {url}", part.get("image_url"))
        return url
    source = part.get("source")
    if isinstance(source, Mapping):
        if source.get("type") == "base64" and source.get("media_type") and source.get("data"):
            return f"data:{source['media_type']};base64,{source['data']}"
        if source.get("type") == "url" and source.get("url"):
            return source["url"]
        raise _bad(f"{where}.source", "a base64 {media_type, data} or {url} source", source)
    return next((part[k] for k in (kind, "url", "path") if part.get(k) is not None), None)  # None: a placeholder


def _content_text(content: Any, where: str, images: list[Any] | None, videos: list[Any] | None) -> str:
    """A turn's text: a string as is; content parts joined, a placeholder at each media part (payloads collected).

    `images` / `videos` None: media parts are not allowed (system and assistant turns)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise _bad(where, "a string or a list of content parts", content)
    pieces: list[str] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind in ("image", "image_url", "video") and images is not None and videos is not None:
            payload = _part_payload(part, kind, at)
            if payload is not None:
                (videos if kind == "video" else images).append(payload)
            pieces.append(VIDEO_TAG if kind == "video" else IMAGE_TAG)
        elif kind in ("image", "image_url", "video"):
            raise _bad(at, "a text part (media belong in the user turn)", part)
        else:
            raise _bad(at, "a content part of type text (with a text string), image or video", part)
    return "".join(pieces)


def _answer(contents: list[tuple[Any, str]]) -> Any:
    """The assistant's answer: one turn's content as stored (VLM-R1 keeps numbers); several turns' texts joined."""
    if not contents:
        return _MISSING
    if len(contents) == 1 and not isinstance(contents[0][0], (str, list, tuple)):
        value, where = contents[0]
        if value is None or isinstance(value, (bool, Mapping)):
            raise _bad(where, "the assistant's answer (a string, a number or text parts)", value)
        return value
    return "".join(_content_text(value, where, None, None) for value, where in contents)


def parse_chat(value: Any, name: str) -> Chat:
    """One system turn (optional, first), one user turn, then the assistant turns (optional) -> `Chat`."""
    turns = _load_turns(value, name)
    if not isinstance(turns, (list, tuple)) or not turns:
        raise _bad(name, "a non-empty list of chat turns {role, content} or {from, value}", turns)
    system, problem = None, None
    answers: list[tuple[Any, str]] = []
    chat = Chat(None, "", _MISSING)
    for i, turn in enumerate(_expand_pairs(list(turns))):
        where = f"{name}[{i}]"
        role, content = _turn(turn, where)
        if role in SYSTEM_ROLES:
            if i != 0:
                raise FormatError(f"field {where!r}: expected the system turn first, got it at position {i}")
            system = _content_text(content, where, None, None)
        elif role in USER_ROLES:
            if problem is not None:
                raise FormatError(f"field {name!r}: multi-turn conversations are not supported as task records "
                                  "(expected one user turn, got more)")
            problem = _content_text(content, where, chat.images, chat.videos)
        elif role in ASSISTANT_ROLES:
            if problem is None:
                raise FormatError(f"field {where!r}: expected the assistant turn after the user turn, got it before")
            answers.append((content, where))
        else:
            raise _bad(f"{where}.role", "user/human, assistant/gpt/bot or system", role)
    if problem is None:
        raise FormatError(f"field {name!r}: expected a list of turns with one user (human) turn, got no user turn")
    chat.system, chat.problem, chat.answer = system, problem, _answer(answers)
    return chat


def _chat_column(row: Row) -> str:
    present = [c for c in CHAT_COLUMNS if c in row]
    if len(present) > 1:
        raise FormatError(f"field {present[1]!r}: expected one chat column, got {present}")
    if not present:
        raise FormatError("field 'messages': expected a list of {role, content} turns (or 'conversations' of "
                          "{from, value} turns), got nothing")
    return present[0]


def _set_system(out: Row, text: str | None, *columns: str) -> None:
    """The system prompt: the chat's system turn, else the first of the system `columns` (consumed); empty ones are
    dropped. Without `columns` a "system" column passes through unless a system turn replaces it."""
    for column in columns:
        value = out.pop(column, None)
        if text is None and value is not None:
            if not isinstance(value, str):
                raise _bad(column, "the system prompt as a string", value)
            text = value
    if text:
        out["system"] = text


def _chat_record(row: Row, column: str, system_columns: tuple[str, ...] = ()) -> tuple[Row, Chat]:
    """The record's problem, system and media from a chat column; the caller sets the solution."""
    chat = parse_chat(row[column], column)
    out = {k: v for k, v in row.items() if k != column}
    out["problem"] = chat.problem
    _set_system(out, chat.system, *system_columns)
    _attach_media(out, column, chat.images, chat.videos)
    return out, chat


def _no_audio(row: Row) -> None:
    for name in ("audio", "audios"):
        if row.get(name) is not None and not _is_empty_list(row[name]):
            raise FormatError(f"field {name!r}: audio inputs are not supported (expected no audio)")


# ----------------------------------------------------------------------------------------------------- adapters


def adapt_vlm_r1(row: Any) -> Row:
    """VLM-R1: a conversations row (grpo_jsonl.py) or a problem/solution row (RefCOCO jsons, grpo_rec.py)."""
    row = _as_row(row)
    if "conversations" in row:
        out, chat = _chat_record(row, "conversations")
        # grpo_jsonl.py reads the answer from conversations[1] and overwrites any solution column with it
        if chat.answer is _MISSING:
            raise FormatError("field 'conversations': expected a human turn and a gpt turn (the answer), got no gpt "
                              "turn")
        out["solution"] = chat.answer
        return out
    if not isinstance(row.get("problem"), str):
        raise _bad("problem", "the question text (or a 'conversations' list of {from, value} turns)",
                   row.get("problem", _MISSING))
    if row.get("solution") is None or isinstance(row["solution"], (bool, Mapping)):
        raise _bad("solution", "the answer: a string, a number or a list such as [x1, y1, x2, y2]",
                   row.get("solution", _MISSING))
    out = dict(row)
    _attach_media(out, "problem", [], [])
    return out


def adapt_easyr1(row: Any) -> Row:
    """EasyR1 / verl: `problem` (or `prompt`) with placeholders, `answer`, `images` / `videos` lists."""
    row = _as_row(row)
    key = "prompt" if "problem" not in row and "prompt" in row else "problem"
    if not isinstance(row.get(key), str):
        raise _bad(key, "the question text ('problem', EasyR1's example prompt_key, or 'prompt')",
                   row.get(key, _MISSING))
    if row.get("answer") is None:
        raise _bad("answer", "the gold answer (EasyR1's answer_key)", row.get("answer", _MISSING))
    out = {k: v for k, v in row.items() if k not in (key, "answer")}
    out["problem"], out["solution"] = row[key], row["answer"]
    _attach_media(out, key, [], [])
    return out


def _completion_answer(value: Any) -> Any:
    """TRL's `completion`: a string, or assistant messages (prompt-completion conversational type)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise _bad("completion", "a string or a list of assistant messages", value)
    contents = []
    for i, turn in enumerate(value):
        role, content = _turn(turn, f"completion[{i}]")
        if role not in ASSISTANT_ROLES:
            raise _bad(f"completion[{i}].role", "assistant", role)
        contents.append((content, f"completion[{i}]"))
    return _answer(contents)


def adapt_trl(row: Any) -> Row:
    """TRL prompt-only / prompt-completion rows: `prompt` (string or messages), `image` / `images`, `solution`."""
    row = _as_row(row)
    prompt = row.get("prompt", _MISSING)
    if isinstance(prompt, str):
        out = {k: v for k, v in row.items() if k != "prompt"}
        out["problem"], answer = prompt, _MISSING
        _attach_media(out, "prompt", [], [])
    elif isinstance(prompt, (list, tuple)):
        out, chat = _chat_record(row, "prompt")
        answer = chat.answer
    else:
        raise _bad("prompt", "a string or a list of {role, content} messages", prompt)
    if row.get("solution") is not None:
        out["solution"] = row["solution"]
    elif answer is not _MISSING:
        out["solution"] = answer
    elif row.get("completion") is not None:
        out["solution"] = _completion_answer(out.pop("completion"))
    else:
        raise _bad("solution", "the gold answer column (as TRL's accuracy reward reads it) or a 'completion'",
                   row.get("solution", _MISSING))
    return out


def adapt_messages(row: Any) -> Row:
    """ms-swift / LLaMA-Factory chats: `messages` or sharegpt `conversations`, `images` / `videos`, `system`."""
    row = _as_row(row)
    _no_audio(row)
    column = _chat_column(row)
    out, chat = _chat_record(row, column, ("system", "system_prompt"))
    if REF_TAG in chat.problem and "objects" in row:
        raise FormatError(f"field {column!r}: the user turn has {REF_TAG} placeholders and the row has 'objects'; "
                          "expected format 'swift_grounding' for ms-swift grounding rows")
    # ms-swift GRPO: a `solution` column is the gold answer and the assistant turn is dropped
    if row.get("solution") is not None:
        return out
    if chat.answer is not _MISSING:
        out["solution"] = chat.answer
    elif row.get("answer") is not None:
        out["solution"] = out.pop("answer")
    else:
        raise FormatError(f"field {column!r}: expected an assistant turn with the answer (or a 'solution' / "
                          "'answer' column), got none")
    return out


# ----------------------------------------------------------------------------------------------------- grounding


def _number(value: Any, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(where, "a number", value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _bad(where, "a number", value) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _bad(where, "a finite number", value)
    return value


def _box(value: Any, where: str) -> list[int | float]:
    """[x1, y1, x2, y2] as numbers, corners reordered as ms-swift does (points are not grounding answers)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise _bad(where, "a box [x1, y1, x2, y2] (2-number points are not supported)", value)
    x1, y1, x2, y2 = (_number(v, f"{where}[{i}]") for i, v in enumerate(value))
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def _objects(value: Any) -> tuple[list[str], list[list[int | float]]]:
    """ms-swift's `objects` -> (refs, boxes in pixels); FormatError for norm1 boxes and other images' boxes."""
    if isinstance(value, str):  # ms-swift stores the column as Json; some writers leave it as text
        try:
            value = json.loads(value)
        except ValueError:
            raise _bad("objects", "a dict {ref, bbox, bbox_type?, image_id?} (or its JSON text)", value) from None
    if not isinstance(value, Mapping):
        raise _bad("objects", "a dict {ref, bbox, bbox_type?, image_id?}", value)
    refs, boxes = value.get("ref", []), value.get("bbox", _MISSING)
    if not isinstance(refs, (list, tuple)) or not all(isinstance(r, str) for r in refs):
        raise _bad("objects.ref", "a list of referring phrases", refs)
    if not isinstance(boxes, (list, tuple)):
        raise _bad("objects.bbox", "a list of boxes [x1, y1, x2, y2]", boxes)
    bbox_type = value.get("bbox_type") or "real"
    if bbox_type != "real":
        raise _bad("objects.bbox_type", "'real' (pixel boxes; 'norm1' boxes need the image size, convert them to "
                   "pixels first)", bbox_type)
    image_id = value.get("image_id") or []
    if not isinstance(image_id, (list, tuple)) or len(image_id) > len(boxes) or any(i != 0 for i in image_id):
        raise _bad("objects.image_id", "all boxes on the first image (0; one per box at most)", image_id)
    return list(refs), [_box(b, f"objects.bbox[{i}]") for i, b in enumerate(boxes)]


def adapt_swift_grounding(row: Any) -> Row:
    """ms-swift grounding: a messages row whose `objects` fill the <ref-object> / <bbox> placeholders."""
    row = _as_row(row)
    if row.get("solution") is not None:
        raise _bad("solution", "no 'solution' column (a swift_grounding row's answer is its 'objects')",
                   row["solution"])
    _no_audio(row)
    column = _chat_column(row)
    out, chat = _chat_record(row, column, ("system", "system_prompt"))
    refs, boxes = _objects(out.pop("objects", _MISSING))
    reply = chat.answer if isinstance(chat.answer, str) else ""
    if BOX_TAG in chat.problem:
        raise FormatError(f"field {column!r}: expected {BOX_TAG} only in the assistant turn, got it in the user "
                          "turn (region captioning is not a grounding record)")
    pieces = chat.problem.split(REF_TAG)
    if len(pieces) == 1 and REF_TAG in reply:
        raise FormatError(f"field {column!r}: expected the referring phrase in the user turn ({REF_TAG}), got "
                          "labels only in the assistant turn (detection with labels is not a grounding record)")
    if len(pieces) - 1 > len(refs):
        raise _bad("objects.ref", f"a phrase for each of the {len(pieces) - 1} {REF_TAG} in the user turn", refs)
    # ms-swift fills the placeholders in order: the user turn takes the first refs, the assistant's labels the rest
    used = refs[: len(pieces) - 1]
    out["problem"] = pieces[0] + "".join(ref + rest for ref, rest in zip(used, pieces[1:], strict=True))
    wanted = reply.count(BOX_TAG) or len(boxes)
    if wanted > len(boxes):
        raise _bad("objects.bbox", f"a box for each of the {wanted} {BOX_TAG} in the assistant turn", boxes)
    out["solution"] = boxes[:wanted]
    return out


# ----------------------------------------------------------------------------------------------------- registry

FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "vlm_r1": adapt_vlm_r1,
    "easyr1": adapt_easyr1,
    "trl": adapt_trl,
    "messages": adapt_messages,
    "swift_grounding": adapt_swift_grounding,
}

_HELP = {
    "vlm_r1": "VLM-R1 jsonl rows, two layouts. Conversations: {'id', 'image': path or [paths], 'conversations': "
    "[{'from': 'human', 'value': '<image>question'}, {'from': 'gpt', 'value': answer}], 'accu_reward_method'?}; "
    "the human text becomes problem (placeholders kept), the gpt value the solution. RefCOCO: {'image', 'problem', "
    "'solution': [x1, y1, x2, y2] in original pixels (or its string), 'normal_caption', ...} kept as is. Image "
    "paths stay relative to VLM-R1's --image_folders / --image_root: join them (or place the data file there).",
    "easyr1": "EasyR1 / verl rows (Hub parquet or jsonl): 'problem' (or 'prompt') with <image> / <video> "
    "placeholders becomes problem, 'answer' the solution; 'images' (paths, {'bytes', 'path'} dicts or bytes) and "
    "'videos' (paths) are kept, an empty list means a text-only row. Other prompt_key / answer_key names must be "
    "renamed to these first.",
    "trl": "TRL prompt-only rows: 'prompt' as a string or as messages whose content is a string or parts "
    "([{'type': 'image'}, {'type': 'text', 'text': ...}]; each image part becomes <image> in the problem), the "
    "media in 'image' (one) or 'images' (a list), and the gold answer in 'solution' (what TRL's accuracy reward "
    "reads); without it, an assistant turn in the prompt or a 'completion' column gives the solution.",
    "messages": "ms-swift / LLaMA-Factory chats: 'messages' [{'role', 'content'}] or sharegpt 'conversations' "
    "[{'from', 'value'}] with one user turn, an optional leading system turn (or a 'system' / 'system_prompt' "
    "column) and the assistant's answer; media in 'images' / 'videos' with <image> / <video> placeholders, or as "
    "OpenAI / Anthropic image blocks. A 'solution' column, when present, is the gold answer (ms-swift GRPO) and the "
    "assistant turn is dropped; without an assistant turn an 'answer' column is used. Several user turns, tool "
    "turns and audio are refused.",
    "swift_grounding": "ms-swift grounding rows: a 'messages' chat plus 'objects': {'ref': [phrases], 'bbox': "
    "[[x1, y1, x2, y2], ...], 'bbox_type'?: 'real', 'image_id'?}. The user turn's <ref-object> placeholders are "
    "filled with the phrases in order, and the boxes filling the assistant's <bbox> placeholders (all of them "
    "without an assistant turn) become the solution, in original image pixels. Only 'real' (pixel) boxes on the "
    "first image are supported: 'norm1' boxes need the image size.",
}


def _lookup(fmt: Any) -> str:
    name = fmt.strip().lower().replace("-", "_") if isinstance(fmt, str) else fmt
    if not isinstance(name, str) or name not in FORMATS:
        raise FormatError(f"unknown format {_short(fmt)}: expected one of {', '.join(FORMATS)}")
    return name


def adapt(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """`row`, in the layout of the peer format `fmt`, as an mmreason record (a new dict; `row` is not changed)."""
    return FORMATS[_lookup(fmt)](row)


def format_help(fmt: str) -> str:
    """One paragraph on the layout format `fmt` reads and how its fields map (for docs and CLI help)."""
    return _HELP[_lookup(fmt)]
