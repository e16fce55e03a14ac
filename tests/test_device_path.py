"""One switch sends the kernels down the accelerator branches on CPU tensors, for tests."""

from __future__ import annotations

import pytest
import torch

import ltbm
from ltbm.core import device_path
from ltbm.core.device_path import forced, uses_accelerator_path
from ltbm.methods import matching
from ltbm.methods.neighbour_dots import StreamedNeighbourDots


def test_cpu_tensors_take_the_cpu_path_unless_forced(monkeypatch):
    monkeypatch.delenv(device_path.VARIABLE, raising=False)
    tokens = torch.zeros(1, 2, 3)
    assert not uses_accelerator_path(tokens)
    assert uses_accelerator_path(torch.device("meta"))  # any device that is not the CPU
    with forced("accelerator"):
        assert uses_accelerator_path(tokens) and uses_accelerator_path("cpu")
        with forced("auto"):
            assert not uses_accelerator_path(tokens)
        assert uses_accelerator_path(tokens)
    assert not uses_accelerator_path(tokens)


def test_the_environment_variable_sets_the_path_and_forced_wins(monkeypatch):
    monkeypatch.setenv(device_path.VARIABLE, "accelerator")
    assert uses_accelerator_path(torch.zeros(1))
    with forced("auto"):
        assert not uses_accelerator_path(torch.zeros(1))
    monkeypatch.setenv(device_path.VARIABLE, "gpu-please")
    with pytest.raises(ValueError, match="LTBM_DEVICE_PATH must be one of auto, accelerator"):
        uses_accelerator_path(torch.zeros(1))
    with pytest.raises(ValueError, match="forced device path must be one of"):
        with forced("cpu"):
            pass


def test_forced_path_runs_the_accelerator_branches(monkeypatch):
    """Under the switch the dense search is the batched certified one, the band's dots come
    from torch operations rather than the compiled loop, and slot sums use the bags."""
    calls: list[str] = []
    for name in ("certified_best_partners", "filtered_best_partners", "sum_rows_in_order"):
        original = getattr(matching, name)
        monkeypatch.setattr(
            matching, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k)
        )
    tokens = torch.randn(2, 40, 8, generator=torch.Generator().manual_seed(0))
    with forced("auto"):  # whatever LTBM_DEVICE_PATH says
        ltbm.compress(tokens, None, "global", 0.25)
        ltbm.compress(tokens, None, "ltbm", 0.25, window=1)
        assert StreamedNeighbourDots(1, 4, [1], torch.float32, "cpu").compiled
    assert calls == ["filtered_best_partners"] * 2 + ["sum_rows_in_order"]
    calls.clear()
    with forced("accelerator"):
        ltbm.compress(tokens, None, "global", 0.25)
        ltbm.compress(tokens, None, "ltbm", 0.25, window=1)
        assert not StreamedNeighbourDots(1, 4, [1], torch.float32, "cpu").compiled
    assert calls == ["certified_best_partners"] * 2
