"""Chat messages + loaded media -> the tensors a vision-language model of a supported family takes, and their batching.

`build_inputs` renders the processor's chat template, runs the HF processor on media that are *already resized*
(so resizing is switched off there and the vision grid is exactly model_size / patch size), and can append the gold
assistant turn with an `assistant_mask` for SFT. `collate` pads such per-sample dicts into a batch.

HF processor facts this module relies on (transformers 5.x):
- images/videos passed with do_resize=False go to the patchifier as they are; sides must be multiples of the
  family's image factor (28 for Qwen2-VL / Qwen2.5-VL), or exactly its fixed square (InternVL 448, Gemma 3 896),
  whose tiling / pan-and-scan is turned off (`ModelFamily.images_kwargs`) so that one image is one tile.
- the chat template writes every special token itself (Gemma 3's BOS included): the rendered text is tokenized
  without the tokenizer's own, which would add a second BOS.
- a video must come with `video_metadata` (source fps, total frames, sampled indices); without it the Qwen2.5-VL
  processor assumes 24 fps and returns a wrong `second_per_grid_ts` (the model's temporal position step).
- `mm_token_type_ids` (Qwen) is returned and must reach every forward: without it the model cannot compute the 3-D
  (M-RoPE) positions of the vision tokens and silently falls back to 1-D text positions. Gemma 3's `token_type_ids`
  (1 on image tokens) must too: they attend to each other bidirectionally, which the mask is built from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from mmreason.models.family import family_for_processor

from .images import ResizedImage
from .video import VideoClip

MEDIA_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
# per-token vision types (`ModelFamily.token_type_key`): 0 on text, so a completion or a pad extends them with 0
TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")
SEQUENCE_KEYS = ("input_ids", "attention_mask", *TOKEN_TYPE_KEYS, "assistant_mask")
# Padding values of the per-token keys (input_ids pads with the caller's pad_id; labels with the loss's ignore index).
SEQUENCE_PAD = {"attention_mask": 0, "assistant_mask": 0, "labels": -100, **dict.fromkeys(TOKEN_TYPE_KEYS, 0)}


def render_prompt(processor, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """The chat-template text of `messages` (media as single placeholder tokens, expanded later by the processor),
    rendered with the processor's model family's `chat_template_kwargs` and with its `prompt_fixes` applied."""
    family = family_for_processor(processor)
    # only the variables the template reads: transformers hands any other keyword to the processor call and warns
    # on every prompt (a template without `enable_thinking` ignores it anyway)
    template = str(processor.chat_template or "")
    extra = {k: v for k, v in family.chat_template_kwargs if k in template}
    text = processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )
    return family.fix_prompt(text)


def _as_images(images) -> list[Image.Image]:
    if images is None:
        return []
    items = images if isinstance(images, (list, tuple)) else [images]
    out = []
    for i, item in enumerate(items):
        img = item.image if isinstance(item, ResizedImage) else item
        if not isinstance(img, Image.Image):
            raise TypeError(f"images[{i}] is a {type(item).__name__}; expected a PIL image or a ResizedImage")
        out.append(img)
    return out


def _factor(sub_processor) -> int:
    return int(sub_processor.patch_size * sub_processor.merge_size)


def _media_tokens(processor) -> tuple[str, ...]:
    """The processor's image and (if it takes videos) video placeholders."""
    video = getattr(processor, "video_token", None)
    return (processor.image_token,) if video is None else (processor.image_token, video)


