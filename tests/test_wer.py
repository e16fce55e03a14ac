"""Word error rate and its normalisation, against hand-computed values."""

from __future__ import annotations

import pytest

pytest.importorskip("jiwer")

from ltbm.metrics.wer import normalize_text, spell_numbers, word_error_rate  # noqa: E402


def test_one_substitution_and_one_deletion():
    # ref 6 words; "sat"→"sit" (S), "the" before "mat" deleted (D): 2 / 6.
    result = word_error_rate(["the cat sat on the mat"], ["the cat sit on mat"])
    assert result.wer == pytest.approx(2 / 6)
    assert (result.substitutions, result.deletions, result.insertions) == (1, 1, 0)
    assert result.reference_words == 6


def test_corpus_wer_weighs_items_by_their_words():
    # item 1: 2 errors / 6 words; item 2: one insertion / 2 words. Corpus: 3 / 8, not the
    # mean of 1/3 and 1/2.
    result = word_error_rate(
        ["the cat sat on the mat", "hello world"], ["the cat sit on mat", "hello big world"]
    )
    assert result.per_item == pytest.approx([2 / 6, 1 / 2])
    assert result.wer == pytest.approx(3 / 8)
    assert result.as_dict()["items"] == 2


def test_normalisation_makes_casing_and_punctuation_free():
    result = word_error_rate(["HELLO WORLD, IT'S ME"], ["Hello, world! It's me."])
    assert result.wer == 0.0
    assert result.normalized_hypotheses == ["hello world it's me"]


def test_without_normalisation_casing_counts():
    assert word_error_rate(["Hello world"], ["hello world"], normalize=False).wer == 0.5


def test_insertions_can_push_wer_above_one():
    assert word_error_rate(["yes"], ["yes yes yes"]).wer == 2.0


def test_an_empty_hypothesis_is_all_deletions():
    assert word_error_rate(["two words"], [""]).wer == 1.0


def test_an_empty_reference_counts_inserted_words():
    result = word_error_rate(["", "a b"], ["you", "a b"])
    assert result.per_item == [1.0, 0.0]
    assert result.wer == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello,   World!", "hello world"),
        ("forty-two / seven", "forty two seven"),
        ("\u201cDon\u2019t,\u201d she said \u2014 'quietly'.", "don't she said quietly"),
        (
            "Mr. Smith met Dr. Jones and Mrs. Brown",
            "mister smith met doctor jones and missus brown",
        ),
        ("at 7 and 42", "at seven and forty two"),
        ("the 15th and 21st", "the fifteenth and twenty first"),
        ("about 1455", "about fourteen fifty five"),
        ("1905", "nineteen oh five"),
        ("2,500 people", "two thousand five hundred people"),
        ("3.5% of £5", "three point five percent of five pounds"),
        ("c3p1", "c three p one"),
        ("007", "zero zero seven"),
        ("101", "one hundred one"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_spell_numbers_leaves_words_alone():
    assert spell_numbers("no digits here") == "no digits here"


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        word_error_rate(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="lists of strings"):
        word_error_rate("a b", "a b")
    with pytest.raises(ValueError, match="no items"):
        word_error_rate([], [])


def test_item_errors_flag_an_early_stop_after_the_last_correct_word():
    from ltbm.metrics.wer import item_errors

    reference = "the cat sat on the mat and then it went to sleep"  # 12 words
    stopped = item_errors(reference, "The cat sat on. Thank you.")
    # 4 hits, then "thank you" stands for 2 words and 6 more are deleted: 6 ≥ max(3, ⌈2.4⌉).
    assert (stopped.hits, stopped.substitutions, stopped.deletions) == (4, 2, 6)
    assert stopped.trailing_deletions == 6 and stopped.early_stop and not stopped.loop
    # Deletions in the middle are not a stop; two trailing words of 12 are below the bar.
    assert not item_errors(reference, "the cat sat on the mat then went to sleep").early_stop
    assert not item_errors(reference, "the cat sat on the mat and then it went").early_stop
    assert item_errors("a b c", "").early_stop and item_errors("a b c", "").empty
    assert not item_errors("a b", "").early_stop  # fewer than 3 reference words


def test_item_errors_flag_a_loop_only_beyond_the_references_own_repeats():
    from ltbm.metrics.wer import item_errors

    looped = item_errors("the cat sat on the mat", "the cat sat on the mat on the mat on the mat")
    assert looped.loop and looped.loop_ngram == "on the mat" and looped.loop_copies == 3
    assert looped.insertions == 6 and not looped.early_stop
    assert not item_errors("no no no i said", "No, no, no, I said.").loop
    assert item_errors("no no no i said", "no no no no i said").loop
    assert not item_errors("a b a b", "a b a b").loop  # two copies are not a loop
    # Whisper can loop inside one token: "The kakakaka…" for a 31-word sentence.
    stuck = item_errors("the cut on his chest still dripping blood", "The kakakakakakaka.")
    assert (stuck.loop_ngram, stuck.loop_copies) == ("ka", 7) and stuck.early_stop
    assert not item_errors("mmmm yes", "mmmm yes").loop and not item_errors("a", "haha").loop


def test_word_error_rate_keeps_each_items_breakdown():
    result = word_error_rate(["a b c", "d e"], ["a x c", "d e e e e"])
    assert [item.as_dict()["errors"] for item in result.items] == [1, 3]
    assert sum(item.substitutions for item in result.items) == result.substitutions
    assert result.items[1].loop_ngram == "e"
