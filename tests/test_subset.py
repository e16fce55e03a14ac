"""``--subset N --seed S``: a reproducible sample stratified by task and difficulty, with
proportional allocation by largest remainder; ``--limit`` stays the first N."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from shared_paths import MMAU_JSON

from ltbm.tasks.base import Item
from ltbm.tasks.mmau import MMAUTask
from ltbm.tasks.subset import allocate, stratified_subset

needs_mmau = pytest.mark.skipif(not MMAU_JSON.is_file(), reason=f"{MMAU_JSON} absent")


def items_with(strata: dict[tuple[str, str], int]) -> list[Item]:
    items = []
    for (task, difficulty), count in strata.items():
        for n in range(count):
            meta = {"task": task, "difficulty": difficulty}
            items.append(Item(id=f"{task}-{difficulty}-{n}", audio=Path("x.wav"), meta=meta))
    return items


def test_allocate_by_largest_remainder() -> None:
    # 10 places over 7/2/1 (of 10): exact shares.
    assert allocate({"a": 7, "b": 2, "c": 1}, 10) == {"a": 7, "b": 2, "c": 1}
    # 4 of 10: quotas 2.8, 0.8, 0.4 -> floors 2, 0, 0; two left go to a (.8 ties b's .8,
    # a is larger) and b.
    assert allocate({"a": 7, "b": 2, "c": 1}, 4) == {"a": 3, "b": 1, "c": 0}
    # Equal remainders and equal sizes: the key in sorted order decides.
    assert allocate({"y": 1, "x": 1, "z": 1}, 2) == {"x": 1, "y": 1, "z": 0}
    assert allocate({"a": 3, "b": 2}, 99) == {"a": 3, "b": 2}  # more than there is


def test_allocation_is_proportional_and_exact_on_random_sizes() -> None:
    rng = random.Random(7)
    for _ in range(200):
        sizes = {k: rng.randint(0, 40) for k in range(rng.randint(1, 9))}
        total = sum(sizes.values())
        n = rng.randint(0, total + 3)
        shares = allocate(sizes, n)
        assert sum(shares.values()) == min(n, total)
        for key, size in sizes.items():
            assert 0 <= shares[key] <= size
            if n < total:  # within one of the exact quota
                assert abs(shares[key] - n * size / total) < 1


def test_subset_is_stratified_reproducible_and_in_item_order() -> None:
    items = items_with({("sound", "easy"): 30, ("sound", "hard"): 10, ("music", "easy"): 60})
    chosen = stratified_subset(items, 10, seed=3)
    assert Counter((i.meta["task"], i.meta["difficulty"]) for i in chosen) == {
        ("sound", "easy"): 3,
        ("sound", "hard"): 1,
        ("music", "easy"): 6,
    }
    assert chosen == stratified_subset(items, 10, seed=3)
    assert chosen == stratified_subset(list(reversed(items)), 10, seed=3)[::-1]
    assert [i.id for i in chosen] == [i.id for i in items if i in chosen]  # the items' order
    assert chosen != stratified_subset(items, 10, seed=4)
    larger = stratified_subset(items, 20, seed=3)
    assert {i.id for i in chosen} <= {i.id for i in larger}  # a fixed ranking per stratum
    assert stratified_subset(items, 500, seed=0) == items


def test_items_without_strata_keys_form_one_stratum() -> None:
    plain = [Item(id=f"clip{n}", audio=Path("x.wav")) for n in range(20)]
    chosen = stratified_subset(plain, 5, seed=1)
    assert len(chosen) == 5 and chosen == stratified_subset(plain, 5, seed=1)


@pytest.mark.parametrize(("n", "seed"), [(0, 0), (-3, 0), (2.5, 0), (True, 0), (3, 1.5)])
def test_bad_size_or_seed(n, seed) -> None:
    with pytest.raises(ValueError, match="subset (size|seed) must be a whole number"):
        stratified_subset(items_with({("a", "b"): 4}), n, seed)


@needs_mmau
def test_real_test_mini_subset_keeps_the_mix() -> None:
    items = MMAUTask(MMAU_JSON).all_items()
    chosen = stratified_subset(items, 100, seed=0)
    assert len(chosen) == 100
    strata = Counter((i.meta["task"], i.meta["difficulty"]) for i in chosen)
    # test-mini: sound/medium 237 -> 23.7 -> 24, ..., sound/easy 21 -> 2.1 -> 2
    full = Counter((i.meta["task"], i.meta["difficulty"]) for i in items)
    for key, count in full.items():
        assert abs(strata[key] - count / 10) < 1
    assert Counter(i.meta["task"] for i in chosen) == {"sound": 33, "music": 33, "speech": 34}
    first = items[:50]  # what --limit 50 takes: sound only
    assert {i.meta["task"] for i in first} == {"sound"}
