"""Golden and adversarial cases for the generic answer reading (tags, numbers, text) and the reward column plumbing
(mmreason.rewards.parse), plus the linear-time and never-raise checks run over every answer parser, generic or
answer-type specific (each type's own golden cases are in tests/test_rewards_<type>.py).
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmreason.rewards.choice import parse_choice
from mmreason.rewards.geolocation import parse_latlon
from mmreason.rewards.grounding import is_abstention, parse_boxes
from mmreason.rewards.jigsaw import parse_order
from mmreason.rewards.parse import (
    ColumnError,
    bad_value,
    completion_text,
    extract_answer,
    extract_think,
    format_number,
    normalize_text,
    parse_int,
    parse_number,
    score_each,
)
from mmreason.rewards.temporal import parse_segment

BIG = 100_000


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>3</answer>", "3"),
        ("<think>reason</think><answer> 3 </answer>", "3"),
        ("<think>r</think>\n<answer>\nB\n</answer>\n", "B"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),  # the last complete pair wins
        ("<answer>1</answer><answer>2", "1"),  # an unclosed trailing tag is ignored
        ("<answer>a<answer>b</answer>c</answer>", "b"),  # nested: the innermost complete pair
        ("<answer></answer>", ""),
        ("no tags at all", None),
        ("", None),
        ("<answer>unclosed", None),
        ("</answer>3<answer>", None),
        ("<ANSWER>3</ANSWER>", None),  # tags are case-sensitive
        ("<answer><script>alert(1)</script></answer>", "<script>alert(1)</script>"),
        ("<answer>東京 🗼</answer>", "東京 🗼"),
        ("<answer>" * 5000 + "x</answer>", "x"),
        ("x" * BIG + "<answer>ok</answer>", "ok"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("<think> a </think><answer>1</answer>", "a"), ("<answer>1</answer>", None), ("<think>open", None)],
)
def test_extract_think(text, expected):
    assert extract_think(text) == expected


@pytest.mark.parametrize(
    "text, number, integer",
    [
        ("3", 3.0, 3),
        (" 42 ", 42.0, 42),
        ("-2.5", -2.5, None),
        ("3.0", 3.0, 3),
        ("1e3", 1000.0, 1000),
        ("1,234", 1234.0, 1234),
        ("1,234,567 people", 1234567.0, 1234567),
        ("three apples", 3.0, 3),
        ("There are 3.", 3.0, 3),
        ("3 (three)", 3.0, 3),  # several mentions of one value are fine
        ("3 or 4", None, None),  # hedging is not
        ("1,2,3", None, None),
        ("1/2", None, None),
        ("none", 0.0, 0),
        ("zero", 0.0, 0),
        ("３", 3.0, 3),  # full-width digits are NFKC-normalised
        ("1e400", None, None),
        ("9" * 400, None, None),
        ("1e12345", None, None),
        ("", None, None),
        ("many", None, None),
        ("NaN", None, None),
        ("inf", None, None),
        ("x3y", None, None),
        ("<script>7</script>", 7.0, 7),
        ("1" * BIG, None, None),
    ],
)
def test_parse_number_and_int(text, number, integer):
    assert parse_number(text) == number
    assert parse_int(text) == integer


@pytest.mark.parametrize(
    "value, digits, expected",
    [(14.0, 2, "14"), (1.25, 2, "1.25"), (2.5000001, 2, "2.5"), (-0.001, 2, "0"), (48.85661234, 6, "48.856612")],
)
def test_format_number(value, digits, expected):
    assert format_number(value, digits) == expected
    assert parse_number(expected) == pytest.approx(value, abs=10**-digits)


def test_bad_value_names_the_column_and_what_was_expected():
    err = bad_value("solution", "a whole number >= 0", "x" * 1000)
    assert isinstance(err, ValueError) and isinstance(err, ColumnError)
    assert str(err).startswith("solution: expected a whole number >= 0, got 'xxx") and len(str(err)) < 300
    assert (err.column, err.expected, err.value) == ("solution", "a whole number >= 0", "x" * 1000)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Île-de-France", "ile de france"),
        ("GOLDEN_retriever!", "golden retriever"),
        ("  São   Paulo ", "sao paulo"),
        ("<b>x</b>", "b x b"),
        ("東京 タワー", "東京 タワー"),
        ("Москва!", "москва"),
        ("", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("plain", "plain"),
        (None, ""),
        ("<answer>1</answer><|im_end|>", "<answer>1</answer>"),
        ("<answer>1</answer><|endoftext|>\n", "<answer>1</answer>"),
        ([{"role": "assistant", "content": "<answer>1</answer>"}], "<answer>1</answer>"),
        ({"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}, "a"),
    ],
)
def test_completion_text(completion, expected):
    assert completion_text(completion) == expected


def test_completion_text_rejects_other_types():
    with pytest.raises(ColumnError, match="completions"):
        completion_text(3)


def _echo(text: str, solution, extra="dflt") -> float:
    if solution == "bad":
        raise ColumnError("solution: expected something else")
    return 1.0 if extra == "dflt" else 0.5


def test_score_each_rows_defaults_and_not_applicable():
    out = score_each(
        "echo",
        ["a", "b", "c"],
        {"solution": [1, None, 2], "extra": [None, "x", "x"]},
        _echo,
        optional={"extra": "dflt"},
    )
    assert out == [1.0, None, 0.5]


@pytest.mark.parametrize(
    "columns, message",
    [
        ({}, "needs column"),
        ({"solution": [1]}, "has 1 values for 2 completions"),
        ({"solution": "ab"}, "per-completion list"),
        ({"solution": [1, "bad"]}, "reward 'echo', row 1: solution"),
    ],
)
def test_score_each_errors_name_the_reward_and_column(columns, message):
    with pytest.raises(ColumnError, match=message):
        score_each("echo", ["a", "b"], columns, _echo)


PARSERS = [
    extract_answer,
    extract_think,
    parse_boxes,
    is_abstention,
    parse_number,
    parse_int,
    parse_choice,
    parse_order,
    parse_latlon,
    parse_segment,
    normalize_text,
]
ADVERSARIAL = {
    "digits": "1" * BIG,
    "spaces": " " * BIG,
    "commas": "1," * (BIG // 2),
    "parens": "(1," * (BIG // 3),
    "boxes": "[1,2,3,4]" * (BIG // 9),
    "qwen": "(1,2),(3,4)" * (BIG // 11),
    "open_tags": "<answer>" * (BIG // 8),
    "tag_pairs": "</think><answer>" * (BIG // 16),
    "brackets": "[" * BIG,
    "colons": "1:" * (BIG // 2),
    "exponents": "1e" * (BIG // 2),
    "hemispheres": "1 N " * (BIG // 4),
    "fences": "```" * (BIG // 3),
    "html": "<script>alert(1)</script>" * (BIG // 25),
    "arabic_digits": "٣" * BIG,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_parsers_are_linear_on_adversarial_100k_strings(name):
    text = ADVERSARIAL[name]
    for parser in PARSERS:
        start = time.perf_counter()
        parser(text)
        parser(f"<answer>{text}</answer>")
        assert time.perf_counter() - start < 5.0, parser.__name__  # quadratic would take minutes


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=300))
def test_parsers_never_raise(text):
    for parser in PARSERS:
        parser(text)
    assert parse_choice(text, ["x", "y"]) in (None, "A", "B")
    number = parse_number(text)
    assert number is None or number == number  # never NaN
