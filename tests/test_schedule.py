"""Difficulty-aware data scheduling (`schedule`, mmreason.data.schedule): the weight maths and difficulty reading
(table-driven), a curriculum that moves the drawn difficulty from easy to hard, per-stage task mixtures, pass-rate
weighting, exact resumes mid-stage, the unscheduled order left bit-for-bit alone, the config's one-line errors, and
one short GRPO run through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.config import ConfigError, DifficultyStage, MixturePhase, ScheduleConfig, load_config
from mmreason.data.records import DataError, Dataset
from mmreason.data.sample import Sample
from mmreason.data.schedule import (
    Band,
    Schedule,
    band_weights,
    linear_target,
    minmax_normalise,
    parse_difficulty,
    record_difficulties,
    schedule_metrics,
    stage_band,
)
from mmreason.data.stream import SampleStream, Source
from mmreason.tasks.base import Task
from mmreason.train.prompt_stats import PromptStats

LEVELS = ScheduleConfig().levels


class Toy(Task):
    """A text-only task: the record's id is the prompt; "bad" records cannot become samples."""

    name = "toy_a"

    def to_sample(self, record, ctx):
        if record.get("bad"):
            raise ValueError(f"record {record['id']!r}: field 'bad' is set")
        return Sample(id=record["id"], task=self.name, messages=[{"role": "user", "content": record["id"]}])


class ToyB(Toy):
    name = "toy_b"


def dataset(prefix: str, difficulties: list, bad: tuple[int, ...] = ()) -> Dataset:
    records = []
    for i, d in enumerate(difficulties):
        record = {"id": f"{prefix}{i}", "_line": i + 1, "_source": prefix, "bad": i in bad}
        if d is not None:
            record["difficulty"] = d
        records.append(record)
    return Dataset(records, Path("."), prefix)


def stream_of(sources: list[Source], cfg: ScheduleConfig | None, seed: int = 7, **kwargs) -> SampleStream:
    return SampleStream(sources, seed=seed, schedule=Schedule(cfg, sources) if cfg else None, **kwargs)


def ids(items) -> list[str]:
    return [s.id for _, s in items]


# ------------------------------------------------------------------------------------------------ the maths


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3.0),
    (0.25, 0.25),
    ("0.7", 0.7),
    (" 2 ", 2.0),
    ("easy", 0.0),
    ("Medium", 1.0),
    ("  HARD ", 2.0),
    ("Level 5", 5.0),  # MATH's levels
    ("level3", 3.0),
    (None, None),  # no difficulty: the prior
    ("", None),  # an empty table cell
])
def test_parse_difficulty(value, expected):
    assert parse_difficulty(value, LEVELS) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("extreme", "unknown level 'extreme' (known: easy, medium, hard"),
    (True, "must be a number or a level name, got bool"),
    ([1], "must be a number or a level name, got list"),
    (float("nan"), "must be a finite number, got nan"),
    ("inf", "must be a finite number"),
    (10**400, "must be a finite number"),
])
def test_parse_difficulty_refuses_what_is_no_difficulty(value, message):
    with pytest.raises(ValueError) as info:
        parse_difficulty(value, LEVELS)
    assert message in str(info.value)


@pytest.mark.parametrize(("start", "end", "step", "steps", "expected"), [
    (0.0, 1.0, 0, 10, 0.0),
    (0.0, 1.0, 9, 10, 1.0),
    (0.0, 1.0, 3, 7, 0.5),
    (0.2, 0.8, 0, 1, 0.2),  # a one-step stage sits at start
    (1.0, 0.0, 5, 11, 0.5),  # hard to easy works too
    (0.0, 1.0, 20, 10, 1.0),  # past the end: stays at end
    (0.4, 0.4, 3, 10, 0.4),  # start = end: a fixed target
])
def test_linear_target(start, end, step, steps, expected):
    assert linear_target(start, end, step, steps) == pytest.approx(expected)


