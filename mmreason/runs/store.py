"""The rollout store: one Parquet shard per (stage, step) under `<run_dir>/rollouts/`, one row per completion.

Shards are written atomically (temp file in the same folder, fsync, `os.replace`), so pandas / pyarrow can read the
store while training runs and never see half a shard. Re-appending a (stage, step) replaces its shard, so a
resumed run never duplicates a step; `delete_after` drops the shards a crash left behind past the checkpoint a run
resumes from.

Shard file name: `s<stage_index:02d>~<stage>~step<step:08d>.parquet` (lexical order == training order), the stage
written with "~" for "-" and "%XX" for ".", "_", " ", "~" and "%": `datasets` sorts files into splits by a word such as
"eval", "val" or "test" between the characters "-._ " and digits, and `load_dataset("parquet", data_dir=...)` would
otherwise read only the evaluations' shards (or only a user's "val" file's) and lose the rest. Shards named
`s<index>-<stage>-step<step>.parquet` (written before) are still read. Temp files start with "." and are never read
(pyarrow's dataset reader skips "."-prefixed files too). Prefer `read` over `pd.read_parquet(shard)` during training:
pyarrow's path reader stats and opens a file separately, and a shard replaced in between fails to parse; `read` reads
each shard through a single file handle.

One schema per run: every shard of a store has the same columns, in the same order, with the same Arrow types, so
pandas, `pyarrow.dataset` and `datasets.load_dataset("parquet", data_dir=...)` read the whole folder without losing a
column. A run declares its columns when it starts (`RolloutStore(reward_names=..., extra_columns=...)`: every reward
of every task of its config); a value a row lacks is stored as null. A column no shard had yet (a later `mmreason
eval` of another task, an undeclared extra) widens the store: the existing shards are rewritten with it, null.

Row schema (what `append` takes and `read` returns):
    run              str        the run's name: the row's own "run" if given, else RolloutStore's `run` (default:
                                the run directory's name)
    stage            str        stage name, unique within a run (e.g. "sft", "grpo-1", "eval-before"); set by
                                `append` (a row's own "stage" / "step" must agree with the append call)
    step             int        optimizer step within the stage; set by `append`
    sample_id        str        the record's id
    group_id         int        index of the prompt group (G completions of one prompt share it)
    completion_index int        0..G-1 within the group
    task             str        registered task name
    media            list[str]  media references (paths); None -> []
    prompt           str        rendered prompt text
    completion       str        decoded completion text
    reward_<name>    float      one column per named reward, sorted by name; None -> null (reward not applicable;
                                NaN in pandas)
    reward_total     float      weighted sum of the rewards
    advantage        float      group advantage used in the loss
    prompt_len       int        prompt tokens (media tokens included)
    completion_len   int        completion tokens
    truncated        bool       hit the length limit without EOS
    <extra>          any        optional extra columns: scalars as they are, dict / list / tuple values stored as
                                JSON text (e.g. "turns"; decode with json.loads)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmreason.runs.files import fsync_dir, fsync_file

if TYPE_CHECKING:
    from mmreason.data.sample import Sample

ROLLOUT_DIR = "rollouts"

CORE_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("stage", pa.string()),
        ("step", pa.int64()),
        ("sample_id", pa.string()),
        ("group_id", pa.int64()),
        ("completion_index", pa.int64()),
        ("task", pa.string()),
        ("media", pa.list_(pa.string())),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("reward_total", pa.float64()),
        ("advantage", pa.float64()),
        ("prompt_len", pa.int64()),
        ("completion_len", pa.int64()),
        ("truncated", pa.bool_()),
    ]
)
# what a caller must put in each row; run / stage / step are filled in by `append`
REQUIRED_FIELDS = tuple(n for n in CORE_SCHEMA.names if n not in ("run", "stage", "step"))

_SHARD_RE = re.compile(r"^s(\d{2})~(.+)~step(\d{8})\.parquet$")
_OLD_SHARD_RE = re.compile(r"^s(\d{2})-(.+)-step(\d{8})\.parquet$")  # the names shards had before
_ESCAPES = {"%": "%25", "~": "%7E", ".": "%2E", "_": "%5F", " ": "%20"}
# stage names become part of file names: no path separators, control characters or leading dot (temp files)
_STAGE_RE = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]{0,99}$")
_MAX_STEP = 10**8 - 1


class RolloutStore:
    """Writes a run's rollout shards; see the module docstring for the schema and file layout.

    Stages get an index in order of first appearance (recovered from existing shards on open), or the one
    passed to `append`; a stage name maps to exactly one index.
    """

    def __init__(
        self,
        run_dir: str | Path,
        run: str | None = None,
        *,
        reward_names: Iterable[str] = (),
        extra_columns: Mapping[str, pa.DataType | str] | None = None,
    ) -> None:
        """reward_names / extra_columns: the columns the run declares up front (see the module docstring); extra
        column types are Arrow types or their names ("string", "int64", ...)."""
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / ROLLOUT_DIR
        self.run = run if run is not None else self.run_dir.resolve().name
        self.declared = declared_schema(reward_names, extra_columns or {})
        self._schema: pa.Schema | None = None  # the shards' schema, read from the latest shard when first needed
        self._stages: dict[str, int] = {}
        self._rescan()

    def append(self, rows: list[dict[str, Any]], stage: str, step: int, *, stage_index: int | None = None) -> Path:
        """Write (or replace) the shard of (stage, step) with `rows`; returns the shard's path."""
        index = self._stage_index(stage, stage_index)
        if not isinstance(step, int) or not 0 <= step <= _MAX_STEP:
            raise ValueError(f"rollout store: step must be an int in [0, {_MAX_STEP}], got {step!r}")
        table = rows_to_table(rows, run=self.run, stage=stage, step=step)
        schema = self._schema_for(table.schema)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / shard_name(index, stage, step)
        _atomic_write_table(conform(table, schema), path)
        self._stages[stage] = index
        return path

    def schema(self) -> pa.Schema:
        """The store's schema: its shards' (they all share it), else the declared one."""
        if self._schema is None:
            shards = _list_shards(self.dir)
            self._schema = _shard_schema(shards[-1][3]) if shards else self.declared
        return self._schema

    def _schema_for(self, incoming: pa.Schema) -> pa.Schema:
        """The schema a new shard is written with; when it has columns the shards lack, they are widened first."""
        current = self.schema()
        target = merge_schemas(merge_schemas(current, self.declared), incoming)
        if not target.equals(current):
            shards = [path for _, _, _, path in _list_shards(self.dir)]
            for path in shards:  # every shard's own columns too: a folder written before one schema held, none lost
                target = merge_schemas(target, _shard_schema(path))
            for path in shards:
                table = _read_shard(path)
                if not table.schema.equals(target):
                    _atomic_write_table(conform(table, target), path)
        self._schema = target
        return target

    def read(self, stage: str | None = None) -> pd.DataFrame:
        """All complete shards as one frame (see `read`)."""
        return read(self.run_dir, stage)

    def steps(self) -> list[tuple[str, int]]:
        """(stage, step) of every complete shard, in training order."""
        return [(stage, step) for _, stage, step, _ in _list_shards(self.dir)]

    def position(self) -> tuple[int, int]:
        """(stage_index, step) of the latest shard, (-1, 0) when there is none: what `delete_after` keeps up to."""
        shards = _list_shards(self.dir)
        return (shards[-1][0], shards[-1][2]) if shards else (-1, 0)

    def delete_after(self, stage_index: int, step: int, keep: Collection[str] | None = None) -> list[Path]:
        """Remove shards written after (stage_index, step) and any temp files; returns the removed shards.

        Used on resume with the `position` (and the shard names, `keep`) a checkpoint recorded: a crash can leave
        shards newer than the checkpoint being resumed. With `keep`, a shard not named in it goes too, whatever its
        name's position. `delete_after(-1, 0)` clears the store.
        """
        removed = []
        for index, _, shard_step, path in _list_shards(self.dir):
            if (index, shard_step) > (stage_index, step) or (keep is not None and path.name not in keep):
                path.unlink(missing_ok=True)
                removed.append(path)
        if self.dir.is_dir():
            for tmp in self.dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        self._rescan()
        return removed

    def _rescan(self) -> None:
        self._schema = None
        self._stages = {stage: index for index, stage, _, _ in _list_shards(self.dir)}

    def _stage_index(self, stage: str, stage_index: int | None) -> int:
        if not isinstance(stage, str) or not _STAGE_RE.fullmatch(stage):
            raise ValueError(
                f"rollout store: stage must be 1-100 characters without '/', '\\', control characters or a leading "
                f"'.', got {stage!r}"
            )
        known = self._stages.get(stage)
        if stage_index is None:
            if known is not None:
                return known
            stage_index = max(self._stages.values(), default=-1) + 1
        if not isinstance(stage_index, int) or not 0 <= stage_index <= 99:
            raise ValueError(f"rollout store: stage_index must be an int in [0, 99], got {stage_index!r}")
        if known is not None and known != stage_index:
            raise ValueError(f"rollout store: stage {stage!r} already has index {known}, not {stage_index}")
        for other, index in self._stages.items():
            if index == stage_index and other != stage:
                raise ValueError(f"rollout store: stage index {stage_index} already belongs to stage {other!r}")
        return stage_index


