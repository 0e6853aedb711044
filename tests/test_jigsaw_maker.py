"""Jigsaw puzzle maker: make/assemble round trips, the order convention, determinism, never-solved shuffles,
cropping to the grid, identical tiles, and bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
from mmreason.processors import assemble_jigsaw, crop_to_grid, make_jigsaw, shuffle_order
from mmreason.processors.jigsaw import grid_size, has_identical_tiles
from PIL import Image

GRIDS = [(1, 1), (2, 2), (2, 3), (3, 2), (3, 3), (1, 4)]
SEEDS = [0, 1, 7, 12345]


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _tile(img: Image.Image, rows: int, cols: int, pos: int) -> np.ndarray:
    arr = np.asarray(img)
    tile_h, tile_w = arr.shape[0] // rows, arr.shape[1] // cols
    r, c = divmod(pos, cols)
    return arr[r * tile_h : (r + 1) * tile_h, c * tile_w : (c + 1) * tile_w]


@pytest.mark.parametrize("grid", GRIDS, ids=[f"{r}x{c}" for r, c in GRIDS])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("size", [(48, 36), (50, 37)], ids=["divisible", "cropped"])
def test_round_trip(grid, seed, size):
    rows, cols = grid
    image = _noise(*size, seed=seed)
    shuffled, order = make_jigsaw(image, rows, cols, seed)
    cropped = crop_to_grid(image, rows, cols)
    assert shuffled.size == cropped.size
    assert sorted(order) == list(range(rows * cols))
    for i, original_pos in enumerate(order):
        assert np.array_equal(_tile(shuffled, rows, cols, i), _tile(cropped, rows, cols, original_pos))
    restored = assemble_jigsaw(shuffled, rows, cols, order)
    assert np.array_equal(np.asarray(restored), np.asarray(cropped))


@pytest.mark.parametrize("grid", [(2, 2), (2, 3), (3, 3)])
def test_same_seed_same_puzzle(grid):
    image = _noise(60, 60)
    a_img, a_order = make_jigsaw(image, *grid, seed=5)
    b_img, b_order = make_jigsaw(image, *grid, seed=5)
    assert a_order == b_order and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    orders = {tuple(make_jigsaw(image, *grid, seed=s)[1]) for s in range(10)}
    assert len(orders) > 1, "different seeds give different puzzles"


@pytest.mark.parametrize("n", [2, 3, 4, 6, 9])
def test_shuffle_is_never_the_identity(n):
    for seed in range(200):
        order = shuffle_order(n, seed)
        assert sorted(order) == list(range(n)) and order != list(range(n))
    assert shuffle_order(2, 0) == [1, 0]


def test_one_tile_is_left_alone():
    image = _noise(10, 10)
    shuffled, order = make_jigsaw(image, 1, 1, seed=3)
    assert order == [0] and np.array_equal(np.asarray(shuffled), np.asarray(image))


@pytest.mark.parametrize(
    ("size", "grid", "expected"),
    [((50, 37), (2, 3), (48, 36)), ((48, 36), (2, 3), (48, 36)), ((10, 10), (3, 3), (9, 9)), ((3, 2), (2, 3), (3, 2))],
)
def test_crop_to_grid(size, grid, expected):
    image = _noise(*size)
    cropped = crop_to_grid(image, *grid)
    assert cropped.size == expected
    assert np.array_equal(np.asarray(cropped), np.asarray(image)[: expected[1], : expected[0]]), "top-left kept"


@pytest.mark.parametrize(
    ("size", "grid", "expected"),
    [((50, 37), (2, 3), (48, 36)), ((48, 36), (2, 3), (48, 36)), ((10, 10), (3, 3), (9, 9)), ((3, 2), (2, 3), (3, 2))],
)
def test_grid_size_is_the_crop(size, grid, expected):
    assert grid_size(*size, *grid) == expected == crop_to_grid(_noise(*size), *grid).size


def test_identical_tiles():
    assert not has_identical_tiles(_noise(20, 20), 2, 2)
    assert has_identical_tiles(Image.new("RGB", (20, 20), (5, 5, 5)), 2, 2)
    halves = Image.new("RGB", (21, 10), (0, 0, 0))
    halves.paste((200, 0, 0), (10, 0, 21, 10))  # two different halves; the 21st column is cropped away
    assert not has_identical_tiles(halves, 1, 2) and has_identical_tiles(halves, 1, 4)


def test_mode_is_kept():
    image = Image.new("L", (20, 20), 77)
    shuffled, order = make_jigsaw(image, 2, 2, seed=0)
    assert shuffled.mode == "L" and assemble_jigsaw(shuffled, 2, 2, order).mode == "L"


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda img: make_jigsaw(img, 0, 2, 0), r"positive integers rows x cols, got 0 x 2"),
        (lambda img: make_jigsaw(img, 2, 2.5, 0), r"positive integers rows x cols"),
        (lambda img: make_jigsaw(img.resize((2, 2)), 3, 3, 0), r"2x2 image is too small for a 3x3 grid"),
        (lambda img: grid_size(2, 5, 1, 3), r"2x5 image is too small for a 1x3 grid"),
        (lambda img: has_identical_tiles(img, 2, 0), r"positive integers rows x cols, got 2 x 0"),
        (lambda img: assemble_jigsaw(img, 2, 2, [0, 1, 2]), r"permutation of 0..3 for a 2x2 grid, got \[0, 1, 2\]"),
        (lambda img: assemble_jigsaw(img, 2, 2, [0, 1, 1, 3]), r"permutation of 0..3"),
        (lambda img: assemble_jigsaw(img, 2, 2, [1, 2, 3, 4]), r"permutation of 0..3"),
        (lambda img: assemble_jigsaw(img.crop((0, 0, 21, 20)), 2, 2, [0, 1, 2, 3]), r"21x20 image does not divide"),
    ],
    ids=[
        "zero-rows",
        "float-cols",
        "too-small",
        "too-small-size",
        "zero-cols",
        "short-order",
        "repeat",
        "out-of-range",
        "not-divisible",
    ],
)
def test_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(_noise(20, 20))
