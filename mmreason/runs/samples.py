"""Rebuilding the Sample behind a rollout-store row, and drawing the row with its task's `visualize`.

A row names its task and sample id; the record is found in the data entries `run.json` recorded (their files
resolved against the data roots, the current folder and the run folder), matched by id and, where several data
files hold that id, by media path and prompt. The sample is rebuilt exactly as training built it
(`mmreason.data.prepare.make_sample`, with the entry's prompt overrides).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image

from mmreason.data.entries import entry_context, read_entry
from mmreason.data.locate import looks_like_hub_id, split_ref
from mmreason.data.prepare import MEDIA_FIELDS, make_sample
from mmreason.data.records import Dataset
from mmreason.data.sample import RecordLimits, Sample, SampleContext
from mmreason.registry import get_task

if TYPE_CHECKING:
    from mmreason.runs.inspection import RunView



def sample_for(view: RunView, row: Mapping[str, Any] | pd.Series) -> Sample:
    """Rebuild the Sample a store row was generated from (data entries of run.json, found by task and sample id).

    Ids alone can collide: two data files without ids both number their records `train-1`, `train-2`, ... So when
    several data sources hold the id, the record whose media references match the row's best (compared from the
    file name up, so a data folder moved since training still matches) is taken, and among equals the one whose
    rebuilt prompt is the row's.
    """
    task, sid, stage = str(row["task"]), str(row["sample_id"]), str(row.get("stage", ""))
    sources = _data_sources(view, task, prefer_val=stage.startswith("eval-"))
    found = []
    for entry, which, ref in sources:
        dataset, by_id = _dataset(view, entry, which, ref)
        if sid in by_id:
            found.append((entry, which, ref, dataset, by_id[sid]))
    if not found:
        where = ", ".join(ref for _, _, ref in sources) or "no data of that task in run.json"
        raise LookupError(f"sample {sid!r} of task {task!r} not found in {where}")
    media = [str(m) for m in _row_media(row)]
    scores = [_media_match(media, _record_media(record, dataset.base_dir)) for *_, dataset, record in found]
    best = [f for f, score in zip(found, scores, strict=True) if score == max(scores)]  # in run.json order
    samples = [_build(view, task, *f) for f in best]
    prompt = row.get("prompt")
    return next((s for s in samples if prompt is None or s.prompt_text == str(prompt)), samples[0])


def _build(view: RunView, task: str, entry: Mapping[str, Any], which: str, ref: str, dataset: Dataset,
           record: dict[str, Any]) -> Sample:
    key = (ref, which, str(record["id"]))
    if key not in view._samples:
        ctx = SampleContext(
            think=view.config.think,
            model_family=view.family,
            base_dir=dataset.base_dir,
            min_pixels=view.config.model.min_pixels,
            max_pixels=view.config.model.max_pixels,
            limits=RecordLimits.unbounded(),  # the row's sample was trained already: nothing to bound here
        )
        view._samples[key] = make_sample(get_task(task), record, entry_context(entry, ctx))
    return view._samples[key]


def _row_media(row: Mapping[str, Any] | pd.Series) -> list[Any]:
    media = row.get("media")
    return [] if media is None or isinstance(media, float) else list(media)


def _record_media(record: dict[str, Any], base_dir: Path) -> list[str]:
    """The media references a record's sample would carry (paths joined to the data's folder), without loading."""
    refs = []
    for name in MEDIA_FIELDS:
        value = record.get(name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, dict):
                item = item.get("path")
            if isinstance(item, str) and item and ":" not in item.split("/")[0]:
                refs.append(str(Path(base_dir) / Path(item).expanduser()))
    return refs


def _media_match(stored: list[str], refs: list[str]) -> int:
    """How well a record's media references match a row's: the path parts the pairs share from the end (file
    name first), summed; 0 when the counts differ."""
    if len(stored) != len(refs):
        return 0
    score = 0
    for a, b in zip(stored, refs, strict=True):
        for x, y in zip(reversed(Path(a).parts), reversed(Path(b).parts), strict=False):
            if x != y:
                break
            score += 1
    return score


def render_row(view: RunView, row: Mapping[str, Any] | pd.Series) -> Image.Image:
    """The row's completion drawn by its task's `visualize` (boxes, reassembled jigsaw, world map, ...)."""
    sample = sample_for(view, row)
    completion = row["completion"]
    return get_task(str(row["task"])).visualize(sample, "" if completion is None else str(completion))


def _data_sources(view: RunView, task: str, prefer_val: bool) -> list[tuple[Mapping[str, Any], str, str]]:
    """(entry, "train" | "val", resolved reference) of the task's data entries, held-out first when preferred."""
    entries = [d for d in view.info.get("data", []) if isinstance(d, Mapping) and d.get("task") == task]
    keys = ("val", "train") if prefer_val else ("train", "val")
    found = {}
    for which in keys:
        for entry in entries:
            given = entry.get(which)
            if given:
                ref, split = split_ref(str(given))
                hub = looks_like_hub_id(ref) and not any((b / ref).exists() for b in _bases(view))
                resolved = ref if hub else str(_resolve(view, ref))  # a hub id stays as it is
                found.setdefault((resolved, split, which), (entry, which, resolved + (f"@{split}" if split else "")))
    return list(found.values())


def _bases(view: RunView) -> list[Path]:
    return [*view.data_roots, Path.cwd(), view.run_dir.resolve(), *view.run_dir.resolve().parents]


def _resolve(view: RunView, path: str) -> Path:
    """A run.json data path: absolute, or relative to the folder training ran in, which is unknown here; try the
    data roots, the current folder, then the run directory and its ancestors."""
    p = Path(path)
    if p.is_absolute():
        return p
    bases = _bases(view)
    for base in bases:
        if (base / p).exists():
            return (base / p).resolve()
    tried = ", ".join(str(b / p) for b in bases[:4])
    raise FileNotFoundError(
        f"data file {path!r} of {view.run_dir}/run.json not found (tried {tried}, ...); "
        "pass its folder in load_run(..., data_roots=[...])"
    )


def _dataset(view: RunView, entry: Mapping[str, Any], which: str, ref: str) -> tuple[Dataset, dict[str, dict]]:
    key = (ref, which)
    if key not in view._datasets:
        dataset = read_entry(entry, which, ref=ref)
        view._datasets[key] = (dataset, {str(r["id"]): r for r in dataset.records})
    return view._datasets[key]
