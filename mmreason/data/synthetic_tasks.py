"""Synthetic makers of the classification, multiple_choice and math tasks (registered in
`mmreason.data.synthetic.MAKERS`): one picture per record, drawn with PIL, whose answer is visible in it.

What a small model can learn from each:
- classification: the class of the one large shape on white: its kind (square, circle, triangle; the default) or
  its colour (`label="color"`). Colour, size and position vary, so only the labelled property predicts the label.
- multiple_choice: a question about the one shape drawn (its colour, its kind, or the quarter of the image it sits
  in) with lettered options; the right letter follows from the picture and the options' texts (shuffled by default;
  `shuffle=False` lists every class in a fixed order, so a letter always names the same answer).
- math: the value of a short expression of single digits ("3 + 4", "7 - 2", "6 x 3") rendered with PIL's built-in
  font at a random place and ink on a light background; the problem text is the same for every record, so the
  answer can only come from reading the digits and the operator. With `slots=True` each part is drawn as large as
  its own place allows, always in the same place: the first operand fills the top-left quarter, the second the
  top-right, the operator the bottom half (a model whose visual tokens each see a quarter reads one glyph a token).
Each maker is a pure function of the Generator it is given: (rng, (width, height), options) -> (media, record).
"""

from __future__ import annotations

import operator
import string
from typing import Any

import numpy as np
from PIL import Image

from mmreason.data.drawing import COLORS, SHAPE_KINDS, blank, draw_shape, fitted_font

CLASSIFICATION_QUESTIONS = {
    "shape": "What shape is in the image?",
    "color": "What colour is the shape in the image?",
}
CHOICE_QUESTIONS = {
    "color": "What colour is the shape?",
    "shape": "What kind of shape is drawn?",
    "position": "In which quarter of the image is the shape?",
}
QUARTERS = ("top left", "top right", "bottom left", "bottom right")
MAX_SHUFFLED_OPTIONS = 4
MATH_QUESTION = "What is the value of the expression in the image?"
# the operators as drawn; "x" is times (the built-in font has no "×" glyph)
OPERATORS = {"+": operator.add, "-": operator.sub, "x": operator.mul}
INKS = ("black", "blue", "purple", "red", "green")  # dark enough to read on a light background

