"""Multiple choice: `parse_choice` (the one rule reading gold answers and model answers), the ground-truth checks
`check_options` / `check_choice`, and the `choice_match` reward."""

from __future__ import annotations

import pytest
from mmreason.rewards.choice import (
    check_choice,
    check_letter,
    check_options,
    format_choice,
    parse_choice,
    predicted_choice,
)
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward

OPTIONS = ["London", "Paris", "Rome", "Berlin"]
BIG = 100_000


@pytest.mark.parametrize(
    "text, solution, options, expected",
    [
        ("<answer>B</answer>", "B", None, 1.0),
        ("<answer>(B)</answer>", "B", None, 1.0),
        ("<answer>B. Paris</answer>", "B", OPTIONS, 1.0),
        ("<answer>Answer: B</answer>", "B", None, 1.0),
        ("<answer>b</answer>", "B", None, 1.0),
        ("<answer>Paris</answer>", "B", OPTIONS, 1.0),  # the option's text
        ("<answer>Paris</answer>", "B", None, 0.0),
        ("<answer>C</answer>", "B", OPTIONS, 0.0),
        ("<answer>F</answer>", "B", OPTIONS, 0.0),  # past the last option
        ("<answer>A or B</answer>", "B", None, 0.0),
        ("<answer>A dog</answer>", "A", None, 0.0),
        ("<answer>B</answer><answer>C</answer>", "C", None, 1.0),  # the last answer counts
        ("B", "B", None, 0.0),  # no answer tag
        ("<answer></answer>", "A", None, 0.0),
        ("<answer>" + "B" * 100_000 + "</answer>", "B", None, 0.0),
        ("<answer>B</answer>", "(b)", None, 1.0),  # loose solution spelling
        ("<answer>B</answer>", "Paris", OPTIONS, 1.0),  # a gold given as an option's text
        ("<answer>Paris</answer>", "paris", OPTIONS, 1.0),
        ("<answer>B. Rome</answer>", "B", OPTIONS, 1.0),  # the letter wins over contradicting text
        ("<answer>2</answer>", "B", ["1", "2"], 1.0),  # numeric options are text
    ],
)
def test_choice_match(text, solution, options, expected):
    assert get_reward("choice_match")([text], solution=[solution], options=[options]) == [expected]


@pytest.mark.parametrize(
    "solution, options",
    [
        ("Paris", None),  # option text without the options
        ("", None),
        (1, None),
        ("B", "ABCD"),
        ("B", [True, False]),
        ("B", ["only one"]),
        ("B", ["a", " "]),
        ("B", [f"o{i}" for i in range(27)]),
        ("F", OPTIONS),  # past the last option
        ("Madrid", OPTIONS),
        ("I think B", OPTIONS),
    ],
)
def test_bad_columns(solution, options):
    with pytest.raises(ColumnError):
        get_reward("choice_match")(["<answer>B</answer>"], solution=[solution], options=[options])


# The agreed rule, for gold answers and model answers alike: (text, options, letter or None).
CHOICE_RULE = [
    ("B", None, "B"),
    ("(B)", None, "B"),
    ("[C]", None, "C"),
    ("B.", None, "B"),
    ("B. a red square", None, "B"),  # letter then text: the letter
    ("B) Paris", None, "B"),
    ("B: Paris", None, "B"),
    ("(B) Paris", None, "B"),
    ("Answer: B", None, "B"),
    ("answer: (d)", None, "D"),
    ("The answer is (C).", None, "C"),
    ("The correct option is D", None, "D"),
    ("**D**", None, "D"),
    ("b", None, "B"),
    ("(b)", None, "B"),
    ("b.", None, "B"),
    ("Ｂ", None, "B"),  # full-width letter
    ("A dog", None, None),  # an article, not a choice
    ("I think B", None, None),
    ("a cat", None, None),
    ("", None, None),
    ("Paris", None, None),  # option text needs the options
    ("1", None, None),
    ("(B", None, None),
    ("B" * BIG, None, None),
    ("E", ["a", "b", "c"], None),  # past the last option
    ("C", ["a", "b", "c"], "C"),
    ("Paris", ["London", "Paris", "Rome"], "B"),
    ("paris!", ["London", "Paris", "Rome"], "B"),  # compared after normalize_text
    ("  PARIS ", ["London", "Paris", "Rome"], "B"),
    ("Île-de-France", ["ile de france", "Bretagne"], "A"),
    ("Paris", ["Paris", "Paris"], None),  # ambiguous option text
    ("Berlin", ["London", "Paris"], None),
    ("a red square", ["a red square", "a blue circle"], "A"),  # text starting with an article-letter
    ("A red square", ["a blue circle", "a red square"], "B"),
    ("B. a red square", ["a red square", "a blue circle"], "B"),  # the letter wins over the text
    ("A", ["B", "A"], "A"),  # a letter is read as a letter even when it is also an option's text
    ("Answer: Paris", ["London", "Paris"], "B"),  # the answer prefix is dropped before matching text
    ("Paris, I think", ["London", "Paris"], None),  # text must equal an option, not contain it
    ("???", ["???", "!!!"], None),  # text with nothing left after normalising never matches
]


@pytest.mark.parametrize("text, options, expected", CHOICE_RULE)
def test_parse_choice(text, options, expected):
    assert parse_choice(text, options) == expected
    assert predicted_choice(f"<answer>{text}</answer>", options) == expected


@pytest.mark.parametrize("text, options, expected", CHOICE_RULE)
def test_gold_is_read_by_the_same_rule(text, options, expected):
    checked_options = check_options(options) if options is not None and len(options) >= 2 else options
    if expected is None:
        with pytest.raises(ColumnError, match="solution: expected an option letter"):
            check_choice(text, checked_options)
    else:
        assert check_choice(text, checked_options) == expected
        score = get_reward("choice_match")(
            [f"<answer>{format_choice(expected)}</answer>"], solution=[text], options=[checked_options]
        )
        assert score == [1.0]


@pytest.mark.parametrize(
    "options, expected",
    [
        (["a", "b"], ["a", "b"]),
        ((" x ", "y"), ["x", "y"]),
        ([1, 2.5], ["1", "2.5"]),
        ([f"o{i}" for i in range(26)], [f"o{i}" for i in range(26)]),
    ],
)
def test_check_options(options, expected):
    assert check_options(options) == expected


@pytest.mark.parametrize("options", [None, "ab", ["a"], ["a", ""], ["a", None], ["a", True], [["a"], "b"], {"a": 1}])
def test_check_options_rejects(options):
    with pytest.raises(ColumnError, match="options: expected a list of 2 to 26 non-empty option texts"):
        check_options(options)


def test_check_choice_error_says_the_letters_of_the_options():
    with pytest.raises(ColumnError, match="option letter A-B or one option's text"):
        check_choice("C", ["x", "y"])
    with pytest.raises(ColumnError, match="answer: expected an option letter A-Z"):
        check_choice(None, name="answer")


def test_helpers():
    assert check_letter("c") == "C"
    assert predicted_choice("<answer>Rome</answer>", OPTIONS) == "C"
    assert format_choice("B") == "B" and parse_choice(format_choice("B"), OPTIONS) == "B"
