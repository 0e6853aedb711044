"""Image loading and resizing to the model's pixel budget.

`load_image` turns a path, raw bytes, a base64 data URI or a PIL image into an upright RGB PIL image (EXIF
orientation applied, transparency flattened onto white as qwen-vl-utils does), or raises `MediaError` naming the
source. `resize_image` resizes it as a model family's processor takes it -- with qwen-vl-utils' `smart_resize` (both
sides multiples of the family's image factor, 28 by default, pixel count in [min_pixels, max_pixels]), or to the
family's fixed square (`ModelFamily.fixed_image_size`: InternVL, Gemma 3) -- and records the original and model
sizes, which rewards need to map box coordinates.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps
from qwen_vl_utils.vision_process import MAX_RATIO, smart_resize, to_rgb

from .errors import MediaError, check_media_file

if TYPE_CHECKING:
    from mmreason.models.family import ModelFamily

ImageSource = str | Path | bytes | Image.Image

# Qwen2-VL / Qwen2.5-VL: 14-pixel patches merged 2 x 2, so both sides of a model image are multiples of 28.
FACTOR = 28
DEFAULT_MIN_PIXELS = FACTOR * FACTOR * 4
DEFAULT_MAX_PIXELS = FACTOR * FACTOR * 256

PIL_SOURCE = "<PIL image>"
BYTES_SOURCE = "<bytes>"
DATA_URI_SOURCE = "<data URI>"


@dataclass
class ResizedImage:
    """An image as the model sees it. Sizes are (width, height) in pixels."""

    image: Image.Image
    original_size: tuple[int, int]
    model_size: tuple[int, int]


def _decode(data: io.BytesIO | Path, source: str) -> Image.Image:
    """Open and fully decode an encoded image; any decoder failure becomes a MediaError."""
    try:
        with Image.open(data) as img:
            # Image.open only reads the header: load() decodes the pixels, which is where truncation shows.
            img.load()
            return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as e:
        raise MediaError(source, f"image too large to decode safely ({e})") from e
    except Image.UnidentifiedImageError as e:
        raise MediaError(source, "not a readable image (unknown or corrupt format)") from e
    except Exception as e:  # decoders raise OSError, SyntaxError, struct.error... on bad data
        raise MediaError(source, f"corrupt or truncated image data ({type(e).__name__}: {e})") from e


def _decode_data_uri(uri: str) -> Image.Image:
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:image/"):
        raise MediaError(DATA_URI_SOURCE, "expected 'data:image/<format>;base64,<payload>'")
    if not header.endswith(";base64"):
        raise MediaError(DATA_URI_SOURCE, "only base64-encoded data URIs are supported")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError(DATA_URI_SOURCE, f"invalid base64 payload ({e})") from e
    if not data:
        raise MediaError(DATA_URI_SOURCE, "empty payload")
    return _decode(io.BytesIO(data), DATA_URI_SOURCE)


def _decode_path(path: Path) -> Image.Image:
    return _decode(path, check_media_file(path, "image"))


def _open_any(src: ImageSource) -> tuple[Image.Image, str]:
    """Decode any supported source; returns the image and the source name used in error messages."""
    if isinstance(src, Image.Image):
        return ImageOps.exif_transpose(src), PIL_SOURCE
    if isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise MediaError(BYTES_SOURCE, "empty input (0 bytes)")
        return _decode(io.BytesIO(bytes(src)), BYTES_SOURCE), BYTES_SOURCE
    if isinstance(src, str) and src.startswith("data:"):
        return _decode_data_uri(src), DATA_URI_SOURCE
    if isinstance(src, str) and src.startswith(("http://", "https://")):
        # Training must be reproducible offline: remote media are fetched once, by the user, not per step.
        raise MediaError(src, "remote URLs are not fetched; download the image and pass its local path")
    if isinstance(src, str) and src.startswith("file://"):
        src = src[len("file://") :]
    if isinstance(src, (str, Path)):
        path = Path(src)
        return _decode_path(path), str(path)
    raise MediaError(
        f"<{type(src).__name__}>",
        f"unsupported image source of type {type(src).__name__}; expected a path (str or Path), bytes, "
        "a base64 data URI or a PIL image",
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white, as qwen-vl-utils' `to_rgb` does for RGBA."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha and img.mode != "RGBA":
        img = img.convert("RGBA")
    return to_rgb(img)


def _load(src: ImageSource) -> tuple[Image.Image, str]:
    img, source = _open_any(src)
    if img.width == 0 or img.height == 0:
        raise MediaError(source, f"zero-size image ({img.width}x{img.height})")
    return _to_rgb(img), source


def load_image(src: ImageSource) -> Image.Image:
    """Load `src` (path, raw bytes, "data:image/...;base64,..." URI or PIL image) as an upright RGB image.

    Raises MediaError for a missing or empty file, undecodable/corrupt/truncated data, a zero-size image, or a
    source of an unsupported type.
    """
    return _load(src)[0]


def _check_budget(min_pixels: int, max_pixels: int, factor: int) -> None:
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    if min_pixels < 1 or max_pixels < min_pixels:
        raise ValueError(f"need 1 <= min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")


def model_size_for(
    size: tuple[int, int],
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    factor: int = FACTOR,
    source: str = PIL_SOURCE,
    *,
    family: ModelFamily | None = None,
) -> tuple[int, int]:
    """The (width, height) qwen-vl-utils' `smart_resize` gives an image of `size` = (width, height): both sides
    multiples of `factor`, pixel count in [min_pixels, max_pixels], aspect ratio kept as closely as possible.

    With `family`, the size its processor takes: its fixed square (the pixel budget does not apply), or smart_resize
    to multiples of its image factor (`factor` is then ignored)."""
    if family is not None:
        factor = family.image_factor
    _check_budget(min_pixels, max_pixels, factor)
    width, height = size
    if width < 1 or height < 1:
        raise MediaError(source, f"zero-size image ({width}x{height})")
    if family is not None and family.fixed_image_size:
        # the family's processor squashes every image to this square; the aspect limit is smart_resize's
        return family.fixed_image_size, family.fixed_image_size
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise MediaError(source, f"aspect ratio {width}x{height} exceeds the model's limit of {MAX_RATIO}:1")
    new_height, new_width = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    # smart_resize floors a side to 0 when max_pixels is too small for the aspect ratio (e.g. 60x40 into one
    # 28x28 token); like transformers' copy of it, hold that side at one factor, which may exceed max_pixels.
    return max(factor, new_width), max(factor, new_height)


def resize_image(
    img: Image.Image,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    factor: int = FACTOR,
    *,
    source: str = PIL_SOURCE,
    family: ModelFamily | None = None,
) -> ResizedImage:
    """Resize to the model's budget with qwen-vl-utils' smart_resize (bicubic, as qwen-vl-utils resizes), or, with
    `family`, to the size that family's processor takes (`model_size_for`).

    `source` only names the image in error messages (e.g. an aspect ratio over 200:1).
    """
    if not isinstance(img, Image.Image):
        raise MediaError(f"<{type(img).__name__}>", "resize_image expects a PIL image; load it with load_image")
    model_size = model_size_for(img.size, min_pixels, max_pixels, factor, source, family=family)
    img = img if img.mode == "RGB" else _to_rgb(img)
    resized = img if img.size == model_size else img.resize(model_size, Image.Resampling.BICUBIC)
    return ResizedImage(image=resized, original_size=img.size, model_size=model_size)


def fetch_image(
    src: ImageSource,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    factor: int = FACTOR,
    *,
    family: ModelFamily | None = None,
) -> ResizedImage:
    """load_image + resize_image: `src` as the model (of `family`, when given) will see it, with its original and
    model sizes."""
    img, source = _load(src)
    return resize_image(img, min_pixels, max_pixels, factor, source=source, family=family)
