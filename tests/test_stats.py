"""Paired bootstrap intervals and win/tie/loss, checked against cases whose answers are
known analytically or by recomputing each resample by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ltbm.report.bootstrap import (
    bootstrap_ratios,
    difference_interval,
    percentile_interval,
    ratio_interval,
    ratio_of_sums,
    resample_counts,
    win_tie_loss,
)


def test_resample_counts_draw_n_items_per_resample_in_blocks():
    blocks = list(resample_counts(5, 2500, seed=3))
    counts = np.concatenate(blocks)
    assert [len(b) for b in blocks] == [1000, 1000, 500]
    assert counts.shape == (2500, 5) and (counts.sum(axis=1) == 5).all()
    # Every item is drawn equally often on average (expected count 1 per resample).
    assert counts.mean(axis=0) == pytest.approx(np.ones(5), abs=0.05)


def test_a_single_item_gives_a_point_interval():
    interval = ratio_interval([3.0], [7.0], resamples=200)
    assert (interval.estimate, interval.low, interval.high) == (3 / 7, 3 / 7, 3 / 7)
    assert interval.items == 1 and interval.resamples == 200


def test_two_items_follow_the_binomial_bootstrap_distribution():
    # The mean of two draws from {0, 1} is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so
    # the 2.5 % and 97.5 % quantiles are 0 and 1 exactly.
    samples = bootstrap_ratios([([0.0, 1.0], None)], resamples=10_000, seed=0)[:, 0]
    for value, probability in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert (samples == value).mean() == pytest.approx(probability, abs=0.02)
    interval = ratio_interval([0.0, 1.0], resamples=10_000, seed=0)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_three_items_upper_quantile_reaches_the_rare_all_ones_resample():
    # Mean of three draws from {0, 0, 1}: P(0) = 8/27, P(≤ 2/3) = 26/27 ≈ 0.963 < 0.975,
    # so the 97.5 % quantile is 1 (and the 2.5 % quantile 0), far from sampling noise.
    interval = ratio_interval([0.0, 0.0, 1.0], resamples=10_000, seed=1)
    assert (interval.low, interval.high) == (0.0, 1.0)
    assert interval.estimate == pytest.approx(1 / 3)


def test_each_resample_is_a_ratio_of_sums_recomputed_on_the_drawn_items():
    errors, words = np.array([0.0, 5.0, 1.0, 9.0]), np.array([10.0, 20.0, 1.0, 30.0])
    samples = bootstrap_ratios([(errors, words)], resamples=1500, seed=7)[:, 0]
    counts = np.concatenate(resample_counts(4, 1500, seed=7))
    by_hand = [(c * errors).sum() / (c * words).sum() for c in counts]
    assert samples == pytest.approx(by_hand)
    mean_of_ratios = [(c * errors / words).sum() / 4 for c in counts]
    assert not np.allclose(samples, mean_of_ratios)  # WER is not a mean of item WERs
    assert ratio_of_sums(errors, words) == 15 / 61
    assert ratio_interval(errors, words, resamples=1500, seed=7).estimate == 15 / 61


def test_intervals_are_reproducible_from_the_seed():
    values = np.random.default_rng(0).random(50)
    first = ratio_interval(values, resamples=2000, seed=4)
    assert ratio_interval(values, resamples=2000, seed=4) == first
    assert ratio_interval(values, resamples=2000, seed=5) != first
    assert first.low < values.mean() < first.high


def test_a_difference_of_identical_cells_is_exactly_zero():
    errors, words = [1.0, 0.0, 4.0, 2.0], [5.0, 3.0, 9.0, 4.0]
    interval = difference_interval((errors, words), (errors, words), resamples=1000)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_a_difference_is_paired_on_the_same_resample():
    # B = A + 1 on every item: unpaired resampling would spread the difference, paired
    # resampling gives exactly −1 on every resample.
    a = np.random.default_rng(1).random(30)
    interval = difference_interval((a, None), (a + 1, None), resamples=1000)
    assert interval.low == pytest.approx(-1) and interval.high == pytest.approx(-1)
    assert interval.excludes_zero and interval.items == 30


def test_win_tie_loss_follows_the_metrics_direction():
    a, b = [1, 2, 3, 4], [2, 2, 1, 5]
    assert win_tie_loss(a, b).as_dict() == {"wins": 1, "ties": 1, "losses": 2}
    assert win_tie_loss(a, b, higher_is_better=False).as_dict() == {
        "wins": 2,
        "ties": 1,
        "losses": 1,
    }


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ratio_interval([]), "non-empty"),
        (lambda: ratio_interval([1.0, 2.0], [1.0]), "2 numerators but 1 denominators"),
        (lambda: ratio_interval([1.0], resamples=0), "resamples must be at least 1"),
        (lambda: ratio_interval([1.0], level=1.0), "level must lie strictly between"),
        (lambda: difference_interval(([1.0], None), ([1.0, 2.0], None)), "same items"),
        (lambda: win_tie_loss([1], [1, 2]), "same items"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_resamples_without_reference_words_are_left_out_of_the_interval():
    # Item 0 has no reference words: a resample that draws only it has no WER (NaN) and
    # does not count; the quantiles come from the others.
    samples = bootstrap_ratios([([2.0, 1.0], [0.0, 4.0])], resamples=1000, seed=0)[:, 0]
    assert np.isnan(samples).mean() == pytest.approx(0.25, abs=0.05)
    low, high = percentile_interval(samples)
    # Item 1 twice: 2/8; one of each: (2 + 1) / (0 + 4). Both well inside the 2.5-97.5 %.
    assert (low, high) == (0.25, 0.75)
    assert all(np.isnan(percentile_interval(np.array([np.nan, np.nan]))))
