"""MMAU scoring: the official word rule, letter answers, and accuracy per task/difficulty,
on synthetic items and on real test-mini questions (2, 4, 5 and 8 choices)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from shared_paths import MMAU_JSON

from ltbm.metrics.mcq import (
    McqError,
    identify_choice,
    mmau_match,
    parse_prediction,
    score_item,
    score_mcq,
    words,
)
from ltbm.tasks.base import Item
from ltbm.tasks.mmau import MMAUTask

needs_mmau = pytest.mark.skipif(not MMAU_JSON.is_file(), reason=f"{MMAU_JSON} absent")

VOICES = ["Man", "Woman", "Child", "Robot"]


def mcq(item_id: str, choices: list[str], answer: str, **meta: str) -> Item:
    return Item(
        id=item_id,
        audio=Path(f"{item_id}.wav"),
        references=[answer],
        question="Which?",
        choices=choices,
        meta=meta,
    )


def real_items() -> dict[str, Item]:
    """Every test-mini question, read by the project's own MMAU reader (no audio needed)."""
    return {item.id: item for item in MMAUTask(MMAU_JSON).all_items()}


def official_reference(answer: str, prediction: str, choices: list[str]) -> bool:
    """MMAU's rule restated from its description, to cross-check mmau_match."""

    def tok(text: str) -> set[str]:
        return set(re.findall(r"\b\w+\b", text.lower()))

    wrong = set().union(*(tok(c) - tok(answer) for c in choices if tok(c) != tok(answer)))
    said = tok(prediction)
    return bool(said) and tok(answer) <= said and not (said & wrong)


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("Man", True),
        ("man.", True),
        ("The speaker is a man.", True),  # extra words that name no wrong choice
        ("MAN", True),
        ("man or woman", False),  # names a wrong choice too
        ("a woman", False),
        ("human", False),  # \b\w+\b words: "human" is not "man"
        ("", False),
    ],
)
def test_official_rule_on_single_word_choices(prediction: str, correct: bool) -> None:
    assert mmau_match("Man", prediction, VOICES) is correct
    assert official_reference("Man", prediction, VOICES) is correct


def test_official_rule_ignores_words_shared_with_the_answer() -> None:
    choices = ["Her mom", "Her sister", "Her friend", "Her birth mom"]
    assert mmau_match("Her mom", "It is her mom", choices)
    assert not mmau_match("Her mom", "her birth mom", choices)  # "birth" is only in a wrong one
    assert not mmau_match("Her mom", "mom", choices)  # partial: "her" is missing
    assert words("4/4 time, 3/4?") == {"4", "time", "3"}
    assert not mmau_match("4/4", "3/4", ["3/4", "4/4", "5/4", "6/8"])


@pytest.mark.parametrize(
    ("prediction", "text", "status"),
    [
        ("B", "Woman", "letter"),
        ("(B)", "Woman", "letter"),
        ("b.", "Woman", "letter"),
        ("B)", "Woman", "letter"),
        ("Answer: B", "Woman", "letter"),
        ("The correct answer is (B).", "Woman", "letter"),
        ("(B) Woman", "Woman", "text"),
        ("B. Woman", "Woman", "text"),
        ("The answer is (A) Man.", "Man.", "text"),
        ("E", "", "out_of_range"),
        ("(E)", "", "out_of_range"),
        ("", "", "empty"),
        (" ... ", "", "empty"),
        ("I cannot tell.", "I cannot tell.", "text"),
    ],
)
def test_parse_prediction(prediction: str, text: str, status: str) -> None:
    parsed = parse_prediction(prediction, VOICES)
    assert (parsed.text, parsed.status) == (text, status)


def test_letters_and_choice_texts_that_are_letters() -> None:
    chords = ["C", "D", "G", "A"]  # a real test-mini music item; the answer is "D" = (B)
    assert parse_prediction("(B)", chords).text == "D"  # label syntax: always a letter
    assert parse_prediction("B", chords).text == "D"  # "B" is no choice: a letter
    assert parse_prediction("D", chords).text == "D"  # "D" is a choice: its text wins
    assert parse_prediction("(D)", chords).text == "A"
    authors = ["Mark Twain", "F. Scott Fitzgerald", "Ernest Hemingway", "J.D. Salinger"]
    assert parse_prediction("F. Scott Fitzgerald", authors).text == "F. Scott Fitzgerald"
    assert parse_prediction("(B) F. Scott Fitzgerald", authors).text == "F. Scott Fitzgerald"


