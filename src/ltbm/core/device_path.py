"""Which code path the methods take: the CPU one, or the one written for accelerators.

The kernels hold two kinds of branches by device. On CPU they read rows in cache-sized
blocks, use the compiled loops and add rows in order with ``index_add_``; on a GPU (any
device that is not the CPU) they work in one block, with as few kernel launches and as few
reads of device values by the host as possible. Every such decision goes through
:func:`uses_accelerator_path`, so that the accelerator branches can run, and be tested, on
a machine without a GPU: they are torch operations that work on CPU tensors too.

The switch: the environment variable ``LTBM_DEVICE_PATH`` (read on every decision, so a test
may set it), or the context manager :func:`forced`, which wins over it:

- ``auto`` (the default): the accelerator path exactly for tensors that are not on the CPU;
- ``accelerator``: the accelerator path for every tensor, CPU ones included.

There is no setting that sends GPU tensors down the CPU path: that path hands CPU memory to
the compiled loops. Checks of what memory the host can address (huge-page mappings in
:mod:`ltbm.core.memory`) are not path decisions and stay by device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

VARIABLE = "LTBM_DEVICE_PATH"
PATHS = ("auto", "accelerator")

_forced: list[str] = []
"""The paths :func:`forced` set, innermost last (process-wide, so worker threads see them)."""


def check_path(path: str, source: str) -> str:
    """``path`` if it names a path, else a one-line error saying where it came from."""
    if path not in PATHS:
        raise ValueError(f"{source} must be one of {', '.join(PATHS)}, got {path!r}")
    return path


def current_path() -> str:
    """The path setting in force: :func:`forced`'s, else ``LTBM_DEVICE_PATH``'s, else auto."""
    if _forced:
        return _forced[-1]
    return check_path(os.environ.get(VARIABLE, "auto") or "auto", VARIABLE)


def uses_accelerator_path(where: torch.Tensor | torch.device | str) -> bool:
    """Whether work on ``where`` (a tensor or a device) takes the accelerator branches: it
    is not on the CPU, or the accelerator path is forced (tests, checks on a CPU machine)."""
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    return device.type != "cpu" or current_path() == "accelerator"


@contextlib.contextmanager
def forced(path: str) -> Iterator[None]:
    """Within the block, take ``path`` ("accelerator" or "auto") whatever the environment
    says: ``with forced("accelerator"): ltbm.compress(...)`` runs the GPU branches on CPU."""
    _forced.append(check_path(path, "the forced device path"))
    try:
        yield
    finally:
        _forced.pop()