@pytest.mark.parametrize(("difficulty", "band", "width", "floor", "expected"), [
    ([0.5], Band(0.5, 0.5), 0.25, 0.05, [1.0]),  # on target
    ([0.75], Band(0.5, 0.5), 0.25, 0.0, [math.exp(-1)]),  # one width away
    ([0.75], Band(0.5, 0.5), 0.25, 0.2, [0.2 + 0.8 * math.exp(-1)]),
    ([0.0, 1.0], Band(0.5, 0.5), 0.1, 0.05, [0.05 + 0.95 * math.exp(-25)] * 2),  # the floor keeps them drawable
    ([0.1, 0.3, 0.6], Band(0.2, 0.4), 0.0, 0.1, [0.1, 1.0, 0.1]),  # width 0: the range alone, floor outside
    ([0.1, 0.3, 0.6], Band(0.2, 0.4), 0.0, 0.0, [0.0, 1.0, 0.0]),  # floor 0 too: a hard cut-off
    ([0.0, 0.2, 0.9], Band(0.5, 0.5), 0.0, 0.0, [0.0, 1.0, 0.0]),  # nothing left: the nearest prompts
    ([0.1, 0.9, 0.0], Band(0.5, 0.5), 0.0, 0.0, [1.0, 1.0, 0.0]),  # ... ties (up to rounding) all of them
    ([0.3, 0.3, 0.3], Band(0.9, 0.9), 0.0, 0.0, [1.0, 1.0, 1.0]),  # all the same difficulty: all drawable
    ([], Band(0.5, 0.5), 0.2, 0.0, []),
])
def test_band_weights(difficulty, band, width, floor, expected):
    got = band_weights(np.asarray(difficulty, dtype=float), band, width, floor)
    assert got.tolist() == pytest.approx(expected)


@pytest.mark.parametrize(("values", "expected"), [
    ([1, 2, 3], [0.0, 0.5, 1.0]),
    ([4, 4, 4], [0.5, 0.5, 0.5]),  # all the same difficulty
    ([10, math.nan, 0], [1.0, math.nan, 0.0]),  # missing stays missing (the prior comes later)
    ([math.nan, math.nan], [math.nan, math.nan]),
])
def test_minmax_normalise(values, expected):
    assert minmax_normalise(np.asarray(values, dtype=float)).tolist() == pytest.approx(expected, nan_ok=True)


def test_record_difficulties_normalise_per_source_and_give_missing_ones_the_prior(caplog):
    records = dataset("a", ["easy", "hard", None, "Level 1", 0.5]).records  # levels 0, 2; numbers 1, 0.5
    assert record_difficulties(records, LEVELS, 0.3, "a").tolist() == pytest.approx([0.0, 1.0, 0.3, 0.5, 0.25])
    assert "1 of 5 records of a have no 'difficulty': they get the prior 0.3" in caplog.text
    assert record_difficulties(dataset("b", [None] * 3).records, LEVELS, 0.5, "b").tolist() == [0.5] * 3
    assert record_difficulties(dataset("c", [7, 7]).records, LEVELS, 0.1, "c").tolist() == [0.5, 0.5]


def test_an_unknown_level_is_one_error_naming_the_record():
    sources = [Source(Toy(), dataset("a", ["easy", "hard", "brutal"]))]
    with pytest.raises(DataError) as info:
        Schedule(ScheduleConfig(enabled=True), sources)
    assert str(info.value).startswith("schedule: record 'a2' (a:3): field 'difficulty': unknown level 'brutal'")
    assert "\n" not in str(info.value)


def test_stage_band_per_curriculum():
    linear = ScheduleConfig(enabled=True, start=0.2, end=0.6)
    assert stage_band(linear, 3, 0, 5) == Band(0.2, 0.2) and stage_band(linear, 3, 4, 5) == Band(0.6, 0.6)
    staged = ScheduleConfig(enabled=True, curriculum="stages", stages=[DifficultyStage(1, 0.0, 0.4),
                                                                       DifficultyStage(2, target=0.9),
                                                                       DifficultyStage(3, low=0.5)])
    assert stage_band(staged, 1, 7, 10) == Band(0.0, 0.4)
    assert stage_band(staged, 2, 0, 10) == Band(0.9, 0.9)
    assert stage_band(staged, 3, 0, 10) == Band(0.5, 1.0)
    assert stage_band(staged, 4, 0, 10) is None  # a stage without an entry: no curriculum
    assert stage_band(ScheduleConfig(enabled=True, curriculum="none"), 1, 0, 10) is None


# ------------------------------------------------------------------------------------------------ the stream


def test_the_curriculum_moves_the_drawn_difficulty_from_easy_to_hard():
    source = Source(Toy(), dataset("a", list(range(100))))  # difficulty i/99 once normalised
    stream = stream_of([source], ScheduleConfig(enabled=True, width=0.15, floor=0.01))
    steps, means = 10, []
    for step in range(steps):
        stream.set_progress(1, step, steps)
        drawn = stream.take(40)
        means.append(float(np.mean([s.meta["difficulty"] for _, s in drawn])))
        assert means[-1] == pytest.approx(np.mean([int(s.id[1:]) / 99 for _, s in drawn]))
        metrics = schedule_metrics(stream, float)
        assert metrics["schedule/difficulty_mean"] == pytest.approx(means[-1])
        assert metrics["schedule/target"] == pytest.approx(step / (steps - 1))
    assert max(means[:2]) < 0.2 and min(means[-2:]) > 0.8
    assert np.corrcoef(means, np.linspace(0, 1, steps))[0, 1] > 0.98


