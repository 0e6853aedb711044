"""The generic half of answer reading, shared by every reward: tags, text and numbers, and the column plumbing.

What lives here knows nothing about any answer type: `<think>`/`<answer>` extraction, text normalisation, number
parsing (`parse_number`, `parse_int`, and the number pattern the answer-type parsers build on), and the plumbing
(`score_each`, `completion_text`, `ColumnError`, `bad_value`) that turns a per-item `score(text, **row)` into the
batch reward contract `fn(completions, **columns) -> list[float | None]`, checking each column once and naming the
reward, row and column in every error about bad ground truth. Each answer type's own parser, ground-truth check,
gold-answer formatter and scores live in its module (grounding, jigsaw, geolocation, counting, classification,
choice, math_answer, temporal, format).

Parsers never raise on any string: huge numbers such as 1e400 become None rather than inf, unicode digits are
NFKC-normalised, and every regular expression bounds its digit runs and repetitions so that a 100k-character
adversarial completion is parsed in linear time (an unbounded `\\d+` inside `finditer` is quadratic on a long
digit run).
"""

from __future__ import annotations

import json
import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_INT = 10**18  # integers beyond this are treated as unparseable rather than materialised

# ---------------------------------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------------------------------

# A complete pair whose content holds no further `<answer>` opener: for nested tags the innermost pair is found.
_ANSWER_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL)
_THINK_RE = re.compile(r"<think>((?:(?!<think>).)*?)</think>", re.DOTALL)
_TRAILING_SPECIAL = ("<|im_end|>", "<|endoftext|>")


def extract_answer(text: str) -> str | None:
    """The stripped content of the LAST complete `<answer>...</answer>` pair, or None when there is none.

    Rules: tags are case-sensitive; when several pairs occur, the last complete one wins (a model that revises
    itself is judged on its final answer; an unclosed trailing `<answer>` is ignored); with nested tags the
    innermost complete pair counts (`<answer>a<answer>b</answer>c</answer>` -> "b"); `<answer></answer>` -> "".
    An optional `<think>...</think>` before it does not matter here (the `format` reward checks the layout).
    """
    if not isinstance(text, str) or "</answer>" not in text:
        return None
    last = None
    for m in _ANSWER_RE.finditer(text):
        last = m
    return None if last is None else last.group(1).strip()


def extract_think(text: str) -> str | None:
    """The stripped content of the first complete `<think>...</think>` pair, or None."""
    if not isinstance(text, str):
        return None
    m = _THINK_RE.search(text)
    return None if m is None else m.group(1).strip()


# ---------------------------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------------------------

_NON_WORD_RE = re.compile(r"[\W_]+")  # unicode-aware: CJK, Cyrillic, ... letters are kept
_FENCE_RE = re.compile(r"```[a-zA-Z]{0,10}\s*((?:(?!```).)*)```", re.DOTALL)


def normalize_text(text: str) -> str:
    """Comparable words: NFKD, accents dropped, casefolded, punctuation/underscores -> single spaces, stripped.

    "Île-de-France" -> "ile de france", "GOLDEN_retriever!" -> "golden retriever"; letters of any script stay
    ("東京" -> "東京").
    """
    decomposed = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return _NON_WORD_RE.sub(" ", folded).strip()


def strip_code_fence(text: str) -> str:
    """The body of the first ```...``` fence (models often wrap JSON in one), else the text itself."""
    if "```" not in text:
        return text
    m = _FENCE_RE.search(text)
    return m.group(1) if m else text


