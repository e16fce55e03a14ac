"""Plans are exactly those frozen before the kernels were optimised (tests/frozen_plans.py),
on the CPU path and on the accelerator path (the branches a GPU takes, forced on CPU).

Weights (attention weighting) are compared to within float32 rounding of the attention
scores: softmax's last bits may differ between CPUs; which sources feed which slot may not.
"""

from __future__ import annotations

import pytest
import torch
from device_paths import PATHS, on_path
from frozen_plans import cases, load, plan_record

import ltbm

FROZEN = load()
CASES = {key: case for key, *case in cases()}


def test_every_case_is_frozen():
    assert sorted(FROZEN) == sorted(CASES)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("key", sorted(CASES))
def test_plan_matches_frozen_copy(key, path):
    tokens, lengths, method, params = CASES[key]
    with on_path(path):
        plan = ltbm.compress(tokens, lengths, method, **params).plan
    record = plan_record(plan)
    frozen = FROZEN[key]
    assert record["kept"] == frozen["kept"]
    assert record["slot_index"] == frozen["slot_index"]
    assert record["history"] == frozen["history"]
    assert ("weights" in record) == ("weights" in frozen)
    if "weights" in frozen:
        weights = torch.tensor(frozen["weights"])
        assert torch.allclose(torch.tensor(record["weights"]), weights, rtol=1e-5, atol=0)
