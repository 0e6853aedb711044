"""Where a data entry's records live, and which split of them: a file, a folder (split files or the hub layout), a
`datasets` `save_to_disk` folder, an `.arrow` file, or a hub id.

A reference is a path or hub id with an optional `@split` (`data/refcoco@val`); a split may also be passed on its
own. `locate` turns it into a `Location` (what to read and how) or raises a DataError naming the reference and
what was found instead (e.g. the splits a folder does have). Reading is `mmreason.data.records`' job.

Folder rules, for split `s`, first match wins: `s.<ext>`, `s-*.<ext>`, `s/*.<ext>`, then the same under `data/`
(the hub layout `data/train-00000-of-00001.parquet`); ext is one of jsonl, ndjson, json, parquet, csv, arrow. A
folder holding `dataset_dict.json` (a saved DatasetDict) or `state.json` + `dataset_info.json` (a saved Dataset)
is read with `datasets.load_from_disk`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".arrow")
TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("validation", "val", "test")  # tried in order for a held-out entry given without a split
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SPLIT_NAME = re.compile(r"^[\w.-]+$")


class DataError(ValueError):
    """A data file or record that cannot be used; the message names the file and the lines."""


@dataclass(frozen=True)
class Location:
    """What to read for one (reference, split).

    kind: "files" (data files read by suffix), "disk" (a `save_to_disk` folder), "hub" (`datasets.load_dataset`).
    files: the data files of the split (kind "files"), in name order.
    root: the folder relative media paths resolve against (a file's folder, the data folder; cwd for a hub id).
    ref: the reference as given (without the split), for messages.
    split: the split read (None for a single file or a saved Dataset).
    """

    kind: Literal["files", "disk", "hub"]
    files: tuple[Path, ...]
    root: Path
    ref: str
    split: str | None

    @property
    def name(self) -> str:
        """How messages name this data: the file, or `ref@split`."""
        if self.kind == "files" and len(self.files) == 1:
            return str(self.files[0])
        return f"{self.ref}@{self.split}" if self.split else self.ref

    def key(self) -> frozenset[tuple[str, str | None]]:
        """What identifies the records read (files, or ref and split), to tell when two entries read the same."""
        if self.kind == "files":
            return frozenset((str(f.resolve()), None) for f in self.files)
        ref = str(Path(self.ref).resolve()) if self.kind == "disk" else self.ref
        return frozenset({(ref, self.split)})


def split_ref(text: str, split: str | None = None) -> tuple[str, str | None]:
    """(reference, split) from `path@split` and an optional separate split; both given and different is an error.

    A path that exists as written keeps any '@' in it.
    """
    ref, at = text, None
    if "@" in text and not Path(text).exists():
        head, tail = text.rsplit("@", 1)
        if head and _SPLIT_NAME.match(tail):
            ref, at = head, tail
    if at and split and at != split:
        raise DataError(f"{text}: split {at!r} in the reference and split {split!r} in the config disagree")
    return ref, at or split


def locate(text: str, split: str | None = None, *, default_splits: tuple[str, ...] = TRAIN_SPLITS) -> Location:
    """The Location of `text` (see the module doc); `default_splits` are tried in order when no split is given."""
    ref, split = split_ref(str(text), split)
    path = Path(ref).expanduser()
    if path.is_file():
        return _file(path, ref, split)
    if path.is_dir():
        return _folder(path, ref, split, default_splits)
    if looks_like_hub_id(ref):
        return Location("hub", (), Path.cwd(), ref, split or default_splits[0])
    raise DataError(f"{ref}: data file or folder does not exist")


def looks_like_hub_id(ref: str) -> bool:
    """Whether a reference that is not a local path reads as a hub id (`name` or `owner/name`, no data suffix)."""
    return bool(_HUB_ID.match(ref)) and not ref.startswith(".") and Path(ref).suffix not in DATA_SUFFIXES


def _file(path: Path, ref: str, split: str | None) -> Location:
    if path.suffix not in DATA_SUFFIXES:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; expected one of "
                        f"{', '.join(DATA_SUFFIXES)}, a folder or a hub id")
    if split not in (None, "train") and split not in path.stem:
        # a single file has no splits: a split that is not in its name is most likely a mistake
        raise DataError(f"{ref}: a single data file has no split {split!r}; give the folder that holds the splits "
                        "or leave the split out")
    return Location("files", (path,), path.parent.resolve(), ref, None)


def _folder(path: Path, ref: str, split: str | None, default_splits: tuple[str, ...]) -> Location:
    wanted = (split,) if split else default_splits
    if (path / "dataset_dict.json").is_file():  # a saved DatasetDict: its splits are listed in that file
        saved = _saved_splits(path / "dataset_dict.json")
        chosen = next((name for name in wanted if name in saved), None)
        if chosen is None:
            raise DataError(f"{ref}: no split {' or '.join(map(repr, wanted))} (it has {', '.join(map(repr, saved))})")
        return Location("disk", (), path.resolve(), ref, chosen)
    if (path / "state.json").is_file():  # a saved Dataset: one split
        return Location("disk", (), path.resolve(), ref, None)
    for name in wanted:
        files = split_files(path, name)
        if files:
            return Location("files", tuple(files), path.resolve(), ref, name)
    found = folder_splits(path)
    have = f"it has {', '.join(map(repr, found))}" if found else "it holds no data files named by split"
    raise DataError(f"{ref}: no {' or '.join(map(repr, wanted))} split ({have}; files are matched as <split>.jsonl, "
                    "<split>-*.parquet, data/<split>-*.parquet, ...)")


def _saved_splits(file: Path) -> list[str]:
    try:
        splits = json.loads(file.read_text()).get("splits", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{file}: unreadable saved-dataset index: {exc}") from None
    return [str(s) for s in splits]


def split_files(folder: Path, split: str) -> list[Path]:
    """The data files of `split` in `folder` by the module doc's rules (first matching pattern), in name order."""
    for base in (folder, folder / "data"):
        for pattern in (f"{split}{{}}", f"{split}-*{{}}", f"{split}/*{{}}"):
            files = sorted(p for s in DATA_SUFFIXES for p in base.glob(pattern.format(s)) if p.is_file())
            if files:
                return files
    return []


def folder_splits(folder: Path) -> list[str]:
    """Split names that the folder's data files are named after (for error messages)."""
    names = set()
    for base in (folder, folder / "data"):
        for p in base.glob("*"):
            stem = p.name if p.is_dir() else p.name[: -len(p.suffix)] if p.suffix in DATA_SUFFIXES else ""
            if stem and (p.is_file() or split_files(base, stem)):
                names.add(stem.split("-")[0])
    return sorted(n for n in names if n != "data")
