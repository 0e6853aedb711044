"""Golden and adversarial cases for the answer parsers and the reward column plumbing (mmreason.rewards.parse)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmreason.rewards.parse import (
    ColumnError,
    completion_text,
    extract_answer,
    extract_think,
    is_abstention,
    normalize_text,
    parse_boxes,
    parse_choice,
    parse_int,
    parse_latlon,
    parse_number,
    parse_order,
    parse_segment,
    score_each,
)

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
    "text, expected",
    [
        ("[10, 20, 30, 40]", [[10, 20, 30, 40]]),
        ("[10.5, 20, 30, 40.25]", [[10.5, 20, 30, 40.25]]),
        ("[[1, 2, 3, 4], [5, 6, 7, 8]]", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ('[{"bbox_2d": [30, 40, 10, 20], "label": "dog"}]', [[10, 20, 30, 40]]),  # swapped corners ordered
        ('{"bbox_2d": [1, 2, 3, 4]}', [[1, 2, 3, 4]]),
        ('[{"bbox": [1, 2, 3, 4]}, {"box_2d": [5, 6, 7, 8]}]', [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```', [[1, 2, 3, 4]]),
        ("(100,200),(300,400)", [[100, 200, 300, 400]]),
        ("<|box_start|>(100, 200), (300, 400)<|box_end|>", [[100, 200, 300, 400]]),
        ("(1,2),(3,4), (5,6),(7,8)", [[1, 2, 3, 4], [5, 6, 7, 8]]),
        ("the box is [1, 2, 3, 4].", [[1, 2, 3, 4]]),
        ("[{'bbox_2d': [1, 2, 3, 4]}]", [[1, 2, 3, 4]]),  # python-style quotes: not JSON, found by the fallback
        ("1, 2, 3, 4", [[1, 2, 3, 4]]),
        ("1 2 3 4", [[1, 2, 3, 4]]),
        ("[-5, -5, 10, 10]", [[-5, -5, 10, 10]]),
        ("[NaN, 1, 2, 3]", []),
        ("[Infinity, 1, 2, 3]", []),
        ("[1e400, 1, 2, 3]", []),
        ("[1, 2, 3]", []),
        ("[true, 1, 2, 3]", []),
        ("[" + "9" * 5000 + ", 1, 2, 3]", []),  # an int json cannot read, and a digit run the regexes skip
        ("[[1, 2, 3, 4], [NaN, 0, 1, 1]]", [[1, 2, 3, 4]]),
        ("none", []),
        ("[]", []),
        ("", []),
        ("the dog on the left", []),
        ("[" * 50_000 + "]" * 50_000, []),
        ("<script>[1,2,3,4]</script>", [[1, 2, 3, 4]]),
    ],
)
def test_parse_boxes(text, expected):
    assert parse_boxes(text) == expected


def test_parse_boxes_caps_the_number_of_boxes():
    assert len(parse_boxes(str([[1, 2, 3, 4]] * 1000))) == 100


@pytest.mark.parametrize(
    "text, expected",
    [
        ("none", True),
        ("None.", True),
        ("[]", True),
        ("null", True),
        ("No object found", True),
        ("There is no such object in the image.", True),
        ("The object is not present", True),
        ("n/a", True),
        ("[1, 2, 3, 4]", False),
        ("the dog", False),
        ("none of the boxes is the dog but [1,2,3,4]", False),
        ("", False),
        ("none " * 1000, False),
    ],
)
def test_is_abstention(text, expected):
    assert is_abstention(text) is expected


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
    "text, expected",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("[C]", "C"),
        ("B.", "B"),
        ("B. Paris", "B"),
        ("B) Paris", "B"),
        ("B: Paris", "B"),
        ("(B) Paris", "B"),
        ("Answer: B", "B"),
        ("answer: (d)", "D"),
        ("The answer is (C).", "C"),
        ("The correct option is D", "D"),
        ("**D**", "D"),
        ("b", "B"),
        ("(b)", "B"),
        ("A dog", None),  # an article, not a choice
        ("I think B", None),
        ("a cat", None),
        ("", None),
        ("Paris", None),
        ("1", None),
        ("Ｂ", "B"),  # full-width letter
        ("B" * BIG, None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("E", ["a", "b", "c"], None),  # past the last option
        ("C", ["a", "b", "c"], "C"),
        ("Paris", ["London", "Paris", "Rome"], "B"),
        ("paris!", ["London", "Paris", "Rome"], "B"),
        ("Paris", ["Paris", "Paris"], None),  # ambiguous option text
        ("Berlin", ["London", "Paris"], None),
    ],
)
def test_parse_choice_with_options(text, options, expected):
    assert parse_choice(text, options) == expected


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
    "text, expected",
    [
        ("48.8566, 2.3522", (48.8566, 2.3522)),
        ("(-33.8688, 151.2093)", (-33.8688, 151.2093)),
        ("48.8566 2.3522", (48.8566, 2.3522)),
        ('{"lat": 48.8, "lon": 2.3}', (48.8, 2.3)),
        ('{"latitude": "48.8", "longitude": -2.3}', (48.8, -2.3)),
        ('```json\n{"lat": 1, "lng": 2}\n```', (1.0, 2.0)),
        ("48.8N 2.3E", (48.8, 2.3)),
        ("2.35°E, 48.85°N", (48.85, 2.35)),
        ("33.87° S, 151.21° W", (-33.87, -151.21)),
        ("33°52'S 151°12'E", (-33 - 52 / 60, 151.2)),
        ("48 North, 2 West", (48.0, -2.0)),
        ("lat: 48.8, lon: 2.3", (48.8, 2.3)),
        ("Longitude 2.3; latitude 48.8", (48.8, 2.3)),
        ('roughly {"lat": 48.8, "lon": 2.3} I think', (48.8, 2.3)),  # JSON inside prose, read by its labels
        ("Paris 2024, 48.85, 2.35", (48.85, 2.35)),  # the first in-range adjacent pair
        ("Paris, France", None),
        ("100, 200", None),
        ("48.8", None),
        ("91N 2E", None),
        ("1e400, 2", None),
        ('{"lat": NaN, "lon": 2}', None),
        ("", None),
        ("1 " * 50_000, (1.0, 1.0)),
    ],
)
def test_parse_latlon(text, expected):
    got = parse_latlon(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[12.5, 30]", (12.5, 30.0)),
        ("12.5s - 30s", (12.5, 30.0)),
        ("12.5-30", (12.5, 30.0)),
        ("from 12.5 to 30.0 seconds", (12.5, 30.0)),
        ("00:12 - 01:05", (12.0, 65.0)),
        ("1:02:03.5 to 1:02:10", (3723.5, 3730.0)),
        ("from 30 to 12", (12.0, 30.0)),  # reversed pairs are swapped
        ("0 0", (0.0, 0.0)),
        ("1 2 3", None),
        ("12.5", None),
        ("1:75 - 2:00", None),
        ("1e400 to 2", None),
        ("", None),
        ("soon", None),
        ("1 " * 50_000, None),
    ],
)
def test_parse_segment(text, expected):
    assert parse_segment(text) == expected


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
