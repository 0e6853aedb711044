"""`cls_match`: normalised label match with optional synonyms."""

from __future__ import annotations

import pytest
from mmreason.rewards.classification import (
    check_label,
    check_label_list,
    format_label,
    label_matches,
    normalize_label,
)
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward


@pytest.mark.parametrize(
    "text, solution, synonyms, expected",
    [
        ("<answer>golden retriever</answer>", "golden retriever", None, 1.0),
        ("<answer>The Golden-Retriever.</answer>", "golden_retriever", None, 1.0),
        ("<think>fur</think><answer> GOLDEN RETRIEVER </answer>", "golden retriever", None, 1.0),
        ("<answer>a cat</answer>", "cat", None, 1.0),
        ("<answer>café</answer>", "cafe", None, 1.0),
        ("<answer>dog</answer>", "golden retriever", ["dog", "retriever"], 1.0),
        ("<answer>Retriever</answer>", "golden retriever", ["dog", "retriever"], 1.0),
        ("<answer>labrador</answer>", "golden retriever", ["dog"], 0.0),
        ("<answer>it is a golden retriever</answer>", "golden retriever", None, 0.0),  # no substring credit
        ("<answer>golden retriever, labrador, poodle</answer>", "golden retriever", None, 0.0),
        ("<answer>retrievers</answer>", "retriever", None, 0.0),
        ("<answer></answer>", "cat", None, 0.0),
        ("<answer>!!!</answer>", "cat", None, 0.0),
        ("golden retriever", "golden retriever", None, 0.0),  # no answer tag
        ("<answer><script>cat</script></answer>", "cat", None, 0.0),
        ("<answer>" + "cat " * 25_000 + "</answer>", "cat", None, 0.0),
        ("<answer>猫</answer>", "猫", None, 1.0),
    ],
)
def test_cls_match(text, solution, synonyms, expected):
    assert get_reward("cls_match")([text], solution=[solution], synonyms=[synonyms]) == [expected]


def test_synonyms_column_is_optional_and_none_solution_is_not_applicable():
    assert get_reward("cls_match")(["<answer>cat</answer>", "<answer>cat</answer>"], solution=["cat", None]) == [
        1.0,
        None,
    ]


@pytest.mark.parametrize("solution, synonyms", [("", None), (3, None), ("cat", [1]), ("cat", {"a": 1}), ("...", None)])
def test_bad_columns(solution, synonyms):
    with pytest.raises(ColumnError):
        get_reward("cls_match")(["<answer>cat</answer>"], solution=[solution], synonyms=[synonyms])


def test_helpers():
    assert normalize_label("An Apple") == "apple"
    assert normalize_label("the") == "the"
    assert label_matches("Apple", "an apple")
    assert not label_matches("", "")


@pytest.mark.parametrize(
    "value, options, expected",
    [
        ("cat", (), "cat"),
        ("  Golden retriever ", (), "Golden retriever"),
        ("white square", ["white square", "blue circle"], "white square"),
        ("The White-Square.", ["white square", "blue circle"], "The White-Square."),  # matched as an answer is
        ("東京", ["東京", "大阪"], "東京"),
    ],
)
def test_check_label(value, options, expected):
    assert check_label(value, options=options) == expected
    assert format_label(expected) == expected.strip()


@pytest.mark.parametrize(
    "value, options, message",
    [
        ("", (), "non-empty string"),
        ("!!!", (), "non-empty string"),
        (None, (), "non-empty string"),
        (3, (), "non-empty string"),
        ("green", ["white square", "blue circle"], "one of the options"),
        ("white", ["white square", "blue circle"], "one of the options"),
    ],
)
def test_check_label_rejects(value, options, message):
    with pytest.raises(ColumnError, match=f"solution: expected .*{message}"):
        check_label(value, options=options)


@pytest.mark.parametrize("value, expected", [(None, []), ([], []), ([" kitty ", "cat"], ["kitty", "cat"])])
def test_check_label_list(value, expected):
    assert check_label_list(value) == expected


@pytest.mark.parametrize("value", ["kitty", ["kitty", ""], ["kitty", " "], [1], {"a": 1}])
def test_check_label_list_rejects(value):
    with pytest.raises(ColumnError, match="synonyms: expected a list of non-empty strings"):
        check_label_list(value)
