"""Caption metrics: pycocoevalcap after the PTB tokenizer, checked against hand-computed
values, the maxima on identical captions, real AudioCaps captions, and the skip/error paths.

The tests that start METEOR share one scorer: its Java process needs several seconds to load
the paraphrase table, once.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from shared_paths import SHARED

from ltbm.metrics import captions
from ltbm.metrics.captions import (
    JAVA_MISSING,
    CaptionMetricsError,
    CaptionScorer,
    ptb_tokenize,
    score_captions,
)
from ltbm.tasks.base import Item

AUDIOCAPS_CSV = SHARED / "datasets" / "audiocaps" / "test.csv"
ALL_CORE = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d"]


def item(item_id: str, *references: str) -> Item:
    return Item(id=item_id, audio=Path(f"{item_id}.wav"), references=list(references))


@pytest.fixture(scope="module")
def scorer() -> Iterator[CaptionScorer]:
    with CaptionScorer() as shared:
        yield shared


def test_ptb_tokenizer_lowercases_splits_and_drops_punctuation() -> None:
    assert ptb_tokenize(["A dog, barking loudly!", "", "Don't stop.\nNow", "..."]) == [
        "a dog barking loudly",
        "",
        "do n't stop now",  # PTB splits clitics; the newline stays inside one caption
        "",
    ]


@pytest.mark.slow
def test_identical_captions_reach_the_maximum(scorer: CaptionScorer) -> None:
    # Two clips with disjoint words, so that every n-gram has a non-zero IDF
    # (log(2 clips / 1 clip containing it)); four words give n-grams up to 4.
    items = [
        item("1", "dogs bark near traffic", "dogs bark near traffic"),
        item("2", "rain hits metal roofs", "rain hits metal roofs"),
    ]
    result = scorer.score({"1": "Dogs bark near traffic.", "2": "rain hits metal roofs"}, items)
    assert result.computed == ALL_CORE
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor"):
        assert result.metrics[name] == pytest.approx(1.0, abs=1e-6), name
    # CIDEr-D: cosine 1 for each n = 1..4, times pycocoevalcap's scale of 10.
    assert result.metrics["cider_d"] == pytest.approx(10.0)
    assert result.items == 2


def test_bleu_by_hand() -> None:
    # Clip 1: "a dog a dog" against "a dog barks" (3 words) and "the dog runs away fast" (5).
    #   Both are 1 word away from the 4-word candidate; ties go to the shorter: reflen 3.
    #   Unigrams: a x2 (clipped to 1), dog x2 (clipped to 1) -> 2 correct of 4.
    #   Bigrams: "a dog" x2 (clipped to 1), "dog a" (0)      -> 1 correct of 3.
    # Clip 2: "Dog barks!" -> "dog barks" (2 words) against "a dog barks loudly" (4 words).
    #   Unigrams 2 of 2, bigrams 1 of 1.
    # Corpus: p1 = 4/6, p2 = 2/4, candidate length 6 < reference length 7,
    #   brevity penalty exp(1 - 7/6).
    items = [item("1", "a dog barks", "the dog runs away fast"), item("2", "A dog barks loudly.")]
    result = score_captions({"1": "a dog a dog", "2": "Dog barks!"}, items, metrics=["bleu"])
    penalty = math.exp(1 - 7 / 6)
    assert result.metrics["bleu_1"] == pytest.approx(4 / 6 * penalty, rel=1e-6)
    assert result.metrics["bleu_2"] == pytest.approx(math.sqrt(4 / 6 * 2 / 4) * penalty, rel=1e-6)
    assert result.metrics["bleu_3"] < 1e-4  # no trigram matches (smoothed by 1e-15 only)
    assert result.computed == ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]
    assert result.skipped["meteor"] == "not requested"


def test_cider_d_by_hand() -> None:
    # Two clips, one reference each. IDF of an n-gram = log(2) - log(df): "a" is in both
    # references, so its weight is 0; every other n-gram has weight L = log 2.
    # Clip 1: candidate "a dog" vs reference "a dog barks".
    #   n=1: vectors (a:0, dog:L) and (a:0, dog:L, barks:L): cosine L*L / (L * L*sqrt2) = 1/sqrt2
    #   n=2: ("a dog":L) and ("a dog":L, "dog barks":L): also 1/sqrt2; n=3, 4: no n-grams: 0.
    #   Length penalty exp(-delta^2 / (2 * 6^2)); pycocoevalcap measures length in bigrams
    #   (1 vs 2): delta = -1.  Score = 10 * mean(1/sqrt2, 1/sqrt2, 0, 0) * exp(-1/72).
    # Clip 2: identical 3-word caption: cosines 1, 1, 1, 0 -> 10 * 3/4 = 7.5.
    items = [item("1", "a dog barks"), item("2", "a cat meows")]
    result = score_captions({"1": "a dog", "2": "a cat meows"}, items, metrics=["cider_d"])
    clip1 = 10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert result.per_item["1"]["cider_d"] == pytest.approx(clip1)
    assert result.per_item["2"]["cider_d"] == pytest.approx(7.5)
    assert result.metrics["cider_d"] == pytest.approx((clip1 + 7.5) / 2)


def test_cider_d_is_zero_for_a_single_item() -> None:
    # The IDF comes from the scored set: with one clip every n-gram has IDF log(1/1) = 0.
    result = score_captions({"x": "a dog barks"}, [item("x", "a dog barks")], ["cider_d"])
    assert result.metrics["cider_d"] == 0.0
    assert result.items == 1


@pytest.mark.slow
def test_empty_prediction_scores_zero_without_failing(scorer: CaptionScorer) -> None:
    items = [item("1", "a dog barks"), item("2", "rain on a roof")]
    result = scorer.score({"1": "", "2": None}, items)
    assert result.computed == ALL_CORE
    assert all(result.metrics[name] == pytest.approx(0.0, abs=1e-6) for name in ALL_CORE)


@pytest.mark.slow
@pytest.mark.skipif(not AUDIOCAPS_CSV.is_file(), reason=f"{AUDIOCAPS_CSV} absent")
def test_real_audiocaps_caption_against_the_other_four(scorer: CaptionScorer) -> None:
    captions_by_clip: dict[str, list[str]] = {}
    with AUDIOCAPS_CSV.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            captions_by_clip.setdefault(row["youtube_id"], []).append(row["caption"])
    clips = list(captions_by_clip.items())[:20]
    items = [item(clip, *caps[1:]) for clip, caps in clips]
    predictions = {clip: caps[0] for clip, caps in clips}
    result = scorer.score(predictions, items)
    metrics = result.metrics
    # A human caption against four others: the range of AudioCaps' human scores.
    assert 0.5 < metrics["bleu_1"] < 0.85
    assert metrics["bleu_1"] > metrics["bleu_2"] > metrics["bleu_3"] > metrics["bleu_4"] > 0.1
    assert 0.2 < metrics["meteor"] < 0.45
    assert 0.35 < metrics["rouge_l"] < 0.65
    assert 0.5 < metrics["cider_d"] < 2.0
    assert result.items == 20 and len(result.per_item) == 20
    assert set(result.as_dict()) == {"metrics", "computed", "skipped", "items", "failed_as_empty"}


def test_java_missing_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(CaptionMetricsError) as error:
        score_captions({"1": "a"}, [item("1", "a")])
    assert str(error.value) == JAVA_MISSING
    assert "apt-get install openjdk-17-jre-headless" in JAVA_MISSING


def test_spice_skipped_with_reason_when_its_jars_are_absent(tmp_path: Path) -> None:
    items = [item("1", "a dog barks"), item("2", "a cat meows")]
    result = score_captions(
        {"1": "a dog", "2": "a cat"}, items, ["cider_d", "spice", "spider"], spice_dir=tmp_path
    )
    assert result.computed == ["cider_d"]
    for name in ("spice", "spider"):
        reason = result.skipped[name]
        assert "stanford-corenlp-3.6.0.jar" in reason and "get_stanford_models()" in reason


def test_spice_and_spider_when_the_jars_are_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in captions.SPICE_JARS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert captions.spice_unavailable(tmp_path) is None
    # SPICE itself needs the real CoreNLP jars; stand in for its output to check the wiring.
    monkeypatch.setattr(captions, "_run_spice", lambda gts, res: (0.2, [0.1, 0.3]))
    items = [item("1", "a dog barks"), item("2", "a cat meows")]
    result = score_captions(
        {"1": "a dog", "2": "a cat meows"},
        items,
        ["cider_d", "spice", "spider"],
        spice_dir=tmp_path,
    )
    assert result.computed == ["cider_d", "spice", "spider"]
    assert result.metrics["spider"] == pytest.approx((result.metrics["cider_d"] + 0.2) / 2)
    assert result.per_item["2"]["spider"] == pytest.approx((7.5 + 0.3) / 2)


def test_fense_skipped_with_reason_or_used_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions.importlib.util, "find_spec", lambda name: None)
    assert "fense package is not installed" in (captions.fense_unavailable() or "")
    monkeypatch.undo()
    monkeypatch.setattr(captions, "fense_unavailable", lambda: "no models")
    items = [item("1", "a dog barks"), item("2", "a cat meows")]
    skipped = score_captions({"1": "a", "2": "b"}, items, ["fense"])
    assert skipped.skipped["fense"] == "no models" and skipped.computed == []
    monkeypatch.setattr(captions, "fense_unavailable", lambda: None)
    monkeypatch.setattr(captions, "_run_fense", lambda cands, refs: [0.5, 0.7])
    used = score_captions({"1": "a", "2": "b"}, items, ["fense"])
    assert used.metrics["fense"] == pytest.approx(0.6) and used.computed == ["fense"]


def test_failed_clips_count_as_empty_captions() -> None:
    items = [
        item("1", "a dog barks loudly", "a dog is barking"),
        item("2", "rain falls on a roof", "heavy rain on a tin roof"),
        item("3", "a man speaks", "a man is talking"),
        item("4", "birds sing in the trees", "birds are chirping"),
    ]
    predictions = {"1": "a dog barks", "2": "rain on a roof", "3": "a man talks"}
    names = ["bleu", "rouge_l", "cider_d"]
    with_failure = score_captions(predictions, items, names, failed_ids=["4", "not-listed"])
    explicit = score_captions({**predictions, "4": ""}, items, names)
    assert with_failure.metrics == explicit.metrics
    assert (with_failure.items, with_failure.failed_as_empty) == (4, 1)
    assert with_failure.as_dict()["failed_as_empty"] == 1
    without = score_captions(predictions, items[:3], names)
    for name in ("bleu_1", "rouge_l"):  # leaving the failure out would flatter the run
        assert with_failure.metrics[name] < without.metrics[name]
    with pytest.raises(CaptionMetricsError, match="no prediction for 1 of 4"):
        score_captions(predictions, items, names)  # a missing prediction not marked failed


def test_input_errors_name_the_problem() -> None:
    items = [item("1", "a dog barks"), item("2", "a cat meows")]
    with pytest.raises(CaptionMetricsError, match="no prediction for 1 of 2 items.*'2'"):
        score_captions({"1": "a dog"}, items, ["bleu"])
    with pytest.raises(CaptionMetricsError, match="items without reference captions"):
        score_captions({"1": "a", "3": "b"}, [items[0], item("3", " ")], ["bleu"])
    with pytest.raises(CaptionMetricsError, match="unknown caption metric.*cider.*choose from"):
        score_captions({"1": "a"}, items[:1], ["cider"])
    with pytest.raises(CaptionMetricsError, match="no items to score"):
        score_captions({}, [], ["bleu"])
    extra = score_captions({"1": "a dog", "2": "a cat", "9": "ignored"}, items, ["rouge_l"])
    assert extra.items == 2
