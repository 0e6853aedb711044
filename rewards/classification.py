"""Classification reward `cls_match` (CLS-RL style): does the answered label name the true class.

Column `solution`: the label (str); optional column `synonyms`: per-sample list of other accepted names (or None).
Match = equality after `normalize_label` (accents, case, punctuation, underscores/hyphens and one leading article
"a"/"an"/"the" ignored: "The Golden-Retriever." == "golden retriever"). No partial credit: a label inside a longer
answer ("it is a golden retriever") does not match, so listing many labels cannot earn reward.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import ColumnError, extract_answer, normalize_text, score_each

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


def _check_label(value: Any, name: str) -> str:
    if not isinstance(value, str) or not normalize_label(value):
        raise ColumnError(f"{name}: expected a non-empty label string, got {value!r}")
    return value


def _check_synonyms(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ColumnError(f"synonyms: expected a list of strings or None, got {value!r}")


def cls_score(completion: str, solution: Any, synonyms: Any = None) -> float:
    """1.0 when the completion's answer tag names the label (or a synonym), else 0.0."""
    label, names = _check_label(solution, "solution"), _check_synonyms(synonyms)
    answer = extract_answer(completion)
    return 1.0 if answer is not None and label_matches(answer, label, names) else 0.0


@register_reward("cls_match")
def cls_match_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`cls_score` per completion. Columns: solution (label), synonyms (optional)."""
    return score_each("cls_match", completions, columns, cls_score, optional={"synonyms": None})
