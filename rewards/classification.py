"""Classification: the label answer type's matching rule, ground-truth checks, gold-answer formatter and reward
`cls_match` (CLS-RL style): does the answered label name the true class.

Column `solution`: the label, a string with something left after `normalize_label` (`check_label`); optional column
`synonyms`: per-sample list of other accepted names, non-empty strings, or None (`check_label_list`). The
classification task checks its records with the same functions, and a record's label must also match one of its
options (if it lists any) under the same rule as answers.
Match = equality after `normalize_label` (accents, case, punctuation, underscores/hyphens and one leading article
"a"/"an"/"the" ignored: "The Golden-Retriever." == "golden retriever"). No partial credit: a label inside a longer
answer ("it is a golden retriever") does not match, so listing many labels cannot earn reward.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import bad_value, extract_answer, normalize_text, score_each

_ARTICLES = ("a ", "an ", "the ")


def normalize_label(text: str) -> str:
    """`normalize_text` minus one leading article."""
    key = normalize_text(text) if isinstance(text, str) else ""
    for article in _ARTICLES:
        if key.startswith(article):
            return key[len(article) :]
    return key


def label_matches(answer: str, label: str, synonyms: Iterable[str] = ()) -> bool:
    """True when the answer normalises to the label or to one of its synonyms (an empty answer never matches)."""
    key = normalize_label(answer)
    return bool(key) and key in {normalize_label(n) for n in (label, *synonyms)}


def check_label(value: Any, name: str = "solution", options: Sequence[str] = ()) -> str:
    """The label (stripped): a string with something left after `normalize_label`, else ColumnError.

    With `options`, the label must match one of them as an answer would (`label_matches`).
    """
    if not isinstance(value, str) or not normalize_label(value):
        raise bad_value(name, "a non-empty string with a letter or digit (the label)", value)
    if options and not any(label_matches(value, option) for option in options):
        raise bad_value(name, f"one of the options {list(options)}", value)
    return value.strip()


def check_label_list(value: Any, name: str = "synonyms") -> list[str]:
    """A list of non-empty strings (stripped), None meaning []; else ColumnError."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad_value(name, "a list of non-empty strings", value)
    return [v.strip() for v in value]


def format_label(label: str) -> str:
    """Answer text for a label: the label itself, stripped."""
    return label.strip()


def cls_score(completion: str, solution: Any, synonyms: Any = None) -> float:
    """1.0 when the completion's answer tag names the label (or a synonym), else 0.0."""
    label, names = check_label(solution), check_label_list(synonyms)
    answer = extract_answer(completion)
    return 1.0 if answer is not None and label_matches(answer, label, names) else 0.0


@register_reward("cls_match")
def cls_match_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`cls_score` per completion. Columns: solution (label), synonyms (optional)."""
    return score_each("cls_match", completions, columns, cls_score, optional={"synonyms": None})
