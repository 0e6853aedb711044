"""Degenerate policies never beat honest guessing: for every built-in task, constant answers, empty answers, answers
repeated inside several tags, hedges listing many answers in one tag, the whole image (or video) as the answer, and
one answer copied G times score no more, on every reward and on the weighted total, than a random valid answer.

The baseline is exact, not sampled: each sample's rewards are averaged over its whole answer space (every count,
label, option letter, tile permutation, city, distinct value; boxes and segments on a grid), the space the
synthetic maker draws its answers from. Samples are balanced over the gold answers (each count, label, letter,
permutation, city and value equally often; the jigsaw maker never draws the unshuffled order, so one puzzle with
that answer is added from an original image), so a constant answer ties the baseline exactly on an exact-match
reward: it earns its hit rate and nothing more.

Not asserted, by design: a valid constant near the middle of the answers (a centred box, a mid-video segment, a
central city) beats uniformly random answers on the continuous rewards (IoU, tIoU, distance), as it would under any
reward that grows as an answer nears the truth; that is the data's prior, not a reward paying for an invalid answer.
`python tests/test_degenerate_policies.py` prints the whole table, those prior guesses included.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from mmreason.rewards.geolocation import format_latlon
from mmreason.rewards.jigsaw import format_order
from mmreason.rewards.parse import format_number

from mmreason.data.drawing import SHAPE_KINDS
from mmreason.data.records import build_samples, read_dataset
from mmreason.data.sample import Sample
from mmreason.data.synthetic import CITIES, make_synthetic
from mmreason.registry import get_task
from mmreason.tasks.common import score
from mmreason.train.rl import group_advantages

G = 4
TOL = 1e-9  # float rounding of the means only: ties are exact
TASKS = ("counting", "grounding", "jigsaw", "geolocation", "classification", "multiple_choice", "math",
         "temporal_grounding")
# per task: records to draw, maker options, the gold key samples are balanced over, samples kept per key
SETUP: dict[str, tuple[int, dict, Callable[[Sample], object] | None, int]] = {
    "counting": (48, {}, lambda s: s.columns["solution"], 4),
    "grounding": (8, {}, None, 0),
    "jigsaw": (120, {}, lambda s: tuple(s.columns["solution"]), 1),
    "geolocation": (60, {}, lambda s: s.columns["solution"]["city"], 2),
    "classification": (40, {}, lambda s: s.columns["solution"], 4),
    "multiple_choice": (60, {"questions": ("color", "position")}, lambda s: s.columns["solution"], 4),
    "math": (24, {}, lambda s: s.columns["solution"], 1),
    "temporal_grounding": (8, {}, None, 0),
}


def wrap(answer: str) -> str:
    return f"<think>t</think><answer>{answer}</answer>"


# ------------------------------------------------------------------------------------------------ answer spaces


def _grid(top: float, steps: int) -> list[float]:
    return sorted({float(v) for v in np.linspace(0.0, top, steps + 1).round(1)})


def answer_space(task: str, sample: Sample, samples: list[Sample]) -> list[str]:
    """Every valid answer an honest guess picks from (uniformly) for this sample."""
    cols = sample.columns
    if task == "counting":
        return [str(c) for c in range(1, 5)]  # the maker draws 1..4 shapes
    if task == "classification":
        return list(SHAPE_KINDS)
    if task == "multiple_choice":
        return [chr(ord("A") + i) for i in range(len(cols["options"]))]
    if task == "jigsaw":
        return [format_order(p) for p in itertools.permutations(range(1, len(cols["solution"]) + 1))]
    if task == "geolocation":
        return [format_latlon(c.lat, c.lon) for c in CITIES]
    if task == "math":
        return sorted({s.columns["solution"] for s in samples}, key=float)
    if task == "grounding":
        w, h = cols["model_size"]
        xs, ys = _grid(w, 4), _grid(h, 4)
        return [f"[{format_number(x1)}, {format_number(y1)}, {format_number(x2)}, {format_number(y2)}]"
                for x1, x2 in itertools.combinations(xs, 2) for y1, y2 in itertools.combinations(ys, 2)]
    if task == "temporal_grounding":
        ends = [t / 2 for t in range(int(cols["duration"] * 2) + 1)]
        return [f"{format_number(a)}, {format_number(b)}" for a, b in itertools.combinations(ends, 2)]
    raise KeyError(task)


def gold(task: str, sample: Sample) -> str:
    return sample.target.split("<answer>")[-1].split("</answer>")[0]


# degenerate constants of the continuous tasks (every valid answer is a constant of the label tasks), and invalid
# constants of every task: none may earn more than honest guessing
CONSTANTS = {
    "counting": ["0", "-1", "100"],
    "classification": ["shape", "a square or a circle"],
    "multiple_choice": ["E", "Z", "A B"],
    "jigsaw": ["[1, 1, 1, 1]", "[1, 1, 3, 4]", "[4, 4, 4, 4]", "[0, 1, 2, 3]"],
    "math": ["-1", "1000", "x"],
    "grounding": ["[0, 0, 0, 0]", "[0, 0, 1, 1]", "[-1e9, -1e9, 1e9, 1e9]", "[0, 0, 9999, 9999]", "[]", "none"],
    "temporal_grounding": ["0, 0", "0, 0.5", "0, 99999", "99998, 99999"],
    "geolocation": ["0, 0", "90, 0", "-90, 0", "95, 200", "Atlantis, Ocean"],
}
EMPTY = ["", "<think></think><answer></answer>", "<think>t</think><answer> </answer>", "<answer></answer>",
         "<think>t</think>", "<answer>"]


Mixture = Callable[[Sample], list[str]]  # a sample -> completions, one drawn uniformly at random


def strategies(task: str, samples: list[Sample]) -> dict[str, Mixture]:
    """name -> the strategy's completions for a sample. A strategy that uses answers of the space uses each of them
    in turn (e.g. each answer last among the tags), so its expected reward is exact like the baseline's."""
    spaces = {s.id: answer_space(task, s, samples) for s in samples}
    space = lambda s: spaces[s.id]  # noqa: E731
    out: dict[str, Mixture] = {}
    label_task = task in ("counting", "classification", "multiple_choice", "jigsaw", "math")
    fixed = answer_space(task, samples[0], samples) if label_task else []
    for answer in [*fixed, *CONSTANTS[task]]:
        out[f"constant {answer}"] = lambda s, a=answer: [wrap(a)]
    for i, text in enumerate(EMPTY):
        out[f"empty #{i}"] = lambda s, t=text: [t]
    out["12 answers, one tag each"] = lambda s: [
        "<think>t</think>" + "".join(f"<answer>{a}</answer>" for a in _turned(space(s), k + 1)[-12:])
        for k in range(len(space(s)))]
    out["a random answer in 3 tags"] = lambda s: ["<think>t</think>" + f"<answer>{a}</answer>" * 3 for a in space(s)]
    for name, sep in (("12 answers in one tag", ", "), ("12 answers in one tag, 'or'", " or ")):
        out[name] = lambda s, sep=sep: [wrap(sep.join(_turned(space(s), k)[:12])) for k in range(len(space(s)))]
    out["gold, then the worst answer"] = lambda s: [
        f"<think>t</think><answer>{gold(task, s)}</answer><answer>{_worst(task, s, samples)}</answer>"]
    if task == "grounding":
        out["whole image"] = lambda s: [wrap("[0, 0, {}, {}]".format(*s.columns["model_size"]))]
        out["whole image, Qwen2.5-VL JSON"] = lambda s: [
            wrap('[{{"bbox_2d": [0, 0, {}, {}], "label": "it"}}]'.format(*s.columns["model_size"]))]
    if task == "temporal_grounding":
        out["whole video"] = lambda s: [wrap(f"0, {format_number(s.columns['duration'])}")]
    return out


