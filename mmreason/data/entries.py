"""A config's data entries (`data[i]`) as datasets: which data each reads (train or held-out split, format, column
mapping, media root), the sample context each gives its task (system prompt, prompt template), which stages use it
(`stage_entries`), and the rule that training and held-out data never mix.

An entry is a `mmreason.config.DataConfig` or the same fields as a mapping (as `run.json` stores them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from mmreason.data.locate import TRAIN_SPLITS, VAL_SPLITS, DataError, Location, locate
from mmreason.data.prepare import RowPlan
from mmreason.data.records import Dataset, read_dataset
from mmreason.data.sample import SampleContext

Which = Literal["train", "val"]


def field_of(entry: Any, name: str, default: Any = None) -> Any:
    """A field of an entry given as a dataclass or a mapping."""
    if isinstance(entry, Mapping):
        return entry.get(name, default)
    return getattr(entry, name, default)


def entry_ref(entry: Any, which: Which) -> tuple[str | None, str | None]:
    """(reference, split) of the entry's training or held-out data (reference None when it has none)."""
    if which == "train":
        return field_of(entry, "train") or None, field_of(entry, "split")
    return field_of(entry, "val") or None, field_of(entry, "val_split")


def entry_location(entry: Any, which: Which, ref: str | None = None) -> Location:
    """Where the entry's `which` data lives (`ref` replaces the reference, e.g. resolved against another folder)."""
    given, split = entry_ref(entry, which)
    return locate(ref or given or "", split, default_splits=TRAIN_SPLITS if which == "train" else VAL_SPLITS)


def read_entry(entry: Any, which: Which, *, strict: bool = False, ref: str | None = None) -> Dataset:
    """The entry's training or held-out records, through its format adapter and column mapping, with media resolved
    against its media_dir (default: the data's own folder)."""
    given, split = entry_ref(entry, which)
    plan = RowPlan(field_of(entry, "format"), dict(field_of(entry, "columns") or {}))
    dataset = read_dataset(
        ref or given or "",
        split,
        strict=strict,
        default_splits=TRAIN_SPLITS if which == "train" else VAL_SPLITS,
        prepare=plan,
        media_dir=field_of(entry, "media_dir"),
    )
    if not dataset.records and dataset.problems and not strict:
        # every row failed the same way (typically a wrong column name or format): one line, not one per row
        raise DataError(f"{dataset.source}: none of its {len(dataset.problems)} row(s) can be used; the first: "
                        f"{dataset.problems[0]}")
    return dataset


def entry_context(entry: Any, ctx: SampleContext) -> SampleContext:
    """`ctx` with the entry's prompt overrides (system prompt, prompt template)."""
    return dataclasses.replace(
        ctx,
        system_prompt=field_of(entry, "system_prompt") or ctx.system_prompt,
        prompt_template=field_of(entry, "prompt_template") or ctx.prompt_template,
    )


def uses_stage(entry: Any, stage: str) -> bool:
    """Whether the entry feeds stage kind `stage` (an entry without `stages` feeds every stage)."""
    stages = field_of(entry, "stages")
    return not stages or stage in stages


# sampling stages that read another stage kind's entries unless some entry names them: rejection-sampling SFT
# samples prompts and scores them with rewards, so it reads what GRPO reads (an `sft`-only entry, e.g. a
# chain-of-thought set, need not have what the rewards read)
READS_LIKE = {"rejection_sft": "grpo"}


def stage_entries(entries: Sequence[Any], stage: str) -> list[int]:
    """Indexes of the entries that feed stage kind `stage` (`uses_stage`); a kind of READS_LIKE that no entry names
    in its `stages` reads the entries of the kind it reads like."""
    named = any(stage in (field_of(e, "stages") or ()) for e in entries)
    kind = stage if named else READS_LIKE.get(stage, stage)
    return [i for i, e in enumerate(entries) if uses_stage(e, kind)]


def check_disjoint(entries: Sequence[Any]) -> None:
    """DataError when any entry's training data is also some entry's held-out data (same files, or same hub id or
    saved dataset and split): evaluating on what was trained on would report nothing true."""
    train = {i: entry_location(e, "train").key() for i, e in enumerate(entries) if entry_ref(e, "train")[0]}
    for j, entry in enumerate(entries):
        if not entry_ref(entry, "val")[0]:
            continue
        held_out = entry_location(entry, "val")
        for i, key in train.items():
            shared = key & held_out.key()
            if shared:
                what = ", ".join(sorted(f"{r}@{s}" if s else str(Path(r).name) for r, s in shared))
                raise DataError(f"data[{j}].val reads the same data as data[{i}].train ({what}): training and "
                                "held-out data must not mix; give the held-out split (e.g. val: path@test)")
