"""Word error rate, per item and over the corpus, after a Whisper-style English normalisation.

Whisper writes "Hello, world!" where a reference says "HELLO WORLD"; without normalising
both sides, casing and punctuation would dominate the error rate and hide what compression
does. The normalisation here is deliberately small and predictable:

- Unicode NFKC, lowercase, curly quotes made straight;
- numbers written with digits are spelled out the way references spell them ("7" →
  "seven", "42" → "forty two", "15th" → "fifteenth", "3.5" → "three point five",
  "10%" → "ten percent", "£5" → "five pounds", "c3p1" → "c three p one"; 1100–1999
  read as years: "1455" → "fourteen fifty five"; a leading zero reads digit by digit:
  "007" → "zero zero seven");
- hyphens, slashes and other joiners become spaces ("forty-two" → "forty two");
- apostrophes inside words stay ("don't", "linnell's"), every other punctuation mark goes;
- the titles Whisper abbreviates are spelled out as references spell them ("mr" →
  "mister", "mrs" → "missus", "dr" → "doctor");
- runs of whitespace collapse to one space.

Whisper's own ``EnglishTextNormalizer`` goes the other way (words → digits) and also
rewrites British spellings and contractions; that is not reproduced here. Spelling digits
out suits references that spell numbers out (LibriSpeech, the built-in set) and is simple
to predict. What it cannot fix ("oh" for zero, "a hundred" for "one hundred", currency
order) still counts as errors, equally for every method compared.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'"})
_JOINERS = re.compile(r"[-\u2010-\u2015_/\\]+")
_NOT_WORD = re.compile(r"[^\w\s']+")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor"}
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"(?<!\d)(\d+)\.(\d+)(?!\d)")
_PERCENT = re.compile(r"(\d)\s*%")
_CURRENCY = re.compile(r"([$£€])(\d+(?:\.\d+)?)")
_CURRENCY_WORDS = {"$": "dollars", "£": "pounds", "€": "euros"}
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])(?!(?:st|nd|rd|th)\b)")
_NUMBER = re.compile(r"\b(\d+)(st|nd|rd|th)?\b")
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def normalize_text(text: str) -> str:
    """Lowercase, spell out digits, strip punctuation (keeping in-word apostrophes), spell
    out titles, collapse spaces; see the module docstring for each rule."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_QUOTES)
    text = spell_numbers(text)
    text = _JOINERS.sub(" ", text)
    text = _NOT_WORD.sub(" ", text)
    text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(_TITLES.get(word, word) for word in text.split())


def spell_numbers(text: str) -> str:
    """Replace numbers written with digits by words ("15th" → "fifteenth")."""
    text = _THOUSANDS_COMMA.sub("", text)
    text = _PERCENT.sub(r"\1 percent", text)
    text = _CURRENCY.sub(lambda m: f"{m[2]} {_CURRENCY_WORDS[m[1]]}", text)
    text = _DECIMAL.sub(lambda m: f"{m[1]} point {' '.join(m[2])}", text)
    text = _LETTER_DIGIT.sub(" ", text)
    return _NUMBER.sub(lambda m: _number_words(m[1], ordinal=m[2] is not None), text)


def _number_words(digits: str, ordinal: bool = False) -> str:
    if (len(digits) > 1 and digits.startswith("0")) or len(digits) > 12:
        return " ".join(_ONES[int(d)] for d in digits)
    value = int(digits)
    if 1100 <= value <= 1999 and value % 100 and not ordinal:
        low = value % 100
        return f"{_cardinal(value // 100)} {'oh ' if low < 10 else ''}{_cardinal(low)}"
    words = _cardinal(value)
    if not ordinal:
        return words
    head, _, last = words.rpartition(" ")
    if last in _ORDINALS:
        last = _ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


def _cardinal(value: int) -> str:
    """English words for 0 ≤ value < 10¹², without "and" ("one hundred five")."""
    if value < 20:
        return _ONES[value]
    if value < 100:
        tens, ones = divmod(value, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if value < 1000:
        hundreds, rest = divmod(value, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_cardinal(rest)}" if rest else "")
    for scale, name in _SCALES:
        if value >= scale:
            high, rest = divmod(value, scale)
            return f"{_cardinal(high)} {name}" + (f" {_cardinal(rest)}" if rest else "")
    raise AssertionError(value)  # unreachable: every value ≥ 1000 meets a scale


@dataclass
class WerResult:
    """Corpus WER (all edits over all reference words, so long clips weigh more), the
    per-item WERs, and the edit counts behind them."""

    wer: float
    per_item: list[float]
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int
    normalized_references: list[str] = field(default_factory=list, repr=False)
    normalized_hypotheses: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "wer": self.wer,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "reference_words": self.reference_words,
            "items": len(self.per_item),
        }


def word_error_rate(
    references: Sequence[str], hypotheses: Sequence[str], normalize: bool = True
) -> WerResult:
    """WER of ``hypotheses`` against ``references`` (one string each, same order).

    An item whose reference is empty after normalisation has no defined WER; its
    per-item value is the number of inserted words (0 when the hypothesis is empty too),
    and in the corpus figure its insertions count against the other items' words.
    """
    import jiwer

    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("pass lists of strings (one per item), not a single string")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"got {len(references)} references and {len(hypotheses)} hypotheses; pass one "
            "hypothesis per reference, in the same order"
        )
    if not references:
        raise ValueError("no items to score: pass at least one reference and hypothesis")
    clean = normalize_text if normalize else (lambda s: " ".join(s.split()))
    refs = [clean(r) for r in references]
    hyps = [clean(h) for h in hypotheses]
    totals = {"substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0}
    per_item = []
    for ref, hyp in zip(refs, hyps, strict=True):
        counts = _edit_counts(jiwer, ref, hyp)
        for key in totals:
            totals[key] += counts[key]
        ref_words = counts["hits"] + counts["substitutions"] + counts["deletions"]
        errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
        per_item.append(errors / ref_words if ref_words else float(errors))
    words = totals["hits"] + totals["substitutions"] + totals["deletions"]
    errors = totals["substitutions"] + totals["deletions"] + totals["insertions"]
    return WerResult(
        wer=errors / words if words else float(errors),
        per_item=per_item,
        substitutions=totals["substitutions"],
        deletions=totals["deletions"],
        insertions=totals["insertions"],
        reference_words=words,
        normalized_references=refs,
        normalized_hypotheses=hyps,
    )


def _edit_counts(jiwer, reference: str, hypothesis: str) -> dict[str, int]:
    """Word-level edit counts; jiwer refuses empty references, which are all insertions."""
    if not reference:
        return {
            "substitutions": 0,
            "deletions": 0,
            "insertions": len(hypothesis.split()),
            "hits": 0,
        }
    out = jiwer.process_words(reference, hypothesis)
    return {
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
    }
