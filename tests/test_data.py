"""Data: reading records (line numbers, bad lines, formats, splits), checking them, the training stream, and the
synthetic / jigsaw data makers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmreason.data.records import (
    DataError,
    Dataset,
    Problem,
    build_samples,
    check_records,
    format_problems,
    load_records,
    read_dataset,
    write_jsonl,
)
from mmreason.data.sample import Sample, SampleContext
from mmreason.data.stream import SampleStream, Source, mixture_counts
from mmreason.registry import get_task
from mmreason.tasks.base import Task


def write_lines(path: Path, lines: list[bytes | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def save_png(path: Path, color=(200, 30, 30), size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ------------------------------------------------------------------------------------------------- reading


def test_jsonl_records_get_line_source_id_and_base_dir(tmp_path):
    save_png(tmp_path / "sub" / "img" / "a.png")
    f = write_lines(tmp_path / "sub" / "train.jsonl", [
        json.dumps({"image": "img/a.png", "problem": "How many shapes are in the image?", "solution": 1}),
        "",
        json.dumps({"id": 7, "image": "img/a.png", "problem": "q", "solution": 2}),
    ])
    ds = read_dataset(f)
    assert ds.base_dir == (tmp_path / "sub").resolve()
    assert [(r["id"], r["_line"], r["_source"]) for r in ds] == [("train-1", 1, str(f)), ("7", 3, str(f))]
    assert ds.context(SampleContext(think=False)).base_dir == ds.base_dir
    assert ds.context(SampleContext(think=False)).think is False
    # the relative path resolves against the file's folder, wherever the process runs
    sample = get_task("counting").to_sample(ds[0], ds.context())
    assert sample.images[0].size[0] > 0
    assert load_records(f) == ds.records


def test_bad_lines_are_all_listed_with_numbers(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", [
        json.dumps({"solution": 1}),
        '{"solution": 2,',                     # 2: truncated JSON
        json.dumps({"solution": 3}),
        b'{"problem": "caf\xe9"}',              # 4: Latin-1, not UTF-8
        "[1, 2, 3]",                            # 5: not an object
        "   ",                                  # 6: blank lines are fine
        "not json at all",                      # 7
        json.dumps({"solution": 8}),
    ])
    with pytest.raises(DataError) as err:
        read_dataset(f)
    for n in (2, 4, 5, 7):
        assert f"d.jsonl:{n}:" in str(err.value)
    ds = read_dataset(f, strict=False)
    assert [p.line for p in ds.problems] == [2, 4, 5, 7]
    assert "UTF-8" in ds.problems[1].message and "object" in ds.problems[2].message
    assert [r["_line"] for r in ds] == [1, 3, 8]


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": "\u00e9"}).encode() + b"\r\n" + b'{"a": 2}\r\n')
    assert [r["a"] for r in read_dataset(f)] == ["\u00e9", 2]


ROWS = [{"id": "a", "image": "x.png", "solution": [[1, 2, 3, 4]]}, {"id": "b", "image": "y.png", "solution": []}]


def _write_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), path)


def _write_csv(path: Path) -> None:
    path.write_text("id,image,solution\n" + "".join(f"{r['id']},{r['image']},\"{r['solution']}\"\n" for r in ROWS))


@pytest.mark.parametrize("suffix, writer", [
    (".json", lambda p: p.write_text(json.dumps(ROWS))),
    (".json", lambda p: p.write_text(json.dumps({"data": ROWS}))),
    (".json", lambda p: p.write_text("\n".join(json.dumps(r) for r in ROWS))),  # JSON lines named .json
    (".parquet", _write_parquet),
    (".csv", _write_csv),
])
def test_table_formats_give_plain_python_records(tmp_path, suffix, writer):
    f = tmp_path / f"rows{suffix}"
    writer(f)
    ds = read_dataset(f)
    assert [{k: v for k, v in r.items() if not k.startswith("_")} for r in ds] == ROWS
    assert [r["_line"] for r in ds] == [1, 2]
    assert type(ds[0]["solution"][0]) is list  # not a numpy array or a string


def test_folder_split_selection_and_errors(tmp_path):
    write_jsonl([{"id": "t"}], tmp_path / "train.jsonl")
    write_jsonl([{"id": "v"}], tmp_path / "val.jsonl")
    assert [r["id"] for r in read_dataset(tmp_path)] == ["t"]
    assert [r["id"] for r in read_dataset(tmp_path, "val")] == ["v"]
    with pytest.raises(DataError, match=r"no 'test' split \(it has 'train', 'val'"):
        read_dataset(tmp_path, "test")
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("{}")
    with pytest.raises(DataError, match="unsupported"):
        read_dataset(tmp_path / "x.txt")


def test_hub_layout_parquet_shards(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:1]), tmp_path / "data" / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[1:]), tmp_path / "data" / "train-00001-of-00002.parquet")
    assert [r["id"] for r in read_dataset(tmp_path)] == ["a", "b"]


def test_write_jsonl_drops_private_keys(tmp_path):
    write_jsonl([{"id": "x", "_line": 3, "_source": "s", "text": "\u00e9"}], tmp_path / "o.jsonl")
    assert json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8")) == {"id": "x", "text": "\u00e9"}


# ------------------------------------------------------------------------------------------------- checking


def test_check_records_finds_every_planted_problem(tmp_path):
    save_png(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = {"image": "ok.png", "problem": "How many shapes are in the image?", "solution": 2}
    f = write_lines(tmp_path / "c.jsonl", [
        json.dumps({**good, "id": "good"}),                                  # 1
        json.dumps({**good, "id": "missing-media", "image": "nope.png"}),    # 2
        json.dumps({**good, "id": "corrupt", "image": "corrupt.png"}),       # 3
        json.dumps({**good, "id": "shape", "solution": [1, 2]}),             # 4: wrong answer shape
        json.dumps({"id": "no-problem", "image": "ok.png", "solution": 3}),  # 5: missing field
        '{"id": "broken"',                                                   # 6: bad JSON
        json.dumps({**good, "id": "good"}),                                  # 7: duplicate id
    ])
    ds = read_dataset(f, strict=False)
    problems = check_records(ds, "counting")
    by_line = {p.line: p for p in problems}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7]
    assert by_line[2].id == "missing-media" and "nope.png" in by_line[2].message
    assert by_line[3].id == "corrupt"
    assert "solution" in by_line[4].message
    assert "problem" in by_line[5].message
    assert "duplicate" in by_line[7].message
    text = format_problems(problems, ds)
    for line in (2, 3, 4, 5, 6, 7):
        assert f"c.jsonl:{line}" in text
    assert text.splitlines()[-1].endswith("6 problem(s) in 6 of 7 record(s)")
    samples, skipped = build_samples(ds, "counting")
    assert [s.id for s in samples] == ["good", "good"]
    assert [p.line for p in skipped] == [2, 3, 4, 5]


class RaisingCheckTask(Task):
    name = "raising-check"

    def check_record(self, record, ctx):
        raise RuntimeError("checker bug")


def test_check_records_survives_a_failing_checker_and_formats_clean_data(tmp_path):
    ds = Dataset([{"id": "a", "_line": 1, "_source": "f"}], tmp_path, "f")
    [p] = check_records(ds, RaisingCheckTask())
    assert p == Problem("f", 1, "a", "check_record raised RuntimeError: checker bug")
    assert format_problems([], ds) == "f: 1 record(s), no problems"
    assert format_problems([p, p, p], limit=1).splitlines()[-1] == "... and 2 more"


# --------------------------------------------------------------------------------------------------- stream


class ToyTask(Task):
    """A complete text-only task: the record's "text" is the prompt; "bad" records cannot become samples."""

    name = "toy"

    def to_sample(self, record, ctx):
        if record.get("bad"):
            raise ValueError(f"record {record['id']!r}: field 'bad' is set")
        return Sample(id=record["id"], task=self.name, messages=[{"role": "user", "content": record["id"]}])