def _turned(items: list[str], k: int) -> list[str]:
    """`items` rotated to start at index k (so each item leads, or ends, one rotation)."""
    return items[k:] + items[:k]


# ------------------------------------------------------------------------------------------------ scoring


def weights(task: str) -> dict[str, float]:
    return get_task(task).reward_weights(think=True)


def reward_means(task: str, samples: list[Sample], completions: list[str]) -> dict[str, float]:
    """Mean of each named reward and of the weighted total over (sample, completion) pairs."""
    means, total = {}, np.zeros(len(samples))
    for name, w in weights(task).items():
        values = np.array(score(name, completions, samples), dtype=float)
        assert not np.isnan(values).any(), name  # every reward applies to every built-in sample
        means[name], total = float(values.mean()), total + w * values
    means["total"] = float(total.mean())
    return means


def expected(task: str, samples: list[Sample], strategy: Mixture) -> dict[str, float]:
    """Expected reward means of a strategy: over each sample's completions, then over the samples."""
    rows: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        completions = strategy(s)
        for name, value in reward_means(task, [s] * len(completions), completions).items():
            rows[name].append(value)
    return {name: float(np.mean(v)) for name, v in rows.items()}


def baseline(task: str, samples: list[Sample]) -> dict[str, float]:
    """Expected rewards of a uniformly random valid answer, averaged over the samples (exact: every answer)."""
    return expected(task, samples, lambda s: [wrap(a) for a in answer_space(task, s, samples)])


