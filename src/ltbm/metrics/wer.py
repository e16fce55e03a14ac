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

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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


EARLY_STOP_MIN_WORDS = 3
EARLY_STOP_MIN_SHARE = 0.2
LOOP_MAX_NGRAM = 10
LOOP_MIN_COPIES = 3
LOOP_MAX_UNIT = 4
LOOP_MIN_UNIT_COPIES = 4


@dataclass(frozen=True)
class ItemErrors:
    """One item's word edits, and the two failure modes that dominate a compressed decoder's
    errors, defined so that a count of them means the same thing in every report:

    - **early stop**: after the last correctly recognised reference word, at least
      ``max(EARLY_STOP_MIN_WORDS, ceil(EARLY_STOP_MIN_SHARE × reference words))`` reference
      words are deleted (the transcript ends, or trails off into a few wrong words, while the
      speech goes on). An empty hypothesis of a reference with ≥ 3 words is an early stop.
    - **loop**: some n-gram of 1 to ``LOOP_MAX_NGRAM`` words occurs at least
      ``LOOP_MIN_COPIES`` times back to back in the hypothesis, and more times back to back
      than anywhere in the reference (so a reference's own "no no no" is not a loop).
      ``loop_ngram`` and ``loop_copies`` name the repeat covering the most words. A decoder
      can also loop inside one token ("kakakakaka…"): a hypothesis word absent from the
      reference that is one unit of 1 to ``LOOP_MAX_UNIT`` characters repeated at least
      ``LOOP_MIN_UNIT_COPIES`` times is a loop too (``loop_ngram`` is the unit) when no
      word-level loop is found.
    """

    substitutions: int
    deletions: int
    insertions: int
    hits: int
    hypothesis_words: int
    trailing_deletions: int
    loop_ngram: str | None = None
    loop_copies: int = 0

    @property
    def reference_words(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors over reference words; an empty reference gives the inserted-word count."""
        return self.errors / self.reference_words if self.reference_words else float(self.errors)

    @property
    def early_stop(self) -> bool:
        share = math.ceil(EARLY_STOP_MIN_SHARE * self.reference_words)
        return self.trailing_deletions >= max(EARLY_STOP_MIN_WORDS, share)

    @property
    def loop(self) -> bool:
        return self.loop_ngram is not None

    @property
    def empty(self) -> bool:
        return self.hypothesis_words == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "reference_words": self.reference_words,
            "hypothesis_words": self.hypothesis_words,
            "errors": self.errors,
            "wer": self.wer,
            "trailing_deletions": self.trailing_deletions,
            "early_stop": self.early_stop,
            "loop": self.loop,
            "loop_ngram": self.loop_ngram,
            "loop_copies": self.loop_copies,
            "empty": self.empty,
        }


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
    items: list[ItemErrors] = field(default_factory=list, repr=False)

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
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("pass lists of strings (one per item), not a single string")
    if len(references) != len(hypotheses):
        raise ValueError(
            f"got {len(references)} references and {len(hypotheses)} hypotheses; pass one "
            "hypothesis per reference, in the same order"
        )
    if not references:
        raise ValueError("no items to score: pass at least one reference and hypothesis")
    clean = _normalizer(normalize)
    refs = [clean(r) for r in references]
    hyps = [clean(h) for h in hypotheses]
    items = [item_errors(ref, hyp, normalize=False) for ref, hyp in zip(refs, hyps, strict=True)]
    words = sum(item.reference_words for item in items)
    errors = sum(item.errors for item in items)
    return WerResult(
        wer=errors / words if words else float(errors),
        per_item=[item.wer for item in items],
        substitutions=sum(item.substitutions for item in items),
        deletions=sum(item.deletions for item in items),
        insertions=sum(item.insertions for item in items),
        reference_words=words,
        normalized_references=refs,
        normalized_hypotheses=hyps,
        items=items,
    )


def item_errors(reference: str, hypothesis: str, normalize: bool = True) -> ItemErrors:
    """Word edits of one hypothesis against its reference, with the failure-mode flags
    (see :class:`ItemErrors`). jiwer refuses an empty reference: that is all insertions."""
    import jiwer

    clean = _normalizer(normalize)
    ref_words, hyp_words = clean(reference).split(), clean(hypothesis).split()
    loop_ngram, loop_copies = _loop(hyp_words, ref_words)
    if not ref_words:
        return ItemErrors(0, 0, len(hyp_words), 0, len(hyp_words), 0, loop_ngram, loop_copies)
    out = jiwer.process_words(" ".join(ref_words), " ".join(hyp_words))
    return ItemErrors(
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        hits=out.hits,
        hypothesis_words=len(hyp_words),
        trailing_deletions=_deletions_after_last_hit(out.alignments[0]),
        loop_ngram=loop_ngram,
        loop_copies=loop_copies,
    )


def _normalizer(normalize: bool):
    return normalize_text if normalize else (lambda s: " ".join(s.split()))


def _deletions_after_last_hit(chunks) -> int:
    """Reference words deleted after the last reference word the hypothesis got right."""
    deleted = 0
    for chunk in reversed(chunks):
        if chunk.type == "equal":
            break
        if chunk.type == "delete":
            deleted += chunk.ref_end_idx - chunk.ref_start_idx
    return deleted


def _loop(hypothesis: list[str], reference: list[str]) -> tuple[str | None, int]:
    """The hypothesis's longest back-to-back repeat that the reference does not have."""
    best: tuple[int, str | None, int] = (0, None, 0)
    for n in range(1, LOOP_MAX_NGRAM + 1):
        for start in range(len(hypothesis) - n * LOOP_MIN_COPIES + 1):
            gram = hypothesis[start : start + n]
            copies = _copies_at(hypothesis, start, gram)
            if copies < LOOP_MIN_COPIES or n * copies <= best[0]:
                continue
            if copies > _most_copies(reference, gram):
                best = (n * copies, " ".join(gram), copies)
    if best[1] is None:
        return _loop_inside_a_word(hypothesis, set(reference))
    return best[1], best[2]


def _loop_inside_a_word(hypothesis: list[str], reference: set[str]) -> tuple[str | None, int]:
    """The longest hypothesis word, absent from the reference, that repeats one short unit."""
    for word in sorted(set(hypothesis) - reference, key=len, reverse=True):
        for size in range(1, LOOP_MAX_UNIT + 1):
            copies, rest = divmod(len(word), size)
            if copies >= LOOP_MIN_UNIT_COPIES and not rest and word == word[:size] * copies:
                return word[:size], copies
    return None, 0


def _copies_at(words: list[str], start: int, gram: list[str]) -> int:
    n, copies = len(gram), 1
    while words[start + copies * n : start + (copies + 1) * n] == gram:
        copies += 1
    return copies


def _most_copies(words: list[str], gram: list[str]) -> int:
    """Most back-to-back copies of ``gram`` anywhere in ``words`` (0 when absent)."""
    n = len(gram)
    starts = [i for i in range(len(words) - n + 1) if words[i : i + n] == gram]
    return max((_copies_at(words, i, gram) for i in starts), default=0)
