"""Multiple-choice scoring with MMAU's official matching rule.

MMAU's ``evaluation.py`` (github.com/Sakshi113/MMAU) decides correctness by words, not by
exact string: text is lower-cased and split into the set of its ``\\b\\w+\\b`` words; a
prediction is correct when

1. it has at least one word,
2. every word of the answer is in it, and
3. none of its words is an "incorrect word": a word of a wrong choice that is not also a
   word of the answer (a wrong choice with exactly the answer's words is not wrong).

So "It is a man speaking" is correct for the answer "Man" against "Woman", "Child",
"Robot", while "man or woman" is not. :func:`mmau_match` is that rule, written anew.

ltbm adds one step in front: prompts list the choices as ``(A) ...``, and models often
answer with the letter, so a prediction that is only a letter ("B", "(B)", "B.",
"Answer: B") is replaced by that choice's text, and a leading label ("(B) Woman") is
dropped before matching. Parenthesised letters are always labels; a bare letter that is
itself a choice's text (music items have choices such as "A", "C", "G") is taken as that
text, which is how the official rule reads it too. Nothing is guessed: a prediction that
is empty, a letter past the last choice, or text that names no single choice counts as
wrong and as unparseable.

Accuracy is reported overall, per ``task`` (sound/music/speech) and per ``difficulty``,
over all choices whatever their number (2, 4, 5 or 8 in test-mini).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ltbm.tasks.base import Item

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
Status = Literal["letter", "text", "empty", "out_of_range", "missing"]

_WORD = re.compile(r"\b\w+\b")
_ANSWER_PREFIX = re.compile(
    r"^(?:the\s+)?(?:correct\s+|right\s+|best\s+|final\s+)?(?:answer|option|choice)"
    r"(?:\s+is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
_LETTER_ONLY = re.compile(r"(?P<open>\()?(?P<letter>[A-Za-z])(?P<close>\))?")
_LEADING_LABEL = re.compile(r"^(?:\((?P<a>[A-Za-z])\)|(?P<b>[A-Za-z])[.):])\s+(?=\S)")


class McqError(ValueError):
    """Items that cannot be scored as given; the message names the item and the fix."""


def words(text: str) -> set[str]:
    """MMAU's normalisation: the set of lower-cased ``\\b\\w+\\b`` words."""
    return set(_WORD.findall(text.lower()))


def mmau_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """MMAU's official rule: all answer words present, no word found only in wrong choices."""
    predicted = words(prediction)
    if not predicted:
        return False
    expected = words(answer)
    incorrect: set[str] = set()
    for choice in choices:
        choice_words = words(choice)
        if choice_words != expected:
            incorrect |= choice_words - expected
    return expected <= predicted and predicted.isdisjoint(incorrect)


@dataclass(frozen=True)
class ParsedPrediction:
    """What a raw model output says: the text the rule is applied to, and how it was read."""

    text: str
    status: Status
    letter: str | None = None


def parse_prediction(prediction: str | None, choices: Sequence[str]) -> ParsedPrediction:
    """Read a raw output: a letter becomes its choice's text; other text loses a leading
    ``Answer:`` and option label. See the module docstring for the letter rules."""
    raw = (prediction or "").strip()
    if not words(raw):
        return ParsedPrediction("", "empty")
    core = _ANSWER_PREFIX.sub("", raw, count=1).strip()
    letter_only = _LETTER_ONLY.fullmatch(core.rstrip(".:").strip())
    if letter_only:
        return _parse_letter(letter_only, core, choices)
    return ParsedPrediction(_drop_label(core, choices), "text")


def _parse_letter(match: re.Match[str], core: str, choices: Sequence[str]) -> ParsedPrediction:
    letter = match["letter"].upper()
    is_label = bool(match["close"])  # "(B)" or "B)": label syntax, never a choice's text
    if not is_label and any(words(choice) == words(core) for choice in choices):
        return ParsedPrediction(core, "text")
    index = LETTERS.index(letter)
    if index >= len(choices):
        return ParsedPrediction("", "out_of_range", letter)
    return ParsedPrediction(choices[index], "letter", letter)


