"""Fuzz every registered reward: any completion string with plausible columns gives None or a finite float in [0, 1].

EXAMPLE_COLUMNS must hold an entry (a hypothesis strategy for one row of columns) for every reward in the registry,
so registering a new reward without adding it here fails `test_every_reward_has_example_columns`.
"""

from __future__ import annotations

import json
import math

import mmreason.rewards  # noqa: F401  (registers the built-in rewards)
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmreason.registry import REWARDS

FAMILIES = st.sampled_from(["qwen2_5_vl", "qwen2_vl"])
SIDES = st.integers(1, 4000)


def _maybe_none(solution: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a real solution, sometimes None (a row the reward does not apply to)."""
    return st.one_of(solution, solution, solution, st.none())


def _span(side: int) -> st.SearchStrategy:
    """An ordered pair (low, high) of coordinates in [0, side]."""
    return st.tuples(st.floats(0, side), st.floats(0, side)).map(sorted)


@st.composite
def _grounding_row(draw) -> dict:
    w, h = draw(SIDES), draw(SIDES)
    # ground truth has ordered corners (x1 <= x2, y1 <= y2), as check_boxes requires
    boxes = draw(
        st.lists(st.tuples(_span(w), _span(h)).map(lambda p: [p[0][0], p[1][0], p[0][1], p[1][1]]), max_size=3)
    )
    return {
        "solution": draw(_maybe_none(st.just(boxes))),
        "image_size": [w, h],
        "model_size": [draw(st.integers(28, 2000)), draw(st.integers(28, 2000))],
        "coord_family": draw(st.one_of(FAMILIES, st.none())),
    }


_PERMUTATION = st.integers(1, 16).flatmap(lambda n: st.permutations(list(range(1, n + 1))))
_LOCATION = st.fixed_dictionaries(
    {"lat": st.floats(-90, 90), "lon": st.floats(-180, 180)},
    optional={
        "country": st.sampled_from(["France", "USA", "Japan", "Côte d'Ivoire"]),
        "region": st.sampled_from(["Île-de-France", "California", "東京都"]),
        "city": st.sampled_from(["Paris", "New York City", "東京"]),
    },
)
_SEGMENT = st.tuples(st.floats(0, 1e4), st.floats(0, 1e4)).filter(lambda p: p[0] != p[1]).map(sorted)


@st.composite
def _choice_row(draw) -> dict:
    """Options (2 to 6 non-empty texts) or None, and a gold letter among them (A-F without options)."""
    options = draw(
        st.one_of(st.none(), st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=2, max_size=6))
    )
    letters = "ABCDEF"[: len(options)] if options else "ABCDEF"
    return {"solution": draw(_maybe_none(st.sampled_from(letters))), "options": options}


EXAMPLE_COLUMNS: dict[str, st.SearchStrategy[dict]] = {
    # trajectory columns (None rows, i.e. single-turn completions, are covered in tests/test_tools.py)
    "tool_success": st.fixed_dictionaries({"tool_calls": st.integers(0, 5)}),
    "tool_discipline": st.fixed_dictionaries({"tool_errors": st.integers(0, 5), "budget_exceeded": st.booleans()}),
    "budget_length": st.fixed_dictionaries({
        "budget_words": st.just({"easy": 4, "hard": 16}),
        "budget_tag": st.one_of(st.none(), st.sampled_from(["easy", "hard", "medium", ""]))}),
    "budget_difficulty": st.fixed_dictionaries({
        "budget_words": st.just({"easy": 4, "hard": 16}),
        "difficulty_label": st.one_of(st.none(), st.sampled_from(["easy", "hard", "medium", " "])),
        "prompt_pass_rate": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))}),
    "format": st.just({}),
    "format_nothink": st.just({}),
    "iou": _grounding_row(),
    "box_f1": _grounding_row(),
    "jigsaw_exact": st.fixed_dictionaries({"solution": _maybe_none(_PERMUTATION)}),
    "jigsaw_fraction": st.fixed_dictionaries({"solution": _maybe_none(_PERMUTATION)}),
    "geo_distance": st.fixed_dictionaries({"solution": _maybe_none(_LOCATION)}),
    "geo_hierarchy": st.fixed_dictionaries({"solution": _maybe_none(_LOCATION)}),
    "cls_match": st.fixed_dictionaries(
        {
            "solution": _maybe_none(st.sampled_from(["cat", "golden retriever", "東京", "Café"])),
            "synonyms": st.one_of(st.none(), st.lists(st.sampled_from(["dog", "kitty", "retriever"]), max_size=3)),
        }
    ),
    "count_match": st.fixed_dictionaries({"solution": _maybe_none(st.integers(0, 10**6))}),
    "choice_match": _choice_row(),
    "math_verify": st.fixed_dictionaries(
        {"solution": _maybe_none(st.sampled_from(["4", "\\frac{1}{2}", "x^2+1", "(1, 2)", "\\sqrt{2}", "-3.5"]))}
    ),
    "tiou": st.fixed_dictionaries(
        {
            "solution": _maybe_none(_SEGMENT),
            "duration": st.one_of(st.none(), st.floats(1e4, 1e5)),
        }
    ),
}

# the built-in rewards (other test modules register probes of their own in the same registry)
BUILTIN = [n for n in REWARDS.names() if REWARDS.get(n).__module__.startswith("mmreason.rewards")]

_NUMBER_TEXT = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "9" * 400, "1,234", "３", "three", "1e12345"]),
)
_ANSWERS = st.one_of(
    st.text(max_size=80),
    _NUMBER_TEXT,
    st.lists(_NUMBER_TEXT, min_size=1, max_size=6).map(", ".join),
    st.lists(_NUMBER_TEXT, min_size=1, max_size=6).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(st.lists(st.floats(), min_size=4, max_size=4), max_size=3).map(
        lambda bs: json.dumps([{"bbox_2d": b, "label": "x"} for b in bs])
    ),
    st.tuples(*[_NUMBER_TEXT] * 4).map(lambda t: f"({t[0]},{t[1]}),({t[2]},{t[3]})"),
    st.tuples(st.floats(-100, 100), st.floats(-200, 200)).map(lambda p: f"{p[0]}, {p[1]}"),
    st.tuples(st.floats(0, 90), st.floats(0, 180), st.sampled_from("NS"), st.sampled_from("EW")).map(
        lambda t: f"{t[0]}°{t[2]} {t[1]}°{t[3]}"
    ),
    st.sampled_from(
        [
            "A",
            "(B)",
            "C. Paris",
            "Answer: D",
            "none",
            "[]",
            "Paris, France",
            "USA",
            "x^2+1",
            "\\frac{1}{2}",
            "(100!)!",
            "00:12 - 01:05",
            '{"lat": 1, "lon": 2}',
            "[[3, 1], [4, 2]]",
            "<answer>",
            "</answer>",
            "<think>",
            "<script>alert(1)</script>",
            "\u202e\u0000\ufeff",
        ]
    ),
)
_COMPLETIONS = st.one_of(
    st.text(max_size=200),
    st.builds(lambda t, a: f"<think>{t}</think><answer>{a}</answer>", st.text(max_size=40), _ANSWERS),
    st.builds(lambda a: f"<answer>{a}</answer>", _ANSWERS),
    st.builds(lambda a, b: f"<answer>{a}</answer> <answer>{b}</answer>", _ANSWERS, _ANSWERS),
    st.builds(lambda a: f"<answer><answer>{a}</answer></answer>", _ANSWERS),
    st.sampled_from(
        [
            "",
            "<answer></answer>",
            "<answer>" + "1" * 100_000 + "</answer>",
            "<answer>" + "[1,2,3,4]" * 10_000 + "</answer>",
            "<answer>" * 10_000,
        ]
    ),
)


@pytest.mark.parametrize("name", BUILTIN)
def test_every_reward_has_example_columns(name):
    assert name in EXAMPLE_COLUMNS, f"add example columns for reward {name!r} to EXAMPLE_COLUMNS"


def _has_solution(row: dict) -> bool:
    return row.get("solution", 0) is not None


def _level_known(row: dict) -> bool:
    label, rate = row.get("difficulty_label"), row.get("prompt_pass_rate")
    return (isinstance(label, str) and bool(label.strip())) or (isinstance(rate, float) and math.isfinite(rate))


# when a row is applicable (a None score is allowed only where it is not): a solution, by the reward contract; the
# budget's difficulty reward also needs the prompt's level (the record's, or its pass rate so far)
APPLICABLE = {"budget_difficulty": _level_known}


def _fuzz(name: str):
    reward = REWARDS.get(name)
    rows = st.lists(st.tuples(_COMPLETIONS, EXAMPLE_COLUMNS[name]), min_size=1, max_size=6)

    @settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(rows)
    def check(batch):
        completions = [c for c, _ in batch]
        keys = set().union(*(row.keys() for _, row in batch))
        columns = {k: [row.get(k) for _, row in batch] for k in keys}
        scores = reward(completions, **columns)
        assert len(scores) == len(completions)
        for score, (_, row) in zip(scores, batch, strict=True):
            if score is None:
                assert not APPLICABLE.get(name, _has_solution)(row)
            else:
                assert isinstance(score, float) and math.isfinite(score) and 0.0 <= score <= 1.0

    check()


@pytest.mark.parametrize("name", BUILTIN)
def test_reward_never_raises_and_stays_in_unit_interval(name):
    if name not in EXAMPLE_COLUMNS:
        pytest.fail(f"no example columns for reward {name!r}")
    _fuzz(name)