def loads_or_none(text: str) -> Any:
    """json.loads that returns None on anything it cannot read (bad syntax, >4300-digit ints, deep nesting)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def list_from_text(value: Any) -> Any:
    """A gold value written as JSON list text ("[10, 20, 30, 40]", as some datasets store boxes, orders and
    segments) -> the list; any other value (or text that is not a JSON list) unchanged, for the check to judge."""
    if isinstance(value, str) and value.strip().startswith("[") and len(value) <= 100_000:
        parsed = loads_or_none(value.strip())
        if isinstance(parsed, list):
            return parsed
    return value


def is_number(value: Any) -> bool:
    """A real number (python or numpy scalar), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def to_plain(value: Any) -> Any:
    """numpy/torch/pandas arrays and scalars -> python lists and numbers (via `.tolist()`); others unchanged."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(value, (str, bytes)) else value


def finite_float(value: Any) -> float | None:
    """A finite float from an int/float/numeric string (never from a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = parse_number(value)
        if value is None:
            return None
    if not is_number(value):
        return None
    try:
        f = float(value)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------------------------

# A plain signed decimal with optional exponent; not glued to a preceding word/number, not followed by more digits
# or by an exponent tail that the bounded groups could not take (so "1e12345" is not read as 1).
NUMBER_PATTERN = (
    r"(?<![\w.])[-+]?(?:\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})(?:[eE][-+]?\d{1,4})?"
    r"(?!\d)(?![eE][-+]?\d)(?!\.\d)"
)
NUMBER_RE = re.compile(NUMBER_PATTERN)
# Same, but "1,234,567" is one number (only where a comma cannot be a list separator: counts, scalars).
_NUM_THOUSANDS_RE = re.compile(
    r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3}){1,12}|\d{1,40})(?:\.\d{1,40})?(?:[eE][-+]?\d{1,4})?"
    r"(?!\d)(?![eE][-+]?\d)(?!\.\d)"
)
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_NONE_WORDS = {"none", "no", "nothing", "zero"}


def _decimal(token: str) -> Decimal | None:
    try:
        d = Decimal(token.replace(",", ""))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _number_values(text: str) -> list[Decimal]:
    """Every number in `text` (digits with thousands separators, or English words zero..twenty), in order."""
    text = unicodedata.normalize("NFKC", text)
    values = [d for d in (_decimal(m.group(0)) for m in _NUM_THOUSANDS_RE.finditer(text)) if d is not None]
    values.extend(Decimal(_NUMBER_WORDS[m.group(1).lower()]) for m in _NUMBER_WORD_RE.finditer(text))
    return values


def _single_value(text: str) -> Decimal | None:
    """The one number the text states; None when it states none, or several different ones (hedging)."""
    if not isinstance(text, str):
        return None
    bare = normalize_text(text[:40]) if len(text) <= 40 else ""
    if bare in _NONE_WORDS:
        return Decimal(0)
    distinct = set(_number_values(text))
    return distinct.pop() if len(distinct) == 1 else None


def parse_number(text: str) -> float | None:
    """The number stated by `text`, as a finite float, else None.

    Accepts "3", "-2.5", "1e3", "1,234" (thousands separators), full-width digits, number words zero..twenty
    ("three apples"), and "none"/"no"/"zero" as the whole answer (0). Several numbers are accepted only when they
    all agree ("3 (three)"); "3 or 4", "1/2" and a number that overflows a float (1e400) give None.
    """
    value = _single_value(text)
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def parse_int(text: str) -> int | None:
    """Like `parse_number` but the value must be integral ("3.0" -> 3, "2.5" -> None) and |value| <= 10**18."""
    value = _single_value(text)
    if value is None or abs(value) > MAX_INT or value != value.to_integral_value():
        return None
    return int(value)


def is_finite_token(token: str) -> bool:
    """True when `float(token)` is a finite number (a regex match of NUMBER_PATTERN may still overflow: 1e400)."""
    try:
        return math.isfinite(float(token))
    except (ValueError, OverflowError):
        return False


def skill_over(value: float, trivial: float) -> float:
    """A score in [0, 1] measured against what a trivial answer earns: (value - trivial) / (1 - trivial), floored
    at 0 (the skill score of forecasting). The trivial answer itself, and anything no better, scores 0; a perfect
    answer 1. When the trivial answer is already perfect (trivial >= 1) the plain value is returned.

    Within one prompt this is an increasing affine map of `value` above `trivial`, so the std-normalised group
    advantages of answers that beat the trivial one are unchanged; it only stops paying for the hedge.
    """
    if trivial >= 1.0:
        return value
    floor = max(trivial, 0.0)
    return min(1.0, max(0.0, (value - floor) / (1.0 - floor)))


