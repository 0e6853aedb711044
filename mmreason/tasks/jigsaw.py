"""The `jigsaw` task (as in Jigsaw-R1): an image cut into rows x cols tiles and shuffled; the answer is the order.

Numbering: the tiles of the SHUFFLED image are numbered 1..N in reading order (left to right, top to bottom); the
answer lists, for each of them in that order, its position 1..N (same reading order) in the original image. This is
`make_jigsaw`'s `order` plus one, and `assemble_jigsaw(shuffled, rows, cols, [p - 1 for p in answer])` restores the
original picture.

Record: {"image": str (the shuffled image), "grid": [rows, cols], "solution": [1-based order] (a permutation of
1..rows*cols: `mmreason.rewards.jigsaw.check_order`), "original": str?, "id"?, "reasoning"?}.
`mmreason data make jigsaw` (`mmreason.data.synthetic.make_jigsaw_dataset`) writes such records from any image folder.
Rewards (weights): format 0.5, jigsaw_exact 1.0, jigsaw_fraction 0.5 -- exact match is Jigsaw-R1's accuracy reward;
the fraction of tiles in place gives partial credit on large grids where exact solutions are rare at first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mmreason.data.sample import Sample, SampleContext
from mmreason.processors import MediaError, assemble_jigsaw, crop_to_grid, load_image
from mmreason.registry import register_task
from mmreason.rewards import extract_answer
from mmreason.rewards.jigsaw import check_order, format_order, is_permutation, predicted_order
from mmreason.tasks import viz
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    RecordError,
    checked,
    clip_text,
    field_error,
    fmt_num,
    mean,
    media_sources,
    reasoning_of,
    record_id,
    require,
    score,
    single_image,
    user_messages,
)

# the most tiles a puzzle may have: the one limit of records and of `mmreason data make jigsaw` (the answer lists
# every tile, and the format reward's pattern grows with them)
MAX_TILES = 64
GRID_EXPECTED = f"[rows, cols] of positive integers with 2..{MAX_TILES} tiles"


def valid_grid(value: Any) -> bool:
    """Whether `value` is a grid this task takes (`GRID_EXPECTED`)."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            and 2 <= value[0] * value[1] <= MAX_TILES)


def parse_grid(value: Any, rid: str) -> tuple[int, int]:
    if not valid_grid(value):
        raise field_error(rid, "grid", GRID_EXPECTED, value)
    return int(value[0]), int(value[1])


def jigsaw_prompt(rows: int, cols: int) -> str:
    n = rows * cols
    pattern = "[" + ", ".join(f"p{i}" for i in range(1, n + 1)) + "]"
    return (
        f"This image was cut into a grid of {rows} row(s) x {cols} column(s) = {n} tiles of equal size, and the "
        f"tiles were shuffled. Number the tiles of the shown image 1 to {n} in reading order (left to right, then "
        f"top to bottom). For each tile in that order, give the position it had in the original image, numbered "
        f"the same way (1 to {n}). Answer with the list {pattern}, where p1 is the original position of tile 1."
    )


