"""Image loading and resizing: sources, EXIF, transparency, qwen-vl-utils parity, and every bad-input message."""

from __future__ import annotations

import base64
import io
import pickle

import numpy as np
import pytest
from mmreason.processors import MediaError, ResizedImage, fetch_image, load_image, model_size_for, resize_image
from PIL import Image
from qwen_vl_utils import fetch_image as qwen_fetch_image
from qwen_vl_utils.vision_process import smart_resize

F = 28 * 28  # pixels of one merged vision token


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# (original w, h), min_pixels, max_pixels -> model (w, h); hand-checked against qwen-vl-utils' smart_resize.
RESIZE_CASES = [
    ((64, 64), 4 * F, 256 * F, (56, 56)),  # round to the nearest multiple of 28
    ((8, 8), 4 * F, 256 * F, (56, 56)),  # tiny image: scaled up to min_pixels
    ((1000, 500), 4 * F, 256 * F, (616, 308)),  # landscape over max_pixels: scaled down, floored
    ((500, 1000), 4 * F, 256 * F, (308, 616)),  # portrait
    ((64, 16), 16 * F, 256 * F, (224, 56)),  # 4:1 under a large min_pixels: scaled up, ceiled
    ((33, 61), 4 * F, 256 * F, (56, 84)),  # odd sizes
    ((640, 480), 4 * F, 16 * F, (112, 84)),  # 4:3 into a small budget
    ((400, 2), 4 * F, 256 * F, (392, 28)),  # 200:1, the largest aspect ratio allowed
    ((2, 400), F, 1024 * F, (28, 392)),
    ((28, 28), 4 * F, 4 * F, (56, 56)),  # min_pixels == max_pixels
    ((224, 224), 4 * F, 256 * F, (224, 224)),  # already at a valid size: unchanged
]


@pytest.mark.parametrize(("size", "min_pixels", "max_pixels", "expected"), RESIZE_CASES)
def test_resize_matches_smart_resize(size, min_pixels, max_pixels, expected):
    width, height = size
    qwen_h, qwen_w = smart_resize(height, width, 28, min_pixels, max_pixels)
    assert expected == (qwen_w, qwen_h)
    resized = resize_image(_noise(width, height), min_pixels, max_pixels)
    assert isinstance(resized, ResizedImage)
    assert resized.original_size == size
    assert resized.model_size == expected
    assert resized.image.size == expected
    assert resized.image.mode == "RGB"
    assert expected[0] % 28 == 0 and expected[1] % 28 == 0


@pytest.mark.parametrize(
    ("size", "min_pixels", "max_pixels"), [((64, 48), 4 * F, 256 * F), ((300, 200), 4 * F, 16 * F)]
)
def test_fetch_image_is_pixel_identical_to_qwen_vl_utils(size, min_pixels, max_pixels):
    img = _noise(*size, seed=3)
    ours = fetch_image(img, min_pixels, max_pixels)
    theirs = qwen_fetch_image({"image": img, "min_pixels": min_pixels, "max_pixels": max_pixels})
    assert ours.image.size == theirs.size
    assert np.array_equal(np.asarray(ours.image), np.asarray(theirs))


@pytest.mark.parametrize(
    ("size", "max_pixels", "expected"),
    [
        ((60, 40), F, (28, 28)),  # smart_resize would floor the short side to 0 here
        ((300, 10), 4 * F, (280, 28)),
    ],
)
def test_short_side_never_collapses_to_zero(size, max_pixels, expected):
    assert model_size_for(size, F, max_pixels) == expected
    assert resize_image(_noise(*size), F, max_pixels).image.size == expected


def test_all_sources_load_the_same_pixels(tmp_path):
    img = _noise(20, 12)
    data = _png_bytes(img)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    sources = [img, data, bytearray(data), path, str(path), f"file://{path}", uri]
    for src in sources:
        loaded = load_image(src)
        assert loaded.mode == "RGB" and loaded.size == (20, 12), src if not isinstance(src, bytes) else "<bytes>"
        assert np.array_equal(np.asarray(loaded), np.asarray(img))


def test_exif_orientation_is_applied(tmp_path):
    # Left half red, right half blue; orientation 6 = "rotate 90 degrees clockwise to display".
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_bytes(Image.fromarray(arr), exif=exif))
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top, bottom = np.asarray(loaded)[5, 10], np.asarray(loaded)[35, 10]
    assert top[0] > 200 and top[2] < 60, "the left (red) half must end up on top"
    assert bottom[2] > 200 and bottom[0] < 60
    resized = fetch_image(path)
    assert resized.original_size == (20, 40)
    assert resized.model_size == model_size_for((20, 40))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)),
        lambda: Image.new("LA", (4, 4), (0, 0)),
        lambda: _palette_with_transparency(),
    ],
    ids=["RGBA", "LA", "P-transparency"],
)
def test_transparency_is_flattened_onto_white(make):
    loaded = load_image(make())
    assert loaded.mode == "RGB"
    assert np.asarray(loaded)[0, 0].tolist() == [255, 255, 255]


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30] * 256)
    img.info["transparency"] = 0
    return img


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "I;16", "P"])
def test_other_modes_become_rgb(mode):
    assert load_image(Image.new(mode, (5, 3))).mode == "RGB"