def _check_media(processor, text: str, images: list[Image.Image], video: VideoClip | None) -> None:
    """Placeholder counts match the media, and the media are already at a size the vision encoder can patch."""
    family = family_for_processor(processor)
    if video is not None and not family.video:
        raise ValueError(f"{family.label} models take no video (model family {family.name}); this prompt has one")
    video_token = getattr(processor, "video_token", None)
    n_image_slots = text.count(processor.image_token)
    n_video_slots = text.count(video_token) if video_token else 0
    if n_image_slots != len(images):
        raise ValueError(
            f"the messages have {n_image_slots} image placeholder(s) but {len(images)} image(s) were given"
        )
    if n_video_slots != (0 if video is None else 1):
        raise ValueError(
            f"the messages have {n_video_slots} video placeholder(s) but {int(video is not None)} video(s) were given"
        )
    if family.fixed_image_size:
        _check_square(family.fixed_image_size, images, video)
        return
    factor = _factor(processor.image_processor)
    for i, img in enumerate(images):
        if img.width % factor or img.height % factor:
            raise ValueError(
                f"images[{i}] is {img.width}x{img.height}; both sides must be multiples of {factor} "
                "(resize it with resize_image / fetch_image first)"
            )
    if video is not None:
        factor = _factor(processor.video_processor)
        width, height = video.frames[0].size
        if width % factor or height % factor or any(f.size != (width, height) for f in video.frames):
            raise ValueError(
                f"video frames must all share one size with sides multiple of {factor}, got "
                f"{sorted({f.size for f in video.frames})} (load the video with load_video)"
            )


def _check_square(side: int, images: list[Image.Image], video: VideoClip | None) -> None:
    """Every image and video frame is the family's fixed square (its processor would otherwise re-cut it)."""
    for i, img in enumerate(images):
        if img.size != (side, side):
            raise ValueError(
                f"images[{i}] is {img.width}x{img.height}; this model family takes {side}x{side} images "
                "(resize it with resize_image / fetch_image and the model family first)"
            )
    if video is not None and any(f.size != (side, side) for f in video.frames):
        raise ValueError(
            f"video frames must all be {side}x{side} for this model family, got "
            f"{sorted({f.size for f in video.frames})} (load the video with load_video and the model family)"
        )


def _video_kwargs(processor, video: VideoClip) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"do_resize": False, "do_sample_frames": False, "video_metadata": [video.metadata()]}
    # Only silences a warning (resizing is off anyway); the option is slated for removal in later 5.x releases.
    if "cap_pixels_per_frame" in getattr(processor.video_processor.valid_kwargs, "__annotations__", {}):
        kwargs["cap_pixels_per_frame"] = False
    return kwargs


def processor_inputs(processor, text: str, images: list[Image.Image], video: VideoClip | None = None) -> dict:
    """The processor's tensors (those of SEQUENCE_KEYS and MEDIA_KEYS it returns) for already rendered `text` and
    already resized media: resizing off, the family's `images_kwargs`, no special tokens added by the tokenizer."""
    call: dict[str, Any] = {"text": [text], "return_tensors": "pt", "add_special_tokens": False}
    if images:
        call["images"] = images
        call["images_kwargs"] = {"do_resize": False, **dict(family_for_processor(processor).images_kwargs)}
    if video is not None:
        call["videos"] = [video.frames]
        call["videos_kwargs"] = _video_kwargs(processor, video)
    out = processor(**call)
    result = {k: out[k] for k in SEQUENCE_KEYS + MEDIA_KEYS if k in out}
    if "second_per_grid_ts" in result:
        result["second_per_grid_ts"] = torch.as_tensor(result["second_per_grid_ts"], dtype=torch.float32)
    result["attention_mask"] = result["attention_mask"].long()
    return result


def _append_assistant(processor, inputs: dict, assistant_text: str) -> dict:
    """Append `assistant_text<|im_end|>\\n` to the prompt's tokens; mask 1 on the text and <|im_end|> only.

    The turn is tokenized apart from the prompt, as generation produces it after the prompt, so no BPE merge
    can straddle the prompt/answer boundary and the mask boundary is exact.
    """
    for token in _media_tokens(processor):
        if token in assistant_text:
            raise ValueError(f"assistant_text contains the media placeholder {token!r}; it cannot be a target")
    tokenizer = processor.tokenizer
    end_of_turn = family_for_processor(processor).turn_end
    answer = tokenizer(assistant_text + end_of_turn, add_special_tokens=False)["input_ids"]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    prompt_len = inputs["input_ids"].shape[1]
    extra = torch.tensor([answer + newline], dtype=inputs["input_ids"].dtype)
    mask = [0] * prompt_len + [1] * len(answer) + [0] * len(newline)
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    for key in TOKEN_TYPE_KEYS:
        if key in inputs:
            out[key] = torch.cat([inputs[key], torch.zeros_like(extra, dtype=inputs[key].dtype)], dim=1)
    out["assistant_mask"] = torch.tensor([mask], dtype=torch.long)
    return out


