"""Jigsaw puzzle maths: cut an image into rows x cols tiles, shuffle them reproducibly, and put them back.

This module owns every image operation of a puzzle (the grid crop, tiling, the shuffle order, reassembly and the
check for identical tiles); writing puzzle datasets is `mmreason.data.synthetic`'s. `order[i]` is the 0-based
original (row-major) position of the tile shown at position i of the shuffled image, so
`assemble_jigsaw(*make_jigsaw(img, r, c, seed)...)` returns the (cropped) original. Tasks store `order` + 1 as the
1-based answer.
"""

from __future__ import annotations

import random

from PIL import Image


def _check_grid(rows: int, cols: int) -> None:
    if not (isinstance(rows, int) and isinstance(cols, int)) or rows < 1 or cols < 1:
        raise ValueError(f"the grid must be positive integers rows x cols, got {rows!r} x {cols!r}")


def grid_size(width: int, height: int, rows: int, cols: int) -> tuple[int, int]:
    """The size an image of width x height is cropped to for a rows x cols grid: the right/bottom remainder goes, so
    that width % cols == 0 and height % rows == 0 (at most cols - 1 and rows - 1 pixels are lost)."""
    _check_grid(rows, cols)
    if width < cols or height < rows:
        raise ValueError(f"a {width}x{height} image is too small for a {rows}x{cols} grid (need one pixel per tile)")
    return width - width % cols, height - height % rows


def crop_to_grid(image: Image.Image, rows: int, cols: int) -> Image.Image:
    """`image` cropped to `grid_size` (top-left kept); the image is returned as is when it already divides."""
    new_size = grid_size(*image.size, rows, cols)
    return image if new_size == image.size else image.crop((0, 0, *new_size))


def has_identical_tiles(image: Image.Image, rows: int, cols: int) -> bool:
    """Whether two tiles of `image` (cropped to the grid) have the same pixels: its puzzle would then have several
    right answers."""
    tiles = [tile.tobytes() for tile in _tiles(crop_to_grid(image, rows, cols), rows, cols)]
    return len(set(tiles)) < len(tiles)


def _tiles(image: Image.Image, rows: int, cols: int) -> list[Image.Image]:
    tile_w, tile_h = image.width // cols, image.height // rows
    return [
        image.crop((c * tile_w, r * tile_h, (c + 1) * tile_w, (r + 1) * tile_h))
        for r in range(rows)
        for c in range(cols)
    ]


def _paste(tiles: list[Image.Image], rows: int, cols: int, positions: list[int], like: Image.Image) -> Image.Image:
    """A new image where tiles[k] sits at grid position positions[k]."""
    tile_w, tile_h = tiles[0].size
    out = Image.new(like.mode, (tile_w * cols, tile_h * rows))
    for tile, pos in zip(tiles, positions, strict=True):
        out.paste(tile, ((pos % cols) * tile_w, (pos // cols) * tile_h))
    return out


def shuffle_order(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) that is never the identity when n > 1."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    if n > 1 and order == sorted(order):
        # A puzzle that is already solved teaches nothing; rotating by one keeps it deterministic per seed.
        order = order[1:] + order[:1]
    return order


def make_jigsaw(image: Image.Image, rows: int, cols: int, seed: int) -> tuple[Image.Image, list[int]]:
    """Shuffle the tiles of `image` (cropped to the grid first). Returns (shuffled image, order) where order[i] is
    the original position (0-based, row-major) of the tile shown at position i."""
    image = crop_to_grid(image, rows, cols)
    order = shuffle_order(rows * cols, seed)
    tiles = _tiles(image, rows, cols)
    return _paste([tiles[k] for k in order], rows, cols, list(range(rows * cols)), image), order


def assemble_jigsaw(shuffled: Image.Image, rows: int, cols: int, order: list[int]) -> Image.Image:
    """Inverse of make_jigsaw: tile i of `shuffled` goes back to position order[i]."""
    _check_grid(rows, cols)
    n = rows * cols
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of 0..{n - 1} for a {rows}x{cols} grid, got {list(order)}")
    if shuffled.width % cols or shuffled.height % rows:
        raise ValueError(f"a {shuffled.width}x{shuffled.height} image does not divide into a {rows}x{cols} grid")
    return _paste(_tiles(shuffled, rows, cols), rows, cols, list(order), shuffled)