def toy_dataset(prefix: str, n: int, bad: tuple[int, ...] = ()) -> Dataset:
    records = [{"id": f"{prefix}{i}", "_line": i + 1, "_source": prefix, "bad": i in bad} for i in range(n)]
    return Dataset(records, Path("."), prefix)


def ids(items) -> list[str]:
    return [s.id for _, s in items]


def test_stream_is_deterministic_and_each_epoch_is_a_permutation():
    make = lambda seed: SampleStream([Source(ToyTask(), toy_dataset("a", 20))], seed=seed)  # noqa: E731
    first = ids(make(0).take(40))
    assert first == ids(make(0).take(40))
    assert first != ids(make(1).take(40))
    assert sorted(first[:20]) == sorted(first[20:]) == sorted(f"a{i}" for i in range(20))
    assert first[:20] != first[20:]  # reshuffled each epoch


@pytest.mark.parametrize("weights, total, expected", [
    ([1, 1], 10, [5, 5]),
    ([3, 1], 400, [300, 100]),
    ([1, 1, 1], 10, [4, 3, 3]),
    ([0.2, 0.8], 1, [0, 1]),
    ([5], 7, [7]),
])
def test_mixture_counts(weights, total, expected):
    assert mixture_counts(weights, total) == expected


def test_mixture_weights_are_respected_regardless_of_sizes():
    stream = SampleStream([Source(ToyTask(), toy_dataset("a", 10), weight=3),
                           Source(ToyTask(), toy_dataset("b", 50), weight=1)], seed=3, epoch_size=400)
    drawn = ids(stream.take(800))
    assert sum(i.startswith("a") for i in drawn) == 600  # exactly 3:1 per epoch
    # the small source cycles through all its records; the big one is sampled without repeats in an epoch pass
    assert len({i for i in drawn[:400] if i.startswith("a")}) == 10
    assert len({i for i in drawn[:400] if i.startswith("b")}) == 50
    # positions are interleaved, not in blocks
    firsts = [i[0] for i in drawn[:40]]
    assert 20 < firsts.count("a") < 40


