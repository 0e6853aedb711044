"""Datasets: reading records (JSONL, JSON, Parquet, CSV, Arrow, `save_to_disk` folders, hub datasets), and
checking them against a task.

A record is one JSON object (a JSONL line or a table row). Reading never stops at the first bad line: every line
that is not UTF-8, not JSON or not an object is collected as a `Problem` with its line number, and so is every row
that a data entry's adapter or column mapping rejects. Where the records live is `mmreason.data.locate`'s job; how
a row becomes a record of the task's fields is `mmreason.data.prepare`'s. Relative media paths in records are
resolved by the tasks against `Dataset.base_dir` (the data file's folder, or the entry's media_dir), which
`Dataset.context` puts into the `SampleContext`.

The training mixture lives in `mmreason.data.stream`, the synthetic data makers in `mmreason.data.synthetic`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmreason.data.locate import TRAIN_SPLITS, DataError, Location, locate
from mmreason.data.prepare import make_sample, unread_media
from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import get_task
from mmreason.rewards.parse import short_repr

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
# records nest lists and objects at most this deep: deeper ones are refused when read (see `_loads`)
MAX_DEPTH = 100
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
__all__ = ["DataError", "Dataset", "Problem", "read_dataset", "check_records", "build_samples", "write_jsonl"]

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
        return printable(f"{where}{rid}: {self.message}")


# C0 and C1 control characters (escape sequences a terminal would obey, line breaks that would forge a line)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character written as a visible escape (ESC -> \\x1b, newline -> \\n): ids and
    messages come from data files and are printed to terminals."""
    return _CONTROL_RE.sub(lambda m: repr(m.group())[1:-1], text)


@dataclass
class Dataset:
    """Records read from one data reference, the folder their media paths are relative to, and the lines that failed.

    Every record carries "_line" (1-based line of a JSONL file, row of a table), "_source" (the file, or
    `ref@split`) and an "id" (the record's own, as a string, or f"{file stem}-{line}").
    """

    records: list[dict[str, Any]]
    base_dir: Path
    source: str
    problems: list[Problem] = field(default_factory=list)
    location: Location | None = None  # where the records were read from (None for records built in memory)

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


def read_dataset(
    path: str | Path,
    split: str | None = None,
    *,
    strict: bool = True,
    default_splits: tuple[str, ...] = TRAIN_SPLITS,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    media_dir: str | Path | None = None,
) -> Dataset:
    """Read the records of a data reference (see `mmreason.data.locate`: a file, a folder's split, a `save_to_disk`
    folder, an `.arrow` file or a hub id; `path@split` or `split` picks the split, `default_splits` are tried
    when neither does).

    prepare: applied to every row (a peer format's adapter, the column mapping, gold-answer normalisation: see
        `mmreason.data.prepare`); a row it rejects with a ValueError becomes a Problem like an unreadable line.
    media_dir: the folder relative media paths resolve against (default: the data file's folder).
    strict: raise a DataError listing every unreadable line; with False they are returned in `Dataset.problems`
        (what `mmreason data check` wants, to show them beside the record problems).
    """
    where = locate(str(path), split, default_splits=default_splits)
    rows, problems = _read_location(where)
    records = []
    for source, line, obj in rows:
        try:
            obj = prepare(obj) if prepare is not None else obj
        except (ValueError, TypeError, RecursionError) as exc:  # a row the adapter or mapping cannot use: reported
            problems.append(Problem(source, line, _row_id(obj), str(exc)))
            continue
        records.append(_finish_record(obj, line, source))
    base_dir = Path(media_dir).expanduser().resolve() if media_dir else where.root
    if media_dir and not base_dir.is_dir():
        raise DataError(f"{where.name}: media_dir {media_dir} is not a folder")
    dataset = Dataset(records=records, base_dir=base_dir, source=where.name, problems=problems, location=where)
    if strict and problems:
        raise DataError(f"{where.name}: {len(problems)} unreadable line(s):\n" + "\n".join(map(str, problems)))
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


Row = tuple[str, int, dict[str, Any]]  # (source file or name, 1-based line/row, the row)


def _read_location(where: Location) -> tuple[list[Row], list[Problem]]:
    """Every row of the location with its source and line, and the lines that could not be read."""
    if where.kind != "files":
        return _numbered(_datasets_rows(where), where.name)
    rows: list[Row] = []
    problems: list[Problem] = []
    tables = [f for f in where.files if f.suffix in TABLE_SUFFIXES]
    for file in where.files:
        if file.suffix in JSONL_SUFFIXES:
            found, bad = _read_jsonl(file)
        elif file.suffix == ".json":
            found, bad = _read_json(file)
        else:
            continue
        rows += [(str(file), n, obj) for n, obj in found]
        problems += bad
    if tables:  # one table read for all shards, numbered across them as `datasets` concatenates them
        name = str(tables[0]) if len(tables) == 1 else where.name
        found, bad = _numbered(_table_rows(tables), name)
        rows += found
        problems += bad
    return rows, problems


