"""Two small image prompts (one with one image, one with two of different sizes) shared by the rollout tests."""

from __future__ import annotations

from PIL import Image

from mmreason.data.sample import Sample


def image_prompts() -> list[Sample]:
    def msg(n: int) -> list[dict]:
        content = [{"type": "image"}] * n + [{"type": "text", "text": "How many shapes are in the image?"}]
        return [{"role": "user", "content": content}]

    a = Image.new("RGB", (56, 56), (200, 30, 30))
    b = Image.new("RGB", (84, 56), (30, 200, 30))
    return [Sample("a", "counting", msg(1), [a]), Sample("b", "counting", msg(2), [b, a])]