def test_per_stage_mixture_weights_change_the_task_shares():
    sources = [Source(Toy(), dataset("a", [None] * 20)), Source(ToyB(), dataset("b", [None] * 20))]
    cfg = ScheduleConfig(enabled=True, curriculum="none", mixture=[MixturePhase(1, {"toy_a": 3}),
                                                                   MixturePhase(2, {"toy_a": 0, "toy_b": 1})])
    stream = stream_of(sources, cfg)
    stream.set_progress(1, 0, 1)
    first = ids(stream.take(800))
    assert 0.71 < sum(i.startswith("a") for i in first) / 800 < 0.79  # 3:1
    stream.set_progress(2, 0, 1)
    assert not any(i.startswith("a") for i in ids(stream.take(200)))  # weight 0: not drawn at all
    assert "schedule/target" not in schedule_metrics(stream, float)  # no curriculum: no target
    # a stage no phase names draws the unscheduled order, exactly
    stream.set_progress(3, 0, 1)
    assert stream.plan is None and schedule_metrics(stream, float) == {}
    plain = stream_of(sources, None)
    plain.load_state_dict(stream.state_dict(), strict=False)
    assert ids(stream.take(60)) == ids(plain.take(60))


def test_pass_rate_weighting_prefers_prompts_that_fail():
    source = Source(Toy(), dataset("a", [None] * 50))
    stats = PromptStats()
    solved, failed = [f"a{i}" for i in range(20)], [f"a{i}" for i in range(20, 40)]  # a40..a49: never drawn
    stats.update([(source.name, i) for i in solved], [[1.0, 1.0]] * 20, [[1.0, 1.0]] * 20)
    stats.update([(source.name, i) for i in failed], [[0.0, 0.0]] * 20, [[0.0, 0.0]] * 20)
    cfg = ScheduleConfig(enabled=True, by="pass_rate", start=1.0, end=1.0, width=0.25, floor=0.05, prior=0.5)
    stream = stream_of([source], cfg)
    stream.set_progress(1, 0, 10, stats)
    drawn = ids(stream.take(1000))
    share = {name: sum(i in group for i in drawn) / 1000 for name, group in
             (("failed", set(failed)), ("solved", set(solved)))}
    assert share["failed"] > 0.85 and share["solved"] < 0.06
    assert schedule_metrics(stream, float)["schedule/difficulty_mean"] > 0.9
    stream.set_progress(1, 0, 10, PromptStats())  # nothing drawn yet: every prompt at the prior, all alike
    assert 0.3 < sum(i in set(failed) for i in ids(stream.take(1000))) / 1000 < 0.5


def _simulate(stream: SampleStream, stats: PromptStats, steps: range, total: int) -> list[list[str]]:
    """Steps of a GRPO-like loop: set the progress, draw 3 prompts, count their groups in the pass rates."""
    drawn = []
    for step in steps:
        stream.set_progress(1, step, total, stats)
        batch = stream.take(3)
        keys = [(s.meta["source"], s.id) for _, s in batch]
        accuracy = [[float(int(s.id[1:]) % 3 == 0)] * 2 for _, s in batch]
        stats.update(keys, accuracy, accuracy)
        drawn.append(ids(batch))
    return drawn


@pytest.mark.parametrize("by", ["difficulty", "pass_rate"])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_resume_mid_stage_draws_exactly_what_an_uninterrupted_stream_draws(by, rank):
    def make() -> SampleStream:
        sources = [Source(Toy(), dataset("a", [i % 7 for i in range(30)], bad=(4, 11))),
                   Source(ToyB(), dataset("b", ["easy", "medium", "hard"] * 4), weight=2)]
        cfg = ScheduleConfig(enabled=True, by=by, width=0.2, mixture=[MixturePhase(1, {"toy_b": 0.5})])
        return stream_of(sources, cfg, rank=rank, world_size=2)

    uninterrupted = make()
    whole = _simulate(uninterrupted, PromptStats(), range(12), 12)
    first, stats = make(), PromptStats()
    head = _simulate(first, stats, range(5), 12)
    saved = json.loads(json.dumps({"stream": first.state_dict(), "stats": stats.state_dict()}))  # as checkpoints
    resumed, restored = make(), PromptStats()
    resumed.load_state_dict(saved["stream"])
    restored.load_state_dict(saved["stats"])
    assert head + _simulate(resumed, restored, range(5, 12), 12) == whole
    assert resumed.skipped == uninterrupted.skipped > 0  # bad records are still skipped and counted


def test_a_resume_under_another_schedule_is_refused():
    sources = [Source(Toy(), dataset("a", list(range(5))))]
    state = stream_of(sources, ScheduleConfig(enabled=True)).state_dict()
    with pytest.raises(DataError, match="schedule"):
        stream_of(sources, ScheduleConfig(enabled=True, end=0.5)).load_state_dict(state)
    with pytest.raises(DataError, match="schedule"):
        stream_of(sources, None).load_state_dict(state)


def test_without_progress_or_schedule_the_order_is_the_unscheduled_one_bit_for_bit():
    def sources() -> list[Source]:
        return [Source(Toy(), dataset("a", list(range(20)), bad=(3,))), Source(ToyB(), dataset("b", [1] * 10), 2)]

    plain = stream_of(sources(), None, seed=11)
    scheduled = stream_of(sources(), ScheduleConfig(enabled=True), seed=11)
    assert ids(plain.take(70)) == ids(scheduled.take(70))
    scheduled.set_progress(1, 3, 10)
    scheduled.set_progress(None)  # what the trainer does when its stage ends
    assert ids(plain.take(30)) == ids(scheduled.take(30))
    assert "schedule" not in plain.state_dict() and "difficulty" not in plain.take(1)[0][1].meta
    plain.set_progress(1, 0, 10)  # a no-op without a schedule
    assert plain.plan is None and schedule_metrics(plain, float) == {}


# ------------------------------------------------------------------------------------------------ the config


def _config(tmp_path: Path, schedule: dict, stages: list[str] | None = None) -> Path:
    data = tmp_path / "d.jsonl"
    data.write_text("")
    cfg = {"data": [{"task": "counting", "train": str(data)}], "output_dir": str(tmp_path / "runs"),
           "stages": stages or ["sft", "grpo", "grpo"], "schedule": {"enabled": True, **schedule}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(("schedule", "stages", "message"), [
    ({}, ["sft"], "schedule.enabled schedules the grpo stages, and `stages` has none"),
    ({"curriculum": "none"}, None, "schedule.enabled changes nothing"),
    ({"stages": [{"stage": 1, "target": 0.5}]}, None, "schedule.stages is read with schedule.curriculum: stages"),
    ({"curriculum": "stages"}, None, "schedule.curriculum: stages needs schedule.stages"),
    ({"curriculum": "stages", "stages": [{"stage": 0, "target": 0.5}]}, None,
     "schedule.stages[0].stage must be the position of a grpo stage in `stages` (0-based): 1, 2; got 0"),
    ({"curriculum": "stages", "stages": [{"target": 0.5}]}, None, "got None"),
    ({"curriculum": "stages", "stages": [{"stage": 1, "target": 0.5}, {"stage": 1, "low": 0.5}]}, None,
     "schedule.stages[1].stage 1 is named twice"),
    ({"curriculum": "stages", "stages": [{"stage": 1, "low": 0.8, "high": 0.2}]}, None,
     "schedule.stages[0].low (0.8) must be <= high (0.2)"),
    ({"curriculum": "stages", "stages": [{"stage": 1, "low": 0.1, "target": 0.5}]}, None, "not both"),
    ({"curriculum": "stages", "stages": [{"stage": 2}]}, None, "give a range (low, high) or a target"),
    ({"curriculum": "stages", "stages": [{"stage": 1, "target": 1.5}]}, None, "stages[0].target must be in [0, 1]"),
    ({"mixture": [{"stage": 1, "weights": {"grounding": 1}}]}, None,
     "schedule.mixture[0].weights names task(s) grounding that no GRPO data entry trains; its tasks: counting"),
    ({"mixture": [{"stage": 1, "weights": {"counting": -1}}]}, None, "finite weights >= 0"),
    ({"mixture": [{"stage": 1, "weights": {"counting": 0}}]}, None, "leaves stage 1 no task to draw"),
    ({"mixture": [{"stage": 1}]}, None, "schedule.mixture[0].weights is empty"),
    ({"mixture": [{"stage": 2, "weights": {"counting": 1}}] * 2}, None, "stage 2 is named twice"),
    ({"levels": {"easy": "low"}}, None, "schedule.levels maps level names to finite numbers"),
    ({"by": "passrate"}, None, "schedule.by must be one of difficulty, pass_rate, got 'passrate'; did you mean"),
    ({"curriculum": "cosine"}, None, "schedule.curriculum must be one of none, linear, stages"),
    ({"floor": -0.5}, None, "schedule.floor must be in [0, 1]"),
])
def test_a_bad_schedule_is_one_config_error(tmp_path, schedule, stages, message):
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, schedule, stages))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_good_schedule_loads_and_is_off_by_default(tmp_path):
    cfg = load_config(_config(tmp_path, {"curriculum": "stages", "by": "pass_rate",
                                         "stages": [{"stage": 1, "low": 0, "high": 0.4}, {"stage": 2, "target": 0.8}],
                                         "mixture": [{"stage": 2, "weights": {"counting": 2}}]}))
    assert cfg.schedule.stages[1] == DifficultyStage(2, target=0.8)
    assert cfg.schedule.mixture == [MixturePhase(2, {"counting": 2})]
    assert not load_config("quickstart").schedule.enabled


# ------------------------------------------------------------------------------------------------ a real run


def test_a_grpo_run_with_a_schedule_logs_the_difficulty_and_saves_the_schedule(tmp_path):
    from mmreason.data.synthetic import make_synthetic

    data = make_synthetic("counting", tmp_path / "data", n=12, seed=0)
    path = data / "train.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, record in enumerate(records):  # more shapes, harder; one record without a difficulty (the prior)
        if i:
            record["difficulty"] = ["easy", "medium", "hard", "Level 4"][int(record["solution"]) - 1]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {
        "name": "scheduled", "output_dir": str(tmp_path / "runs"), "think": False, "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(path)}],
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "schedule": {"enabled": True, "levels": {"easy": 1, "medium": 2, "hard": 3}, "width": 0.1, "floor": 0.0},
        "eval": {"at_start": False, "max_new_tokens": 4},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "scheduled"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["schedule/target"] for r in grpo] == [0.0, 1.0]  # easy first, hard last
    assert grpo[0]["schedule/difficulty_mean"] < 0.3 < 0.7 < grpo[1]["schedule/difficulty_mean"]
    [ckpt] = sorted((run_dir / "checkpoints").iterdir())
    assert "schedule" in json.loads((ckpt / "state.json").read_text())["stream"]


def test_a_resumed_grpo_run_draws_what_the_uninterrupted_one_drew(tmp_path, monkeypatch):
    import mmreason.train.grpo as grpo
    from mmreason.data.synthetic import make_synthetic
    from mmreason.runs import store

    data = make_synthetic("counting", tmp_path / "data", n=16, seed=0)

    def config(folder: str) -> str:
        cfg = {
            "name": "r", "output_dir": str(tmp_path / folder), "think": False, "stages": ["grpo"],
            "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
            "data": [{"task": "counting", "train": str(data / "train.jsonl")}],
            "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4, "save_every": 1},
            # the pass rates (checkpointed) steer the draws: prompts that fail are preferred
            "schedule": {"enabled": True, "by": "pass_rate", "start": 1.0, "end": 1.0, "width": 0.3},
            "eval": {"at_start": False, "max_new_tokens": 4},
        }
        (tmp_path / f"{folder}.json").write_text(json.dumps(cfg))
        return str(tmp_path / f"{folder}.json")

    runner = CliRunner()
    assert runner.invoke(app, ["train", config("a")], catch_exceptions=False).exit_code == 0
    real = grpo.periodic

    def crash_after_step_1(run, cfg, stage_index, stage, step, optimizer, scheduler):
        real(run, cfg, stage_index, stage, step, optimizer, scheduler)
        if step == 1:
            raise RuntimeError("killed")

    monkeypatch.setattr(grpo, "periodic", crash_after_step_1)
    with pytest.raises(RuntimeError, match="killed"):
        runner.invoke(app, ["train", config("b")], catch_exceptions=False)
    monkeypatch.setattr(grpo, "periodic", real)
    result = runner.invoke(app, ["train", config("b"), "--resume"], catch_exceptions=False)
    assert result.exit_code == 0 and "resuming from s00-grpo-step000001" in result.output
    drawn = [store.read(tmp_path / f / "r", stage="grpo-0")[["step", "sample_id"]].values.tolist() for f in "ab"]
    assert drawn[0] == drawn[1] and len(drawn[0]) == 2 * 2 * 2
    rows = [[json.loads(line) for line in (tmp_path / f / "r" / "metrics.jsonl").read_text().splitlines()]
            for f in "ab"]
    means = [[r["schedule/difficulty_mean"] for r in part if r["stage"] == "grpo"] for part in rows]
    assert means[0] == means[1] and len(means[0]) == 2 and means[0][0] == 0.5  # the first step: the prior alone
