"""Datasets: reading records (JSONL, JSON, Parquet, CSV), and checking them against a task.

A record is one JSON object (a JSONL line or a table row). Reading never stops at the first bad line: every line
that is not UTF-8, not JSON or not an object is collected as a `Problem` with its line number. Relative media paths
in records are resolved by the tasks against `Dataset.base_dir` (the data file's folder), which `Dataset.context`
puts into the `SampleContext`.

The training mixture lives in `mmreason.data.stream`, the synthetic data makers in `mmreason.data.synthetic`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import get_task

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv"}
SPLIT_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class DataError(ValueError):
    """A data file or record that cannot be used; the message names the file and the lines."""


@dataclass(frozen=True)
class Problem:
    """One problem of a data file: where (file, 1-based line or row), which record, and what is wrong."""

    source: str
    line: int | None
    id: str | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        rid = f" [id {self.id}]" if self.id is not None else ""
        return f"{where}{rid}: {self.message}"


@dataclass
class Dataset:
    """Records read from one file, the folder their media paths are relative to, and the lines that failed.

    Every record carries "_line" (1-based line of a JSONL file, row of a table), "_source" (the file) and an "id"
    (the record's own, as a string, or f"{file stem}-{line}").
    """

    records: list[dict[str, Any]]
    base_dir: Path
    source: str
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index]

    def context(self, ctx: SampleContext | None = None) -> SampleContext:
        """`ctx` (or the default context) with base_dir set to this dataset's folder."""
        return dataclasses.replace(ctx or SampleContext(), base_dir=self.base_dir)


# ----------------------------------------------------------------------------------------------------- reading


def read_dataset(path: str | Path, split: str | None = None, *, strict: bool = True) -> Dataset:
    """Read a data file, or the `split` file of a data folder.

    path: a .jsonl/.ndjson, .json (an array of objects, {"data": [...]}, or JSON lines), .parquet or .csv file; or a
        folder holding `<split>.jsonl` (or .json/.parquet/.csv) or the hub layout `data/<split>-*.parquet`.
        `split` (default "train") only selects a file inside a folder; a file is read as it is.
    strict: raise a DataError listing every unreadable line; with False they are returned in `Dataset.problems`
        (what `mmreason data check` wants, to show them beside the record problems).
    """
    file = _resolve_file(Path(path), split)
    if file.suffix in JSONL_SUFFIXES:
        rows, problems = _read_jsonl(file)
    elif file.suffix == ".json":
        rows, problems = _read_json(file)
    elif file.suffix in TABLE_SUFFIXES or file.is_dir():
        rows, problems = _read_table(file), []
    else:
        raise DataError(f"{file}: unsupported data file type {file.suffix!r}; expected .jsonl, .json, .parquet, .csv")
    dataset = Dataset(
        records=[_finish_record(obj, line, file) for line, obj in rows],
        base_dir=(file if file.is_dir() else file.parent).resolve(),
        source=str(file),
        problems=problems,
    )
    if strict and problems:
        raise DataError(f"{file}: {len(problems)} unreadable line(s):\n" + "\n".join(map(str, problems)))
    return dataset


def load_records(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of `read_dataset(path, split)` (raises on unreadable lines); use read_dataset for base_dir."""
    return read_dataset(path, split).records


def write_jsonl(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write records as UTF-8 JSON lines (the private "_line"/"_source" keys are left out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            public = {k: v for k, v in rec.items() if not k.startswith("_")}
            f.write(json.dumps(public, ensure_ascii=False) + "\n")
    return path


def _resolve_file(path: Path, split: str | None) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(f"{path}: data file or folder does not exist")
    name = split or "train"
    for suffix in SPLIT_SUFFIXES:
        if (path / f"{name}{suffix}").is_file():
            return path / f"{name}{suffix}"
    if sorted((path / "data").glob(f"{name}-*.parquet")):
        return path / "data"
    tried = ", ".join(f"{name}{s}" for s in SPLIT_SUFFIXES)
    raise DataError(f"{path}: no {name!r} split found (looked for {tried} and data/{name}-*.parquet)")


def _read_jsonl(file: Path) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """(line, object) for every good line; a Problem for every line that is not UTF-8 JSON of an object."""
    rows: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    raw = file.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark some editors write
        raw = raw[3:]
    for number, line in enumerate(raw.split(b"\n"), start=1):
        obj, problem = _parse_line(line)
        if problem is not None:
            problems.append(Problem(str(file), number, None, problem))
        elif obj is not None:
            rows.append((number, obj))
    return rows, problems


def _parse_line(line: bytes) -> tuple[Any, str | None]:
    """(object, None), (None, None) for a blank line, or (None, what is wrong)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 (byte {exc.start + 1} of the line)"
    if not text.strip():
        return None, None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at column {exc.colno}: {exc.msg}"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    return obj, None


def _read_json(file: Path) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """A JSON array of objects, an object with a "data" array, or (many .json files are) JSON lines."""
    try:
        doc = json.loads(file.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _read_jsonl(file)
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if isinstance(doc, dict):  # a single JSON object: one record on one line
        return _read_jsonl(file)
    if not isinstance(doc, list):
        return [], [Problem(str(file), None, None, f"expected a JSON array of objects, got {type(doc).__name__}")]
    rows, problems = [], []
    for number, obj in enumerate(doc, start=1):
        if isinstance(obj, dict):
            rows.append((number, obj))
        else:
            problems.append(Problem(str(file), number, None, f"expected an object, got {type(obj).__name__}"))
    return rows, problems


def _read_table(file: Path) -> list[tuple[int, Any]]:
    """Rows of a Parquet/CSV file (or a folder of Parquet shards), numbered from 1, as plain Python values."""
    try:
        rows = _table_rows_datasets(file)
    except ImportError:
        rows = _table_rows_arrow(file)
    except Exception as exc:
        raise DataError(f"{file}: cannot read table: {exc}") from exc
    return [(number, _plain_row(row)) for number, row in enumerate(rows, start=1)]


def _table_rows_datasets(file: Path) -> list[dict[str, Any]]:
    """Read with the `datasets` library when it is installed (raises ImportError when it is not)."""
    import datasets  # optional dependency: ImportError selects the pyarrow reader

    if file.is_dir():
        builder, data_files = "parquet", sorted(str(p) for p in file.glob("*.parquet"))
    else:
        builder, data_files = TABLE_SUFFIXES[file.suffix], [str(file)]
    ds = datasets.load_dataset(builder, data_files=data_files, split="train")
    # media columns stay as stored ({"bytes", "path"}) instead of being decoded to PIL images here
    return ds.cast(_undecoded(ds.features)).to_list()


def _undecoded(features: Any) -> Any:
    """The features with media columns (Image, Video, Audio: the ones with a `decode` switch) left undecoded."""
    out = features.copy()
    for name, feat in features.items():
        if dataclasses.is_dataclass(feat) and getattr(feat, "decode", False):
            out[name] = dataclasses.replace(feat, decode=False)
    return out


def _table_rows_arrow(file: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise DataError(f"{file}: reading tables needs pyarrow (or datasets): {exc}") from exc
    try:
        if file.is_dir():
            table = pq.read_table(sorted(str(p) for p in file.glob("*.parquet")))
        elif file.suffix == ".parquet":
            table = pq.read_table(file)
        else:
            table = pa_csv.read_csv(file)
    except Exception as exc:
        raise DataError(f"{file}: cannot read table: {exc}") from exc
    return table.to_pylist()


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain_value(v) for k, v in row.items()}


def _plain_value(value: Any) -> Any:
    """Undo table encodings: JSON text in CSV cells, stored media as {"bytes", "path"} -> bytes or path."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, dict) and set(value) == {"bytes", "path"}:
        return value["bytes"] if value["bytes"] is not None else value["path"]
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


def _finish_record(obj: dict[str, Any], line: int, file: Path) -> dict[str, Any]:
    record = dict(obj)
    rid = record.get("id")
    record["id"] = f"{file.stem}-{line}" if rid is None or rid == "" else str(rid)
    record["_line"] = line
    record["_source"] = str(file)
    return record


# ---------------------------------------------------------------------------------------------------- checking


def check_records(dataset: Dataset, task: Any, ctx: SampleContext | None = None) -> list[Problem]:
    """Every problem of the dataset for `task` (a Task or its registered name), in line order.

    Includes the unreadable lines found while reading, duplicate ids, and whatever `task.check_record` reports
    for each record (missing fields, missing or corrupt media, answers of the wrong shape). Media paths resolve
    against the dataset's folder.
    """
    task = get_task(task) if isinstance(task, str) else task
    ctx = dataset.context(ctx)
    problems = list(dataset.problems)
    first_line: dict[str, int] = {}
    for record in dataset.records:
        rid, line = record["id"], record["_line"]
        if rid in first_line:
            problems.append(Problem(dataset.source, line, rid, f"duplicate id (first on line {first_line[rid]})"))
        first_line.setdefault(rid, line)
        try:
            messages = task.check_record(record, ctx)
        except Exception as exc:  # a task's checker failing is itself a finding, not a crash of the whole check
            messages = [f"check_record raised {type(exc).__name__}: {exc}"]
        problems.extend(Problem(dataset.source, line, rid, str(m)) for m in messages)
    return sorted(problems, key=lambda p: (p.line is not None, p.line or 0))


def format_problems(problems: Sequence[Problem], dataset: Dataset | None = None, *, limit: int | None = None) -> str:
    """One line per problem (`file:line [id ...]: message`), then a summary line when `dataset` is given."""
    shown = list(problems) if limit is None else list(problems)[:limit]
    lines = [str(p) for p in shown]
    if len(shown) < len(problems):
        lines.append(f"... and {len(problems) - len(shown)} more")
    if dataset is not None:
        bad = {p.line for p in problems}
        total = len(dataset.records) + len(dataset.problems)
        lines.append(
            f"{dataset.source}: {len(problems)} problem(s) in {len(bad)} of {total} record(s)"
            if problems
            else f"{dataset.source}: {total} record(s), no problems"
        )
    return "\n".join(lines)


def build_samples(
    dataset: Dataset, task: Any, ctx: SampleContext | None = None, *, limit: int | None = None
) -> tuple[list[Sample], list[Problem]]:
    """Samples of the records in file order (evaluation), with a Problem for each record that failed."""
    task = get_task(task) if isinstance(task, str) else task
    ctx = dataset.context(ctx)
    samples: list[Sample] = []
    problems: list[Problem] = []
    for record in dataset.records[:limit]:
        try:
            samples.append(task.to_sample(record, ctx))
        except Exception as exc:  # evaluation reports skipped records instead of stopping
            problems.append(Problem(dataset.source, record["_line"], record["id"], f"{type(exc).__name__}: {exc}"))
    return samples, problems
