"""mmreason.runs.inspection on a small real run (tiny model, counting + grounding, GRPO with evaluations before and
after): loading, reward curves, group spreads, sample selection and its filters, and rendering rows with visualize."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from small_run import GROUP, MAX_VAL, PROMPTS, STEPS, TASKS, build_small_run

from mmreason.runs import inspection as ins

TRAIN_STAGE = "grpo-0"
EVAL_BEFORE, EVAL_AFTER = "eval-before", "eval-after-s00-grpo"
REWARDS = {"counting": {"format", "count_match"}, "grounding": {"format", "iou", "box_f1"}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_small_run(tmp_path_factory.getbasetemp() / "small-run")


@pytest.fixture(scope="module")
def view(run_dir) -> ins.RunView:
    return ins.load_run(run_dir)


@pytest.fixture(scope="module")
def planted(view) -> ins.RunView:
    """The run with known rewards written over the model's (the tiny model scores 0 everywhere).

    training rows: step * 0.1 + completion_index * 0.01, so groups of one step tie and training order breaks the tie;
    eval-before: 0 for every sample; eval-after: the sample's position among the held-out samples x 0.25 - 0.25, so
    the first sample got worse, the second stayed put and the later ones improved.
    """
    df = view.rollouts.copy()
    train = df["stage"] == TRAIN_STAGE
    df.loc[train, "reward_total"] = df.loc[train, "step"] * 0.1 + df.loc[train, "completion_index"] * 0.01
    df.loc[df["stage"] == EVAL_BEFORE, "reward_total"] = 0.0
    after = df["stage"] == EVAL_AFTER
    df.loc[after, "reward_total"] = [0.25 * i - 0.25 for i in range(int(after.sum()))]
    return dataclasses.replace(view, rollouts=df)


def test_load_run_reads_config_metrics_and_store(view):
    assert view.name == "small" and view.family == "qwen2_5_vl"
    assert view.stages == [EVAL_BEFORE, TRAIN_STAGE, EVAL_AFTER]
    assert view.train_stages == [TRAIN_STAGE] and view.eval_stages == [EVAL_BEFORE, EVAL_AFTER]
    assert len(view.rollouts[view.rollouts["stage"] == TRAIN_STAGE]) == STEPS * PROMPTS * GROUP
    assert len(view.rollouts[view.rollouts["stage"] == EVAL_AFTER]) == MAX_VAL * len(TASKS)
    grpo = view.metrics[view.metrics["stage"] == "grpo"]
    assert grpo["step"].tolist() == list(range(1, STEPS + 1)) and set(grpo["stage_index"]) == {0}
    assert set(view.reward_names) <= set().union(*REWARDS.values()) and "format" in view.reward_names


@pytest.mark.parametrize(
    "lines, expected",
    [
        (
            [
                ("eval-before", "before"),
                ("sft", None),
                ("eval-after-s00-sft", "after-s00-sft"),
                ("grpo", None),
                ("eval-s01-grpo-step2", "s01-grpo-step2"),
                ("grpo", None),
                ("eval-after-s01-grpo", "after-s01-grpo"),
            ],
            [-1, 0, 0, 1, 1, 1, 1],
        ),
        ([("grpo", None), ("eval-after-s00-grpo", "after-s00-grpo"), ("grpo", None)], [0, 0, 1]),
        ([("eval-mine", None), ("grpo", None)], [-1, 0]),  # a user's own label: attached to the stage before
    ],
)
def test_metrics_lines_get_their_config_stage(tmp_path, lines, expected):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"stage": s, "step": 1, **({"label": lab} if lab else {})}) + "\n" for s, lab in lines)
    )
    assert ins.read_metrics(path)["stage_index"].tolist() == expected


@pytest.mark.parametrize(
    "text, rows_or_error",
    [
        ('{"stage": "grpo", "step": 1}\n{"stage": "grpo", "st', 1),  # being written: the partial line is skipped
        ('{"stage": "grpo", "step": 1}\n\n{"stage": "grpo", "step": 2}\n', 2),
        # a line cut by a crash, or damaged: skipped with a warning naming it, the rest is read
        ('{"stage": "grpo"\n{"stage": "grpo", "step": 2}\n', "metrics.jsonl:1: not a JSON object"),
        ('[1, 2]\n{"stage": "grpo", "step": 2}\n', "metrics.jsonl:1: expected a JSON object"),
        ("", 0),
    ],
)
def test_read_metrics_skips_partial_and_damaged_lines(tmp_path, caplog, text, rows_or_error):
    path = tmp_path / "metrics.jsonl"
    path.write_text(text)
    if isinstance(rows_or_error, str):
        assert ins.read_metrics(path)["step"].tolist() == [2]
        assert rows_or_error in caplog.text
    else:
        assert len(ins.read_metrics(path)) == rows_or_error
        assert "skipping" not in caplog.text


def test_load_run_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        ins.load_run(tmp_path)


def _line_labels(fig) -> list[list[str]]:
    return [[line.get_label() for line in ax.get_lines()] for ax in fig.axes]


@pytest.mark.parametrize("task", [None, "counting", "grounding"])
def test_reward_curves_have_one_line_per_named_reward_plus_total(view, task):
    rows = ins.filter_rows(view.rollouts, task=task, stage="grpo")
    present = {n for n in ins.reward_names(rows) if rows[f"reward_{n}"].notna().any()}
    fig = ins.reward_curves(view, task=task)
    (labels,) = _line_labels(fig)
    assert sorted(labels) == sorted([*present, "total"])
    if task is not None:
        assert present == REWARDS[task]
    table = ins.reward_table(view, task=task)
    assert table["step"].tolist() == sorted(set(rows["step"]))


def test_reward_curves_mean_matches_the_store(planted):
    table = ins.reward_table(planted)
    train = planted.rollouts[planted.rollouts["stage"] == TRAIN_STAGE]
    expected = train.groupby("step")["reward_total"].mean()
    assert table.set_index("step")["total"].to_dict() == pytest.approx(expected.to_dict())


def test_group_distribution_shows_a_step_and_the_spread_over_steps(planted):
    fig = ins.group_reward_distribution(planted)
    assert len(fig.axes) == 2
    assert f"step {STEPS}" in fig.axes[0].get_title()
    stats = ins.group_stats(planted)
    assert len(stats) == STEPS * PROMPTS and (stats["n"] == GROUP).all()
    # planted rewards differ by completion index only: every group has the same, non-zero spread
    assert stats["std"].to_numpy() == pytest.approx([math.sqrt(2 / 3) * 0.01] * len(stats))
    assert "step 1" in ins.group_reward_distribution(planted, step=1).axes[0].get_title()
    with pytest.raises(ValueError, match="has no step 99"):
        ins.group_reward_distribution(planted, step=99)


def test_figures_of_a_run_without_training_rows_say_so(view):
    evals_only = dataclasses.replace(view, rollouts=view.rollouts[view.rollouts["stage"].str.startswith("eval-")])
    for fig in (ins.reward_curves(evals_only), ins.group_reward_distribution(evals_only)):
        assert "no training" in fig.axes[0].texts[0].get_text()


def _keys(frame: pd.DataFrame) -> list[tuple]:
    return list(zip(frame["step"], frame["group_id"], frame["completion_index"], strict=True))


@pytest.mark.parametrize(
    "kind, expected",
    [
        # ties (same step and completion index in both groups) keep training order: group 0 first
        ("best", [(STEPS, 0, GROUP - 1), (STEPS, 1, GROUP - 1), (STEPS, 0, GROUP - 2), (STEPS, 1, GROUP - 2)]),
        ("worst", [(1, 0, 0), (1, 1, 0), (1, 0, 1), (1, 1, 1)]),
    ],
)
def test_best_and_worst_order(planted, kind, expected):
    picked = ins.select_samples(planted, kind, 4, stage="grpo")
    assert _keys(picked) == expected
    values = picked["reward_total"].tolist()
    assert values == sorted(values, reverse=(kind == "best"))
    # the index still points into the view's rollouts
    assert planted.rollouts.loc[picked.index, "completion"].tolist() == picked["completion"].tolist()


def test_per_sample_keeps_one_row_per_sample(planted):
    picked = ins.select_samples(planted, "best", 10, stage="grpo", per_sample=True)
    assert not picked.duplicated(["task", "sample_id"]).any()
    assert _keys(picked)[:2] == [(STEPS, 0, GROUP - 1), (STEPS, 1, GROUP - 1)]


def test_most_improved_compares_first_and_last_appearance(planted):
    picked = ins.select_samples(planted, "most_improved", 10, stage="eval")
    after = planted.rollouts[planted.rollouts["stage"] == EVAL_AFTER]
    n = len(after)
    # the eval-after rewards rise with the row's position: the last held-out sample improved most
    assert picked["sample_id"].tolist() == after["sample_id"].tolist()[::-1]
    assert picked["improvement"].tolist() == pytest.approx([0.25 * i - 0.25 for i in range(n)][::-1])
    assert (picked["first_stage"] == EVAL_BEFORE).all() and (picked["stage"] == EVAL_AFTER).all()
    first = planted.rollouts.loc[picked["first_row"]]
    assert (first["stage"] == EVAL_BEFORE).all() and first["sample_id"].tolist() == picked["sample_id"].tolist()
    top = ins.select_samples(planted, "most_improved", 2, stage="eval", reward_range=(0.25, None))
    assert top["last_reward"].tolist() == [0.5, 0.25]


def test_most_improved_needs_two_appearances(planted):
    only_after = ins.select_samples(planted, "most_improved", 5, stage=EVAL_AFTER)
    assert only_after.empty and "improvement" in only_after.columns


@pytest.mark.parametrize(
    "filters, check",
    [
        ({"task": "counting"}, lambda r: set(r["task"]) == {"counting"}),
        ({"task": ["counting", "grounding"]}, lambda r: set(r["task"]) <= set(TASKS)),
        ({"steps": (2, 2)}, lambda r: set(r["step"]) == {2}),
        ({"steps": (None, 1)}, lambda r: set(r["step"]) == {1}),
        ({"reward_range": (0.2, 0.215)}, lambda r: r["reward_total"].between(0.2, 0.215).all() and len(r) > 0),
        ({"reward_range": (5.0, None)}, lambda r: r.empty),
        (
            {"stage": TRAIN_STAGE, "task": "grounding", "steps": (1, 2)},
            lambda r: set(r["task"]) <= {"grounding"} and set(r["step"]) <= {1, 2},
        ),
    ],
)
def test_filters(planted, filters, check):
    picked = ins.select_samples(planted, "best", 1000, **{"stage": "grpo", **filters})
    assert check(picked)
    assert (picked["stage"] == TRAIN_STAGE).all()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"kind": "median"}, ValueError, "kind must be one of best, worst, most_improved"),
        ({"n": -1}, ValueError, "n must be an int >= 0"),
        ({"steps": (1, 2, 3)}, ValueError, "steps must be a \\(low, high\\) pair"),
        ({"reward_range": "high"}, ValueError, "reward_range must be a \\(low, high\\) pair"),
        ({"reward": "accuracy"}, KeyError, "no reward 'accuracy' in the rollouts \\(known: total, "),
    ],
)
def test_bad_selection_arguments_say_what_was_expected(planted, kwargs, error, message):
    with pytest.raises(error, match=message):
        ins.select_samples(planted, **{"kind": "best", **kwargs})


def test_select_by_a_named_reward_skips_rows_it_does_not_apply_to(view):
    picked = ins.select_samples(view, "best", 100, reward="count_match")
    assert set(picked["task"]) == {"counting"}


@pytest.mark.parametrize("stage", [TRAIN_STAGE, EVAL_AFTER])
@pytest.mark.parametrize("task", TASKS)
def test_render_row_draws_the_row_with_its_task(view, stage, task):
    rows = view.rollouts[(view.rollouts["stage"] == stage) & (view.rollouts["task"] == task)]
    if rows.empty:
        pytest.skip(f"the stream drew no {task} prompt in this short run")
    image = ins.render_row(view, rows.iloc[0])
    assert isinstance(image, Image.Image) and image.width >= 64 and image.height >= 64
    assert ins.sample_for(view, rows.iloc[0]).id == rows.iloc[0]["sample_id"]


def test_render_row_of_an_unknown_sample_names_it(view):
    row = {**view.rollouts.iloc[0].to_dict(), "sample_id": "no-such-id"}
    with pytest.raises(LookupError, match="sample 'no-such-id' of task"):
        ins.render_row(view, row)


def test_relative_data_paths_are_found_from_data_roots(run_dir, tmp_path):
    """run.json keeps data paths as given to training, relative to a folder this process may not be in."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    info = json.loads((copy / "run.json").read_text())
    data_base = Path(info["data"][0]["train"]).parents[2]
    for d in info["data"]:
        d["train"] = str(Path(d["train"]).relative_to(data_base))
        d["val"] = str(Path(d["val"]).relative_to(data_base))
    (copy / "run.json").write_text(json.dumps(info))
    row = ins.load_run(copy).rollouts.iloc[0]
    with pytest.raises(FileNotFoundError, match="pass its folder in load_run"):
        ins.render_row(ins.load_run(copy), row)
    assert isinstance(ins.render_row(ins.load_run(copy, data_roots=[data_base]), row), Image.Image)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>two red</think><answer>2</answer>", ("two red", "2")),
        ("<answer> 3 </answer>", (None, "3")),
        ("<think>unfinished", (None, None)),
        ("<answer>1</answer> then <answer>4</answer>", (None, "4")),
        ("", (None, None)),
        ("<script>alert(1)</script>", (None, None)),
    ],
)
def test_split_completion(text, expected):
    assert ins.split_completion(text) == expected


def test_eval_table_has_a_row_per_evaluation(view):
    table = ins.eval_table(view)
    assert table.index.tolist() == ["before", "after-s00-grpo"]
    assert {"counting/accuracy", "grounding/mean_iou"} <= set(table.columns)
    assert not any("/reward/" in c for c in table.columns)


def test_eval_metrics_table_of_history_lines_is_the_runs_eval_table(view, run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    pd.testing.assert_frame_equal(ins.eval_metrics_table(lines), ins.eval_table(view))
    assert ins.eval_metrics_table([]).empty and ins.eval_metrics_table([{"stage": "grpo", "step": 1}]).empty
