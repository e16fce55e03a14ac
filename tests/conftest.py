"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch
from device_paths import PATHS, on_path


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from threads, and on a busy machine thread contention makes
    them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=PATHS)
def on_every_path(request):
    """Every test of a module that uses it (``pytestmark = pytest.mark.usefixtures(...)``)
    runs on the CPU path and on the accelerator path (forced on CPU tensors)."""
    with on_path(request.param):
        yield request.param
