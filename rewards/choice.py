"""Multiple choice: the option-letter answer type's parser, ground-truth checks, gold-answer formatter and reward
`choice_match`.

One rule reads both a gold answer and a model's answer (`parse_choice`). An option is named by its letter: "B",
"(B)", "[B]", "B.", "B) text", "B. text", "B: text", "Answer: B", "The answer is (B)", "**B**"; a lower-case letter
only alone or bracketed ("b", "(b)"), since "a" in prose is an article, and "A dog" is not a letter (a letter must be
followed by punctuation or the end). When the options are known, text equal (after `normalize_text`: case, accents
and punctuation ignored) to exactly one option's text names that option too. A letter wins over option text ("B.
Rome" names B whatever B's text is; with options ["B", "A"] the answer "A" names the first option); a letter past
the last option, text equal to several options' texts, and a list of letters ("A, B", "(A) or (C)", "B; D": a hedge,
not an answer) name nothing.

Ground truth: `check_options` (2 to 26 option texts; numbers are written as text) and `check_choice` (the gold read
by `parse_choice` with the options when they are known: "B", "(b)" or one option's text). The multiple_choice task
checks its records with these same two functions.

Columns: `solution` (the gold: a letter, or one option's text when `options` is given) and optional `options` (the
option texts, A first). Score: 1.0 when the answer names the gold option, else 0.0.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from typing import Any

from mmreason.registry import register_reward

from .parse import bad_value, extract_answer, is_number, normalize_text, score_each

LETTERS = string.ascii_uppercase
MAX_OPTIONS = len(LETTERS)
OPTIONS_EXPECTED = f"a list of 2 to {MAX_OPTIONS} non-empty option texts"

_CHOICE_PREFIX_RE = re.compile(
    r"^(?:the\s{1,5})?(?:final\s{1,5}|correct\s{1,5}|best\s{1,5})?(?:answer|option|choice)"
    r"(?:\s{1,5}is)?\s{0,5}[:：]?\s{0,5}",
    re.IGNORECASE,
)
# Bracketed, any text may follow ("(B) Paris"); bare, only punctuation or the end ("B. Paris", not "A dog").
_CHOICE_RE = re.compile(r"^(?:[(\[]([A-Z])[)\]]|([A-Z])(?=$|[.:,)]))")
_CHOICE_LOWER_RE = re.compile(r"^(?:\(([a-z])\)|\[([a-z])\]|([a-z])[.)]?)$")
# after a letter: a separator then another letter standing alone ("A, B", "(A) or (B)", "A/B", "A and C"), or
# another bracketed letter ("(A)(B)")
_HEDGE_RE = re.compile(
    r"[.)\]]?\s{0,5}(?:(?:[,;/&+|]|\s(?:or|and)\s)\s{0,5}[(\[]?[A-Z](?:$|[\s.,;:)\]/&+|])|[(\[][A-Z][)\]])"
)


def parse_choice(text: str, options: Sequence[str] | None = None) -> str | None:
    """The option letter (A-Z, upper-case) named by `text` under the module doc's rule, else None."""
    if not isinstance(text, str):
        return None
    t = unicodedata.normalize("NFKC", text).strip().replace("*", "").replace("`", "").strip()
    t = _CHOICE_PREFIX_RE.sub("", t[:1000], count=1).strip()
    letter = None
    m = _CHOICE_RE.match(t)
    if m:
        if _HEDGE_RE.match(t, m.end()):
            return None
        letter = m.group(1) or m.group(2)
    else:
        low = _CHOICE_LOWER_RE.match(t)
        if low:
            letter = next(g for g in low.groups() if g).upper()
    if letter is None and options:
        wanted = normalize_text(t)
        hits = [i for i, opt in enumerate(options) if isinstance(opt, str) and normalize_text(opt) == wanted]
        letter = LETTERS[hits[0]] if len(hits) == 1 and hits[0] < MAX_OPTIONS and wanted else None
    if letter is not None and options is not None and LETTERS.index(letter) >= len(options):
        return None
    return letter


def check_options(value: Any, name: str = "options") -> list[str]:
    """The option texts (stripped; numbers written as text): 2 to 26 non-empty ones, else ColumnError."""
    items = list(value) if isinstance(value, (list, tuple)) else []
    ok = all((isinstance(v, str) or is_number(v)) and str(v).strip() for v in items)
    if not ok or not 2 <= len(items) <= MAX_OPTIONS:
        raise bad_value(name, OPTIONS_EXPECTED, value)
    return [str(v).strip() for v in items]


def check_choice(value: Any, options: Sequence[str] | None = None, name: str = "solution") -> str:
    """The gold option letter, read by `parse_choice` with the (checked) options when known, else ColumnError."""
    letter = parse_choice(value, options) if isinstance(value, str) else None
    if letter is None:
        if options:
            expected = f"an option letter A-{LETTERS[min(len(options), MAX_OPTIONS) - 1]} or one option's text"
        else:
            expected = "an option letter A-Z such as 'B'"
        raise bad_value(name, expected, value)
    return letter


def check_letter(value: Any, name: str = "solution") -> str:
    """The gold option letter when the options are not known ("B", "(b)"): `check_choice` without options."""
    return check_choice(value, None, name)


def format_choice(letter: str) -> str:
    """Answer text for the gold option: its letter ("B"), which `parse_choice` reads back."""
    return letter


def predicted_choice(completion: str, options: Sequence[str] | None = None) -> str | None:
    """The letter in the completion's answer tag, or None."""
    answer = extract_answer(completion)
    return None if answer is None else parse_choice(answer, options)


def choice_score(completion: str, solution: Any, options: Any = None) -> float:
    """1.0 when the answer names the gold option, else 0.0."""
    opts = None if options is None else check_options(options)
    truth = check_choice(solution, opts)
    return 1.0 if predicted_choice(completion, opts) == truth else 0.0


@register_reward("choice_match")
def choice_match_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """`choice_score` per completion. Columns: solution (letter, or an option's text), options (optional)."""
    return score_each("choice_match", completions, columns, choice_score, optional={"options": None})