@pytest.mark.parametrize("consumed", [0, 1, 37, 59, 60, 61, 150])
def test_state_dict_round_trip_continues_identically(consumed):
    def make():
        return SampleStream([Source(ToyTask(), toy_dataset("a", 20, bad=(3,))),
                             Source(ToyTask(), toy_dataset("b", 10), weight=2)], seed=11)

    stream = make()
    stream.take(consumed)
    state = json.loads(json.dumps(stream.state_dict()))  # checkpoints store it as JSON
    expected = ids(stream.take(50))
    resumed = make()
    resumed.load_state_dict(state)
    assert ids(resumed.take(50)) == expected
    assert resumed.skipped == stream.skipped and resumed.skip_reasons == stream.skip_reasons


def test_bad_records_are_skipped_counted_and_logged_once(caplog):
    stream = SampleStream([Source(ToyTask(), toy_dataset("a", 10, bad=(2, 5)))], seed=0)
    with caplog.at_level(logging.WARNING, logger="mmreason.data.records"):
        drawn = ids(stream.take(24))  # three epochs of 8 good records
    assert "a2" not in drawn and "a5" not in drawn and len(drawn) == 24
    assert stream.skipped == 6 and stream.skip_reasons == {"toy: ValueError": 6}
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and all("field 'bad' is set" in m for m in logged)
    _, sample = next(stream)
    assert set(sample.meta) >= {"source", "epoch", "position"}


def test_a_stream_of_only_bad_records_raises_instead_of_spinning():
    stream = SampleStream([Source(ToyTask(), toy_dataset("a", 4, bad=(0, 1, 2, 3)))])
    with pytest.raises(DataError, match="consecutive records failed"):
        next(stream)


def test_ranks_partition_the_positions():
    def make(rank):
        return SampleStream([Source(ToyTask(), toy_dataset("a", 12))], seed=5, rank=rank, world_size=3)

    parts = [ids(make(r).take(4)) for r in range(3)]
    whole = ids(SampleStream([Source(ToyTask(), toy_dataset("a", 12))], seed=5).take(12))
    assert sorted(sum(parts, [])) == sorted(whole)
    assert parts[1] == whole[1::3]


@pytest.mark.parametrize("change, match", [
    ({"seed": 1}, "seed"),
    ({"sources": [["toy:x", 99, 1.0]]}, "sources"),
])
def test_load_state_dict_refuses_another_stream(change, match):
    stream = SampleStream([Source(ToyTask(), toy_dataset("a", 5))])
    state = {**stream.state_dict(), **change}
    with pytest.raises(DataError, match=match):
        SampleStream([Source(ToyTask(), toy_dataset("a", 5))]).load_state_dict(state)
    SampleStream([Source(ToyTask(), toy_dataset("a", 5))]).load_state_dict(state, strict=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": toy_dataset("a", 0)}, "no records"),
    ({"dataset": toy_dataset("a", 2), "weight": 0}, "weight"),
    ({"dataset": toy_dataset("a", 2), "weight": float("nan")}, "weight"),
])
def test_bad_sources_are_refused(kwargs, match):
    with pytest.raises(DataError, match=match):
        Source(ToyTask(), **kwargs)


# ------------------------------------------------------------------------------------------------ synthetic

SYNTHETIC = ["counting", "grounding", "jigsaw", "geolocation"]


