"""The tiny offline model of every supported family, saved once per test session, and two image prompts in each
family's own image sizes: what the per-family tests (test_families.py, test_turn_state.py) run on."""

from __future__ import annotations

import functools
from pathlib import Path

from mmreason.processors import resize_image
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmreason.data.sample import Sample
from mmreason.models.family import family_names, get_family
from mmreason.models.tiny import build_tiny

FAMILIES = list(family_names())


@functools.cache
def saved(arch: str, root: str) -> Path:
    out = Path(root) / arch
    build_tiny(out, arch=arch)
    return out


def load(arch: str, root: str):
    """(model in eval mode, processor) of the family's tiny model saved under `root`."""
    folder = saved(arch, root)
    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def image(arch: str, size: tuple[int, int], color: tuple[int, int, int]) -> Image.Image:
    """An image resized as the family's processors expect (sides multiples of its image factor, or its square)."""
    family = get_family(arch)
    factor = family.image_factor
    return resize_image(Image.new("RGB", size, color), factor * factor, factor * factor * 16, family=family).image


def samples(arch: str) -> list[Sample]:
    def msg(n: int, text: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]}]

    a, b = image(arch, (64, 64), (200, 30, 30)), image(arch, (96, 64), (30, 200, 30))
    return [
        Sample("a", "counting", msg(1, "How many shapes are in the image? Count them."), [a], target="3"),
        Sample("b", "counting", msg(2, "How many?"), [b, a], target="4"),  # two images, most left padding
    ]
