"""build_inputs / collate on the tiny Qwen2.5-VL processor: vision-token counts, grids, mm_token_type_ids,
the SFT assistant mask, video timing, padding, and that the tiny model accepts the result; and on the fixed-size
families' processors (InternVL, Gemma 3): one square tile per image, one BOS, their token types."""

from __future__ import annotations

import pytest
import torch
from mmreason.processors import MediaError, build_inputs, collate, load_video, resize_image
from PIL import Image

F = 28 * 28


def _messages(n_images: int = 0, n_videos: int = 0, text: str = "Count the objects.") -> list[dict]:
    content = [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def _image(size, color=(200, 30, 30)):
    return resize_image(Image.new("RGB", size, color), 4 * F, 64 * F)


def _runs(ids: list[int], token_id: int) -> list[int]:
    """Lengths of the maximal runs of `token_id` in `ids`, in order."""
    runs, count = [], 0
    for tok in ids + [None]:
        if tok == token_id:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    return runs


@pytest.mark.parametrize(
    "sizes",
    [[(64, 64)], [(100, 40)], [(40, 100), (64, 64)], [(56, 56), (300, 200), (30, 90)]],
    ids=["square", "wide", "two", "three"],
)
def test_image_tokens_match_the_grid(tiny_processor, sizes):
    images = [_image(size) for size in sizes]
    out = build_inputs(tiny_processor, _messages(len(images)), images)
    ids = out["input_ids"][0].tolist()
    merge = tiny_processor.image_processor.merge_size
    grids = out["image_grid_thw"]
    assert grids.tolist() == [[1, img.model_size[1] // 14, img.model_size[0] // 14] for img in images]
    per_image = [int(g.prod()) // merge**2 for g in grids]
    assert _runs(ids, tiny_processor.image_token_id) == per_image
    assert out["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert (out["mm_token_type_ids"][0] == 1).sum().item() == sum(per_image)
    assert torch.equal(out["mm_token_type_ids"][0] == 1, out["input_ids"][0] == tiny_processor.image_token_id)
    assert out["attention_mask"].dtype == torch.long and bool(out["attention_mask"].all())
    assert "pixel_values_videos" not in out and "assistant_mask" not in out


def test_plain_pil_and_resized_image_give_the_same_inputs(tiny_processor):
    resized = _image((90, 60))
    a = build_inputs(tiny_processor, _messages(1), [resized])
    b = build_inputs(tiny_processor, _messages(1), resized.image)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_text_only_prompt(tiny_processor):
    out = build_inputs(tiny_processor, _messages(0))
    assert set(out) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    text = tiny_processor.tokenizer.decode(out["input_ids"][0])
    assert text.endswith("<|im_start|>assistant\n")
    no_gen = build_inputs(tiny_processor, _messages(0), add_generation_prompt=False)
    assert not tiny_processor.tokenizer.decode(no_gen["input_ids"][0]).endswith("assistant\n")


@pytest.fixture(scope="module")
def clip():
    frames = [Image.new("RGB", (60, 40), (20 * i, 0, 0)) for i in range(16)]
    return load_video(frames, fps=2.0, source_fps=4.0, min_pixels=4 * F, total_pixels=64 * F)


def test_video_tokens_grid_and_timing(tiny_processor, clip):
    out = build_inputs(tiny_processor, _messages(0, 1, "When does it happen?"), video=clip)
    width, height = clip.model_size
    grid = out["video_grid_thw"]
    assert grid.tolist() == [[len(clip.frames) // 2, height // 14, width // 14]]
    merge = tiny_processor.video_processor.merge_size
    n_tokens = int(grid.prod()) // merge**2
    assert _runs(out["input_ids"][0].tolist(), tiny_processor.video_token_id) == [n_tokens]
    assert (out["mm_token_type_ids"][0] == 2).sum().item() == n_tokens
    assert out["pixel_values_videos"].shape[0] == int(grid.prod())
    # One temporal patch = 2 frames; without the clip's metadata transformers would assume 24 fps.
    assert out["second_per_grid_ts"].tolist() == pytest.approx([2 / clip.fps])
    assert clip.fps == pytest.approx(2.0)


def test_image_and_video_together(tiny_processor, clip):
    out = build_inputs(tiny_processor, _messages(1, 1), [_image((64, 64))], clip)
    types = out["mm_token_type_ids"][0]
    assert (types == 1).sum().item() == int(out["image_grid_thw"].prod()) // 4
    assert (types == 2).sum().item() == int(out["video_grid_thw"].prod()) // 4


ASSISTANT_TEXTS = [
    "<think>two squares</think><answer>2</answer>",
    "<answer>[1, 3, 2, 4]</answer>",
    "",
    " leading space and trailing space ",
    "\nstarts with a newline",
    "unicode: héllo ✓ 北京",
]


@pytest.mark.parametrize("assistant_text", ASSISTANT_TEXTS)
def test_assistant_mask_covers_exactly_the_answer(tiny_processor, assistant_text):
    images = [_image((64, 64))]
    prompt = build_inputs(tiny_processor, _messages(1), images)
    full = build_inputs(tiny_processor, _messages(1), images, assistant_text=assistant_text)
    tok = tiny_processor.tokenizer
    ids, mask = full["input_ids"][0], full["assistant_mask"][0]
    n_prompt = prompt["input_ids"].shape[1]
    assert torch.equal(ids[:n_prompt], prompt["input_ids"][0]), "the prompt tokens are unchanged"
    assert not mask[:n_prompt].any(), "no prompt, media or template token is trained on"
    assert tok.decode(ids[mask.bool()]) == assistant_text + "<|im_end|>"
    assert tok.decode(ids[n_prompt:]) == assistant_text + "<|im_end|>\n"
    assert mask[-1] == 0, "the newline after <|im_end|> is template, not target"
    assert mask.sum().item() == len(tok(assistant_text + "<|im_end|>", add_special_tokens=False)["input_ids"])
    for key in ("attention_mask", "mm_token_type_ids", "assistant_mask"):
        assert full[key].shape == full["input_ids"].shape
    assert not full["mm_token_type_ids"][0, n_prompt:].any()
    assert torch.equal(full["pixel_values"], prompt["pixel_values"])


def test_assistant_text_forces_the_generation_prompt(tiny_processor):
    out = build_inputs(tiny_processor, _messages(0), add_generation_prompt=False, assistant_text="ok")
    text = tiny_processor.tokenizer.decode(out["input_ids"][0])
    assert text.endswith("<|im_start|>assistant\nok<|im_end|>\n")


BAD_CALLS = {
    "placeholder-without-image": (dict(messages=_messages(1)), ValueError, r"1 image placeholder\(s\) but 0 image"),
    "image-without-placeholder": (
        dict(messages=_messages(0), images=[Image.new("RGB", (56, 56))]),
        ValueError,
        r"0 image placeholder\(s\) but 1 image",
    ),
    "video-without-placeholder": (
        dict(messages=_messages(0), video="CLIP"),
        ValueError,
        r"0 video placeholder\(s\) but 1 video",
    ),
    "unresized-image": (
        dict(messages=_messages(1), images=[Image.new("RGB", (30, 30))]),
        ValueError,
        r"images\[0\] is 30x30; both sides must be multiples of 28",
    ),
    "path-instead-of-image": (
        dict(messages=_messages(1), images=["a.png"]),
        TypeError,
        r"images\[0\] is a str; expected a PIL image or a ResizedImage",
    ),
    "frames-instead-of-clip": (
        dict(messages=_messages(0, 1), video=[Image.new("RGB", (28, 28))] * 2),
        TypeError,
        r"video is a list; expected a VideoClip",
    ),
    "media-token-in-answer": (
        dict(messages=_messages(0), assistant_text="look <|image_pad|>"),
        ValueError,
        r"assistant_text contains the media placeholder '<\|image_pad\|>'",
    ),
}


@pytest.mark.parametrize(("kwargs", "error", "pattern"), list(BAD_CALLS.values()), ids=list(BAD_CALLS))
def test_bad_calls(tiny_processor, clip, kwargs, error, pattern):
    kwargs = {**kwargs, "video": clip} if kwargs.get("video") == "CLIP" else kwargs
    with pytest.raises(error, match=pattern):
        build_inputs(tiny_processor, **kwargs)
    assert not issubclass(error, MediaError)


@pytest.fixture(scope="module")
def two_samples(tiny_processor):
    a = build_inputs(tiny_processor, _messages(1), [_image((64, 64))], assistant_text="<answer>1</answer>")
    b = build_inputs(
        tiny_processor,
        _messages(2, text="Which is larger?"),
        [_image((100, 40)), _image((56, 56))],
        assistant_text="<answer>the first</answer>",
    )
    return a, b


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_pads_and_concatenates(two_samples, side):
    a, b = two_samples
    pad = 0
    batch = collate([a, b], pad_id=pad, side=side)
    lengths = [a["input_ids"].shape[1], b["input_ids"].shape[1]]
    longest = max(lengths)
    assert batch["input_ids"].shape == (2, longest)
    for key in ("attention_mask", "mm_token_type_ids", "assistant_mask"):
        assert batch[key].shape == (2, longest)
    for row, sample, length in zip(range(2), (a, b), lengths, strict=True):
        real = slice(longest - length, longest) if side == "left" else slice(0, length)
        pads = slice(0, longest - length) if side == "left" else slice(length, longest)
        assert torch.equal(batch["input_ids"][row, real], sample["input_ids"][0])
        assert torch.equal(batch["assistant_mask"][row, real], sample["assistant_mask"][0])
        assert (batch["input_ids"][row, pads] == pad).all() and not batch["attention_mask"][row, pads].any()
        assert not batch["mm_token_type_ids"][row, pads].any() and not batch["assistant_mask"][row, pads].any()
    assert torch.equal(batch["pixel_values"], torch.cat([a["pixel_values"], b["pixel_values"]]))
    assert batch["image_grid_thw"].tolist() == a["image_grid_thw"].tolist() + b["image_grid_thw"].tolist()


def test_collate_labels_extra_keys_and_flat_rows():
    a = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]), "score": torch.tensor([1, 1, 1])}
    b = {"input_ids": torch.tensor([[8]]), "labels": torch.tensor([[8]]), "score": torch.tensor([[2]])}
    batch = collate([a, b], pad_id=9, side="right", pad_values={"score": -1})
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["score"].tolist() == [[1, 1, 1], [2, -1, -1]]


@pytest.mark.parametrize(
    ("batch", "kwargs", "pattern"),
    [
        ([], {}, r"cannot collate an empty batch"),
        ([{"input_ids": torch.tensor([1])}], {"side": "middle"}, r"side must be 'left' or 'right'"),
        ([{"input_ids": torch.tensor([1]), "foo": torch.tensor([1])}], {}, r"unknown key 'foo'"),
        (
            [{"input_ids": torch.tensor([1]), "attention_mask": torch.tensor([1])}, {"input_ids": torch.tensor([2])}],
            {},
            r"sample 1 has no 'attention_mask'",
        ),
        (
            [{"input_ids": torch.tensor([1, 2]), "attention_mask": torch.tensor([1])}],
            {},
            r"sample 0's 'attention_mask' has shape \(1,\); expected one row as long as its input_ids",
        ),
    ],
    ids=["empty", "bad-side", "unknown-key", "missing-key", "length-mismatch"],
)
def test_collate_errors(batch, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        collate(batch, pad_id=0, **kwargs)


def test_the_tiny_model_accepts_a_collated_batch(tiny_dir, tiny_processor, two_samples, clip):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    video_sample = build_inputs(tiny_processor, _messages(0, 1), video=clip, assistant_text="<answer>1</answer>")
    batch = collate([*two_samples, video_sample], pad_id=tiny_processor.tokenizer.pad_token_id, side="left")
    model_inputs = {k: v for k, v in batch.items() if k != "assistant_mask"}
    with torch.no_grad():
        logits = model(**model_inputs).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(logits).all()


def test_a_qwen2_vl_processor_works_too(tiny_processor, clip):
    from transformers import Qwen2VLProcessor

    parts = ("image_processor", "tokenizer", "video_processor", "chat_template")
    processor = Qwen2VLProcessor(**{name: getattr(tiny_processor, name) for name in parts})
    out = build_inputs(processor, _messages(1, 1), [_image((64, 64))], clip, assistant_text="<answer>2</answer>")
    assert "second_per_grid_ts" not in out  # Qwen2-VL has no absolute-time positions
    assert (out["mm_token_type_ids"][0] == 2).sum().item() == int(out["video_grid_thw"].prod()) // 4
    assert out["assistant_mask"].shape == out["input_ids"].shape


@pytest.fixture(scope="module")
def square_processors():
    from mmreason.models.tiny import build_processor, build_tokenizer

    return {arch: build_processor(build_tokenizer(arch), arch=arch) for arch in ("internvl", "gemma3")}


@pytest.mark.parametrize("arch", ["internvl", "gemma3"])
def test_fixed_size_families_take_one_square_tile_per_image(square_processors, arch):
    from mmreason.models.family import get_family

    processor, family = square_processors[arch], get_family(arch)
    side = family.fixed_image_size
    square = resize_image(Image.new("RGB", (64, 40)), family=family)
    a = build_inputs(processor, _messages(1), [square], assistant_text="<answer>1</answer>")
    b = build_inputs(processor, _messages(2), [square, square], assistant_text="<answer>2</answer>")
    assert a["pixel_values"].shape == (1, 3, side, side) and b["pixel_values"].shape == (2, 3, side, side)
    with pytest.raises(ValueError, match=f"images\\[0\\] is 56x56; this model family takes {side}x{side}"):
        build_inputs(processor, _messages(1), [Image.new("RGB", (56, 56))])  # not re-tiled: refused
    tok = processor.tokenizer
    if tok.bos_token_id is not None:  # the chat template writes the BOS; the tokenizer must not add a second
        assert a["input_ids"][0].tolist().count(tok.bos_token_id) == 1
    key = family.token_type_key
    assert [k for k in ("mm_token_type_ids", "token_type_ids") if k in a] == ([key] if key else [])
    if key is not None:  # image tokens typed 1, the appended answer 0, and collate pads with 0
        assert a[key].shape == a["input_ids"].shape and int(a[key].sum()) > 0
        assert a[key][0, a["assistant_mask"][0].bool()].sum() == 0
        batch = collate([a, b], pad_id=tok.pad_token_id, side="left")
        assert batch[key].shape == batch["input_ids"].shape
        assert int(batch[key].sum()) == int(a[key].sum() + b[key].sum())


def test_a_family_without_video_refuses_one(square_processors, clip):
    with pytest.raises(ValueError, match="Gemma 3 models take no video"):
        build_inputs(square_processors["gemma3"], _messages(0, 1), video=clip)
