"""Reasoning budgets (AdaCtrl): the tag and word-count rules, the two budget rewards (table-driven, malformed and
adversarial inputs included), what the `budget` config does to prompts, columns and SFT targets, its one-line
config errors, and a run that trains with budgets and is evaluated with a forced level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mmreason.rewards.budget import (
    ColumnError,
    budget_difficulty_reward,
    budget_length_reward,
    parse_tag,
    think_words,
)
from typer.testing import CliRunner

from mmreason.cli import app
from mmreason.config import ConfigError, load_config
from mmreason.data.budget import Budget, apply_budget, budget_instruction, record_level
from mmreason.data.records import build_samples, read_dataset
from mmreason.data.sample import SampleContext
from mmreason.data.synthetic import make_synthetic
from mmreason.runs import store

LEVELS = {"easy": 4, "hard": 10}
WORDS = lambda n: " ".join(["w"] * n)  # noqa: E731


def done(think: str, answer: str = "3") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


@pytest.mark.parametrize(("completion", "tag", "words"), [
    (done("[Easy] a b c"), "easy", 3),
    (done("  [HARD]  a"), "hard", 1),
    (done("[Easy]"), "easy", 0),
    (done("a [Easy] b"), None, 3),                 # a tag must open the thinking
    (done("[] a"), None, 2),
    ("[Easy] <answer>3</answer>", None, None),     # no think part
    ("", None, None),
    (done("[Very Hard] x"), "very hard", 1),
])
def test_tag_and_words(completion, tag, words):
    assert parse_tag(completion) == tag
    assert think_words(completion) == words


@pytest.mark.parametrize(("completion", "forced", "score"), [
    (done("[Easy] " + WORDS(4)), None, 1.0),        # within the budget
    (done("[Easy] " + WORDS(6)), None, 0.5),        # halfway to twice the budget
    (done("[Easy] " + WORDS(8)), None, 0.0),
    (done("[Easy] " + WORDS(500)), None, 0.0),      # never negative
    (done("[Hard] " + WORDS(8)), None, 1.0),        # the hard budget is larger
    (done(WORDS(2)), None, 0.0),                    # no tag: no credit for brevity
    (done("[Medium] " + WORDS(1)), None, 0.0),      # not a level
    ("[Easy] w", None, 0.0),                        # no think part
    (done(WORDS(2)), "easy", 1.0),                  # a forced level needs no tag
    (done("[Hard] " + WORDS(8)), "easy", 0.0),      # the forced level wins over the completion's own tag
])
def test_budget_length(completion, forced, score):
    assert budget_length_reward([completion], budget_words=[LEVELS], budget_tag=[forced]) == [score]


@pytest.mark.parametrize(("tag", "label", "pass_rate", "score"), [
    ("Easy", "easy", None, 1.0),
    ("Hard", "easy", None, 0.0),
    ("Easy", None, 0.9, 1.0),      # solved often: easy
    ("Easy", None, 0.5, 1.0),      # half: still easy with two levels
    ("Hard", None, 0.49, 1.0),
    ("Easy", None, 0.0, 0.0),
    ("Easy", "easy", 0.0, 1.0),    # the record's own level wins over the pass rate
    ("Easy", None, None, None),    # nothing known: not applicable
    ("Easy", None, float("nan"), None),
    (None, "easy", None, 0.0),     # no tag
])
def test_budget_difficulty(tag, label, pass_rate, score):
    completion = done(f"[{tag}] w" if tag else "w")
    got = budget_difficulty_reward([completion], budget_words=[LEVELS], difficulty_label=[label],
                                   prompt_pass_rate=[pass_rate])
    assert got == [score]


def test_three_levels_split_the_pass_rate_in_thirds():
    levels = {"easy": 8, "medium": 32, "hard": 128}
    rates, tags = [0.9, 0.5, 0.1], ["Easy", "Medium", "Hard"]
    for rate, tag in zip(rates, tags, strict=True):
        assert budget_difficulty_reward([done(f"[{tag}] w")], budget_words=[levels], prompt_pass_rate=[rate]) == [1.0]


@pytest.mark.parametrize("bad", [{}, {"easy": 0}, {"easy": 1.5}, {"": 3}, "easy", None, {"easy": True}])
def test_a_bad_budget_column_names_the_reward(bad):
    with pytest.raises(ColumnError, match="budget_words"):
        budget_length_reward([done("[Easy] w")], budget_words=[bad])


@pytest.mark.parametrize(("difficulty", "level"), [
    ("easy", "easy"), (" HARD ", "hard"), (0.0, "easy"), (0.5, "easy"), (0.51, "hard"), (1.0, "hard"),
    (1.5, None), (-0.1, None), ("medium", None), (True, None), (None, None), (float("nan"), None),
])
def test_record_level(difficulty, level):
    assert record_level({"difficulty": difficulty}, list(LEVELS)) == level


@pytest.fixture(scope="module")
def counting_set(tmp_path_factory) -> Path:
    out = make_synthetic("counting", tmp_path_factory.mktemp("budget"), n=24, seed=0)
    for split in ("train", "val"):
        path = out / f"{split}.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        for i, row in enumerate(rows):
            row["difficulty"] = "easy" if row["solution"] <= 2 else "hard" if i % 3 else 0.9
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_the_budget_asks_for_the_tag_and_tags_the_sft_target(counting_set):
    budget = Budget(dict(LEVELS))
    samples, problems = build_samples(read_dataset(counting_set / "train.jsonl"), "counting",
                                      SampleContext(think=True, budget=budget))
    assert not problems
    for s in samples:
        assert s.messages[-1]["content"][-1]["text"].endswith(budget_instruction(budget))
        level = s.columns["difficulty_label"]
        assert level in LEVELS and s.columns["budget_words"] == LEVELS and s.columns["budget_tag"] is None
        assert s.target.startswith(f"<think>[{level.capitalize()}] ")
    forced = Budget(dict(LEVELS), force="easy")
    sample = build_samples(read_dataset(counting_set / "train.jsonl"), "counting",
                           SampleContext(think=True, budget=forced), limit=1)[0][0]
    text = sample.messages[-1]["content"][-1]["text"]
    assert "Begin your thinking with [Easy] and think in at most 4 words." in text
    assert sample.target.startswith("<think>[Easy] ") and sample.columns["budget_tag"] == "easy"


def test_without_a_budget_nothing_changes(counting_set):
    sample = build_samples(read_dataset(counting_set / "train.jsonl"), "counting", SampleContext(think=True),
                           limit=1)[0][0]
    assert "difficulty" not in sample.messages[-1]["content"][-1]["text"]
    assert "budget_words" not in sample.columns and sample.target.startswith("<think></think>")
    assert apply_budget(sample, {}, None) is sample


def _config(tmp_path: Path, data: Path, budget: dict, think: bool = True) -> Path:
    cfg = {
        "name": "b", "output_dir": str(tmp_path / "runs"), "think": think, "stages": ["sft", "grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "val": str(data / "val.jsonl"),
                  "max_val": 2}],
        "sft": {"steps": 2, "batch_size": 2},
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6},
        "eval": {"at_start": False, "max_new_tokens": 6, "batch_size": 2},
        "budget": budget,
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(("budget", "think", "message"), [
    ({"enabled": True}, False, "budget.enabled needs think: true"),
    ({"levels": {}}, True, "budget.levels maps level names"),
    ({"levels": {"easy": 0}}, True, "word budgets >= 1"),
    ({"force": "medium"}, True, "budget.force must be one of the levels (easy, hard)"),
    ({"length_weight": float("nan")}, True, "budget.length_weight must be a finite number"),
])
def test_a_bad_budget_is_one_config_error(tmp_path, counting_set, budget, think, message):
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, counting_set, budget, think))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_run_trains_with_budgets_and_evaluates_with_a_forced_level(tmp_path, counting_set):
    runner = CliRunner()
    path = _config(tmp_path, counting_set, {"enabled": True, "levels": LEVELS})
    result = runner.invoke(app, ["train", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "b"
    rows = store.read(run_dir)
    grpo = rows[rows["stage"].str.startswith("grpo")]
    assert {"reward_budget_length", "reward_budget_difficulty"} <= set(grpo.columns)
    assert grpo["reward_budget_length"].notna().all()  # every completion is scored for its length
    # the first draw of a prompt with a known level is scored; weights: format, count_match and the two budgets
    assert grpo["reward_budget_difficulty"].notna().any()
    result = runner.invoke(app, ["eval", str(run_dir), "--budget", "easy", "--limit", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "budget: easy (flag)" in result.output
    stored = store.read(run_dir)
    forced = stored[stored["stage"].str.startswith("eval-") & stored["prompt"].str.contains("think in at most 4")]
    assert len(forced) == 2
    bad = subprocess.run([sys.executable, "-m", "mmreason.cli", "eval", str(run_dir), "--budget", "medium"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a level of the run's budget (easy, hard)" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr
