"""The rollout store: atomic per-step shards, replace on re-append, reads during writes, text round-trips."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mmreason.runs.store import CORE_SCHEMA, RolloutStore, read, shard_name
from mmreason.runs.store import position_of as store_position_of


def _row(group: int, k: int, **over) -> dict:
    row = {
        "sample_id": f"rec-{group}",
        "group_id": group,
        "completion_index": k,
        "task": "grounding",
        "media": [f"images/{group}.png"],
        "prompt": "Find the box of the red square.",
        "completion": f"<answer>[{k}, 0, 4, 4]</answer>",
        "reward_format": 1.0,
        "reward_iou": 0.25 * k,
        "reward_total": 1.0 + 0.25 * k,
        "advantage": k - 0.5,
        "prompt_len": 40,
        "completion_len": 12,
        "truncated": False,
    }
    row.update(over)
    return row


def _group(group: int, g: int = 2) -> list[dict]:
    return [_row(group, k) for k in range(g)]


def test_append_and_read(tmp_path):
    store = RolloutStore(tmp_path / "run1")
    path = store.append(_group(0) + _group(1), "grpo", 1)
    assert path.name == "s00~grpo~step00000001.parquet"
    df = read(tmp_path / "run1")
    assert len(df) == 4
    assert list(df.columns[: len(CORE_SCHEMA)]) == CORE_SCHEMA.names
    assert set(df["run"]) == {"run1"} and set(df["stage"]) == {"grpo"} and set(df["step"]) == {1}
    assert df["media"].tolist() == [["images/0.png"]] * 2 + [["images/1.png"]] * 2
    assert df["reward_iou"].tolist() == [0.0, 0.25, 0.0, 0.25]
    assert df["truncated"].dtype == bool
    assert store.read().equals(df)


def test_read_order_is_stage_appearance_then_step_then_group(tmp_path):
    store = RolloutStore(tmp_path)
    store.append(_group(0), "sft", 2)
    store.append(list(reversed(_group(1) + _group(0))), "sft", 1)
    store.append(_group(0), "grpo", 1)  # "grpo" < "sft" lexically, but it came second
    df = read(tmp_path)
    assert list(zip(df["stage"], df["step"], df["group_id"], df["completion_index"], strict=True)) == [
        ("sft", 1, 0, 0), ("sft", 1, 0, 1), ("sft", 1, 1, 0), ("sft", 1, 1, 1),
        ("sft", 2, 0, 0), ("sft", 2, 0, 1), ("grpo", 1, 0, 0), ("grpo", 1, 0, 1),
    ]  # fmt: skip
    assert store.steps() == [("sft", 1), ("sft", 2), ("grpo", 1)]
    assert len(read(tmp_path, stage="grpo")) == 2
    # a new store on the same folder recovers the stage indices
    assert RolloutStore(tmp_path).append(_group(5), "grpo", 2).name.startswith("s01~grpo")


def test_reappend_replaces_the_shard(tmp_path):
    store = RolloutStore(tmp_path)
    store.append(_group(0, g=4), "grpo", 3)
    store.append(_group(0, g=2), "grpo", 3)
    df = read(tmp_path)
    assert len(df) == 2
    assert len(list((tmp_path / "rollouts").iterdir())) == 1


def test_read_ignores_temp_files(tmp_path):
    store = RolloutStore(tmp_path)
    store.append(_group(0), "grpo", 1)
    # a writer mid-way: a partial temp file beside the complete shard
    tmp = tmp_path / "rollouts" / f".{shard_name(0, 'grpo', 2)}.999.tmp"
    tmp.write_bytes(b"PAR1 half a file")
    assert len(read(tmp_path)) == 2
    assert store.steps() == [("grpo", 1)]


@pytest.mark.parametrize(
    "text",
    [
        "<think>é 漢字 🙂 \u200b</think><answer>[1, 2, 3, 4]</answer>",
        "<script>alert('x')</script> &amp; <b>bold</b> \"quotes\"",
        "line1\nline2\r\n\ttab \x00 nul",
        "",
        "x" * 100_000,
    ],
)
def test_text_round_trips(tmp_path, text):
    RolloutStore(tmp_path).append([_row(0, 0, completion=text, prompt=text, media=[text[:50] or "a"])], "grpo", 0)
    df = read(tmp_path)
    assert df["completion"][0] == text and df["prompt"][0] == text
    assert df["media"][0] == [text[:50] or "a"]


def test_empty_store_reads_as_empty_frame_with_columns(tmp_path):
    df = read(tmp_path / "missing")
    assert isinstance(df, pd.DataFrame) and len(df) == 0
    assert list(df.columns) == CORE_SCHEMA.names
    assert RolloutStore(tmp_path).steps() == []


def test_rewards_none_to_nan_and_media_none_to_empty(tmp_path):
    rows = [_row(0, 0, reward_iou=None, media=None), _row(0, 1, reward_total=None)]
    del rows[1]["reward_format"]
    RolloutStore(tmp_path).append(rows, "grpo", 0)
    df = read(tmp_path)
    assert math.isnan(df["reward_iou"][0]) and math.isnan(df["reward_format"][1])
    assert math.isnan(df["reward_total"][1])
    assert df["media"][0] == []


def test_reward_columns_may_differ_between_steps(tmp_path):
    store = RolloutStore(tmp_path)
    store.append([_row(0, 0)], "grpo", 0)
    other = _row(0, 0, reward_count=1.0)
    del other["reward_iou"]
    store.append([other], "grpo", 1)
    df = read(tmp_path)
    assert df["reward_count"].isna().tolist() == [True, False]
    assert df["reward_iou"].isna().tolist() == [False, True]


def test_extra_columns_nested_values_as_json(tmp_path):
    turns = [{"role": "assistant", "content": "<tool_call>zoom</tool_call>"}, {"role": "tool", "content": "ok"}]
    RolloutStore(tmp_path).append([_row(0, 0, turns=turns, note="ü", score_hint=3)], "grpo", 0)
    df = read(tmp_path)
    assert json.loads(df["turns"][0]) == turns
    assert df["note"][0] == "ü" and df["score_hint"][0] == 3


def test_delete_after_drops_newer_shards_and_temp_files(tmp_path):
    store = RolloutStore(tmp_path)
    for step in (1, 2, 3):
        store.append(_group(0), "sft", step)
    for step in (1, 2):
        store.append(_group(0), "grpo", step)
    (tmp_path / "rollouts" / f".{shard_name(1, 'grpo', 3)}.1.tmp").write_bytes(b"x")
    removed = store.delete_after(0, 2)
    assert sorted(p.name for p in removed) == [
        shard_name(0, "sft", 3), shard_name(1, "grpo", 1), shard_name(1, "grpo", 2)
    ]  # fmt: skip
    assert store.steps() == [("sft", 1), ("sft", 2)]
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [
        shard_name(0, "sft", 1), shard_name(0, "sft", 2)
    ]  # fmt: skip
    # the grpo stage's index is free again after a delete that removed all of it
    assert store.append(_group(0), "grpo", 1).name == shard_name(1, "grpo", 1)


def test_delete_after_with_kept_names_drops_a_shard_written_under_an_earlier_index(tmp_path):
    store = RolloutStore(tmp_path)
    for step in (1, 2):
        store.append(_group(0), "grpo", step)
    kept = [p.name for p in sorted((tmp_path / "rollouts").glob("*.parquet"))]
    assert store.position() == (0, 2)
    store.append(_group(0), "grpo", 3)
    stray = store.append(_group(0), "sft", 9, stage_index=1).name  # a crash left it after the checkpoint
    (tmp_path / "rollouts" / stray).rename(tmp_path / "rollouts" / shard_name(0, "sft", 9))
    removed = store.delete_after(*store_position_of(kept), keep=set(kept))
    assert sorted(p.name for p in removed) == [shard_name(0, "grpo", 3), shard_name(0, "sft", 9)]
    assert store.steps() == [("grpo", 1), ("grpo", 2)]
    assert RolloutStore(tmp_path / "empty").position() == (-1, 0) and store_position_of([]) == (-1, 0)


def test_pyarrow_reads_a_shard_directly(tmp_path):
    path = RolloutStore(tmp_path).append(_group(0), "grpo", 0)
    table = pq.read_table(path)
    assert table.schema.field("media").type == CORE_SCHEMA.field("media").type


def test_empty_rows_write_an_empty_shard(tmp_path):
    store = RolloutStore(tmp_path)
    store.append(_group(0), "grpo", 0)
    store.append([], "grpo", 0)
    assert store.steps() == [("grpo", 0)]
    assert len(read(tmp_path)) == 0


@pytest.mark.parametrize(
    "rows, stage, step, kwargs, match",
    [
        ([{"sample_id": "a"}], "grpo", 0, {}, "row 0 misses group_id"),
        (["not a dict"], "grpo", 0, {}, "row 0 must be a dict"),
        ([_row(0, 0, media="a.png")], "grpo", 0, {}, "'media' must be a list of str"),
        ([_row(0, 0, reward_iou="high")], "grpo", 0, {}, "'reward_iou' must be a number"),
        ([_row(0, 0, truncated="yes")], "grpo", 0, {}, "'truncated' must be a bool"),
        ([_row(0, 0, group_id="g0")], "grpo", 0, {}, "column 'group_id' must hold values of type int64"),
        ([_row(0, 0, step=4)], "grpo", 3, {}, "has step=4"),
        ([_row(0, 0, mixed=1), _row(0, 1, mixed="a")], "grpo", 0, {}, "column 'mixed'"),
        (_group(0), "bad/stage", 0, {}, "stage must be 1-100 characters"),
        (_group(0), ".hidden", 0, {}, "stage must be 1-100 characters"),
        (_group(0), "line\n", 0, {}, "stage must be 1-100 characters"),
        (_group(0), "", 0, {}, "stage must be 1-100 characters"),
        (_group(0), "grpo", -1, {}, "step must be an int"),
        (_group(0), "grpo", 0, {"stage_index": 100}, "stage_index must be an int"),
    ],
)
def test_append_errors(tmp_path, rows, stage, step, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        RolloutStore(tmp_path).append(rows, stage, step, **kwargs)
    assert not (tmp_path / "rollouts").exists() or not any((tmp_path / "rollouts").iterdir())


def test_stage_index_conflicts(tmp_path):
    store = RolloutStore(tmp_path)
    store.append(_group(0), "sft", 0, stage_index=0)
    with pytest.raises(ValueError, match="already has index 0"):
        store.append(_group(0), "sft", 1, stage_index=1)
    with pytest.raises(ValueError, match="already belongs to stage 'sft'"):
        store.append(_group(0), "grpo", 1, stage_index=0)
    assert store.append(_group(0), "grpo", 0, stage_index=3).name == "s03~grpo~step00000000.parquet"


def test_unreadable_shard_names_its_path(tmp_path):
    folder = tmp_path / "rollouts"
    folder.mkdir()
    (folder / shard_name(0, "grpo", 0)).write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="s00~grpo~step00000000.parquet: unreadable rollout shard"):
        read(tmp_path)


def test_reader_never_sees_a_partial_shard_while_a_writer_replaces_it(tmp_path):
    import threading

    store = RolloutStore(tmp_path)
    store.append(_group(0, g=2), "grpo", 0)
    stop = threading.Event()

    def writer():
        for i in range(40):
            store.append(_group(0, g=2 if i % 2 else 6), "grpo", 0)
        stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    sizes = set()
    while not stop.is_set():
        sizes.add(len(read(tmp_path)))
    thread.join()
    assert sizes <= {2, 6}


@pytest.mark.parametrize("stage", ["eval-s00-sft-step000010-my data", "grpo-1", "étape-漢字", "a-step00000001-b"])
def test_free_form_stage_names_round_trip(tmp_path, stage):
    store = RolloutStore(tmp_path)
    store.append(_group(0), stage, 7)
    assert store.steps() == [(stage, 7)]
    assert set(read(tmp_path, stage=stage)["stage"]) == {stage}


def test_row_run_name_wins_over_the_folder_name(tmp_path):
    RolloutStore(tmp_path / "folder").append([_row(0, 0, run="exp/a"), _row(0, 1)], "grpo", 0)
    assert read(tmp_path / "folder")["run"].tolist() == ["exp/a", "folder"]


def test_shard_names_keep_split_words_apart_and_older_names_still_read(tmp_path):
    """`datasets` reads "eval" / "val" / "test" between "-._ " or digits in a file name as a split and would load only
    those shards from the folder; the stage is written with "~" for "-" (and %XX for ". _ ~ %"), read back whole."""
    import re

    store = RolloutStore(tmp_path)
    for stage in ("eval-val-x.y_z", "test", "grpo-0"):
        path = store.append(_group(0), stage, 1)
        assert not re.search(r"(^|[-._ 0-9])(eval|val|test)([-._ 0-9]|$)", path.name), path.name
    old = tmp_path / "rollouts" / "s03-eval-before-step00000000.parquet"  # a shard named the way it was before
    store.append(_group(0), "eval-before", 0, stage_index=3)
    (tmp_path / "rollouts" / shard_name(3, "eval-before", 0)).rename(old)
    assert RolloutStore(tmp_path).steps() == [("eval-val-x.y_z", 1), ("test", 1), ("grpo-0", 1), ("eval-before", 0)]