@pytest.mark.parametrize("task", SYNTHETIC)
def test_synthetic_makers_write_records_the_task_accepts(tmp_path, task):
    from mmreason.data.synthetic import make_synthetic

    out = make_synthetic(task, tmp_path / task, n=12, seed=1)
    train, val = read_dataset(out), read_dataset(out, "val")
    assert (len(train), len(val)) == (11, 1)
    assert check_records(train, task) == [] and check_records(val, task) == []
    samples, problems = build_samples(train, task)
    assert problems == [] and len(samples) == 11
    for record in train:
        assert (out / record["image"]).is_file()
        assert Image.open(out / record["image"]).size == (56, 56)


def test_synthetic_is_seeded_and_extends_with_n(tmp_path):
    from mmreason.data.synthetic import make_synthetic

    a = make_synthetic("counting", tmp_path / "a", n=6, seed=4, val_fraction=0.0)
    b = make_synthetic("counting", tmp_path / "b", n=9, seed=4, val_fraction=0.0)
    c = make_synthetic("counting", tmp_path / "c", n=6, seed=5, val_fraction=0.0)
    ra, rb, rc = load_records(a), load_records(b), load_records(c)
    assert [r["solution"] for r in ra] == [r["solution"] for r in rb[:6]]
    assert (a / ra[0]["image"]).read_bytes() == (b / rb[0]["image"]).read_bytes()
    assert [(a / r["image"]).read_bytes() for r in ra] != [(c / r["image"]).read_bytes() for r in rc]


def count_blobs(mask: np.ndarray) -> int:
    """Number of 8-connected regions of True pixels."""
    seen = np.zeros_like(mask)
    blobs = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        blobs += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny in range(max(0, y - 1), min(mask.shape[0], y + 2)):
                for nx in range(max(0, x - 1), min(mask.shape[1], x + 2)):
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return blobs


def test_counting_images_show_exactly_the_count(tmp_path):
    from mmreason.data.synthetic import make_synthetic

    out = make_synthetic("counting", tmp_path, n=40, seed=0, val_fraction=0.0)
    records = load_records(out)
    assert {r["solution"] for r in records} == {1, 2, 3, 4}
    for r in records:
        ink = (np.asarray(Image.open(out / r["image"])) < 250).any(axis=2)
        assert count_blobs(ink) == r["solution"], r["id"]  # separate, non-touching shapes


def test_grounding_boxes_are_exact_and_absent_objects_have_no_box(tmp_path):
    from mmreason.data.synthetic import COLORS, make_synthetic

    out = make_synthetic("grounding", tmp_path / "g", n=20, seed=2, val_fraction=0.0)
    for r in load_records(out):
        arr = np.asarray(Image.open(out / r["image"])).astype(int)
        [[x1, y1, x2, y2]] = r["solution"]
        ys, xs = np.nonzero(np.abs(arr - COLORS[r["problem"].split()[1]]).sum(axis=2) < 10)
        # the box is exactly the extent of the drawn object (right/bottom edges exclusive)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2), r["id"]
    absent = make_synthetic("grounding", tmp_path / "a", n=6, seed=2, val_fraction=0.0, absent_rate=1.0)
    assert all(r["solution"] == [] for r in load_records(absent))
    crowded = make_synthetic("grounding", tmp_path / "c", n=6, seed=2, val_fraction=0.0, distractors=2,
                             absent_rate=0.5)
    ds = read_dataset(crowded)
    assert check_records(ds, "grounding") == []
    assert {len(r["solution"]) for r in ds} == {0, 1}


@pytest.mark.parametrize("distractors", [0, 3])
def test_grounding_cells_put_each_shape_in_its_own_cell(tmp_path, distractors):
    from mmreason.data.synthetic import make_synthetic

    out = make_synthetic("grounding", tmp_path, n=8, seed=1, val_fraction=0.0, cells=2, distractors=distractors)
    for r in load_records(out):
        [(x1, y1, x2, y2)] = r["solution"]
        assert x1 // 28 == (x2 - 1) // 28 and y1 // 28 == (y2 - 1) // 28, r  # inside one 28x28 cell of 56x56
        assert 14 <= x2 - x1 <= 22 and x2 - x1 == y2 - y1, r  # 50-80% of the cell, square
        px = np.asarray(Image.open(out / r["image"]).convert("L"))
        cells_drawn = sum(bool((px[i:i + 28, j:j + 28] < 250).any()) for i in (0, 28) for j in (0, 28))
        assert cells_drawn == 1 + distractors