Media = dict[str, Image.Image]


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _shape_image(rng: np.random.Generator, size: tuple[int, int], kind: str, color: str,
                 quarter: int | None = None) -> Image.Image:
    """One shape of `kind` and `color` on white: large anywhere, or filling most of one quarter (0-3, QUARTERS)."""
    w, h = size
    x0, y0, aw, ah = (0, 0, w, h) if quarter is None else ((quarter % 2) * (w // 2), (quarter // 2) * (h // 2),
                                                           w // 2, h // 2)
    lo, hi = (0.35, 0.7) if quarter is None else (0.55, 0.9)
    side = int(rng.integers(max(3, int(lo * min(aw, ah))), max(4, int(hi * min(aw, ah)) + 1)))
    x = x0 + int(rng.integers(0, aw - side + 1))
    y = y0 + int(rng.integers(0, ah - side + 1))
    img, draw = blank(size)
    draw_shape(draw, kind, (x, y, x + side, y + side), COLORS[color])
    return img


def classification_item(rng: np.random.Generator, size: tuple[int, int], *, label: str = "shape"
                        ) -> tuple[Media, dict[str, Any]]:
    """One large shape of a random kind and colour; the solution is its kind (label="shape") or colour
    (label="color"), and the options list every class."""
    if label not in CLASSIFICATION_QUESTIONS:
        raise ValueError(f"classification: label must be one of {', '.join(CLASSIFICATION_QUESTIONS)}, got {label!r}")
    kind, color = _pick(rng, SHAPE_KINDS), _pick(rng, list(COLORS))
    classes = list(SHAPE_KINDS) if label == "shape" else list(COLORS)
    record = {"problem": CLASSIFICATION_QUESTIONS[label], "options": classes,
              "solution": kind if label == "shape" else color}
    return {"image": _shape_image(rng, size, kind, color)}, record


def multiple_choice_item(rng: np.random.Generator, size: tuple[int, int], *,
                         questions: tuple[str, ...] = ("color", "shape", "position"), shuffle: bool = True
                         ) -> tuple[Media, dict[str, Any]]:
    """One shape in one quarter of the image and a question (drawn from `questions`) about its colour, kind or
    quarter. Shuffled: the right option and up to 3 wrong ones in random order; else every class in a fixed order."""
    unknown = [q for q in questions if q not in CHOICE_QUESTIONS]
    if not questions or unknown or isinstance(questions, str):
        raise ValueError(f"multiple_choice: questions must be a non-empty list of {', '.join(CHOICE_QUESTIONS)}, "
                         f"got {questions!r}")
    question = _pick(rng, tuple(questions))
    kind, color, quarter = _pick(rng, SHAPE_KINDS), _pick(rng, list(COLORS)), int(rng.integers(len(QUARTERS)))
    image = _shape_image(rng, size, kind, color, quarter)
    classes = {"color": list(COLORS), "shape": list(SHAPE_KINDS), "position": list(QUARTERS)}[question]
    truth = {"color": color, "shape": kind, "position": QUARTERS[quarter]}[question]
    options = classes
    if shuffle:
        wrong = [c for c in classes if c != truth]
        picked = rng.permutation(len(wrong))[: MAX_SHUFFLED_OPTIONS - 1].tolist()
        options = [truth, *(wrong[i] for i in picked)]
        options = [options[i] for i in rng.permutation(len(options)).tolist()]
    letter = string.ascii_uppercase[options.index(truth)]
    return {"image": image}, {"problem": CHOICE_QUESTIONS[question], "options": options, "solution": letter}


def math_item(rng: np.random.Generator, size: tuple[int, int], *, ops: str = "+-x", max_operand: int = 9,
              reasoning: bool = False, slots: bool = False) -> tuple[Media, dict[str, Any]]:
    """An image of "a op b" (operands 0..max_operand, op from `ops`: + - x) and its value as the solution.

    A subtraction puts the larger operand first, so every answer is a whole number >= 0. The record also keeps the
    rendered text as "expression"; reasoning=True adds a one-line worked answer for SFT. slots=True draws a, b and
    the operator each in its fixed place (module doc), not the expression on one line at a random place.
    """
    if not ops or any(op not in OPERATORS for op in ops):
        raise ValueError(f"math: ops must be made of {', '.join(OPERATORS)}, got {ops!r}")
    if not 1 <= max_operand <= 99:
        raise ValueError(f"math: max_operand must be in 1..99, got {max_operand}")
    a, b = (int(v) for v in rng.integers(0, max_operand + 1, size=2))
    op = ops[int(rng.integers(len(ops)))]
    if op == "-" and a < b:
        a, b = b, a
    expression = f"{a} {op} {b}"
    value = OPERATORS[op](a, b)
    record: dict[str, Any] = {"problem": MATH_QUESTION, "solution": value, "expression": expression}
    if reasoning:
        record["reasoning"] = f"The image shows {expression}, which equals {value}."
    image = render_slots(rng, size, (str(a), str(b), op)) if slots else render_text(rng, size, expression)
    return {"image": image}, record


def render_slots(rng: np.random.Generator, size: tuple[int, int], parts: tuple[str, str, str]) -> Image.Image:
    """The first part in the top-left quarter, the second in the top-right, the third in the bottom half, each in
    the largest built-in font that fits its place, centred there, in one dark ink on a light background."""
    background = tuple(int(v) for v in rng.integers(225, 256, size=3))
    img, draw = blank(size, background)
    ink = COLORS[_pick(rng, INKS)]
    w, h = size
    places = ((0, 0, w // 2, h // 2), (w // 2, 0, w - w // 2, h // 2), (0, h // 2, w, h - h // 2))
    for text, (left, top, pw, ph) in zip(parts, places, strict=True):
        fnt = fitted_font(text, (pw, ph), fill=0.9, largest=ph)
        x1, y1, x2, y2 = (int(v) for v in draw.textbbox((0, 0), text, font=fnt))
        draw.text((left + (pw - (x2 - x1)) // 2 - x1, top + (ph - (y2 - y1)) // 2 - y1), text, fill=ink, font=fnt)
    return img


def render_text(rng: np.random.Generator, size: tuple[int, int], text: str) -> Image.Image:
    """`text` in the largest built-in font that fits, in a dark ink at a random place on a light background."""
    background = tuple(int(v) for v in rng.integers(225, 256, size=3))
    img, draw = blank(size, background)
    fnt = fitted_font(text, size)
    x1, y1, x2, y2 = (int(v) for v in draw.textbbox((0, 0), text, font=fnt))
    w, h = size
    x = int(rng.integers(0, max(1, w - (x2 - x1) + 1))) - x1
    y = int(rng.integers(0, max(1, h - (y2 - y1) + 1))) - y1
    draw.text((x, y), text, fill=COLORS[_pick(rng, INKS)], font=fnt)
    return img
