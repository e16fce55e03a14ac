"""Sums of source rows per output slot, in source order, built from gathers.

Merging (each round's merged features) and ``Plan.apply`` both need, for every output slot,
the sum of a few source rows added in a fixed order. ``index_add_`` does this, but on CPU it
scatters element by element (as ``scatter_add_`` over an expanded index) and runs about
eight times slower than a gather of the same rows. Here the rows are arranged in layers
instead: layer 0 holds each slot's first row, layer l each slot's (l+1)-th row (or none),
so every layer is one row gather followed by an add, done in cache-sized blocks of slots.
The additions happen in exactly the order ``index_add_`` would make them, so the results
are identical bit for bit. When a few slots hold very many rows (so most layers would be
nearly empty), ``index_add_`` is used after all.

Slots without a row in some layer add their first row times zero: exact for finite rows,
but a slot whose first row is infinite comes out NaN. Callers whose rows may not be finite
check the result and recompute such slots another way (``Plan.apply`` does).
"""

from __future__ import annotations

import torch

BLOCK_ELEMENTS = 1 << 20
"""Elements of the output written per block (4 MiB of float32): the block stays in cache
while each layer is added onto it."""

MAX_WASTE = 2
"""Use layers while they gather at most this many times the rows that are really needed."""


def sum_rows_into_slots(
    out: torch.Tensor,
    source: torch.Tensor,
    first: torch.Tensor,
    extra_slot: torch.Tensor,
    extra_row: torch.Tensor,
) -> None:
    """Set ``out[s] = source[first[s]] + Σ source[extra_row[e]]`` over the ``e`` with
    ``extra_slot[e] == s``, added in the order the extras are listed.

    ``out [S, D]`` (its dtype is the precision of the sums), ``source [R, D]`` rows of any
    float dtype, ``first [S]`` and ``extra_slot``/``extra_row`` ``[E]`` long tensors.
    """
    slots = out.shape[0]
    order = torch.sort(extra_slot, stable=True).indices
    extra_slot, extra_row = extra_slot[order], extra_row[order]
    counts = torch.bincount(extra_slot, minlength=slots)
    layers = int(counts.max()) if extra_slot.numel() else 0
    if layers * slots > MAX_WASTE * (slots + extra_slot.numel()):
        _copy_rows(out, source, first)
        _index_add_in_chunks(out, source, extra_slot, extra_row)
        return
    starts = torch.cumsum(counts, 0) - counts
    layer_of = torch.arange(extra_slot.numel(), device=out.device) - starts[extra_slot]
    rows, present = [], []
    for layer in range(layers):
        chosen = layer_of == layer
        row = first.clone()
        row[extra_slot[chosen]] = extra_row[chosen]
        mask = torch.zeros(slots, dtype=out.dtype, device=out.device)
        mask[extra_slot[chosen]] = 1
        rows.append(row)
        present.append(mask)
    block = max(1, BLOCK_ELEMENTS // max(out[0].numel(), 1))
    if out.device.type != "cpu":  # accelerators: one block, as few kernel launches as possible
        block = max(slots, 1)
    gathered = out.new_empty(min(block, slots), *out.shape[1:])
    for start in range(0, slots, block):
        stop = min(slots, start + block)
        target = out[start:stop]
        _copy_rows(target, source, first[start:stop])
        for row, mask in zip(rows, present, strict=True):
            extra = gathered[: stop - start]
            _copy_rows(extra, source, row[start:stop])
            # Slots without a row in this layer gathered their first row again, times 0.
            target.addcmul_(extra, mask[start:stop].reshape(-1, *([1] * (out.dim() - 1))))


def _copy_rows(out: torch.Tensor, source: torch.Tensor, index: torch.Tensor) -> None:
    """``out[:] = source[index]``, widened to ``out``'s dtype without a full-size copy."""
    if source.dtype == out.dtype:
        torch.index_select(source, 0, index, out=out)
    else:
        out.copy_(source.index_select(0, index))


def _index_add_in_chunks(
    out: torch.Tensor, source: torch.Tensor, slot: torch.Tensor, row: torch.Tensor
) -> None:
    """``index_add_`` of the listed rows, gathered a block at a time."""
    block = max(1, BLOCK_ELEMENTS // max(out[0].numel(), 1))
    for start in range(0, row.numel(), block):
        rows = source.index_select(0, row[start : start + block]).to(out.dtype)
        out.index_add_(0, slot[start : start + block], rows)