def _drop_label(text: str, choices: Sequence[str]) -> str:
    """``(B) Woman`` -> ``Woman``; kept when a choice itself starts that way (``F. Scott``)."""
    match = _LEADING_LABEL.match(text)
    if not match:
        return text
    letter = (match["a"] or match["b"]).upper()
    if LETTERS.index(letter) >= len(choices):
        return text
    label = match.group(0).strip().lower()
    if any(choice.strip().lower().startswith(label) for choice in choices):
        return text
    return text[match.end() :]


def identify_choice(text: str, choices: Sequence[str]) -> int | None:
    """Index of the first choice that ``text`` selects under the official rule, or None when
    it selects none (names no choice, or words of several)."""
    for index, choice in enumerate(choices):
        if mmau_match(choice, text, choices):
            return index
    return None


@dataclass
class Accuracy:
    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def add(self, correct: bool) -> None:
        self.correct += int(correct)
        self.total += 1

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "total": self.total}


@dataclass
class McqScores:
    """Accuracy (a fraction) overall, per task and per difficulty, with parse diagnostics.

    ``unparseable`` counts predictions that select no single choice (empty output, a letter
    past the last choice, text naming no choice or several); ``empty`` and ``missing`` (no
    prediction for the item, as MMAU's ``no_pred_count``) are subsets shown apart. All of
    them are scored wrong.
    """

    overall: Accuracy
    per_task: dict[str, Accuracy]
    per_difficulty: dict[str, Accuracy]
    unparseable: int
    empty: int
    missing: int
    per_item: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.overall.accuracy

    def as_dict(self) -> dict[str, Any]:
        """The summary the harness writes (per-item records stay out of it)."""
        return {
            "accuracy": self.overall.accuracy,
            "correct": self.overall.correct,
            "items": self.overall.total,
            "per_task": {key: acc.as_dict() for key, acc in sorted(self.per_task.items())},
            "per_difficulty": {
                key: acc.as_dict() for key, acc in sorted(self.per_difficulty.items())
            },
            "unparseable": self.unparseable,
            "empty": self.empty,
            "missing": self.missing,
        }


def score_item(prediction: str | None, item: Item) -> dict[str, Any]:
    """One item's verdict: the parsed text, the choice it selects, and correctness."""
    choices, answer = _checked(item)
    if prediction is None:
        parsed = ParsedPrediction("", "missing")
    else:
        parsed = parse_prediction(prediction, choices)
    choice = identify_choice(parsed.text, choices) if parsed.text else None
    return {
        "id": item.id,
        "status": parsed.status,
        "parsed": parsed.text,
        "choice": choice,
        "correct": mmau_match(answer, parsed.text, choices),
        "parseable": choice is not None,
    }


def score_mcq(predictions: Mapping[str, str | None], items: Sequence[Item]) -> McqScores:
    """Score ``predictions`` (item id -> raw model output) on ``items``.

    Items define the evaluated set: an item without a prediction counts as missing (wrong),
    and predictions for other ids are ignored. Each item needs its choices and its answer
    (``references[0]``); items of MMAU's answerless test set cannot be scored here.
    """
    if not items:
        raise McqError("no items to score: the evaluated set is empty")
    scores = McqScores(Accuracy(), {}, {}, unparseable=0, empty=0, missing=0)
    for item in items:
        verdict = score_item(predictions.get(item.id), item)
        scores.per_item.append(verdict)
        _tally(scores, item, verdict)
    return scores


def _tally(scores: McqScores, item: Item, verdict: dict[str, Any]) -> None:
    correct = bool(verdict["correct"])
    scores.overall.add(correct)
    for key, groups in (("task", scores.per_task), ("difficulty", scores.per_difficulty)):
        if key in item.meta:
            groups.setdefault(str(item.meta[key]), Accuracy()).add(correct)
    scores.unparseable += int(not verdict["parseable"])
    scores.empty += int(verdict["status"] == "empty")
    scores.missing += int(verdict["status"] == "missing")


def _checked(item: Item) -> tuple[list[str], str]:
    if not item.choices:
        raise McqError(f"item {item.id} has no choices; it is not a multiple-choice item")
    if not item.references or not item.references[0].strip():
        raise McqError(
            f"item {item.id} has no answer (MMAU's test set withholds them): score test-mini "
            "here, and submit test-set predictions with MMAUTask.write_submission"
        )
    return list(item.choices), item.references[0]
