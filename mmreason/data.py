"""Datasets: reading records (JSONL, JSON, Parquet, CSV), checking them against a task, and the training stream.

A record is one JSON object (a JSONL line or a table row). Reading never stops at the first bad line: every line
that is not UTF-8, not JSON or not an object is collected as a `Problem` with its line number. Relative media paths
in records are resolved by the tasks against `Dataset.base_dir` (the data file's folder), which `Dataset.context`
puts into the `SampleContext`.

`SampleStream` is the trainer's source of samples: a seeded, weighted mixture of (task, dataset) sources whose
order depends only on (seed, epoch), whose cursor is saved in checkpoints, and which skips (and counts) records a
task cannot turn into a sample, so one bad record never ends a long run. The synthetic data makers live in
mmreason.synthetic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmreason.registry import get_task
from mmreason.sample import Sample, SampleContext

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


# ------------------------------------------------------------------------------------------------------ stream


@dataclass
class Source:
    """One entry of a training mixture: a task, its records, the mixture weight, and optionally its own context.

    ctx: the task's SampleContext (think, pixel budgets...); its base_dir is replaced by the dataset's folder.
    """

    task: Any
    dataset: Dataset
    weight: float = 1.0
    ctx: SampleContext | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.task, str):
            self.task = get_task(self.task)
        # parent/file rather than the full path, so a resumed run launched from elsewhere matches its checkpoint
        src = Path(self.dataset.source)
        self.name = self.name or f"{self.task.name}:{src.parent.name}/{src.name}"
        if not len(self.dataset):
            raise DataError(f"source {self.name!r} has no records")
        if not (isinstance(self.weight, int | float) and np.isfinite(self.weight) and self.weight > 0):
            raise DataError(f"source {self.name!r}: weight must be a positive number, got {self.weight!r}")
        self.ctx = self.dataset.context(self.ctx)


def mixture_counts(weights: Sequence[float], total: int) -> list[int]:
    """Split `total` positions in proportion to `weights` (largest remainder, so the counts sum to total)."""
    w = np.asarray(weights, dtype=float)
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


class SampleStream:
    """Endless, seeded, resumable iterator of `(task, sample)` for training.

    Each epoch has `epoch_size` positions (default: the total number of records), split between the sources in
    proportion to their weights; a source draws its records from fresh permutations of its dataset (a source with
    weight share above its size repeats records, one below it samples a subset), and the positions are shuffled.
    The order depends only on (seed, epoch). `state_dict()` holds the cursor (epoch, position), so a stream that
    loads it yields exactly what the saved one would have yielded next.

    Records whose `to_sample` raises are skipped: `skipped` counts them, `skip_reasons` counts them per
    "task: ExceptionType", and each record is logged once. A whole epoch of consecutive failures raises DataError.
    rank/world_size: with several processes, each takes the positions p with p % world_size == rank.
    sample.meta gets "source", "epoch" and "position" (for the rollout store).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        seed: int = 0,
        *,
        epoch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not sources:
            raise DataError("a SampleStream needs at least one source")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.sources = list(sources)
        self.seed = int(seed)
        self.epoch_size = int(epoch_size or sum(len(s.dataset) for s in self.sources))
        if self.epoch_size < world_size:
            raise DataError(f"epoch_size {self.epoch_size} is smaller than world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0  # next global position in the epoch to consider
        self.skipped = 0
        self.skip_reasons: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None

    def __iter__(self) -> SampleStream:
        return self

    def __next__(self) -> tuple[Any, Sample]:
        failures = 0
        while True:
            epoch, position, source, record = self._advance()
            try:
                sample = source.task.to_sample(record, source.ctx)
            except Exception as exc:  # one bad record must not end a long run: count it, log it once, go on
                self._skip(source, record, exc)
                failures += 1
                if failures >= max(1, self.epoch_size // self.world_size):
                    raise DataError(
                        f"{failures} consecutive records failed to become samples; last: {record['id']} "
                        f"({record['_source']}:{record['_line']}): {exc}"
                    ) from exc
                continue
            sample.meta.update(source=source.name, epoch=epoch, position=position)
            return source.task, sample

    @property
    def unreadable_lines(self) -> int:
        """Lines of the sources' files that could not be read as records (never drawn, so never in `skipped`)."""
        return sum(len(s.dataset.problems) for s in self.sources)

    def take(self, n: int) -> list[tuple[Any, Sample]]:
        """The next n items."""
        return [next(self) for _ in range(n)]

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, record index) of every position of `epoch`; a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        counts = mixture_counts([s.weight for s in self.sources], self.epoch_size)
        src = np.repeat(np.arange(len(self.sources)), counts)
        idx = np.concatenate([_draw(rng, len(s.dataset), c) for s, c in zip(self.sources, counts, strict=True)])
        perm = rng.permutation(self.epoch_size)
        return src[perm], idx[perm]

    def _advance(self) -> tuple[int, int, Source, dict[str, Any]]:
        """The next position of this rank (moving to the next epoch when the current one is done)."""
        while True:
            if self.position >= self.epoch_size:
                self.epoch, self.position = self.epoch + 1, 0
            position = self.position
            self.position += 1
            if position % self.world_size == self.rank:
                break
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, *self.epoch_order(self.epoch))
        source = self.sources[int(self._order[1][position])]
        return self.epoch, position, source, source.dataset.records[int(self._order[2][position])]

    def _skip(self, source: Source, record: dict[str, Any], exc: Exception) -> None:
        self.skipped += 1
        self.skip_reasons[f"{source.task.name}: {type(exc).__name__}"] += 1
        key = (source.name, record["id"])
        if key not in self._logged:
            self._logged.add(key)
            logger.warning(
                "skipping record %s (%s:%s) of task %s: %s",
                record["id"], record["_source"], record["_line"], source.task.name, exc,
            )

    def _fingerprint(self) -> list[list[Any]]:
        return [[s.name, len(s.dataset), float(s.weight)] for s in self.sources]

    def state_dict(self) -> dict[str, Any]:
        """The cursor and counters (JSON-serialisable), for checkpoints."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "epoch_size": self.epoch_size,
            "world_size": self.world_size,
            "skipped": self.skipped,
            "skip_reasons": dict(self.skip_reasons),
            "sources": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Continue from a saved cursor. With strict, a different seed, epoch size or set of sources is an error
        (resuming on other data would not continue the same sequence)."""
        if strict:
            mine = {"seed": self.seed, "epoch_size": self.epoch_size, "world_size": self.world_size,
                    "sources": self._fingerprint()}
            diff = [k for k, v in mine.items() if k in state and _as_json(state[k]) != _as_json(v)]
            if diff:
                details = "; ".join(f"{k}: saved {state[k]!r}, now {mine[k]!r}" for k in diff)
                raise DataError(f"data stream state does not match this stream ({details}); pass strict=False to "
                                "resume anyway")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = int(state.get("skipped", 0))
        self.skip_reasons = Counter(state.get("skip_reasons", {}))
        self._order = None


def _draw(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """`count` record indices from consecutive permutations of range(n) (each record once per pass)."""
    passes = -(-count // n)
    if not passes:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([rng.permutation(n) for _ in range(passes)])[:count]


def _as_json(value: Any) -> Any:
    """Normalise tuples/lists so a state read back from JSON compares equal to a live one."""
    return json.loads(json.dumps(value))