def _truncated_jpeg() -> bytes:
    data = _jpeg_bytes(_noise(64, 64))
    return data[: len(data) // 2]


def _truncated_png() -> bytes:
    data = _png_bytes(_noise(64, 64))
    return data[: len(data) // 2]


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# (source factory given tmp_path, expected message pattern); the source name always leads the message.
BAD_IMAGES = {
    "missing-file": (lambda d: str(d / "missing.png"), r"missing\.png: file not found"),
    "directory": (lambda d: str(d), r": not a file"),
    "zero-byte-file": (lambda d: _write(d, "empty.png", b""), r"empty\.png: empty file \(0 bytes\)"),
    "garbage-file": (lambda d: _write(d, "junk.jpg", b"this is not an image"), r"junk\.jpg: not a readable image"),
    "truncated-jpeg-file": (lambda d: _write(d, "cut.jpg", _truncated_jpeg()), r"cut\.jpg: corrupt or truncated"),
    "truncated-png-bytes": (lambda d: _truncated_png(), r"^<bytes>: corrupt or truncated"),
    "truncated-jpeg-bytes": (lambda d: _truncated_jpeg(), r"^<bytes>: corrupt or truncated"),
    "empty-bytes": (lambda d: b"", r"^<bytes>: empty input \(0 bytes\)"),
    "garbage-bytes": (lambda d: b"\x00\x01garbage", r"^<bytes>: not a readable image"),
    "bad-base64": (lambda d: "data:image/png;base64,@@not base64@@", r"^<data URI>: invalid base64"),
    "not-base64-uri": (lambda d: "data:image/svg+xml,<svg/>", r"^<data URI>: only base64"),
    "not-an-image-uri": (lambda d: "data:text/plain;base64,aGk=", r"^<data URI>: expected 'data:image/"),
    "empty-uri-payload": (lambda d: "data:image/png;base64,", r"^<data URI>: empty payload"),
    "garbage-uri-payload": (lambda d: "data:image/png;base64,aGVsbG8=", r"^<data URI>: not a readable image"),
    "remote-url": (lambda d: "https://example.com/a.png", r"example\.com/a\.png: remote URLs are not fetched"),
    "zero-size-pil": (lambda d: Image.new("RGB", (0, 0)), r"^<PIL image>: zero-size image \(0x0\)"),
    "zero-height-pil": (lambda d: Image.new("RGB", (7, 0)), r"^<PIL image>: zero-size image \(7x0\)"),
    "int": (lambda d: 42, r"^<int>: unsupported image source of type int; expected a path"),
    "none": (lambda d: None, r"^<NoneType>: unsupported image source"),
    "list": (lambda d: ["a.png"], r"^<list>: unsupported image source"),
    "numpy": (lambda d: np.zeros((4, 4, 3), np.uint8), r"^<ndarray>: unsupported image source"),
}


@pytest.mark.parametrize(("make", "pattern"), list(BAD_IMAGES.values()), ids=list(BAD_IMAGES))
def test_bad_images_raise_media_error(tmp_path, make, pattern):
    src = make(tmp_path)
    with pytest.raises(MediaError, match=pattern):
        load_image(src)
    with pytest.raises(MediaError, match=pattern):
        fetch_image(src)


def test_media_error_is_a_value_error_and_pickles():
    err = MediaError("a.png", "file not found")
    assert isinstance(err, ValueError)
    assert str(err) == "a.png: file not found"
    back = pickle.loads(pickle.dumps(err))
    assert (back.source, back.problem, str(back)) == ("a.png", "file not found", str(err))


def test_aspect_ratio_limit_names_the_source(tmp_path):
    path = _write(tmp_path, "strip.png", _png_bytes(_noise(402, 2)))
    with pytest.raises(MediaError, match=r"strip\.png: aspect ratio 402x2 exceeds the model's limit of 200:1"):
        fetch_image(path)
    with pytest.raises(MediaError, match=r"^<PIL image>: aspect ratio"):
        resize_image(_noise(2, 402))


@pytest.mark.parametrize(
    ("min_pixels", "max_pixels", "factor", "pattern"),
    [
        (4 * F, 2 * F, 28, r"min_pixels <= max_pixels"),
        (0, 4 * F, 28, r"1 <= min_pixels"),
        (4 * F, 16 * F, 0, r"factor must be a positive integer"),
    ],
)
def test_bad_budgets_raise_value_error(min_pixels, max_pixels, factor, pattern):
    with pytest.raises(ValueError, match=pattern):
        resize_image(_noise(8, 8), min_pixels, max_pixels, factor)


def test_resize_image_rejects_non_pil():
    with pytest.raises(MediaError, match=r"^<str>: resize_image expects a PIL image"):
        resize_image("a.png")


def test_resize_does_not_mutate_the_input():
    img = _noise(64, 64)
    before = np.asarray(img).copy()
    resize_image(img)
    assert img.size == (64, 64) and np.array_equal(np.asarray(img), before)


@pytest.mark.parametrize(("name", "side"), [("internvl", 448), ("gemma3", 896)])
def test_fixed_size_families_resize_to_their_square(name, side, tmp_path):
    from mmreason.models.family import get_family

    family = get_family(name)
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 20), (10, 20, 30)).save(path)  # any aspect ratio: the processor squashes it too
    resized = fetch_image(path, family=family)
    assert resized.image.size == resized.model_size == (side, side) and resized.original_size == (300, 20)
    assert model_size_for((5000, 4000), 100, 200, family=family) == (side, side)  # the pixel budget does not apply
    with pytest.raises(MediaError, match="zero-size"):
        model_size_for((0, 10), family=family)
    # a smart-resized family's factor comes from the family, not the default 28
    assert model_size_for((64, 64), 32 * 32 * 4, 32 * 32 * 16, family=get_family("qwen3_vl")) == (64, 64)