def shard_name(stage_index: int, stage: str, step: int) -> str:
    """File name of a shard; lexical order == training order (see the module docstring)."""
    stage_part = "".join(_ESCAPES.get(c, c) for c in stage).replace("-", "~")
    return f"s{stage_index:02d}~{stage_part}~step{step:08d}.parquet"


def parse_shard_name(name: str) -> tuple[int, str, int] | None:
    """(stage_index, stage, step) of a shard's file name (either naming), None for any other file."""
    match = _SHARD_RE.fullmatch(name)
    if match:
        return int(match.group(1)), unquote(match.group(2).replace("~", "-")), int(match.group(3))
    match = _OLD_SHARD_RE.fullmatch(name)
    return (int(match.group(1)), match.group(2), int(match.group(3))) if match else None


def read(run_dir: str | Path, stage: str | None = None, *, unreadable: list[str] | None = None) -> pd.DataFrame:
    """Read every complete shard of a run into one frame, sorted by stage order, step, group, completion index.

    Temp files are ignored, so this is safe while training writes. An empty store gives an empty frame with
    the core columns. `media` comes back as python lists of str. A shard that cannot be read (corrupt, cut short)
    is a ValueError, or, when an `unreadable` list is given, skipped with its message appended to the list.
    """
    frames = []
    for index, shard_stage, _, path in _list_shards(Path(run_dir) / ROLLOUT_DIR):
        if stage is not None and shard_stage != stage:
            continue
        try:
            table = _read_shard(path)
        except FileNotFoundError:  # removed by delete_after between listing and reading
            continue
        except (pa.ArrowInvalid, OSError) as e:
            if unreadable is None:
                raise ValueError(f"{path}: unreadable rollout shard: {e}") from None
            unreadable.append(f"{path}: unreadable rollout shard: {e}")
            continue
        frame = table.to_pandas()
        frame["_stage_index"] = index
        frames.append(frame)
    frames = [f for f in frames if len(f)]
    if not frames:
        return CORE_SCHEMA.empty_table().to_pandas()
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["_stage_index", "step", "group_id", "completion_index"], kind="stable")
    df = df.drop(columns="_stage_index").reset_index(drop=True)
    df["media"] = df["media"].map(_as_str_list)
    return df