def test_identify_choice() -> None:
    assert identify_choice("a woman is talking", VOICES) == 1
    assert identify_choice("a man and a woman", VOICES) is None  # several
    assert identify_choice("silence", VOICES) is None  # none


def test_score_mcq_headline_is_the_official_rule_on_the_raw_output() -> None:
    items = [
        mcq("1", VOICES, "Man", task="sound", difficulty="easy", **{"sub-category": "voice"}),
        mcq("2", VOICES, "Woman", task="sound", difficulty="hard", **{"sub-category": "voice"}),
        mcq("3", ["wind", "wharf"], "wind", task="speech", difficulty="easy"),
        mcq("4", ["wind", "wharf"], "wharf", task="speech", difficulty="easy"),
        mcq("5", VOICES, "Robot", task="music", difficulty="medium"),
        mcq("6", VOICES, "Child", task="music", difficulty="medium"),
        mcq("7", VOICES, "Child", task="music", difficulty="medium"),
    ]
    predictions = {
        "1": "(A)",  # a letter: wrong for the official rule, right for the lenient parse
        "2": "It sounds like a woman.",  # right under both
        "3": "wind or wharf",  # names both: wrong, unparseable
        "4": "",  # empty: wrong, unparseable
        "5": "(F)",  # letter past the last choice: wrong, unparseable
        # "6" has no prediction: missing, wrong
        "7": "(C) Child",  # label and text: the text makes it right under both
        "other": "ignored",
    }
    scores = score_mcq(predictions, items)
    assert scores.accuracy == pytest.approx(2 / 7)
    summary = scores.as_dict()
    assert (summary["correct"], summary["items"]) == (2, 7)
    assert summary["overall"] == {"accuracy": 2 / 7, "correct": 2, "total": 7}
    assert (summary["lenient_accuracy"], summary["lenient_correct"]) == (3 / 7, 3)
    assert summary["by_task"] == {
        "music": {"accuracy": 1 / 3, "correct": 1, "total": 3},
        "sound": {"accuracy": 0.5, "correct": 1, "total": 2},
        "speech": {"accuracy": 0.0, "correct": 0, "total": 2},
    }
    assert summary["by_difficulty"]["easy"] == {"accuracy": 0.0, "correct": 0, "total": 3}
    assert summary["by_difficulty"]["hard"]["accuracy"] == 1.0
    assert summary["by_sub_category"] == {"voice": {"accuracy": 0.5, "correct": 1, "total": 2}}
    assert (summary["unparseable"], summary["empty"], summary["missing"]) == (4, 1, 1)
    assert "raw model output" in summary["rule"] and "not comparable" in summary["lenient_rule"]
    verdicts = [(v["correct"], v["correct_lenient"], v["lenient_status"]) for v in scores.per_item]
    assert verdicts == [
        (False, True, "letter"),
        (True, True, "text"),
        (False, False, "text"),
        (False, False, "empty"),
        (False, False, "out_of_range"),
        (False, False, "missing"),
        (True, True, "text"),
    ]


def test_items_that_cannot_be_scored() -> None:
    no_answer = Item(id="t1", audio=Path("t1.wav"), question="q", choices=["a", "b"])
    with pytest.raises(McqError, match="item t1 has no answer.*write_submission"):
        score_mcq({"t1": "a"}, [no_answer])
    no_choices = Item(id="t2", audio=Path("t2.wav"), references=["a"], question="q")
    with pytest.raises(McqError, match="item t2 has no choices"):
        score_mcq({"t2": "a"}, [no_choices])
    with pytest.raises(McqError, match="no items"):
        score_mcq({}, [])


