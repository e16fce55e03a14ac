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
    divisors: torch.Tensor | None = None,
) -> None:
    """Set ``out[s] = source[first[s]] + Σ source[extra_row[e]]`` over the ``e`` with
    ``extra_slot[e] == s``, added in the order the extras are listed (then divided by
    ``divisors[s]`` when given, while the block is in cache).

    ``out [S, D]`` (its dtype is the precision of the sums), ``source [R, D]`` rows of any
    float dtype, ``first [S]`` and ``extra_slot``/``extra_row`` ``[E]`` long tensors,
    ``divisors [S]`` in ``out``'s dtype.
    """
    slots = out.shape[0]
    order = torch.sort(extra_slot, stable=True).indices
    extra_slot, extra_row = extra_slot[order], extra_row[order]
    counts = torch.bincount(extra_slot, minlength=slots)
    layers = int(counts.max()) if extra_slot.numel() else 0
    if layers * slots > MAX_WASTE * (slots + extra_slot.numel()):
        _copy_rows(out, source, first)
        _index_add_in_chunks(out, source, extra_slot, extra_row)
        if divisors is not None:
            out.div_(divisors.reshape(-1, *([1] * (out.dim() - 1))))
        return
    block = max(1, BLOCK_ELEMENTS // max(out[0].numel(), 1))
    if out.device.type != "cpu":  # accelerators: one block, as few kernel launches as possible
        block = max(slots, 1)
    plan = _LayerPlan(counts, first, extra_row, layers, block)
    buffers = out.new_empty(2, min(block, slots), *out.shape[1:])
    summed, gathered = buffers[0], buffers[1]
    for number, start in enumerate(range(0, slots, block)):
        stop = min(slots, start + block)
        target = summed[: stop - start]
        _copy_rows(target, source, plan.first[start:stop])
        for layer, present in enumerate(plan.present[number]):
            extra = gathered[:present]
            _copy_rows(extra, source, plan.rows[layer, start : start + present])
            target[:present].add_(extra)
        if divisors is not None:
            target.div_(plan.divisors(divisors, start, stop).reshape(-1, *([1] * (out.dim() - 1))))
        torch.index_select(target, 0, plan.back[start:stop], out=out[start:stop])


class _LayerPlan:
    """Which rows each layer gathers, with the slots of every block ordered by their number
    of rows (most first), so that layer l gathers and adds a prefix of the block: only the
    rows that exist (no first row gathered again and multiplied by zero)."""

    def __init__(
        self,
        counts: torch.Tensor,
        first: torch.Tensor,
        extra_row: torch.Tensor,
        layers: int,
        block: int,
    ) -> None:
        slots, device = counts.shape[0], counts.device
        position = torch.arange(slots, device=device)
        # Blocks in order; inside a block, more rows first (stable: ties keep slot order).
        key = (position // block) * (layers + 1) + (layers - counts)
        self.order = torch.sort(key, stable=True).indices
        self.first = first[self.order]
        inverse = torch.empty_like(self.order)
        inverse[self.order] = position
        self.back = inverse - (position // block) * block  # sorted place within the block
        starts = (torch.cumsum(counts, 0) - counts)[self.order]
        sorted_counts = counts[self.order]
        layer = torch.arange(layers, device=device)[:, None]
        last = max(extra_row.numel() - 1, 0)
        self.rows = extra_row[(starts[None, :] + layer).clamp(max=last)] if layers else None
        # present[b][l]: how many slots of block b have an l-th extra row (a prefix).
        has = (sorted_counts[None, :] > layer).long()
        begins = torch.arange(0, slots, block, device=device)
        ends = (begins + block).clamp(max=slots)
        cumulative = torch.nn.functional.pad(torch.cumsum(has, 1), (1, 0))
        per_block = cumulative[:, ends] - cumulative[:, begins]
        self.present = [[n for n in column if n > 0] for column in per_block.T.tolist()]

    def divisors(self, divisors: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """The divisors of the block's slots, in the block's sorted order."""
        return divisors[self.order[start:stop]]


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
