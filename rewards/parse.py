"""Answer extraction and parsing shared by every reward, plus the column plumbing all rewards run on.

Parsers take model text (usually the content of the `<answer>` tag) and return a typed value, or None when the text
does not hold one (`parse_boxes` returns [] instead). They never raise on any string: huge numbers such as 1e400
become None rather than inf, unicode digits are NFKC-normalised, and every regular expression bounds its digit runs
and repetitions so that a 100k-character adversarial completion is parsed in linear time (an unbounded `\\d+` inside
`finditer` is quadratic on a long digit run).

The plumbing half (`score_each`, `completion_text`, `ColumnError`) turns a per-item `score(text, **row)` into the
batch reward contract `fn(completions, **columns) -> list[float | None]`, checking each column once and naming the
reward, row and column in every error about bad ground truth.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_BOXES = 100  # more boxes than any referring expression needs; bounds matching cost on spammed answers
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


def is_number(value: Any) -> bool:
    """A real number (python or numpy scalar), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def to_plain(value: Any) -> Any:
    """numpy/torch/pandas arrays and scalars -> python lists and numbers (via `.tolist()`); others unchanged."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(value, (str, bytes)) else value


def _finite(value: Any) -> float | None:
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
_NUM = (
    r"(?<![\w.])[-+]?(?:\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})(?:[eE][-+]?\d{1,4})?"
    r"(?!\d)(?![eE][-+]?\d)(?!\.\d)"
)
_NUM_RE = re.compile(_NUM)
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


# ---------------------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------------------

_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_SP = r"\s{0,20}"
_N = f"({_NUM})"
_QWEN2_BOX_RE = re.compile(rf"\({_SP}{_N}{_SP},{_SP}{_N}{_SP}\){_SP},?{_SP}\({_SP}{_N}{_SP},{_SP}{_N}{_SP}\)")
_BRACKET_BOX_RE = re.compile(rf"[\[(]{_SP}{_N}{_SP},{_SP}{_N}{_SP},{_SP}{_N}{_SP},{_SP}{_N}{_SP}[\])]")
_BARE_BOX_RE = re.compile(rf"{_SP}{_N}(?:{_SP}[,\s]{_SP}{_N}){{3}}{_SP}\.?{_SP}")
_ABSTAIN_RE = re.compile(
    r"(?:none|null|nothing|n/?a|no|\[\s*\]|\{\s*\}"
    r"|(?:there\s+is\s+|there\s+are\s+)?no(?:\s+(?:such|matching|valid|target|relevant|corresponding))?"
    r"\s+(?:objects?|targets?|box(?:es)?|matche?s?|bounding\s+box(?:es)?|regions?)"
    r"(?:\s+(?:is\s+|are\s+)?(?:found|present|exists?|detected|visible|in\s+(?:the\s+)?image))?"
    r"|(?:the\s+)?(?:object|target)\s+(?:is\s+)?(?:not\s+(?:found|present|visible|in\s+(?:the\s+)?image)|absent))",
    re.IGNORECASE,
)


def clean_box(values: Sequence[Any]) -> list[float] | None:
    """[x1, y1, x2, y2] as finite floats with x1 <= x2 and y1 <= y2 (swapped corners are swapped back), else None."""
    if len(values) != 4:
        return None
    nums = [_finite(v) if not isinstance(v, str) else None for v in values]
    if any(v is None for v in nums):
        return None
    x1, y1, x2, y2 = nums  # type: ignore[misc]
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def _boxes_from_json(obj: Any, depth: int = 0) -> list[list[float]]:
    """Boxes from a parsed JSON value: a 4-number list, a list of those, or dicts holding one under a box key."""
    if depth > 3:
        return []
    if isinstance(obj, dict):
        for key in _BOX_KEYS:
            if key in obj:
                return _boxes_from_json(obj[key], depth + 1)
        return []
    if not isinstance(obj, list):
        return []
    if len(obj) == 4 and all(is_number(v) for v in obj):
        box = clean_box(obj)
        return [box] if box else []
    out: list[list[float]] = []
    for item in obj[:MAX_BOXES]:
        out.extend(_boxes_from_json(item, depth + 1))
    return out


def _boxes_from_matches(pattern: re.Pattern[str], text: str) -> list[list[float]]:
    out = []
    for m in pattern.finditer(text):
        box = clean_box([float(g) if _finite_str(g) else None for g in m.groups()])
        if box:
            out.append(box)
        if len(out) >= MAX_BOXES:
            break
    return out


def _finite_str(token: str) -> bool:
    try:
        return math.isfinite(float(token))
    except (ValueError, OverflowError):
        return False


def parse_boxes(text: str) -> list[list[float]]:
    """Boxes [x1, y1, x2, y2] (floats, corners ordered) stated by `text`, at most MAX_BOXES of them.

    Tried in order, the first form that yields a box wins: JSON (optionally in a ```json fence) -- `[x1,y1,x2,y2]`,
    a list of those, `{"bbox_2d": [...]}` or a list of such dicts (Qwen2.5-VL; keys bbox_2d/bbox/box_2d/box);
    Qwen2-VL pairs `(x1,y1),(x2,y2)` (with or without <|box_start|>); bracketed 4-tuples anywhere in prose
    ("the box is [1, 2, 3, 4]."); four bare numbers "1, 2, 3, 4". Boxes with NaN/inf/huge values are dropped.
    Returns [] both for an abstention ("none", "no object", "[]") and for text without boxes; use
    `is_abstention` to tell them apart.
    """
    if not isinstance(text, str):
        return []
    body = strip_code_fence(text).strip()
    if body.startswith(("[", "{")):
        boxes = _boxes_from_json(loads_or_none(body))
        if boxes:
            return boxes[:MAX_BOXES]
    for pattern in (_QWEN2_BOX_RE, _BRACKET_BOX_RE):
        boxes = _boxes_from_matches(pattern, body)
        if boxes:
            return boxes
    if len(body) <= 400 and _BARE_BOX_RE.fullmatch(body):
        box = clean_box(_numbers_in(body))
        return [box] if box else []
    return []


def _numbers_in(text: str) -> list[float | None]:
    return [float(t) if _finite_str(t) else None for t in (m.group(0) for m in _NUM_RE.finditer(text))]


def is_abstention(text: str) -> bool:
    """True when the whole answer says there is nothing to box: "none", "No object found.", "[]", "null", ..."""
    if not isinstance(text, str):
        return False
    body = strip_code_fence(text).strip().rstrip(".!").strip()
    return len(body) <= 200 and _ABSTAIN_RE.fullmatch(body) is not None


# ---------------------------------------------------------------------------------------------------------------
# Choices, orders, coordinates, segments
# ---------------------------------------------------------------------------------------------------------------

_CHOICE_PREFIX_RE = re.compile(
    r"^(?:the\s{1,5})?(?:final\s{1,5}|correct\s{1,5}|best\s{1,5})?(?:answer|option|choice)"
    r"(?:\s{1,5}is)?\s{0,5}[:：]?\s{0,5}",
    re.IGNORECASE,
)
# Bracketed, any text may follow ("(B) Paris"); bare, only punctuation or the end ("B. Paris", not "A dog").
_CHOICE_RE = re.compile(r"^(?:[(\[]([A-Z])[)\]]|([A-Z])(?=$|[.:,)]))")
_CHOICE_LOWER_RE = re.compile(r"^(?:\(([a-z])\)|\[([a-z])\]|([a-z])[.)]?)$")


def parse_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter (A-Z, upper-case) chosen by `text`, else None.

    Accepts "B", "(B)", "[B]", "B.", "B) text", "B. text", "B: text", "Answer: B", "The answer is (B)", "**B**";
    a lower-case letter only alone or bracketed ("b", "(b)"), since "a" in prose is an article. "A dog" is not a
    choice (a letter must be followed by punctuation or the end). With `options`, a letter past the last option is
    rejected, and an answer equal (after `normalize_text`) to exactly one option's text selects that option.
    """
    if not isinstance(text, str):
        return None
    t = unicodedata.normalize("NFKC", text).strip().replace("*", "").replace("`", "").strip()
    t = _CHOICE_PREFIX_RE.sub("", t[:1000], count=1).strip()
    letter = None
    m = _CHOICE_RE.match(t)
    if m:
        letter = m.group(1) or m.group(2)
    else:
        low = _CHOICE_LOWER_RE.match(t)
        if low:
            letter = next(g for g in low.groups() if g).upper()
    if letter is None and options:
        wanted = normalize_text(t)
        hits = [i for i, opt in enumerate(options) if isinstance(opt, str) and normalize_text(opt) == wanted]
        letter = chr(ord("A") + hits[0]) if len(hits) == 1 and hits[0] < 26 and wanted else None
    if letter is not None and options is not None and ord(letter) - ord("A") >= len(options):
        return None
    return letter


_ORDER_CHARS_RE = re.compile(r"[\d\s,;]*")
_DIGITS_RE = re.compile(r"\d+")


def parse_order(text: str) -> list[int] | None:
    """A list of non-negative integers: "[3, 1, 4, 2]", "3 1 4 2", "3,1,4,2", "(3; 1; 4; 2)", or a JSON grid of
    rows "[[3, 1], [4, 2]]" (flattened row-major). Anything else in the text (words, signs, decimals, a number with
    more than 9 digits) -> None. Whether the list is a valid permutation is the caller's business.
    """
    if not isinstance(text, str):
        return None
    body = unicodedata.normalize("NFKC", strip_code_fence(text)).strip().rstrip(".").strip()
    if body.startswith("["):
        parsed = loads_or_none(body)
        if isinstance(parsed, list):
            return _flat_ints(parsed)
    inner = body.strip("[](){} \t\r\n")
    if not inner or _ORDER_CHARS_RE.fullmatch(inner) is None:
        return None
    runs = _DIGITS_RE.findall(inner)
    if not runs or any(len(r) > 9 for r in runs):
        return None
    return [int(r) for r in runs]


def _flat_ints(items: list[Any]) -> list[int] | None:
    flat: list[Any] = []
    for item in items:
        flat.extend(item if isinstance(item, list) else [item])
    if not flat or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**9 for v in flat):
        return None
    return flat