_WORST: dict[tuple[str, str], str] = {}


def _worst(task: str, sample: Sample, samples: list[Sample]) -> str:
    """The valid answer with the lowest total reward on this sample (a wrong answer after the right one)."""
    key = (task, sample.id)
    if key not in _WORST:
        space = answer_space(task, sample, samples)
        totals = np.zeros(len(space))
        for name, w in weights(task).items():
            totals += w * np.array(score(name, [wrap(a) for a in space], [sample] * len(space)))
        _WORST[key] = space[int(totals.argmin())]
    return _WORST[key]


# ------------------------------------------------------------------------------------------------ data


def balanced(samples: list[Sample], key: Callable[[Sample], object] | None, per: int) -> list[Sample]:
    if key is None:
        return samples
    kept: dict[object, list[Sample]] = defaultdict(list)
    for s in samples:
        if len(kept[key(s)]) < per:
            kept[key(s)].append(s)
    return [s for group in kept.values() if len(group) == per for s in group]


def build(task: str, root: Path) -> list[Sample]:
    n, options, key, per = SETUP[task]
    folder = make_synthetic(task, root / task, n=n, seed=0, val_fraction=0.0, **options)
    if task == "jigsaw":  # the one order the maker never draws: an unshuffled original is its puzzle
        with open(folder / "train.jsonl", "a", encoding="utf-8") as f:
            original = json.loads((folder / "train.jsonl").read_text().splitlines()[0])["original"]
            f.write(json.dumps({"id": "identity", "image": original, "grid": [2, 2], "solution": [1, 2, 3, 4]}) + "\n")
    samples, problems = build_samples(read_dataset(folder), task)
    assert not problems, problems
    return balanced(samples, key, per)


@pytest.fixture(scope="module")
def task_samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("degenerate")
    cache: dict[str, list[Sample]] = {}

    def get(task: str) -> list[Sample]:
        if task not in cache:
            cache[task] = build(task, root)
        return cache[task]

    return get


def test_samples_are_balanced_over_the_answers(task_samples):
    assert len(task_samples("jigsaw")) == 24  # every 2x2 permutation once
    assert sorted(s.columns["solution"] for s in task_samples("counting")) == sorted([1, 2, 3, 4] * 4)
    assert {s.columns["solution"]["city"] for s in task_samples("geolocation")} == {c.city for c in CITIES}
    assert all(len(s.columns["options"]) == 4 for s in task_samples("multiple_choice"))
    assert len(task_samples("math")) >= 12


