"""The format rewards pay only for a valid answer of the task (`Task.valid_answer`): the layout alone is not enough,
or a policy collects the format reward with `<answer>]</answer>` and never answers (measured: tiny-model GRPO on
grounding and jigsaw collapsed onto such answers). Table-driven per task, through both scoring paths a run uses."""

from __future__ import annotations

import pytest
from mmreason.rewards.format import format_reward

from mmreason.data.records import build_samples, read_dataset
from mmreason.data.sample import Sample
from mmreason.data.synthetic import make_synthetic
from mmreason.rollout.scoring import RewardErrors, score_completions
from mmreason.tasks.common import score

# task -> (answers that are valid answers of the task, layout-correct answers that are not)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "counting": (["3", "0", "12"], ["many", "]", "3 or 4", "x"]),
    "grounding": (["[1, 2, 20, 30]", '[{"bbox_2d": [0, 0, 10, 10]}]', "[]", "none"],
                  [" 46]", "[0, 0, 9999, 9999]", "[-5, 0, 10, 10]", "bottom", "[1, 2, 3"]),
    "jigsaw": (["[2, 1, 4, 3]", "[1, 2, 3, 4]"], ["[1, 1, 3, 4]", "[4 2]", "[1, 2, 3, 4, 5]", "[0, 1, 2, 3]", "420"]),
    "geolocation": (["48.85, 2.35", "-33.9, 151.2"], ["95, 200", "Atlantis", "55", "]"]),
    "multiple_choice": (["A", "B", "D"], ["Z", "E", "A B", "?"]),
    "temporal_grounding": (["0.5, 2", "1, 3.5"], ["99998, 99999", "soon", "]"]),
    "classification": (["circle", "anything non-blank"], []),
    "math": (["7", "3/4"], []),
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Sample]:
    root = tmp_path_factory.mktemp("validity")
    out = {}
    for task in CASES:
        built, problems = build_samples(read_dataset(make_synthetic(task, root / task, n=4, seed=0)), task)
        assert not problems
        out[task] = built[0]
    return out


def wrap(answer: str) -> str:
    return f"<think>t</think><answer>{answer}</answer>"


@pytest.mark.parametrize("task", CASES)
def test_format_pays_only_for_valid_answers(task, samples):
    sample = samples[task]
    valid, invalid = CASES[task]
    completions = [wrap(a) for a in valid + invalid]
    expected = [1.0] * len(valid) + [0.0] * len(invalid)
    assert score("format", completions, [sample] * len(completions)) == expected
    named, _ = score_completions({"format": 1.0}, [sample] * len(completions), completions, 1, RewardErrors())
    assert named["format"] == expected


def test_gold_answers_are_valid(samples):
    for task, sample in samples.items():
        assert score("format", [sample.target], [sample]) == [1.0], task


def test_group_scoring_pairs_each_completion_with_its_sample(samples):
    a, b = samples["multiple_choice"], samples["jigsaw"]
    completions = [wrap("A"), wrap("[1, 1, 1, 1]"), wrap("[2, 1, 4, 3]"), wrap("A")]
    named, _ = score_completions({"format": 1.0}, [a, b], completions, 2, RewardErrors())
    assert named["format"] == [1.0, 0.0, 1.0, 0.0]  # group of 2 per sample: "A" is no tile order


def test_the_reward_alone_checks_the_layout_only():
    # without the column (a reward called outside a run) the layout alone decides
    assert format_reward([wrap("]"), "junk"]) == [1.0, 0.0]
    assert format_reward([wrap("]"), wrap("3")], answer_valid=[False, True]) == [0.0, 1.0]