def test_jigsaw_solution_reassembles_the_original(tmp_path):
    from mmreason.data.synthetic import make_synthetic

    out = make_synthetic("jigsaw", tmp_path, n=4, seed=0, val_fraction=0.0, grid=(2, 3), image_size=(60, 40))
    for r in load_records(out):
        rows, cols = r["grid"]
        fixed = assemble_jigsaw_of(out, r)
        assert np.array_equal(np.asarray(fixed), np.asarray(Image.open(out / r["original"]).convert("RGB")))
        assert r["solution"] != list(range(1, rows * cols + 1))


@pytest.mark.parametrize("layout_cue", [False, True])
def test_jigsaw_tile_colour_says_where_it_belongs_only_with_the_layout_cue(tmp_path, layout_cue):
    """With layout_cue the original's red grows to the right and its green downward in every image, shapes drawn on
    top or not (so one tile's colour gives its place); without it the corner colours are random and those trends
    hold in some images only."""
    from mmreason.data.synthetic import make_synthetic

    out = make_synthetic("jigsaw", tmp_path, n=12, seed=0, val_fraction=0.0, layout_cue=layout_cue)
    ordered = []
    for r in load_records(out):
        px = np.asarray(Image.open(out / r["original"]).convert("RGB"), dtype=float)
        ys, xs = np.indices(px.shape[:2])
        red_x = np.corrcoef(xs.ravel(), px[..., 0].ravel())[0, 1]
        green_y = np.corrcoef(ys.ravel(), px[..., 1].ravel())[0, 1]
        ordered.append(bool(red_x > 0.3 and green_y > 0.3))
        fixed = assemble_jigsaw_of(out, r)
        assert np.array_equal(np.asarray(fixed), px.astype(np.uint8))
    assert all(ordered) if layout_cue else not all(ordered)


def assemble_jigsaw_of(out: Path, record: dict) -> Image.Image:
    """The record's puzzle put back together by its solution."""
    from mmreason.processors import assemble_jigsaw

    rows, cols = record["grid"]
    return assemble_jigsaw(Image.open(out / record["image"]), rows, cols, [p - 1 for p in record["solution"]])


def test_geolocation_cities_agree_with_the_offline_geocoder():
    import reverse_geocode

    from mmreason.data.synthetic import CITIES

    assert len({c.city for c in CITIES}) == len(CITIES) == 8
    assert len({(c.sky, c.ground, c.pattern) for c in CITIES}) == 8
    for c in CITIES:
        found = reverse_geocode.get((c.lat, c.lon))
        assert (found["city"], found["state"], found["country"]) == (c.city, c.region, c.country)


@pytest.mark.parametrize("task, options, match", [
    ("sorting", {}, "no synthetic maker"),
    ("counting", {"absent_rate": 0.5}, "unknown option"),
    ("counting", {"n": 0}, "n >= 1"),
    ("jigsaw", {"grid": (1, 1)}, "grid"),
    ("grounding", {"absent_rate": 2.0}, "absent_rate"),
    ("grounding", {"cells": 1, "distractors": 1}, "cells"),
    ("grounding", {"cells": -1}, "cells"),
])
def test_synthetic_bad_arguments(tmp_path, task, options, match):
    from mmreason.data.synthetic import make_synthetic

    kwargs = {"n": 2, **options}
    with pytest.raises(ValueError, match=match):
        make_synthetic(task, tmp_path, **kwargs)


def test_jigsaw_dataset_from_a_folder_skips_bad_images(tmp_path):
    from mmreason.data.synthetic import make_jigsaw_dataset

    src = tmp_path / "photos"
    (src / "nested").mkdir(parents=True)
    names = ["p0.jpg", "p1.jpg", "p2.png", "p3.jpg", "nested/q.png"]
    for i, name in enumerate(names):
        arr = np.random.default_rng(i).integers(0, 255, (30 + 7 * i, 48, 3), dtype=np.uint8)  # odd sizes: cropped
        Image.fromarray(arr).save(src / name)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save_png(src / "flat.png", size=(20, 20))  # one colour: identical tiles
    (src / "notes.txt").write_text("not an image")
    build = make_jigsaw_dataset(src, tmp_path / "out", grid=(2, 2), per_image=2, seed=0)
    assert len(build.skipped) == 2
    assert any("broken.png" in s for s in build.skipped) and any("flat.png" in s for s in build.skipped)
    assert (build.n_train, build.n_val) == (8, 2)
    train, val = read_dataset(build.out_dir), read_dataset(build.out_dir, "val")
    assert {r["source_image"] for r in train}.isdisjoint({r["source_image"] for r in val})
    assert check_records(train, "jigsaw") == [] and check_records(val, "jigsaw") == []
