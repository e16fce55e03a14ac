"""Multiple-choice scoring: MMAU's official rule on the raw output (the headline), and a
lenient parse beside it.

**Official rule (the headline).** MMAU's ``evaluation.py`` (github.com/Sakshi113/MMAU, both
the Jan 2025 version that reads ``model_output`` and the one before it that reads
``model_prediction``) decides correctness by words: text is lower-cased and split into the
set of its ``\\b\\w+\\b`` words; a prediction is correct when

1. it has at least one word,
2. every word of the answer is in it, and
3. none of its words is an "incorrect word": a word of a wrong choice that is not also a
   word of the answer (a wrong choice with exactly the answer's words is not wrong).

So "It is a man speaking" is correct for the answer "Man" against "Woman", "Child",
"Robot", while "man or woman" is not, and a bare letter such as "(A)" is wrong (unless
its letter happens to be a word of the answer and of no wrong choice). :func:`mmau_match`
is that rule, written anew, and it is applied to the model's output exactly as generated:
nothing is stripped or mapped first. That makes ltbm's accuracy equal, item for item, to
what the authors' script prints for the same outputs (tests run both scripts to prove it),
which is the number the MMAU leaderboard and papers report.

**Lenient figure (never the headline).** Models often answer with an option letter. The
lenient parse replaces a prediction that is only a letter ("B", "(B)", "B.", "Answer: B")
by that choice's text, and drops a leading label ("(B) Woman") and an "Answer:" prefix,
before the same rule. Parenthesised letters are always labels; a bare letter that is itself
a choice's text (music items have choices such as "A", "C", "G") is taken as that text.
Nothing is guessed: an empty output, a letter past the last choice, or text that names no
single choice counts as wrong and as unparseable. It is reported as ``lenient_accuracy``,
so the effect of letter answers stays visible without changing the headline.

Accuracy is reported overall, per ``task`` (sound/music/speech), per ``difficulty`` and per
``sub-category``, over all choices whatever their number (2, 4, 5 or 8 in test-mini).
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


GROUPS = {"by_task": "task", "by_difficulty": "difficulty", "by_sub_category": "sub-category"}
"""Summary groups and the MMAU JSON key each groups by (the official script prints these)."""
OFFICIAL_RULE = (
    "MMAU evaluation.py string_match on the raw model output: every answer word present, "
    "no word found only in wrong choices, empty output wrong"
)
LENIENT_RULE = (
    "letters mapped to their choice, 'Answer:' prefix and option label dropped, "
    "then the official rule; not comparable with published MMAU figures"
)


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
    """Official-rule accuracy (a fraction) overall and per group, the lenient figure beside
    it, and diagnostics.

    ``empty`` counts outputs with no word (wrong under both rules); ``missing`` counts items
    without an output (failed or not run: wrong, as an empty ``model_output`` is for the
    official script); ``unparseable`` counts outputs the lenient parse maps to no single
    choice (empty, a letter past the last choice, text naming no choice or several).
    """

    overall: Accuracy
    groups: dict[str, dict[str, Accuracy]]
    lenient: Accuracy
    unparseable: int = 0
    empty: int = 0
    missing: int = 0
    per_item: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """The headline: the official rule on the raw output."""
        return self.overall.accuracy

    def as_dict(self) -> dict[str, Any]:
        """The summary the harness writes to ``metrics.json`` (per-item verdicts go into the
        item records instead)."""
        summary: dict[str, Any] = {
            "accuracy": self.overall.accuracy,
            "correct": self.overall.correct,
            "items": self.overall.total,
            "rule": OFFICIAL_RULE,
            "overall": self.overall.as_dict(),
        }
        for name, groups in self.groups.items():
            summary[name] = {key: acc.as_dict() for key, acc in sorted(groups.items())}
        summary.update(
            lenient_accuracy=self.lenient.accuracy,
            lenient_correct=self.lenient.correct,
            lenient_rule=LENIENT_RULE,
            unparseable=self.unparseable,
            empty=self.empty,
            missing=self.missing,
        )
        return summary


def score_item(prediction: str | None, item: Item) -> dict[str, Any]:
    """One item's verdicts: ``correct`` (the official rule on the raw output), and the
    lenient reading (``correct_lenient``, the text it matched, the choice it selects)."""
    choices, answer = _checked(item)
    raw = prediction or ""
    if prediction is None:
        parsed = ParsedPrediction("", "missing")
    else:
        parsed = parse_prediction(prediction, choices)
    choice = identify_choice(parsed.text, choices) if parsed.text else None
    return {
        "id": item.id,
        "correct": mmau_match(answer, raw, choices),
        "correct_lenient": mmau_match(answer, parsed.text, choices),
        "lenient_status": parsed.status,
        "lenient_text": parsed.text,
        "lenient_choice": choice,
    }


def score_mcq(predictions: Mapping[str, str | None], items: Sequence[Item]) -> McqScores:
    """Score ``predictions`` (item id -> raw model output) on ``items``.

    Items define the evaluated set: an item without a prediction counts as missing (wrong),
    and predictions for other ids are ignored. Each item needs its choices and its answer
    (``references[0]``); items of MMAU's answerless test set cannot be scored here.
    """
    if not items:
        raise McqError("no items to score: the evaluated set is empty")
    scores = McqScores(Accuracy(), {name: {} for name in GROUPS}, Accuracy())
    for item in items:
        verdict = score_item(predictions.get(item.id), item)
        scores.per_item.append(verdict)
        _tally(scores, item, verdict)
    return scores


def _tally(scores: McqScores, item: Item, verdict: dict[str, Any]) -> None:
    correct = bool(verdict["correct"])
    scores.overall.add(correct)
    scores.lenient.add(bool(verdict["correct_lenient"]))
    for name, key in GROUPS.items():
        if item.meta.get(key) is not None:
            scores.groups[name].setdefault(str(item.meta[key]), Accuracy()).add(correct)
    scores.unparseable += int(verdict["lenient_choice"] is None)
    scores.empty += int(verdict["lenient_status"] == "empty")
    scores.missing += int(verdict["lenient_status"] == "missing")


def _checked(item: Item) -> tuple[list[str], str]:
    if not item.choices:
        raise McqError(f"item {item.id} has no choices; it is not a multiple-choice item")
    if not item.references or not item.references[0].strip():
        raise McqError(
            f"item {item.id} has no answer (MMAU's test set withholds them): score test-mini "
            "here, and submit test-set predictions with MMAUTask.write_submission"
        )
    return list(item.choices), item.references[0]
