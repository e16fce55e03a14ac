"""Row norms and neighbour dot products from the compiled loop (``ltbm.core._native``), used only
where it gives torch's values bit for bit.

Plans are decided by these numbers, so the loop must not change them: it adds in torch's
order (see ``_native.c``), and before it is used for rows of a given width, a probe
compares it with torch on this machine under each variant of that order (torch's vector
width, fused or separate multiply-add). No match, no compiled extension, another device or
another dtype: :class:`~ltbm.methods.neighbour_dots.StreamedNeighbourDots` uses torch
operations, with the same results.
"""

from __future__ import annotations

import functools
import os

import torch

from ltbm.core.device_path import uses_accelerator_path

try:
    from ltbm.core import _native as compiled
except ImportError:  # built without a C compiler: torch operations do the same work
    compiled = None
LOOPS = ("norms_and_dots", "add_rows", "means_in_order")
if compiled is not None and not all(hasattr(compiled, name) for name in LOOPS):
    compiled = None  # a stale build from an older checkout: rebuild with `pip install -e .`
if os.environ.get("LTBM_COMPILED") == "0":
    compiled = None  # switched off: the same values from torch operations (benchmarks, checks)
"""The extension module with every loop (this one's and :mod:`ltbm.core.slot_sums`'), or None."""

KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
"""Row dtypes the loops read (half precision widened exactly to float32)."""

MAX_DISTANCES = 16
PROBE_DISTANCES = (1, 2, 3, 5)


def _sweep(
    rows: torch.Tensor,
    previous: torch.Tensor | None,
    norms: torch.Tensor,
    dots: list[torch.Tensor],
    distances: tuple[int, ...],
    variant: tuple[int, int],
) -> None:
    width, fused = variant
    compiled.norms_and_dots(
        rows.data_ptr(),
        rows.shape[0],
        0 if previous is None else previous.data_ptr(),
        0 if previous is None else previous.shape[0],
        KINDS[rows.dtype],
        rows.shape[1],
        width,
        fused,
        norms.data_ptr(),
        distances,
        tuple(values.data_ptr() for values in dots),
    )


@functools.cache
def variant_for(dim: int) -> tuple[int, int] | None:
    """The (vector width, fused multiply-add) under which the loop reproduces torch's
    ``vector_norm`` and ``sum(a * b, -1)`` for float32 rows of ``dim`` values, or None."""
    if compiled is None:
        return None
    generator = torch.Generator().manual_seed(dim)
    count = 2 * max(PROBE_DISTANCES) + 3
    scales = torch.logspace(-6, 6, count, dtype=torch.float64).to(torch.float32)[:, None]
    rows = torch.randn(count, dim, generator=generator) * scales
    expected_norms = torch.linalg.vector_norm(rows, dim=-1)
    expected_dots = [torch.sum(rows[:-d] * rows[d:], -1) for d in PROBE_DISTANCES]
    for width in (16, 8):
        if dim % width:
            continue
        for fused in (0, 1):
            norms = torch.empty(count)
            dots = [torch.zeros(count) for _ in PROBE_DISTANCES]
            _sweep(rows, None, norms, dots, PROBE_DISTANCES, (width, fused))
            if torch.equal(norms, expected_norms) and all(
                torch.equal(values[: count - d], expected)
                for values, d, expected in zip(dots, PROBE_DISTANCES, expected_dots, strict=True)
            ):
                return width, fused
    return None


def accepts(rows: torch.Tensor, distances: list[int]) -> bool:
    """Whether the loop can take these rows (``[n, D]``, float32 or half precision, in
    place on CPU) with torch's values."""
    return (
        not uses_accelerator_path(rows)
        and rows.dtype in KINDS
        and rows.dim() == 2
        and rows.is_contiguous()
        and len(distances) <= MAX_DISTANCES
        and variant_for(rows.shape[1]) is not None
    )


def norms_and_dots(
    rows: torch.Tensor,
    previous: torch.Tensor | None,
    norms: torch.Tensor,
    dots: dict[int, torch.Tensor],
    start: int,
) -> None:
    """Write ``norms[start + t]`` for every row t of ``rows`` and, for every distance d,
    ``dots[d][start + t - d] = row(t - d) · row(t)``, where rows before the first are the
    float32 ``previous`` rows (the pairs that reach back into them are written too).

    ``norms`` and every ``dots[d]`` are contiguous 1-D float32 tensors over the whole
    sequence; ``previous`` holds the rows just before ``start``. Call :func:`accepts`
    first."""
    count = rows.shape[0]
    if previous is not None:
        previous = previous.contiguous()
        if previous.dtype != torch.float32 or start < previous.shape[0]:
            raise ValueError("previous rows must be float32 rows that come before start")
    if norms.dtype != torch.float32 or start + count > norms.shape[0]:
        raise ValueError("norms must be a float32 tensor covering the rows")
    distances = tuple(dots)
    for values in dots.values():
        if values.dtype != torch.float32 or not values.is_contiguous() or values.dim() != 1:
            raise ValueError("dots must be contiguous 1-D float32 tensors")
        if start + count > values.shape[0]:
            raise ValueError("each dots tensor must cover the rows, like norms")
    _sweep(
        rows,
        previous,
        norms[start:],
        [values[start:] for values in dots.values()],
        distances,
        variant_for(rows.shape[1]),
    )
