"""Jigsaw rewards: exact order and fraction of tiles in place, including malformed orders."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmreason.rewards.jigsaw import check_order, format_order, order_exact, order_fraction, parse_order
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward

SOLUTION = [3, 1, 4, 2]


@pytest.mark.parametrize(
    "text, exact, fraction",
    [
        ("<answer>[3, 1, 4, 2]</answer>", 1.0, 1.0),
        ("<think>tiles</think><answer>3 1 4 2</answer>", 1.0, 1.0),
        ("<answer>[[3, 1], [4, 2]]</answer>", 1.0, 1.0),  # a grid of rows, row-major
        ("<answer>[3, 1, 2, 4]</answer>", 0.0, 0.5),
        ("<answer>[1, 2, 3, 4]</answer>", 0.0, 0.0),
        ("<answer>[3, 3, 3, 3]</answer>", 0.0, 0.0),  # repeats: not a permutation, no partial credit
        ("<answer>[3, 1, 4, 9]</answer>", 0.0, 0.0),  # out of range: not a permutation
        ("<answer>[3, 1, 3, 2]</answer>", 0.0, 0.0),  # a repeat with 3 of 4 tiles in place
        ("<answer>[2, 0, 3, 1]</answer>", 0.0, 0.0),  # 0-based answer
        ("<answer>[3, 1, 4]</answer>", 0.0, 0.0),  # wrong length
        ("<answer>[3, 1, 4, 2, 5]</answer>", 0.0, 0.0),
        ("<answer>[]</answer>", 0.0, 0.0),
        ("<answer>three one four two</answer>", 0.0, 0.0),
        ("<answer>[3, 1, 4, 2.0]</answer>", 0.0, 0.0),
        ("[3, 1, 4, 2]", 0.0, 0.0),  # no answer tag
        ("<answer>[1, 2, 3, 4]</answer><answer>[3, 1, 4, 2]</answer>", 1.0, 1.0),  # the last answer counts
        ("<answer>" + "3 1 4 2 " * 20_000 + "</answer>", 0.0, 0.0),
        ("", 0.0, 0.0),
    ],
)
def test_jigsaw_rewards(text, exact, fraction):
    assert get_reward("jigsaw_exact")([text], solution=[SOLUTION]) == [exact]
    assert get_reward("jigsaw_fraction")([text], solution=[SOLUTION]) == [fraction]


@pytest.mark.parametrize(
    "bad", [[1, 1, 2], [0, 1, 2], [1, 2, 4], [], "1 2 3", [1.0, 2.0], [True, 2], [[1, 2], [3, "4"]]]
)
def test_solution_must_be_a_permutation(bad):
    with pytest.raises(ColumnError, match="solution"):
        get_reward("jigsaw_fraction")(["<answer>[1, 2, 3]</answer>"], solution=[bad])


def test_grid_solution_and_not_applicable_rows():
    assert check_order([[2, 1], [4, 3]]) == [2, 1, 4, 3]
    assert get_reward("jigsaw_exact")(["<answer>2 1</answer>", "x"], solution=[[2, 1], None]) == [1.0, None]


def test_format_order_round_trips():
    assert format_order([3, 1, 4, 2]) == "[3, 1, 4, 2]"
    assert parse_order(format_order([3, 1, 4, 2])) == [3, 1, 4, 2]


permutations = st.integers(1, 16).flatmap(lambda n: st.permutations(list(range(1, n + 1))))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(permutations)
def test_identity_scores_one(solution):
    text = f"<answer>{format_order(solution)}</answer>"
    assert get_reward("jigsaw_fraction")([text], solution=[solution]) == [1.0]
    assert get_reward("jigsaw_exact")([text], solution=[solution]) == [1.0]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(permutations.flatmap(lambda s: st.tuples(st.just(s), st.permutations(s))))
def test_any_permutation_scores_in_unit_interval(pair):
    solution, pred = pair
    fraction = order_fraction(pred, solution)
    assert 0.0 <= fraction <= 1.0
    assert fraction == sum(p == s for p, s in zip(pred, solution, strict=True)) / len(solution)
    assert order_exact(pred, solution) == (1.0 if list(pred) == list(solution) else 0.0)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(permutations, st.lists(st.integers(-3, 20), max_size=20))
def test_only_permutations_earn_credit(solution, pred):
    # an order that is not a permutation of 1..n is not an answer to the puzzle: no credit for its lucky positions
    valid = sorted(pred) == list(range(1, len(solution) + 1))
    fraction = sum(p == s for p, s in zip(pred, solution, strict=False)) / len(solution)
    assert order_fraction(pred, solution) == (fraction if valid else 0.0)
    text = f"<answer>{format_order(pred)}</answer>"
    assert get_reward("jigsaw_fraction")([text], solution=[solution]) == [fraction if valid else 0.0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[3, 1, 4, 2]", [3, 1, 4, 2]),
        ("3 1 4 2", [3, 1, 4, 2]),
        ("3,1,4,2", [3, 1, 4, 2]),
        ("(3; 1; 4; 2).", [3, 1, 4, 2]),
        ("[[3, 1], [4, 2]]", [3, 1, 4, 2]),
        ("[3, 1, 4, 2", [3, 1, 4, 2]),
        ("12", [12]),
        ("order: 3 1 4 2", None),
        ("-1 2", None),
        ("1.5 2", None),
        ("[1.5, 2]", None),
        ("[true, 2]", None),
        ("1234567890 1", None),
        ("", None),
        ("[]", None),
        ("three one", None),
        ("1 " * 50_000, [1] * 50_000),
    ],
)
def test_parse_order(text, expected):
    assert parse_order(text) == expected


@pytest.mark.parametrize(
    "value, n, expected",
    [
        ([2, 1], None, [2, 1]),
        ((3, 1, 4, 2), 4, [3, 1, 4, 2]),
        ([[3, 1], [4, 2]], 4, [3, 1, 4, 2]),  # a grid of rows, row-major
        ([1, 2, 3], 4, "a permutation of 1..4"),  # not the grid's tile count
        ([1, 2, 3, 4, 5], 4, "a permutation of 1..4"),
        ([0, 1, 2, 3], 4, "a permutation of 1..4"),  # 0-based
        ([1, 1, 2, 3], None, "a permutation of 1..n"),
        ([1, 2.0], None, "a permutation of 1..n"),
        ([], None, "a permutation of 1..n"),
        (None, None, "a permutation of 1..n"),
    ],
)
def test_check_order(value, n, expected):
    if isinstance(expected, str):
        with pytest.raises(ColumnError, match=f"solution: expected {expected}"):
            check_order(value, n=n)
    else:
        assert check_order(value, n=n) == expected
        assert parse_order(format_order(expected)) == expected