def completion_row(
    sample: Sample,
    completion: str,
    *,
    run: str,
    stage: str,
    step: int,
    group_id: int,
    completion_index: int,
    reward_total: float,
    rewards: dict[str, float | None],
    advantage: float,
    prompt_len: int,
    completion_len: int,
    truncated: bool,
) -> dict[str, Any]:
    """The core columns (and one `reward_<name>` per reward, None -> NaN) of one completion of `sample`: the row
    GRPO steps and evaluations store; a caller adds its extra columns to it."""
    row = {
        "run": run,
        "stage": stage,
        "step": step,
        "sample_id": sample.id,
        "group_id": group_id,
        "completion_index": completion_index,
        "task": sample.task,
        "media": list(sample.media),
        "prompt": sample.prompt_text,
        "completion": completion,
        "reward_total": float(reward_total),
        "advantage": float(advantage),
        "prompt_len": int(prompt_len),
        "completion_len": int(completion_len),
        "truncated": bool(truncated),
    }
    row.update({f"reward_{n}": (None if v is None else float(v)) for n, v in rewards.items()})
    return row


def declared_schema(reward_names: Iterable[str], extra_columns: Mapping[str, pa.DataType | str]) -> pa.Schema:
    """The core columns, one float64 `reward_<name>` per reward (sorted) and the typed extra columns."""
    fields = list(CORE_SCHEMA)
    fields += [pa.field(f"reward_{n}", pa.float64()) for n in sorted(set(reward_names)) if n != "total"]
    for name, type_ in extra_columns.items():
        fields.append(pa.field(name, pa.type_for_alias(type_) if isinstance(type_, str) else type_))
    return pa.schema(fields)


