"""A reproducible, stratified sample of a task's items (``--subset N --seed S``).

``--limit N`` takes the first N items in the dataset's order, which is not a sample: the
first 50 questions of MMAU test-mini are all "sound". A subset keeps the dataset's mix
instead: items are grouped into strata by ``meta`` keys (MMAU: task × difficulty; a task
without those keys is one stratum), each stratum gets its proportional share of N, and
within a stratum the items are ranked by a hash of the seed and the item id.

Rounding (largest remainder, Hamilton's method): stratum s of size n_s out of M items is
owed q_s = N · n_s / M; it gets floor(q_s), and the N − Σ floor(q_s) places left over go
one each to the strata with the largest fractional parts, ties broken by the larger
stratum, then by the stratum's key in sorted order. Computed in integers, so exact.

Why a hash rather than ``random``: Python guarantees only ``random.random()``'s sequence
across versions, not ``sample``/``shuffle``; SHA-256 of ``"{seed}:{id}"`` gives the same
sample on every Python and platform, does not depend on the order items are listed in, and
a larger N within a stratum only adds items (the ranking is fixed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from ltbm.tasks.base import Item

STRATA_KEYS = ("task", "difficulty")
"""MMAU's strata; tasks without these fields form a single stratum."""

Key = TypeVar("Key", bound=Hashable)


def allocate(sizes: Mapping[Key, int], n: int) -> dict[Key, int]:
    """Split ``n`` places over strata of the given sizes in proportion (largest remainder).

    Every stratum gets at most its size, and the shares add up to ``min(n, total)``.
    """
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    shares = {key: n * size // total for key, size in sizes.items()}
    left = n - sum(shares.values())
    by_remainder = sorted(sizes, key=lambda key: (-(n * sizes[key] % total), -sizes[key], str(key)))
    for key in by_remainder[:left]:
        shares[key] += 1
    return shares


def stratified_subset(
    items: Sequence[Item], n: int, seed: int = 0, keys: Sequence[str] = STRATA_KEYS
) -> list[Item]:
    """``n`` items drawn in proportion from each stratum (see the module docstring), in the
    items' own order. ``n`` at least the number of items returns them all."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the subset size must be a whole number ≥ 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"the subset seed must be a whole number, got {seed!r}")
    strata: dict[tuple[str, ...], list[Item]] = {}
    for item in items:
        strata.setdefault(_stratum(item, keys), []).append(item)
    shares = allocate({key: len(members) for key, members in strata.items()}, n)
    chosen: set[str] = set()
    for key, members in strata.items():
        ranked = sorted(members, key=lambda item: _rank(seed, item.id))
        chosen.update(item.id for item in ranked[: shares[key]])
    return [item for item in items if item.id in chosen]


def _stratum(item: Item, keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(item.meta.get(key, "")) for key in keys)


def _rank(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()
