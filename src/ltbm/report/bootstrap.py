"""Paired bootstrap over items: how sure a comparison of two compression methods is.

With tens of clips the sign of "ltbm − global" flips from one set of recordings to the
next, so every figure the report prints carries a confidence interval, and every
comparison of two methods is made on the same items, resampled together (paired).

Every statistic here is a **ratio of sums over items**, Σ numerator / Σ denominator:
corpus WER is Σ word edits / Σ reference words, and an accuracy or a mean per-item score
has a denominator of 1 per item. A resample draws n items with replacement; the statistic
is recomputed on it with each item weighted by how often it was drawn, so WER stays a ratio
of sums on every resample (never a mean of per-item WERs). A difference applies the *same*
resample to both methods, which is what makes it paired.

The interval is the percentile interval: the ``(1 − level) / 2`` and ``(1 + level) / 2``
quantiles of the resampled statistics (numpy's default linear interpolation). The draws come
from numpy's PCG64 with a fixed seed, so the same numbers give the same interval anywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
_BLOCK = 1000
"""Resamples drawn at a time: memory stays at 1000 × n counts whatever the resample count."""

Values = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Interval:
    """A statistic on the items as observed, with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float
    resamples: int
    items: int

    @property
    def excludes_zero(self) -> bool:
        """For a difference: the interval lies on one side of zero."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "level": self.level,
            "resamples": self.resamples,
            "items": self.items,
        }


@dataclass(frozen=True)
class WinTieLoss:
    """Per-item comparison of A with B: items where A is better, equal, worse."""

    wins: int
    ties: int
    losses: int

    def as_dict(self) -> dict[str, int]:
        return {"wins": self.wins, "ties": self.ties, "losses": self.losses}


def ratio_of_sums(numerators: Values, denominators: Values | None = None) -> float:
    """Σ numerators / Σ denominators (the mean when there are no denominators)."""
    num, den = _series(numerators, denominators)
    total = den.sum()
    return float(num.sum() / total) if total else float("nan")


def resample_counts(n: int, resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """How often each of ``n`` items is drawn in each resample, as read-only float blocks
    of shape (≤ 1000, n); together they hold ``resamples`` rows, each summing to n.

    The last request is kept: a report computes every cell of one item set, and the
    intervals of its groups, from the same draws (10,000 × 1000 items is 80 MB)."""
    if n < 1:
        raise ValueError("the bootstrap needs at least one item")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    return _draw_counts(n, resamples, seed)


@functools.lru_cache(maxsize=1)
def _draw_counts(n: int, resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, resamples, _BLOCK):
        size = min(_BLOCK, resamples - start)
        draws = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
        block = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)
        block = block.astype(np.float64)
        block.flags.writeable = False
        blocks.append(block)
    return tuple(blocks)


def bootstrap_ratios(
    series: Sequence[tuple[Values, Values | None]],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """The ratio of sums of each (numerators, denominators) series on every resample, all
    series resampled together: shape (resamples, len(series))."""
    pairs = [_series(num, den) for num, den in series]
    n = len(pairs[0][0])
    if any(len(num) != n for num, _ in pairs):
        raise ValueError("paired series must hold the same items: their lengths differ")
    columns, top_index, bottom_index = _distinct_columns(pairs)
    blocks = []
    for counts in resample_counts(n, resamples, seed):
        sums = _weighted_sums(counts, columns)
        top, bottom = sums[:, top_index], sums[:, bottom_index]
        with np.errstate(invalid="ignore", divide="ignore"):
            blocks.append(np.where(bottom != 0, top / bottom, np.nan))
    return np.concatenate(blocks)


def _distinct_columns(pairs: list[tuple[np.ndarray, np.ndarray]]):
    """The distinct value columns among all numerators and denominators (a paired
    difference shares its denominators; a mean's are all ones), and where each series'
    numerator and denominator sit among them: each column is summed once per resample."""
    found: dict[bytes, int] = {}
    columns: list[np.ndarray] = []

    def index(values: np.ndarray) -> int:
        key = values.tobytes()
        if key not in found:
            found[key] = len(columns)
            columns.append(values)
        return found[key]

    top = [index(num) for num, _ in pairs]
    bottom = [index(den) for _, den in pairs]
    return np.stack(columns, axis=1), top, bottom


def _weighted_sums(counts: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``counts @ columns``; for a few columns one matrix-vector product each, which
    OpenBLAS runs ~10× faster than its matrix-matrix path at that width. A column of ones
    sums to the item count, known without multiplying."""
    if columns.shape[1] > 4:
        return counts @ columns
    sums = [
        np.full(len(counts), float(counts.shape[1])) if (column == 1).all() else counts @ column
        for column in columns.T
    ]
    return np.stack(sums, axis=1)


def percentile_interval(samples: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``samples`` (NaNs ignored)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if np.all(np.isnan(samples)):
        return float("nan"), float("nan")
    low, high = np.nanquantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def ratio_interval(
    numerators: Values,
    denominators: Values | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Bootstrap interval of Σ numerators / Σ denominators over items."""
    samples = bootstrap_ratios([(numerators, denominators)], resamples, seed)[:, 0]
    low, high = percentile_interval(samples, level)
    estimate = ratio_of_sums(numerators, denominators)
    return Interval(estimate, low, high, level, resamples, len(_as_items(numerators)))


def difference_interval(
    a: tuple[Values, Values | None],
    b: tuple[Values, Values | None],
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Interval:
    """Paired bootstrap interval of ratio(A) − ratio(B), A and B holding the same items in
    the same order (each a (numerators, denominators) pair)."""
    samples = bootstrap_ratios([a, b], resamples, seed)
    low, high = percentile_interval(samples[:, 0] - samples[:, 1], level)
    estimate = ratio_of_sums(*a) - ratio_of_sums(*b)
    return Interval(estimate, low, high, level, resamples, len(_as_items(a[0])))


def win_tie_loss(a: Values, b: Values, higher_is_better: bool = True) -> WinTieLoss:
    """Count items where A's score beats B's, equals it, or falls behind it."""
    left, right = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if left.shape != right.shape:
        raise ValueError("win/tie/loss compares the same items: the two score lists differ")
    better = left > right if higher_is_better else left < right
    ties = left == right
    return WinTieLoss(int(better.sum()), int(ties.sum()), int((~better & ~ties).sum()))


def _as_items(values: Values) -> np.ndarray:
    """``values`` as a 1-D float array (one entry per item)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("pass one value per item (a non-empty 1-D sequence)")
    return array


def _series(numerators: Values, denominators: Values | None) -> tuple[np.ndarray, np.ndarray]:
    num = _as_items(numerators)
    den = np.ones_like(num) if denominators is None else _as_items(denominators)
    if den.shape != num.shape:
        raise ValueError(
            f"{num.size} numerators but {den.size} denominators: pass one of each per item"
        )
    return num, den