def merge_schemas(base: pa.Schema, more: pa.Schema) -> pa.Schema:
    """`base` with the columns of `more` it lacks, in the store's column order: core columns, rewards sorted by name,
    extras in order of appearance. A column typed null (all values None so far) takes the other side's type."""
    fields = {f.name: f for f in base}
    for field in more:
        known = fields.get(field.name)
        if known is None or pa.types.is_null(known.type):
            fields[field.name] = field if known is None or not pa.types.is_null(field.type) else known
        elif not pa.types.is_null(field.type) and known.type != field.type:
            raise ValueError(
                f"rollout store: column {field.name!r} holds {known.type} in this run's shards, not {field.type}"
            )
    core = [fields.pop(n) for n in CORE_SCHEMA.names if n in fields]
    rewards = [fields.pop(n) for n in sorted(fields) if n.startswith("reward_")]
    return pa.schema([*core, *rewards, *fields.values()])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, order and types: a column it lacks is all null."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def rows_to_table(rows: list[dict[str, Any]], *, run: str, stage: str, step: int) -> pa.Table:
    """Validate rows against the schema and build the shard's Arrow table (core columns first)."""
    if not isinstance(rows, list):
        raise TypeError(f"rollout store: rows must be a list of dicts, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"rollout store: row {i} must be a dict, got {type(row).__name__}")
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise ValueError(f"rollout store: row {i} misses {', '.join(missing)} (required: {REQUIRED_FIELDS})")
        for key in ("stage", "step"):
            if key in row and row[key] != {"stage": stage, "step": step}[key]:
                raise ValueError(f"rollout store: row {i} has {key}={row[key]!r} but was appended to {stage!r}/{step}")
    fixed = {"run": [r.get("run", run) for r in rows], "stage": [stage] * len(rows), "step": [step] * len(rows)}
    arrays, fields = [], []
    for field in CORE_SCHEMA:
        if field.name in fixed:
            values = fixed[field.name]
        else:
            values = [_core_value(r, field.name, i) for i, r in enumerate(rows)]
        arrays.append(_to_array(values, field.type, field.name))
        fields.append(field)
    reward_names = sorted({k for r in rows for k in r if k.startswith("reward_") and k != "reward_total"})
    for name in reward_names:
        values = [_float(r.get(name), name, i, missing=None) for i, r in enumerate(rows)]
        arrays.append(pa.array(values, pa.float64()))
        fields.append(pa.field(name, pa.float64()))
    known = set(CORE_SCHEMA.names) | set(reward_names)
    for name in _ordered_extras(rows, known):
        values = [_extra_value(r.get(name)) for r in rows]
        arrays.append(_to_array(values, None, name))
        fields.append(pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _core_value(row: dict[str, Any], name: str, i: int) -> Any:
    """Normalise one core field (None media -> [], None reward -> NaN) with an error naming row and field."""
    value = row[name]
    if name == "media":
        value = [] if value is None else value
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise ValueError(f"rollout store: row {i} field 'media' must be a list of str, got {value!r}")
        value = [str(v) for v in value]
    elif name in ("reward_total", "advantage"):
        value = _float(value, name, i)
    elif name == "truncated" and not isinstance(value, bool):
        if value not in (0, 1):
            raise ValueError(f"rollout store: row {i} field 'truncated' must be a bool, got {value!r}")
        value = bool(value)
    elif name == "sample_id" and value is not None:
        value = str(value)
    return value


def _float(value: Any, name: str, i: int, missing: float | None = math.nan) -> float | None:
    if value is None:
        return missing
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"rollout store: row {i} field {name!r} must be a number or None, got {value!r}") from None


def _extra_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _ordered_extras(rows: list[dict[str, Any]], known: set[str]) -> list[str]:
    """Extra column names in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in known:
                seen.setdefault(key)
    return list(seen)


def _to_array(values: list[Any], type_: pa.DataType | None, name: str) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        expected = f" of type {type_}" if type_ is not None else " of one consistent type"
        raise ValueError(f"rollout store: column {name!r} must hold values{expected}: {e}") from None


def _read_shard(path: Path) -> pa.Table:
    """Read a shard through one open file handle.

    `pq.read_table(path)` stats the file and opens it separately; a shard replaced in between makes it parse
    the new file with the old size. One handle pins one version of the file (os.replace swaps the name only).
    """
    with open(path, "rb") as f:
        data = f.read()
    return pq.read_table(pa.BufferReader(data))


def _shard_schema(path: Path) -> pa.Schema:
    """A shard's schema from its footer alone (no pandas metadata: shards are written without it)."""
    with open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow.remove_metadata()


def _as_str_list(value: Any) -> list[str]:
    return [] if value is None else [str(v) for v in value]


def _list_shards(folder: Path) -> list[tuple[int, str, int, Path]]:
    """(stage_index, stage, step, path) of complete shards, in training order."""
    if not folder.is_dir():
        return []
    shards = []
    for path in folder.iterdir():
        parsed = parse_shard_name(path.name)
        if parsed:
            shards.append((*parsed, path))
    return sorted(shards, key=lambda s: (s[0], s[2]))


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: readers see the old shard or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def position_of(shard_names: list[str]) -> tuple[int, int]:
    """(stage_index, step) of the latest of these shard file names, (-1, 0) for none (see `RolloutStore.position`)."""
    found = [parse_shard_name(name) for name in shard_names]
    return max(((f[0], f[2]) for f in found if f), default=(-1, 0))
