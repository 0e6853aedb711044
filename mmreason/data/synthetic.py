"""Dataset writers: synthetic datasets for every built-in task (no downloads), and jigsaw datasets cut from any
folder of images.

This module owns the registry of synthetic makers (`MAKERS`, one per built-in task), the makers of the image tasks
counting, grounding, jigsaw and geolocation, and writing datasets (media, records, the train / val split). The
classification, multiple_choice and math makers live in `mmreason.data.synthetic_tasks`, the temporal_grounding
clips in `mmreason.data.synthetic_video`, the shared drawing primitives in `mmreason.data.drawing`; the puzzle maths
(grid crop, tiles, shuffle order) is `mmreason.processors.jigsaw`'s.
`make_synthetic(task, out_dir, n, seed)` writes `images/` (or `videos/`) plus `train.jsonl` and `val.jsonl` in the
record schema of the task. Record i depends only on (seed, i), so a bigger n extends a dataset instead of
reshuffling it; the last `val_fraction` of the records form the validation split.

What a small model can learn from each maker's data (the answer is always visible in the media):
- counting: how many (1-4) large saturated shapes sit on white, never overlapping. The quickstart task.
- grounding: the box of the shape named by colour and kind ("the red circle"), optionally among distractors; with
  cells=n each shape sits in its own cell of an n x n grid (the cell is found first, the box in it refined).
- jigsaw: the original positions of the shuffled tiles of a gradient with shapes on it (edges line up); with
  layout_cue the gradient always runs the same way, so each tile's colour alone gives its place.
- geolocation: a city from its sky / ground colours and ground pattern (towers, stripes, dots, waves).
- classification: the kind (square, circle, triangle) or the colour of the one shape drawn.
- multiple_choice: the letter of the option naming the shape's colour, kind or quarter of the image.
- math: the value of a rendered single-digit expression such as "3 + 4".
- temporal_grounding: when, in a 4-8 s clip, a coloured square is on screen.
The processors (torch) and the record reader are imported only when a dataset is written, so that reading
`MAKERS` stays cheap for the command line.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmreason.data.drawing import (
    BACKGROUND,
    COLORS,
    SHAPES,
    cell_boxes,
    draw_shape,
    free_box,
    gradient,
    layout_gradient,
)
from mmreason.data.synthetic_tasks import classification_item, math_item, multiple_choice_item
from mmreason.data.synthetic_video import Clip, temporal_grounding_item, write_clip

logger = logging.getLogger(__name__)

COUNTING_QUESTION = "How many shapes are in the image?"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class City:
    """A geolocation class; names are those the offline reverse geocoder gives for (lat, lon)."""

    city: str
    region: str
    country: str
    lat: float
    lon: float
    sky: tuple[int, int, int]
    ground: tuple[int, int, int]
    pattern: str  # what is drawn on the ground: "towers", "stripes", "dots" or "waves"


CITIES: tuple[City, ...] = (
    City("Paris", "Île-de-France", "France", 48.85341, 2.3488, (150, 180, 230), (190, 170, 130), "towers"),
    City("Tokyo", "Tokyo", "Japan", 35.6895, 139.69171, (235, 200, 215), (90, 90, 100), "towers"),
    City("New York City", "New York", "United States", 40.71427, -74.00597, (120, 140, 170), (60, 60, 60), "stripes"),
    City("Sydney", "New South Wales", "Australia", -33.86785, 151.20732, (60, 160, 240), (230, 210, 150), "waves"),
    City("Cairo", "Cairo", "Egypt", 30.06263, 31.24967, (240, 220, 160), (210, 170, 90), "dots"),
    City("Rio de Janeiro", "Rio de Janeiro", "Brazil", -22.90642, -43.18223, (40, 190, 220), (40, 140, 60), "waves"),
    City("Moscow", "Moscow", "Russian Federation", 55.75222, 37.61556, (200, 205, 215), (240, 240, 245), "stripes"),
    City("Nairobi", "Nairobi County", "Kenya", -1.28333, 36.81667, (250, 170, 80), (150, 90, 50), "dots"),
)


@dataclass
class JigsawBuild:
    """What make_jigsaw_dataset wrote: the folder, record counts, and the images it skipped (path: reason)."""

    out_dir: Path
    n_train: int
    n_val: int
    skipped: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- makers
# Each maker turns (rng, image_size, options) into ({media field: image or clip}, record fields); the media are
# saved by make_synthetic, which puts their paths into the record.


def counting_item(rng: np.random.Generator, size: tuple[int, int], *, min_count: int = 1, max_count: int = 4,
                  reasoning: bool = False) -> tuple[dict[str, Image.Image], dict[str, Any]]:
    if not 1 <= min_count <= max_count:
        raise ValueError(f"counting: need 1 <= min_count <= max_count, got {min_count}, {max_count}")
    cells = math.ceil(math.sqrt(max_count))
    count = int(rng.integers(min_count, max_count + 1))
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    names = list(COLORS)
    for box in cell_boxes(rng, size, cells, count):
        draw_shape(draw, SHAPES[int(rng.integers(len(SHAPES)))], box, COLORS[names[int(rng.integers(len(names)))]])
    record: dict[str, Any] = {"problem": COUNTING_QUESTION, "solution": count}
    if reasoning:
        record["reasoning"] = f"I count the shapes one by one: there are {count}."
    return {"image": img}, record


def grounding_item(rng: np.random.Generator, size: tuple[int, int], *, absent_rate: float = 0.0,
                   distractors: int = 0, cells: int = 0) -> tuple[dict[str, Image.Image], dict[str, Any]]:
    """One target (colour, shape), optionally with distractors of other kinds; absent -> the target is not drawn.

    cells=0 puts the shapes anywhere (20-50% of the image wide, 20-35% with distractors). cells=n puts each in its own
    cell of an n x n grid, 50-80% of the cell wide at a random place in it: where a model's visual tokens form a
    coarse grid (2 x 2 for the tiny model's 56x56 images), the cell is what it can see, and the box in it what it
    then refines."""
    if not 0.0 <= absent_rate <= 1.0:
        raise ValueError(f"grounding: absent_rate must be in [0, 1], got {absent_rate}")
    if cells < 0 or (cells and cells * cells < distractors + 1):
        raise ValueError(f"grounding: cells must be 0 (anywhere) or n with n*n >= distractors + 1, got {cells}")
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    picks = rng.permutation(len(kinds))[: 2 + distractors].tolist()
    target, others = kinds[picks[0]], [kinds[i] for i in picks[1:]]
    absent = bool(rng.random() < absent_rate)
    drawn = others[: distractors + 1] if absent else [target, *others[:distractors]]
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    taken: list[tuple] = []
    solution: list[list[int]] = []
    in_cells = iter(rng.permutation(cell_boxes(rng, size, cells, len(drawn))).tolist()) if cells else None
    for kind in drawn:
        box = tuple(next(in_cells)) if in_cells else free_box(rng, size, taken, 0.2, 0.5 if not distractors else 0.35)
        if box is None:  # no room left: fewer distractors rather than overlapping objects
            continue
        taken.append(box)
        draw_shape(draw, kind[1], box, COLORS[kind[0]])
        if kind == target:
            solution.append(list(box))
    return {"image": img}, {"problem": f"the {target[0]} {target[1]}", "solution": solution}


def jigsaw_item(rng: np.random.Generator, size: tuple[int, int], *, grid: tuple[int, int] = (2, 2),
                layout_cue: bool = False) -> tuple[dict[str, Image.Image], dict[str, Any]]:
    """A gradient with a few shapes on it (so every tile is distinct), cut into grid tiles and shuffled.

    The gradient blends four random corner colours, so a tile's place shows only in how its edges meet the others'
    (the puzzle of real photos). With layout_cue it runs the same way in every image (`layout_gradient`): each tile's
    own colour then says where it belongs, a per-tile reading that a small model learns far sooner."""
    from mmreason.processors.jigsaw import grid_size

    rows, cols = _grid(grid)
    size = grid_size(*size, rows, cols)  # what make_jigsaw would crop to
    pixels = layout_gradient(rng, size) if layout_cue else gradient(rng, size)
    img = Image.fromarray(pixels.round().astype(np.uint8))
    draw = ImageDraw.Draw(img)
    taken: list[tuple] = []
    names = list(COLORS)
    for _ in range(3):
        box = free_box(rng, size, taken, 0.15, 0.35)
        if box is not None:
            taken.append(box)
            draw_shape(draw, SHAPES[int(rng.integers(2))], box, COLORS[names[int(rng.integers(len(names)))]])
    shuffled, solution = _puzzle(img, rows, cols, int(rng.integers(2**31)))
    return {"image": shuffled, "original": img}, {"grid": [rows, cols], "solution": solution}


def geolocation_item(rng: np.random.Generator, size: tuple[int, int], *, noise: float = 8.0
                     ) -> tuple[dict[str, Image.Image], dict[str, Any]]:
    """A "photo" whose sky/ground colours and ground pattern encode one of CITIES, with jitter and noise."""
    city = CITIES[int(rng.integers(len(CITIES)))]
    w, h = size
    horizon = int(h * rng.uniform(0.35, 0.55))
    arr = np.empty((h, w, 3), dtype=float)
    arr[:horizon] = np.array(city.sky) + rng.normal(0, 6, 3)
    arr[horizon:] = np.array(city.ground) + rng.normal(0, 6, 3)
    img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    _draw_pattern(ImageDraw.Draw(img), rng, city.pattern, size, horizon, city.sky)
    pixels = np.asarray(img, dtype=float) + rng.normal(0, noise, (h, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    solution = {"lat": city.lat, "lon": city.lon, "country": city.country, "region": city.region, "city": city.city}
    return {"image": img}, {"solution": solution}


def _draw_pattern(draw: ImageDraw.ImageDraw, rng: np.random.Generator, pattern: str, size, horizon: int, sky) -> None:
    w, h = size
    ink = tuple(255 - c for c in sky)  # the sky's complement: visible on either band
    if pattern == "towers":
        for x in range(0, w, max(4, w // 6)):
            top = int(horizon * rng.uniform(0.2, 0.8))
            draw.rectangle((x + 1, top, x + max(2, w // 12), horizon), fill=ink)
    elif pattern == "stripes":
        for y in range(horizon + 2, h, 5):
            draw.line((0, y, w, y), fill=ink, width=2)
    elif pattern == "dots":
        for _ in range(6):
            x, y = int(rng.integers(0, w)), int(rng.integers(horizon, h))
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=ink)
    else:  # waves
        ys = horizon + 3 + (np.sin(np.linspace(0, 4 * math.pi, w) + rng.uniform(0, math.pi)) * 2).round()
        draw.line(list(zip(range(w), ys.tolist(), strict=True)), fill=ink, width=2)


MAKERS: dict[str, Callable[..., tuple[dict[str, Image.Image | Clip], dict[str, Any]]]] = {
    "counting": counting_item,
    "grounding": grounding_item,
    "jigsaw": jigsaw_item,
    "geolocation": geolocation_item,
    "classification": classification_item,
    "multiple_choice": multiple_choice_item,
    "math": math_item,
    "temporal_grounding": temporal_grounding_item,
}


# ------------------------------------------------------------------------------------------------- writers


def make_synthetic(task: str, out_dir: str | Path, n: int, seed: int = 0, image_size: tuple[int, int] = (56, 56),
                   *, val_fraction: float = 0.1, **options: Any) -> Path:
    """Draw n records of `task` into out_dir (images/ or videos/, train.jsonl, val.jsonl) and return out_dir.

    image_size is the (width, height) of the images, and of the frames of a video task. options go to the task's
    maker: counting(min_count=1, max_count=4, reasoning=False), grounding(absent_rate=0.0, distractors=0, cells=0),
    jigsaw(grid=(2, 2), layout_cue=False), geolocation(noise=8.0), classification(label="shape"),
    multiple_choice(questions=("color", "shape", "position"), shuffle=True),
    math(ops="+-x", max_operand=9, reasoning=False, slots=False),
    temporal_grounding(fps=4, min_seconds=4, max_seconds=8, distractors=0).
    """
    if task not in MAKERS:
        raise ValueError(f"no synthetic maker for task {task!r}; known: {', '.join(MAKERS)}")
    maker = MAKERS[task]
    params = {k: p for k, p in inspect.signature(maker).parameters.items() if k not in ("rng", "size")}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for synthetic {task!r}; known: {', '.join(params)}")
    for key, value in options.items():
        if not _same_kind(value, params[key].default):
            raise ValueError(f"option {key} of synthetic {task!r} must be like its default {params[key].default!r}, "
                             f"got {value!r}")
    if n < 1 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"need n >= 1 and 0 <= val_fraction < 1, got n={n}, val_fraction={val_fraction}")
    width, height = (int(v) for v in image_size)
    if width < 8 or height < 8:
        raise ValueError(f"image_size must be at least 8x8, got {image_size}")
    from mmreason.data.records import write_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        media, record = maker(np.random.default_rng([seed, i]), (width, height), **options)
        rid = f"{task}-{i:05d}"
        for key, item in media.items():
            record[key] = _save_media(item, out, rid, key)
        records.append({"id": rid, **record})
    n_val = _val_count(n, val_fraction)
    write_jsonl(records[: n - n_val], out / "train.jsonl")
    write_jsonl(records[n - n_val:], out / "val.jsonl")
    return out


def _same_kind(value: Any, default: Any) -> bool:
    """Whether an option's value has the type of its default (an int will do for a float, a list for a tuple)."""
    if isinstance(default, bool) or isinstance(value, bool):  # bool is an int to Python, never to an option
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, str) if isinstance(default, str) else True