@needs_mmau
@pytest.mark.parametrize(
    ("item_id", "prediction", "official", "lenient"),
    [
        # 2 choices: wind / wharf
        ("78f299b4-49f8-4d5b-8b8f-fcd417e49ba4", "(A)", False, True),
        ("78f299b4-49f8-4d5b-8b8f-fcd417e49ba4", "The word 'wind' comes first.", True, True),
        ("78f299b4-49f8-4d5b-8b8f-fcd417e49ba4", "wharf", False, False),
        # 4 choices: Man / Woman / Child / Robot
        ("3fe64f3d-282c-4bc8-a753-68f8f6c35652", "Man", True, True),
        ("3fe64f3d-282c-4bc8-a753-68f8f6c35652", "B", False, False),
        ("3fe64f3d-282c-4bc8-a753-68f8f6c35652", "Answer: A", False, True),
        ("3fe64f3d-282c-4bc8-a753-68f8f6c35652", "A man, maybe a child", False, False),
        # 5 choices, the answer listed twice (B and E)
        ("9de3c090-27e0-4b4b-9e58-d8549460d664", "E", False, True),
        ("9de3c090-27e0-4b4b-9e58-d8549460d664", "(B)", False, True),
        (
            "9de3c090-27e0-4b4b-9e58-d8549460d664",
            "First and second speaker are neutral",
            True,
            True,
        ),
        ("9de3c090-27e0-4b4b-9e58-d8549460d664", "speaker are neutral", False, False),  # partial
        ("9de3c090-27e0-4b4b-9e58-d8549460d664", "both speakers are sad.", False, False),
        # 5 choices with long answers: a partial answer misses words
        (
            "5b453322-b158-4b9a-9989-45fbeadde270",
            "first speaker shows neutral and anger",
            False,
            False,
        ),
        ("5b453322-b158-4b9a-9989-45fbeadde270", "(D)", False, True),
        # 8 choices: the answer is the fourth, "A motorsport racing event"
        ("7a1dcecc-d303-4759-940b-5d02d2a8c77e", "D", False, True),
        ("7a1dcecc-d303-4759-940b-5d02d2a8c77e", "A motorsport racing event, surely.", True, True),
        # ...but "is" is a word of the (garbled) second choice, so the official rule fails it
        ("7a1dcecc-d303-4759-940b-5d02d2a8c77e", "It is a motorsport racing event.", False, False),
        ("7a1dcecc-d303-4759-940b-5d02d2a8c77e", "racing", False, False),  # partial
        ("7a1dcecc-d303-4759-940b-5d02d2a8c77e", "(H)", False, False),  # Desert
        ("7a1dcecc-d303-4759-940b-5d02d2a8c77e", "(I)", False, False),  # no ninth choice
        ("7a1dcecc-d303-4759-940b-5d02d2a8c77e", "", False, False),
        # chord names as choices: C D G A, the answer is "D": the letter D is also its text
        ("34307e92-3c1c-4e75-981b-892e8880796c", "D", True, True),
        ("34307e92-3c1c-4e75-981b-892e8880796c", "(B)", False, True),
        ("34307e92-3c1c-4e75-981b-892e8880796c", "(D)", True, False),  # the word "d"; label A
    ],
)
def test_real_test_mini_questions(item_id: str, prediction: str, official: bool, lenient: bool):
    verdict = score_item(prediction, real_items()[item_id])
    assert (verdict["correct"], verdict["correct_lenient"]) == (official, lenient)


@needs_mmau
def test_real_test_mini_in_full() -> None:
    items = list(real_items().values())
    letters = {it.id: f"({chr(65 + (it.choices or []).index(it.references[0]))})" for it in items}
    texts = {it.id: it.references[0] for it in items}
    by_text = score_mcq(texts, items)
    assert by_text.accuracy == 1.0 and by_text.unparseable == 0
    by_letter = score_mcq(letters, items)
    assert by_letter.lenient.accuracy == 1.0 and by_letter.unparseable == 0
    # A letter is right for the official rule only where the letter is a word of the answer
    # and of no wrong choice (chord names, "A ..." answers).
    expected = sum(mmau_match(it.references[0], letters[it.id], it.choices or []) for it in items)
    assert by_letter.overall.correct == expected < 100
    summary = by_text.as_dict()
    assert {k: v["total"] for k, v in summary["by_task"].items()} == {
        "music": 334,
        "sound": 333,
        "speech": 333,
    }
    assert {k: v["total"] for k, v in summary["by_difficulty"].items()} == {
        "easy": 224,
        "hard": 236,
        "medium": 540,
    }
    assert len(summary["by_sub_category"]) == 27
    assert sum(v["total"] for v in summary["by_sub_category"].values()) == 1000
    # Each prediction names the next choice: right only where that choice has the same
    # words as the answer (test-mini lists some answers twice).
    shifted, expected = {}, 0
    for it in items:
        choices = it.choices or []
        following = choices[(choices.index(it.references[0]) + 1) % len(choices)]
        shifted[it.id] = following
        expected += words(following) == words(it.references[0])
    assert score_mcq(shifted, items).overall.correct == expected
    empty = score_mcq({}, items).as_dict()
    assert (empty["accuracy"], empty["missing"], empty["unparseable"]) == (0.0, 1000, 1000)
