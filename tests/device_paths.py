"""The two code paths of the kernels, for tests that must hold on both (``ltbm.core.device_path``).

``cpu``: the path CPU tensors take by default (compiled loops, cache-sized blocks, in-order
sums). ``accelerator``: the branches a GPU takes, forced on CPU tensors. Tests parametrized
over :data:`PATHS` run their body inside :func:`on_path`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ltbm.core.device_path import forced

PATHS = ["cpu", "accelerator"]


@contextlib.contextmanager
def on_path(path: str) -> Iterator[None]:
    """Run on ``path`` whatever ``LTBM_DEVICE_PATH`` says ("cpu" is the automatic choice for
    CPU tensors)."""
    with forced("auto" if path == "cpu" else path):
        yield