def _save_media(item: Image.Image | Clip, out: Path, rid: str, key: str) -> str:
    """Save one maker's image (PNG under images/) or clip (MP4 under videos/); return its path relative to out."""
    folder, suffix = ("videos", ".mp4") if isinstance(item, Clip) else ("images", ".png")
    rel = f"{folder}/{rid}{suffix}" if key in ("image", "video") else f"{folder}/{rid}-{key}{suffix}"
    (out / folder).mkdir(exist_ok=True)
    if isinstance(item, Clip):
        write_clip(item, out / rel)
    else:
        item.save(out / rel)
    return rel


def make_jigsaw_dataset(images_dir: str | Path, out_dir: str | Path, grid: tuple[int, int] = (2, 2),
                        per_image: int = 1, seed: int = 0, *, val_fraction: float = 0.1,
                        max_side: int | None = 448) -> JigsawBuild:
    """Cut every image under images_dir into jigsaw puzzles: out_dir/images/, train.jsonl, val.jsonl.

    Images are EXIF-rotated, RGB, shrunk to max_side (None keeps them as they are) and saved as PNG with their
    unshuffled original. Unreadable images, and images whose tiles are identical (the puzzle would have many
    right answers), are skipped with a warning and listed in the result. The split is by source image, so no
    image has puzzles in both splits.
    """
    from mmreason.data.records import write_jsonl
    from mmreason.processors import MediaError, load_image

    rows, cols = _grid(grid)
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    src_dir, out = Path(images_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"images folder {str(src_dir)!r} does not exist")
    paths = sorted(p for p in src_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    (out / "images").mkdir(parents=True, exist_ok=True)
    build = JigsawBuild(out, 0, 0)
    per_source: list[list[dict[str, Any]]] = []
    for j, path in enumerate(paths):
        try:
            img = _prepared(load_image(path), rows, cols, max_side)
        except (MediaError, ValueError, OSError) as exc:
            build.skipped.append(f"{path}: {exc}")
            logger.warning("jigsaw: skipping %s: %s", path, exc)
            continue
        per_source.append(_puzzles(img, path.relative_to(src_dir).as_posix(), out, j, rows, cols, per_image, seed))
    order = np.random.default_rng(seed).permutation(len(per_source)).tolist()
    n_val = _val_count(len(per_source), val_fraction)
    train = [r for k in order[: len(order) - n_val] for r in per_source[k]]
    val = [r for k in order[len(order) - n_val:] for r in per_source[k]]
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(val, out / "val.jsonl")
    build.n_train, build.n_val = len(train), len(val)
    if build.skipped:
        logger.warning("jigsaw: skipped %d of %d image(s)", len(build.skipped), len(paths))
    return build


def _prepared(img: Image.Image, rows: int, cols: int, max_side: int | None) -> Image.Image:
    """Shrink to max_side, crop to whole tiles, and refuse images too small or with identical tiles."""
    from mmreason.processors.jigsaw import crop_to_grid, has_identical_tiles

    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    img = crop_to_grid(img, rows, cols)
    if has_identical_tiles(img, rows, cols):
        raise ValueError("some tiles are identical, so the puzzle would have several right answers")
    return img


def _puzzles(img: Image.Image, source: str, out: Path, j: int, rows: int, cols: int, per_image: int,
             seed: int) -> list[dict[str, Any]]:
    original = f"images/{j:05d}-original.png"
    img.save(out / original)
    records = []
    for k in range(per_image):
        shuffled, solution = _puzzle(img, rows, cols, int(np.random.default_rng([seed, j, k]).integers(2**31)))
        rel = f"images/{j:05d}-{k}.png"
        shuffled.save(out / rel)
        records.append({"id": f"jigsaw-{j:05d}-{k}", "image": rel, "grid": [rows, cols],
                        "solution": solution, "original": original, "source_image": source})
    return records


def _puzzle(img: Image.Image, rows: int, cols: int, seed: int) -> tuple[Image.Image, list[int]]:
    """The shuffled image and the record's 1-based solution (`make_jigsaw`'s order + 1)."""
    from mmreason.processors.jigsaw import make_jigsaw

    shuffled, order = make_jigsaw(img, rows, cols, seed)
    return shuffled, [o + 1 for o in order]


def _grid(grid: Any) -> tuple[int, int]:
    """The grid as (rows, cols) when the jigsaw task takes it (its own limit), else ValueError before any work."""
    from mmreason.tasks.jigsaw import GRID_EXPECTED, valid_grid  # deferred: the task imports the processors

    if not valid_grid(grid):
        raise ValueError(f"grid must be {GRID_EXPECTED} (what the jigsaw task takes), got {grid!r}")
    return int(grid[0]), int(grid[1])


def _val_count(n: int, val_fraction: float) -> int:
    """Records held out for validation: at least one when asked for and n >= 2, never all."""
    if val_fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * val_fraction)))
