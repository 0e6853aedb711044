"""PIL drawing primitives shared by the synthetic data makers: the palette, filled shapes whose box is exactly their
drawn extent, non-overlapping boxes, gradients and the text font.

Everything here is drawn from a numpy Generator the caller passes in, so a maker stays a pure function of its seed.
Only numpy and PIL are imported: the CLI reads the makers' names without loading the processors.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Saturated colours that stand out on white and from each other (names appear in problems and labels).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 150, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 190, 0),
    "purple": (140, 30, 170),
    "black": (20, 20, 20),
}
SHAPES = ("square", "circle")
SHAPE_KINDS = ("square", "circle", "triangle")  # everything draw_shape draws
BACKGROUND = (255, 255, 255)
Box = tuple[int, int, int, int]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, color: tuple[int, int, int]) -> None:
    """Fill `box` = (x1, y1, x2, y2) with the right/bottom edges exclusive, so the box is exactly the drawn extent.

    A triangle points up: its base is the box's bottom edge and its apex the middle of the top edge.
    """
    x1, y1, x2, y2 = box
    if shape == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=color)
    elif shape == "triangle":
        draw.polygon([(x1, y2 - 1), ((x1 + x2 - 1) / 2, y1), (x2 - 1, y2 - 1)], fill=color)
    else:
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=color)


def cell_boxes(rng: np.random.Generator, size: tuple[int, int], cells: int, count: int) -> list[Box]:
    """`count` square boxes in distinct cells of a cells x cells grid: never overlapping, 50-80% of a cell wide."""
    w, h = size
    cw, ch = w // cells, h // cells
    chosen = rng.choice(cells * cells, size=count, replace=False)
    boxes = []
    for c in sorted(chosen.tolist()):
        side = int(rng.integers(max(3, int(0.5 * min(cw, ch))), max(4, int(0.8 * min(cw, ch)) + 1)))
        x0, y0 = (c % cells) * cw, (c // cells) * ch
        x = x0 + int(rng.integers(0, cw - side + 1))
        y = y0 + int(rng.integers(0, ch - side + 1))
        boxes.append((x, y, x + side, y + side))
    return boxes


def free_box(rng: np.random.Generator, size: tuple[int, int], taken: list[Box], lo: float, hi: float) -> Box | None:
    """A random square box of side lo..hi x min(size) not touching any box in `taken` (None after 100 tries)."""
    w, h = size
    for _ in range(100):
        side = int(rng.integers(max(2, int(lo * min(w, h))), max(3, int(hi * min(w, h)) + 1)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        box = (x, y, x + side, y + side)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            return box
    return None


def gradient(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """An HxWx3 float image blending four random corner colours (every region of it looks different)."""
    w, h = size
    corners = rng.integers(0, 256, size=(4, 3)).astype(float)
    fx = np.linspace(0.0, 1.0, w)[None, :, None]
    fy = np.linspace(0.0, 1.0, h)[:, None, None]
    top = corners[0] * (1 - fx) + corners[1] * fx
    bottom = corners[2] * (1 - fx) + corners[3] * fx
    return top * (1 - fy) + bottom * fy


def layout_gradient(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """An HxWx3 float image whose red grows from left to right and green from top to bottom (blue: one random level),
    so the colour of any region says where in the image it lies."""
    w, h = size
    red = np.broadcast_to(np.linspace(30.0, 225.0, w)[None, :], (h, w))
    green = np.broadcast_to(np.linspace(30.0, 225.0, h)[:, None], (h, w))
    blue = np.full((h, w), float(rng.integers(0, 256)))
    return np.stack([red, green, blue], axis=-1)


@lru_cache(maxsize=32)
def text_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's built-in font at `size` pixels (no font files needed); its fixed-size bitmap font where PIL has no
    FreeType support."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def fitted_font(text: str, size: tuple[int, int], fill: float = 0.8,
                largest: int | None = None) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest built-in font (up to `largest` pixels, by default half the image height) whose rendering of `text`
    fits in `fill` of the image's width and height."""
    w, h = size
    for px in range(max(6, largest or h // 2), 5, -1):
        fnt = text_font(px)
        x1, y1, x2, y2 = fnt.getbbox(text)
        if x2 - x1 <= fill * w and y2 - y1 <= fill * h:
            return fnt
    return text_font(6)


def blank(size: tuple[int, int], color: tuple[int, int, int] = BACKGROUND) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A new RGB image of one colour and a drawing context on it."""
    img = Image.new("RGB", size, color)
    return img, ImageDraw.Draw(img)