_HEMI_RE = re.compile(
    rf"{_N}\s{{0,3}}°?\s{{0,3}}(?:{_N}\s{{0,3}}['′]\s{{0,3}})?(?:{_N}\s{{0,3}}(?:\"|″|'')\s{{0,3}})?"
    r"([NSEW]|[Nn]orth|[Ss]outh|[Ee]ast|[Ww]est)(?![a-zA-Z])",
)
_LABELLED_RE = re.compile(rf"\b(lat(?:itude)?|lo?ng?(?:itude)?)\b[\"']?\s{{0,3}}[:=]?\s{{0,3}}{_N}", re.IGNORECASE)
_PAIR_SEP_RE = re.compile(r"\s{0,10}°?\s{0,10}[,;/]?\s{0,10}")


def _valid_latlon(lat: float | None, lon: float | None) -> tuple[float, float] | None:
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return (lat, lon)


def _latlon_from_json(body: str) -> tuple[float, float] | None:
    obj = loads_or_none(body) if body[:1] == "{" else None
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).lower(): v for k, v in obj.items()}
    lat = next((lowered[k] for k in ("lat", "latitude") if k in lowered), None)
    lon = next((lowered[k] for k in ("lon", "lng", "long", "longitude") if k in lowered), None)
    return _valid_latlon(_finite(lat), _finite(lon))