@register_task("jigsaw")
class JigsawTask(Task):
    answer_format = "list of original positions [p1, ..., pN] of the shown tiles in reading order (1-based)"
    rewards = {"format": 0.5, "jigsaw_exact": 1.0, "jigsaw_fraction": 0.5}
    metric_names = ("exact", "fraction")
    required_fields = ("image", "grid", "solution")
    record_fields = {
        "image | images": "one shuffled image",
        "grid": "[rows, cols]",
        "solution": "the 1-based tile order",
        "original?": "the unshuffled image",
    }

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        rows, cols = parse_grid(require(record, rid, "grid"), rid)
        order = checked(rid, check_order, require(record, rid, "solution"), n=rows * cols)
        img, ref = single_image(record, rid, ctx, self.name)
        meta: dict[str, Any] = {"grid": [rows, cols]}
        if record.get("original") is not None:
            _, originals = media_sources(record, rid, ("original",))
            original = Path(ctx.base_dir) / str(originals[0])
            if not original.is_file():
                raise RecordError(f"record {rid!r}: field 'original': {original}: file not found")
            meta["original"] = str(original)
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(jigsaw_prompt(rows, cols) + answer_instruction(ctx.think), n_images=1),
            images=[img.image],
            target=wrap_target(format_order(order), ctx.think, reasoning_of(record, rid)),
            columns={"solution": order},
            media=[ref],
            meta=meta,
        )

    def valid_answer(self, completion: str, columns: dict[str, Any]) -> bool:
        return is_permutation(predicted_order(completion), len(columns["solution"]))  # every tile exactly once

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        return {"exact": mean(score("jigsaw_exact", completions, samples)),
                "fraction": mean(score("jigsaw_fraction", completions, samples))}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        rows, cols = sample.meta.get("grid") or _grid_of(len(sample.columns["solution"]))
        truth = sample.columns["solution"]
        shuffled = crop_to_grid(sample.images[0], rows, cols)
        answer = extract_answer(completion)
        pred = predicted_order(completion)
        valid = pred is not None and sorted(pred) == list(range(1, rows * cols + 1))
        if valid:
            rebuilt = _grid_lines(assemble_jigsaw(shuffled, rows, cols, [p - 1 for p in pred]), rows, cols)
        else:
            rebuilt = _placeholder(shuffled.size, "answer is not a permutation" if answer is not None else
                                   "no <answer> found")
        panels = [_grid_lines(shuffled, rows, cols, numbers=True), rebuilt, self._reference(sample, shuffled)]
        labels = ["shuffled, tiles 1..N", "put back by the answer", "original"]
        board = viz.side_by_side(panels, labels, height=max(220, shuffled.height))
        exact = score("jigsaw_exact", [completion], [sample])[0]
        frac = score("jigsaw_fraction", [completion], [sample])[0]
        return viz.caption_bar(board, [
            f"exact {fmt_num(exact)} | tiles in place {fmt_num(frac)} | grid {rows}x{cols}",
            (f"truth: {format_order(truth)}", viz.TRUE_COLOR),
            (f"predicted: {format_order(pred) if pred is not None else clip_text(answer, 80)}" if answer is not None
             else "predicted: no <answer>...</answer> found (malformed completion)", viz.PRED_COLOR),
        ])

    @staticmethod
    def _reference(sample: Sample, shuffled: Image.Image) -> Image.Image:
        """The unshuffled image: the record's original when given, else the shuffled one put back in true order."""
        rows, cols = sample.meta.get("grid") or _grid_of(len(sample.columns["solution"]))
        path = sample.meta.get("original")
        if path:
            try:
                original = crop_to_grid(load_image(path), rows, cols).resize(shuffled.size)
                return _grid_lines(original, rows, cols)
            except (MediaError, ValueError):
                pass  # a report should still render; the rebuilt-by-truth panel shows the same picture
        return _grid_lines(assemble_jigsaw(shuffled, rows, cols, [p - 1 for p in sample.columns["solution"]]),
                           rows, cols)


def _grid_of(n: int) -> tuple[int, int]:
    """Fallback grid for samples built elsewhere: the most square rows x cols with rows * cols == n."""
    rows = max(r for r in range(1, int(n**0.5) + 1) if n % r == 0)
    return rows, n // rows


def _grid_lines(img: Image.Image, rows: int, cols: int, numbers: bool = False) -> Image.Image:
    view, _ = viz.enlarge(img, min_side=200)
    draw = ImageDraw.Draw(view)
    tw, th = view.width / cols, view.height / rows
    for c in range(1, cols):
        draw.line([(c * tw, 0), (c * tw, view.height)], fill=(255, 255, 255), width=2)
    for r in range(1, rows):
        draw.line([(0, r * th), (view.width, r * th)], fill=(255, 255, 255), width=2)
    if numbers:
        for i in range(rows * cols):
            x, y = (i % cols) * tw + 4, (i // cols) * th + 2
            draw.text((x, y), str(i + 1), fill=(255, 255, 255), font=viz.font(16), stroke_width=2,
                      stroke_fill=(0, 0, 0))
    return view


def _placeholder(size: tuple[int, int], text: str) -> Image.Image:
    """A grey panel saying why no reassembly can be shown (the answer is not a permutation)."""
    img, _ = viz.enlarge(Image.new("RGB", size, (235, 235, 235)), min_side=200)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(viz.wrap(text, img.width - 12, viz.font(14))):
        draw.text((6, 6 + 18 * i), line, fill=viz.PRED_COLOR, font=viz.font(14))
    return img