def format_number(value: float, digits: int = 2) -> str:
    """Shortest decimal text of `value` at `digits` places: 14.0 -> "14", 1.25 -> "1.25", 2.5000001 -> "2.5"."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# ---------------------------------------------------------------------------------------------------------------
# Column plumbing
# ---------------------------------------------------------------------------------------------------------------


class ColumnError(ValueError):
    """Bad ground truth in a reward column (a data bug, unlike a bad completion, which just scores 0).

    When raised by an answer type's `check_*` (through `bad_value`), `column`, `expected` and `value` say which
    value was wrong and what was expected, so that a task can restate it as an error about a record's field.
    """

    def __init__(
        self, message: str, *, column: str | None = None, expected: str | None = None, value: Any = None
    ) -> None:
        super().__init__(message)
        self.column, self.expected, self.value = column, expected, value


def short_repr(value: Any, limit: int = 80) -> str:
    """repr() cut to `limit` characters, so a huge bad value does not flood an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_value(column: str, expected: str, value: Any) -> ColumnError:
    """The error of a ground-truth check: `<column>: expected <expected>, got <repr of value>`."""
    return ColumnError(
        f"{column}: expected {expected}, got {short_repr(value, 200)}", column=column, expected=expected, value=value
    )


def completion_text(completion: Any) -> str:
    """The text of one completion: a str, None (-> ""), or chat messages ([{"role", "content"}, ...] or one dict,
    content a str or a list of {"type": "text", "text": ...} parts), joined. A trailing <|im_end|> or
    <|endoftext|> left by decoding is dropped so that it does not break the format check.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        text = completion
    elif isinstance(completion, Mapping):
        text = _content_text(completion.get("content"))
    elif isinstance(completion, Sequence) and not isinstance(completion, (bytes, bytearray)):
        text = "".join(_content_text(m.get("content")) if isinstance(m, Mapping) else "" for m in completion)
    else:
        raise ColumnError(f"completions: expected str or chat messages, got {type(completion).__name__}")
    stripped = text.rstrip()
    for token in _TRAILING_SPECIAL:
        if stripped.endswith(token):
            return stripped[: -len(token)]
    return text


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def _column_values(reward: str, name: str, values: Any, n: int) -> list[Any]:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ColumnError(f"reward {reward!r}: column {name!r} must be a per-completion list, got {type(values)}")
    values = list(values)
    if len(values) != n:
        raise ColumnError(f"reward {reward!r}: column {name!r} has {len(values)} values for {n} completions")
    return values


def score_each(
    reward: str,
    completions: Sequence[Any],
    columns: Mapping[str, Any],
    score: Callable[..., float],
    *,
    required: Sequence[str] = ("solution",),
    optional: Mapping[str, Any] | None = None,
) -> list[float | None]:
    """Run `score(text, **row)` per completion, where row holds the `required` and `optional` columns' values.

    A missing required column, or a column whose length differs from the completions', raises ColumnError naming
    the reward; an optional column may be absent or hold None per row (its default is used). A row whose
    `solution` is None is not applicable: its score is None. A ColumnError raised by `score` (bad ground truth)
    is re-raised with the reward name and row index.
    """
    optional = dict(optional or {})
    n = len(completions)
    missing = [c for c in required if c not in columns]
    if missing:
        raise ColumnError(f"reward {reward!r} needs column(s) {missing}; got columns {sorted(columns)}")
    table = {c: _column_values(reward, c, columns[c], n) for c in (*required, *optional) if c in columns}
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        row = {c: to_plain(table[c][i]) if c in table else None for c in (*required, *optional)}
        for c, default in optional.items():
            if row[c] is None:
                row[c] = default
        if row.get("solution", 0) is None:
            out.append(None)
            continue
        try:
            out.append(float(score(completion_text(completion), **row)))
        except ColumnError as e:
            raise ColumnError(f"reward {reward!r}, row {i}: {e}") from None
    return out