def _latlon_from_hemispheres(text: str) -> tuple[float, float] | None:
    lat = lon = None
    for m in _HEMI_RE.finditer(text):
        deg, minutes, seconds = (_finite(g) if g else 0.0 for g in m.groups()[:3])
        if deg is None or minutes is None or seconds is None:
            continue
        if deg < 0 or not 0 <= minutes < 60 or not 0 <= seconds < 60:
            continue
        value = deg + minutes / 60.0 + seconds / 3600.0
        hemi = m.group(4)[0].upper()
        if hemi in "NS" and lat is None:
            lat = -value if hemi == "S" else value
        elif hemi in "EW" and lon is None:
            lon = -value if hemi == "W" else value
    return _valid_latlon(lat, lon)


def _latlon_from_labels(text: str) -> tuple[float, float] | None:
    lat = lon = None
    for m in _LABELLED_RE.finditer(text):
        value = _finite(m.group(2)) if _finite_str(m.group(2)) else None
        if m.group(1).lower().startswith("lat"):
            lat = value if lat is None else lat
        else:
            lon = value if lon is None else lon
    return _valid_latlon(lat, lon)


def _latlon_from_pairs(text: str) -> tuple[float, float] | None:
    tokens = list(_NUM_RE.finditer(text))
    for a, b in itertools.pairwise(tokens):
        if _PAIR_SEP_RE.fullmatch(text, a.end(), b.start()) is None:
            continue
        found = _valid_latlon(*(float(t.group(0)) if _finite_str(t.group(0)) else None for t in (a, b)))
        if found:
            return found
    return None