def _numbered(rows: list[dict[str, Any]], source: str) -> tuple[list[Row], list[Problem]]:
    """Table rows with their 1-based numbers, cells decoded; a row whose cells cannot be is a Problem."""
    found: list[Row] = []
    problems: list[Problem] = []
    for number, row in enumerate(rows, start=1):
        try:
            found.append((source, number, _plain_row(row)))
        except ValueError as exc:
            problems.append(Problem(source, number, _row_id(row), str(exc)))
    return found, problems


def _row_id(row: Any) -> str | None:
    rid = row.get("id") if isinstance(row, dict) else None
    return None if rid is None or rid == "" else str(rid)


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
    obj, problem = _loads(text)
    if problem is not None:
        return None, problem
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    return obj, None


def _loads(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, what is wrong), for malformed and hostile JSON alike (see `_decode`)."""
    try:
        return _decode(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON at column {exc.colno}: {exc.msg}"
    except ValueError as exc:
        return None, str(exc)


def _decode(text: str) -> Any:
    """json.loads; malformed JSON raises JSONDecodeError, hostile JSON a ValueError saying what is wrong.

    The decoder itself raises RecursionError on deeply nested brackets and ValueError on an integer of more than
    4,300 digits (Python's int-conversion guard); a value nested deeper than MAX_DEPTH would overflow the recursion
    of later readers (printing, copying, writing it back), so it is refused here too.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion: ..."
        raise ValueError(f"unreadable JSON value: {str(exc).split(':')[0][:120]}") from None
    if _depth_over(value, MAX_DEPTH):
        raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether lists/objects nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _read_json(file: Path) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """A JSON array of objects, an object with a "data" array, or (many .json files are) JSON lines."""
    try:
        text = file.read_bytes().decode("utf-8-sig")
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _read_jsonl(file)
    except (RecursionError, ValueError):  # one hostile element: read the array element by element
        return _read_json_elements(file, text)
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if isinstance(doc, dict):  # a single JSON object: one record on one line
        return _read_jsonl(file)
    if not isinstance(doc, list):
        return [], [Problem(str(file), None, None, f"expected a JSON array of objects, got {type(doc).__name__}")]
    rows, problems = [], []
    for number, obj in enumerate(doc, start=1):
        if not isinstance(obj, dict):
            problems.append(Problem(str(file), number, None, f"expected an object, got {type(obj).__name__}"))
        elif _depth_over(obj, MAX_DEPTH):
            problems.append(Problem(str(file), number, None, f"JSON nested more than {MAX_DEPTH} levels deep"))
        else:
            rows.append((number, obj))
    return rows, problems


# one JSON string (escapes included), an opening or closing bracket: what finding the end of a value needs
_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_STRUCTURE_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SCALAR_RE = re.compile(r'[^\s,\]}]+')


def _read_json_elements(file: Path, text: str) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """The elements of a JSON array file one by one, so that one element the decoder cannot take (nested too
    deeply, an over-long integer) is a Problem of its own instead of the whole file's failure."""
    i = _skip_space(text, 0)
    if not text.startswith("[", i):  # an object (or JSON lines) holding the bad value: reported line by line
        return _read_jsonl(file)
    rows: list[tuple[int, Any]] = []
    problems: list[Problem] = []
    i = _skip_space(text, i + 1)
    number = 0
    while i < len(text) and not (number == 0 and text[i] == "]"):
        number += 1
        end = _value_end(text, i)
        if end is None:
            problems.append(Problem(str(file), number, None, "the JSON array ends inside this element"))
            break
        obj, problem = _loads(text[i:end])
        if problem is None and not isinstance(obj, dict):
            problem = f"expected an object, got {type(obj).__name__}"
        if problem is None:
            rows.append((number, obj))
        else:
            problems.append(Problem(str(file), number, None, problem))
        i = _skip_space(text, end)
        if text.startswith(",", i):
            i = _skip_space(text, i + 1)
            continue
        if not text.startswith("]", i):
            problems.append(Problem(str(file), number, None, "expected ',' or ']' after this element"))
        break
    return rows, problems


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _value_end(text: str, start: int) -> int | None:
    """Index just past the JSON value at `start` (found by brackets and strings, not decoded), None if unfinished."""
    if text[start] == '"':
        match = _STRING_RE.match(text, start)
        return match.end() if match else None
    if text[start] not in "[{":
        match = _SCALAR_RE.match(text, start)
        return match.end() if match else start + 1
    depth = 0
    for match in _STRUCTURE_RE.finditer(text, start):
        token = match.group()
        if token[0] == '"':
            continue
        depth += 1 if token in "[{" else -1
        if depth == 0:
            return match.end()
    return None


def _table_rows(files: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows of Parquet/CSV/Arrow files (shards of one split), read with `datasets`, media left undecoded."""
    import datasets

    builder = TABLE_SUFFIXES[files[0].suffix]
    if any(TABLE_SUFFIXES[f.suffix] != builder for f in files):
        raise DataError(f"{files[0].parent}: a split's files must share one type, got "
                        f"{', '.join(sorted({f.suffix for f in files}))}")
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as exc:  # a corrupt or unreadable table: one line naming the file
        raise DataError(f"{files[0]}: cannot read table: {_first_line(exc)}") from exc
    return _rows_of(ds)


def _datasets_rows(where: Location) -> list[dict[str, Any]]:
    """Rows of a `save_to_disk` folder or a hub dataset's split."""
    import datasets

    if where.kind == "disk":
        try:
            ds = datasets.load_from_disk(str(where.root))
        except Exception as exc:
            raise DataError(f"{where.ref}: cannot read the saved dataset: {_first_line(exc)}") from exc
        if isinstance(ds, datasets.DatasetDict):  # `locate` chose a split that the index lists
            ds = ds[where.split]
        return _rows_of(ds)
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(where.ref, split=where.split)
    except Exception as exc:  # offline, unknown id, unknown split: say what was tried and how to go on
        raise DataError(
            f"{where.ref}: not a local file or folder, and loading it as a Hugging Face hub dataset (split "
            f"{where.split!r}) failed: {_first_line(exc)}. Without network, download it elsewhere and give the "
            "local folder."
        ) from exc
    return _rows_of(ds)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No "Generating train split" bars: reading a few files is not long work, and the console stays readable."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _rows_of(ds: Any) -> list[dict[str, Any]]:
    # media columns stay as stored ({"bytes", "path"}) instead of being decoded to PIL images here
    return ds.cast(_undecoded(ds.features)).to_list()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return short_repr(text[0] if text else type(exc).__name__, 300).strip("'\"")


def _undecoded(features: Any) -> Any:
    """The features with media columns (Image, Video, Audio: the ones with a `decode` switch) left undecoded."""
    out = features.copy()
    for name, feat in features.items():
        if dataclasses.is_dataclass(feat) and getattr(feat, "decode", False):
            out[name] = dataclasses.replace(feat, decode=False)
        elif isinstance(feat, list) and feat and dataclasses.is_dataclass(feat[0]) and getattr(feat[0], "decode",
                                                                                                 False):
            out[name] = [dataclasses.replace(feat[0], decode=False)]  # a list of images (`images: list[Image]`)
        elif type(feat).__name__ in ("Sequence", "List") and getattr(getattr(feat, "feature", None), "decode",
                                                                     False):
            out[name] = type(feat)(dataclasses.replace(feat.feature, decode=False))
    return out


def _plain_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        try:
            out[key] = _plain_value(value)
        except ValueError as exc:  # a JSON cell too deep or with an over-long integer
            raise ValueError(f"column {short_repr(key, 60)}: {exc}") from None
    return out


def _plain_value(value: Any) -> Any:
    """Undo table encodings: JSON text in CSV cells, stored media as {"bytes", "path"} -> bytes or path."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return _decode(value)
        except json.JSONDecodeError:  # text that merely starts with a bracket stays text
            return value
    if isinstance(value, dict) and set(value) == {"bytes", "path"}:
        return value["bytes"] if value["bytes"] is not None else value["path"]
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    return value


def _finish_record(obj: dict[str, Any], line: int, source: str) -> dict[str, Any]:
    record = dict(obj)
    rid = record.get("id")
    stem = Path(source.split("@")[0]).stem + ("-" + source.split("@")[1] if "@" in source else "")
    record["id"] = f"{stem}-{line}" if rid is None or rid == "" else str(rid)
    record["_line"] = line
    record["_source"] = source
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
            unread = unread_media(record, task)
            messages = [unread] if unread else task.check_record(record, ctx)
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
            samples.append(make_sample(task, record, ctx))
        except Exception as exc:  # evaluation reports skipped records instead of stopping
            problems.append(Problem(dataset.source, record["_line"], record["id"], f"{type(exc).__name__}: {exc}"))
    return samples, problems
