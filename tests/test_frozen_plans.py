"""Merge plans are exactly those frozen before the kernel was optimised (tests/frozen_plans.py)."""

from __future__ import annotations

import pytest
from frozen_plans import cases, load, plan_record

import ltbm

FROZEN = load()
CASES = {key: case for key, *case in cases()}


def test_every_case_is_frozen():
    assert sorted(FROZEN) == sorted(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
def test_plan_matches_frozen_copy(key):
    tokens, lengths, method, params = CASES[key]
    plan = ltbm.compress(tokens, lengths, method, **params).plan
    record = plan_record(plan)
    frozen = FROZEN[key]
    assert record["kept"] == frozen["kept"]
    assert record["slot_index"] == frozen["slot_index"]
    assert record["history"] == frozen["history"]