def parse_latlon(text: str) -> tuple[float, float] | None:
    """(lat, lon) in degrees, else None. Forms, tried in order (the first that yields an in-range pair wins):
    JSON {"lat": .., "lon": ..} (also latitude/longitude/lng/long); hemisphere letters or words, decimal or
    degrees-minutes-seconds, either order ("48.85N 2.35E", "2.35°E, 48.85°N", "33°52'S 151°12'E"); labels
    ("lat: 48.8, lon: 2.3"); otherwise the first two adjacent numbers (separated only by spaces, a comma,
    semicolon, slash or degree sign) with lat in [-90, 90] and lon in [-180, 180] ("48.8566, 2.3522").
    """
    if not isinstance(text, str):
        return None
    body = unicodedata.normalize("NFKC", strip_code_fence(text)).strip()
    for reader in (_latlon_from_json, _latlon_from_hemispheres, _latlon_from_labels, _latlon_from_pairs):
        found = reader(body)
        if found:
            return found
    return None


_TIME_RE = re.compile(
    r"(?<![\w.:])(?:(?:(\d{1,4}):)?(\d{1,4}):(\d{1,2}(?:\.\d{1,9})?)(?![\d:])"
    r"|(\d{1,40}(?:\.\d{0,40})?|\.\d{1,40})(?:[eE][-+]?\d{1,4})?(?!\d)(?![eE][-+]?\d)(?!\.\d))"
)


def _seconds(m: re.Match[str]) -> float | None:
    hours, minutes, secs, plain = m.groups()
    if plain is None:
        if float(secs) >= 60 or (hours is not None and int(minutes) >= 60):
            return None
        return int(hours or 0) * 3600.0 + int(minutes) * 60.0 + float(secs)
    value = float(m.group(0)) if _finite_str(m.group(0)) else None
    return value


def parse_segment(text: str) -> tuple[float, float] | None:
    """(start, end) seconds with start <= end (a reversed pair is swapped), else None.

    The text must state exactly two times: plain seconds ("[12.5, 30]", "12.5s - 30s", "from 12.5 to 30 seconds")
    or clock times ("00:12 - 01:05", "1:02:03.5"). Signs are not read (a dash is a range, not a minus); three or
    more times, an impossible clock time (1:75) or a non-finite value (1e400) -> None.
    """
    if not isinstance(text, str):
        return None
    body = unicodedata.normalize("NFKC", text)
    times = []
    for m in _TIME_RE.finditer(body):
        times.append(_seconds(m))
        if len(times) > 2:
            return None
    if len(times) != 2 or any(t is None for t in times):
        return None
    a, b = times  # type: ignore[misc]
    return (min(a, b), max(a, b))


# ---------------------------------------------------------------------------------------------------------------
# Column plumbing
# ---------------------------------------------------------------------------------------------------------------


class ColumnError(ValueError):
    """Bad ground truth in a reward column (a data bug, unlike a bad completion, which just scores 0)."""


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