# ------------------------------------------------------------------------------------------------ the check


def degenerate_table(task: str, samples: list[Sample]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(baseline, strategy -> reward means) for one task."""
    table = {name: expected(task, samples, make) for name, make in strategies(task, samples).items()}
    return baseline(task, samples), table


@pytest.mark.parametrize("task", TASKS)
def test_no_degenerate_policy_beats_a_random_valid_answer(task, task_samples):
    samples = task_samples(task)
    base, table = degenerate_table(task, samples)
    assert base["total"] > 0
    beaten = {
        (name, reward): (round(value, 4), round(base[reward], 4))
        for name, means in table.items()
        for reward, value in means.items()
        if value > base[reward] + TOL
    }
    assert not beaten, f"{task}: strategy/reward -> (its mean, random valid answer's): {beaten}"


@pytest.mark.parametrize("task", TASKS)
def test_one_answer_copied_g_times_earns_nothing_more(task, task_samples):
    samples = task_samples(task)
    answers = [answer_space(task, s, samples)[i % 3] for i, s in enumerate(samples)]
    group_samples = [s for s in samples for _ in range(G)]
    copies = [wrap(a) for a in answers for _ in range(G)]
    totals = torch.zeros(len(copies), dtype=torch.float64)
    for name, w in weights(task).items():
        single = score(name, [wrap(a) for a in answers], samples)
        copied = score(name, copies, group_samples)
        assert copied == [v for v in single for _ in range(G)], name  # no bonus, no penalty for agreeing
        totals += w * torch.tensor(copied, dtype=torch.float64)
    for scale_std in (True, False):  # a group of copies teaches nothing: its advantages are exactly 0
        assert torch.equal(group_advantages(totals.float(), G, scale_std=scale_std), torch.zeros(len(copies)))


def test_the_baseline_is_what_uniform_sampling_estimates(task_samples):
    # the exact baseline against a seeded Monte Carlo estimate (counting: the right count 1 time in 4)
    samples = task_samples("counting")
    rng = np.random.default_rng(0)
    draws = [wrap(str(int(rng.integers(1, 5)))) for _ in range(50) for _ in samples]
    sampled = reward_means("counting", [s for _ in range(50) for s in samples], draws)
    assert baseline("counting", samples)["count_match"] == pytest.approx(0.25)
    assert sampled["count_match"] == pytest.approx(0.25, abs=0.03)


# valid constants near the middle of the answers: the data's prior, printed by the table but not asserted
PRIOR_GUESSES: dict[str, list[Callable[[Sample], str]]] = {
    "grounding": [lambda s: wrap("[{}, {}, {}, {}]".format(*(round(v * f) for v, f in zip(
        s.columns["model_size"] * 2, (0.25, 0.25, 0.75, 0.75), strict=True))))],
    "temporal_grounding": [lambda s: wrap(f"{format_number(s.columns['duration'] / 4)}, "
                                          f"{format_number(s.columns['duration'] * 3 / 4)}")],
    "geolocation": [lambda s, c=c: wrap(format_latlon(c.lat, c.lon)) for c in CITIES],
}


def print_table(root: Path) -> None:
    """Per task: the random valid answer's total, every strategy's reward means, and the prior guesses."""
    for task in TASKS:
        samples = build(task, root)
        base, table = degenerate_table(task, samples)
        names = list(weights(task))
        print(f"\n{task} (n={len(samples)}): random valid answer " + _means(base, names))
        for name, means in table.items():
            print(f"  {name[:40]:40s} {_means(means, names)}")
        for make in PRIOR_GUESSES.get(task, []):
            means = reward_means(task, samples, [make(s) for s in samples])
            print(f"  prior guess {make(samples[0])[24:-9][:28]:28s} {_means(means, names)}")


def _means(means: dict[str, float], names: list[str]) -> str:
    return " ".join(f"{n}={means[n]:.3f}" for n in [*names, "total"])


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print_table(Path(tmp))