def build_inputs(
    processor,
    messages: list[dict[str, Any]],
    images: Sequence[Image.Image | ResizedImage] | Image.Image | ResizedImage | None = None,
    video: VideoClip | None = None,
    *,
    add_generation_prompt: bool = True,
    assistant_text: str | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt: input_ids, attention_mask, the family's token types (mm_token_type_ids or
    token_type_ids, 1 x L, if it has them), and those present of pixel_values, image_grid_thw, pixel_values_videos,
    video_grid_thw, second_per_grid_ts.

    `images` must already be resized (fetch_image / resize_image with the model family) and `video` loaded with
    load_video: the grid is then exactly model_size / patch size per image. With `assistant_text`, the assistant
    turn (text + the family's end of turn, e.g. "<|im_end|>\\n") is appended after the generation prompt (which is
    then always rendered) and `assistant_mask` (1 x L) is 1 on the assistant's tokens and its end of turn, 0 on the
    prompt, media and template tokens.
    """
    image_list = _as_images(images)
    if video is not None and not isinstance(video, VideoClip):
        raise TypeError(f"video is a {type(video).__name__}; expected a VideoClip from load_video")
    text = render_prompt(processor, messages, add_generation_prompt or assistant_text is not None)
    _check_media(processor, text, image_list, video)
    inputs = processor_inputs(processor, text, image_list, video)
    if assistant_text is not None:
        inputs = _append_assistant(processor, inputs, assistant_text)
    return inputs


def _pad(rows: list[torch.Tensor], value: int, side: str) -> torch.Tensor:
    length = max(row.shape[0] for row in rows)
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        if side == "left":
            out[i, length - row.shape[0] :] = row
        else:
            out[i, : row.shape[0]] = row
    return out


def collate(
    batch: list[dict[str, torch.Tensor]],
    pad_id: int,
    side: str = "left",
    *,
    pad_values: Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Batch build_inputs outputs: per-token keys padded to the longest (input_ids with `pad_id`, masks and
    token types with 0, labels with -100, others per `pad_values`) on `side`; media keys concatenated in
    batch order, which is the order the model assigns them to placeholders."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not batch:
        raise ValueError("cannot collate an empty batch")
    pads = {**SEQUENCE_PAD, **(pad_values or {}), "input_ids": pad_id}
    keys = list(dict.fromkeys(k for sample in batch for k in sample))
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        if key in MEDIA_KEYS:
            out[key] = torch.cat([sample[key] for sample in batch if key in sample], dim=0)
        elif key in pads:
            out[key] = _pad([_row(sample, key, i) for i, sample in enumerate(batch)], pads[key], side)
        else:
            raise ValueError(
                f"collate: unknown key {key!r}; pass its padding value in pad_values "
                f"(known: {sorted(pads)} and media {list(MEDIA_KEYS)})"
            )
    return out


def _row(sample: dict[str, torch.Tensor], key: str, index: int) -> torch.Tensor:
    if key not in sample:
        raise ValueError(f"collate: sample {index} has no {key!r} while other samples do")
    value = sample[key]
    row = value.reshape(-1) if value.dim() == 2 and value.shape[0] == 1 else value
    if row.dim() != 1 or row.shape[0] != sample["input_ids"].reshape(-1).shape[0]:
        raise ValueError(
            f"collate: sample {index}'s {key!r} has shape {tuple(value.shape)}; expected one row as "
            f"long as its input_ids ({tuple(sample['input_ids'].shape)})"
        )
    return row
