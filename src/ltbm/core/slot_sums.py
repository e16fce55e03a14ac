"""Sums of source rows per output slot, each slot's rows added onto zero in a fixed order.

Merging (each round's merged features) and ``Plan.apply`` both need, for every output slot,
the sum of a few source rows added in a fixed order. Two ways, with the same additions in
the same order, so the same bits:

- :func:`sum_rows_in_order` reads the rows once, in order, and adds each into its slot with
  ``index_add_`` (on CPU one row after the other), into a small ring of slot rows that is
  handed on as slots complete. It needs the slots to follow the rows' order closely
  (``apply``; merging with a window of 1) and allocates nothing per block.
- :func:`sum_rows_into_slots` works for any slot order: every slot's rows (its first row,
  then its extras in the order listed) form one "bag" of ``embedding_bag(mode="sum")``,
  which starts from zero and adds them one after the other. It runs in cache-sized blocks
  of slots; each block's sums (a new small tensor) are divided, copied into the output
  (fresh memory on huge pages, or a narrower dtype) and shown to the caller.

Gathering the rows layer by layer and adding each layer (the version before) read and wrote
every row about three times. Sources in another dtype than the sums (half precision summed
in float32) are widened a block of rows at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ltbm.core.device_path import uses_accelerator_path
from ltbm.core.native_dots import KINDS
from ltbm.core.native_dots import compiled as _native  # None: torch's index_add_, the same sums

BLOCK_ELEMENTS = 1 << 20
"""Elements of the source rows one block sums (4 MiB of float32): the block's sums and, for
widened half precision, its rows stay in cache."""


def sum_rows_into_slots(
    source: torch.Tensor,
    first: torch.Tensor,
    extra_slot: torch.Tensor,
    extra_row: torch.Tensor,
    *,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
    divisors: torch.Tensor | None = None,
    visit: Callable[[int, int, torch.Tensor], None] | None = None,
) -> None:
    """Sum ``source[first[s]] + Σ source[extra_row[e]]`` over the ``e`` with
    ``extra_slot[e] == s``, for every slot s, added in the order the extras are listed, in
    ``dtype``; divide by ``divisors[s]`` when given; write the result to ``out[s]`` when
    given (rounded to ``out``'s dtype if that is narrower), and show each block of results
    to ``visit(start, stop, sums)`` while it is in cache (the caller may take what it needs
    from them instead of reading ``out`` back).

    ``source [R, D]`` rows of any float dtype, ``first [S]`` and ``extra_slot``/``extra_row``
    ``[E]`` long tensors, ``out [S, D]``, ``divisors [S]`` in ``dtype``.
    """
    slots = first.shape[0]
    if slots == 0:
        return
    rows, offsets = bags(first, extra_slot, extra_row)
    flat_source = source.reshape(source.shape[0], -1)
    flat_out = None if out is None else out.reshape(slots, -1)
    per_slot = rows.numel() / slots
    block = max(1, int(BLOCK_ELEMENTS / (per_slot * max(flat_source.shape[1], 1))))
    accelerator = uses_accelerator_path(source)
    if accelerator:  # one block, as few kernel launches as possible
        block = slots
    starts = list(range(0, slots, block))
    # The first slot's rows start at 0: one block needs no read of the offsets.
    bounds = (offsets[starts[1:]].tolist() if len(starts) > 1 else []) + [rows.numel()]
    bounds = [0, *bounds]
    direct = flat_out is not None and flat_out.dtype == dtype  # sums written in place
    widened = None
    if source.dtype != dtype:
        most = max(end - begin for begin, end in zip(bounds, bounds[1:], strict=False))
        widened = _WidenedRows(flat_source, dtype, most, stretches=not accelerator)
    for number, start in enumerate(starts):
        stop = min(slots, start + block)
        begin, end = bounds[number], bounds[number + 1]
        block_rows, block_offsets = rows[begin:end], offsets[start:stop] - begin
        table = flat_source
        if widened is not None:
            table, block_rows = widened.take(block_rows)
        if direct:
            sums = flat_out[start:stop]
            _bag_sums_into(block_rows, table, block_offsets, sums)
        else:
            sums = F.embedding_bag(block_rows, table, block_offsets, mode="sum")
        if divisors is not None:
            sums.div_(divisors[start:stop, None])
        if flat_out is not None and not direct:
            flat_out[start:stop].copy_(sums)
        if visit is not None:
            visit(start, stop, sums)


_BAG_SUMS_INTO = getattr(getattr(torch.ops.aten, "_embedding_bag_forward_only", None), "out", None)
"""``embedding_bag`` that writes into a given tensor: torch's out= overload of its forward
op (in torch 2.13 a wrapper that sums into a temporary and copies). Timed interleaved with
the public function followed by a copy, it was as fast or faster (0.5–8 passes less at
B = 8, N = 15000 on the shared test machine); the public function is the fallback where
the overload is missing."""


def _bag_sums_into(
    rows: torch.Tensor, table: torch.Tensor, offsets: torch.Tensor, into: torch.Tensor
) -> None:
    """``into[b] = Σ table[rows[j]]`` over bag b's rows, starting from zero, in order."""
    if _BAG_SUMS_INTO is not None and not table.requires_grad:
        none = rows.new_empty(0)
        _BAG_SUMS_INTO(
            table, rows, offsets, False, 0, False, None, False, -1,
            out0=into, out1=none, out2=rows.new_empty(0), out3=rows.new_empty(0),
        )  # fmt: skip
        return
    into.copy_(F.embedding_bag(rows, table, offsets, mode="sum"))


def bags(
    first: torch.Tensor, extra_slot: torch.Tensor, extra_row: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of every slot, slot after slot (its first row, then its extras in the order
    listed), and where each slot's rows start: ``embedding_bag``'s indices and offsets."""
    slots = first.shape[0]
    order = torch.sort(extra_slot, stable=True).indices
    extra_slot, extra_row = extra_slot[order], extra_row[order]
    # Counted by a scatter, not bincount: bincount's output size depends on the largest
    # value, which a GPU's host would have to read back.
    counts = torch.zeros(slots, dtype=torch.long, device=first.device)
    counts.scatter_add_(0, extra_slot, torch.ones_like(extra_slot))
    offsets = torch.cumsum(counts + 1, 0) - (counts + 1)
    rows = torch.empty(slots + extra_row.numel(), dtype=torch.long, device=first.device)
    rows[offsets] = first
    extra_starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(extra_row.numel(), device=first.device) - extra_starts[extra_slot]
    rows[offsets[extra_slot] + 1 + rank] = extra_row
    return rows, offsets


class _WidenedRows:
    """A block's source rows widened (half precision summed in float32), in buffers reused
    from block to block: fresh ones would be paged in each time. Rows that lie close
    together (merging: a block's bags cover a stretch of the sequence) are widened as one
    contiguous stretch, without a gather (where reading the stretch's ends from the device
    costs nothing: not on the accelerator path, ``stretches=False``)."""

    def __init__(
        self, source: torch.Tensor, dtype: torch.dtype, most: int, stretches: bool = True
    ) -> None:
        self.source, self.stretches = source, stretches
        self.gathered = source.new_empty(most, source.shape[1])
        self.widened = torch.empty(2 * most, source.shape[1], dtype=dtype, device=source.device)
        self.in_order = torch.arange(most, device=source.device)

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The widened rows, and the indices of the block's bag rows among them."""
        count = rows.numel()
        if self.stretches:
            low, high = (int(value) for value in torch.aminmax(rows))
            span = high - low + 1
        if self.stretches and span <= 2 * count:
            self.widened[:span].copy_(self.source[low : high + 1])
            return self.widened[:span], rows - low
        torch.index_select(self.source, 0, rows, out=self.gathered[:count])
        self.widened[:count].copy_(self.gathered[:count])
        return self.widened[:count], self.in_order[:count]


class InOrderRing:
    """Slot sums built from rows that arrive in order: each batch of rows is added into a
    ring of slot rows with ``index_add_`` (on CPU one row after the other, so each slot is
    the sum, from zero, of its rows in arrival order), and the slots before a given one are
    handed to ``visit(start, stop, sums)`` in order, then cleared, once they are complete.
    Slots being filled at any time must fit in the ring (:func:`sum_rows_in_order` checks
    that before the first row is added)."""

    def __init__(self, dim: int, dtype: torch.dtype, device, capacity: int, visit) -> None:
        self.capacity, self.visit, self.done = capacity, visit, 0
        self.ring = torch.zeros(capacity + 1, dim, dtype=dtype, device=device)  # last: dump

    def add(self, rows: torch.Tensor, slot_of_row: torch.Tensor) -> None:
        """Add ``rows [n, D]`` into their slots (-1: into none)."""
        index = torch.where(slot_of_row >= 0, slot_of_row % self.capacity, self.capacity)
        add_rows_into(self.ring, rows, index)

    def finish(self, upto: int) -> None:
        """Hand on slots ``done`` to ``upto`` (complete), at most two stretches of the ring."""
        while self.done < upto:
            first = self.done % self.capacity
            stop = min(upto, self.done + self.capacity - first)
            sums = self.ring[first : first + stop - self.done]
            self.visit(self.done, stop, sums)
            sums.zero_()
            self.done = stop


def sum_rows_in_order(
    source: torch.Tensor,
    slot_of_row: torch.Tensor,
    slots: int,
    dtype: torch.dtype,
    visit: Callable[[int, int, torch.Tensor], None],
) -> bool:
    """Show ``visit(start, stop, sums)`` the sum of every slot's rows, slots in order, where
    row r of ``source [R, D]`` belongs to slot ``slot_of_row[r]`` (-1: to none) and each slot
    is the sum, from zero, of its rows in row order; nothing is written anywhere else.

    The rows are read once, in order, a cache-sized block at a time, and added with
    ``index_add_`` into a small ring of slot rows that is handed to ``visit`` (and cleared)
    as soon as its slots are complete: no temporary per block, no full-size output. That
    needs the slots in progress at any time to fit in the ring, which holds when slots
    follow the rows' order (merging with a window of 1); returns False, having done
    nothing, when they do not. CPU only: elsewhere ``index_add_`` adds in no fixed order.
    """
    count, device = source.shape[0], source.device
    flat_source = source.reshape(count, -1)
    rows = max(1, BLOCK_ELEMENTS // max(flat_source.shape[1], 1))
    stops = list(range(rows, count, rows)) + [count]
    has_slot = slot_of_row >= 0
    positions = torch.arange(count, device=device)
    last = torch.full((slots,), -1, dtype=torch.long, device=device)
    last.scatter_reduce_(0, slot_of_row[has_slot], positions[has_slot], "amax")
    complete_before = torch.cummax(last, 0).values if slots else last
    ready = torch.searchsorted(complete_before, torch.tensor(stops, device=device)).tolist()
    touched = F.pad(slot_of_row, (0, len(stops) * rows - count), value=-1).view(len(stops), rows)
    highest = touched.amax(dim=1).tolist()
    capacity = rows + 64
    if any(top - done >= capacity for top, done in zip(highest, [0, *ready[:-1]], strict=True)):
        return False  # checked before the ring is allocated
    dim = flat_source.shape[1]
    ring = InOrderRing(dim, dtype, device, capacity, visit)
    in_place = source.dtype == dtype or _compiled_rows(ring.ring, flat_source, slot_of_row)
    widened = None if in_place else torch.empty(rows, dim, dtype=dtype)
    for start, stop, finished in zip([0, *stops[:-1]], stops, ready, strict=True):
        block = flat_source[start:stop]
        if widened is not None:
            block = widened[: stop - start]
            block.copy_(flat_source[start:stop])
        ring.add(block, slot_of_row[start:stop])
        ring.finish(finished)
    return True


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite. A finite sum says so for the price of a sum (a NaN or
    an infinity makes the sum NaN or infinite); only a sum that is not finite needs the
    elementwise check, which is 30 times slower (finite values whose sum overflows)."""
    return math.isfinite(values.sum().item()) or bool(torch.isfinite(values).all())


def _compiled_rows(into: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> bool:
    """Whether the compiled loop can add these rows: float32 sums, float32 or half rows,
    all contiguous on CPU, one long index per row."""
    return (
        _native is not None
        and not uses_accelerator_path(into)
        and into.dtype == torch.float32
        and into.is_contiguous()
        and not uses_accelerator_path(rows)
        and rows.dtype in KINDS
        and rows.is_contiguous()
        and not rows.requires_grad
        and rows.shape[0] == index.shape[0]
        and index.dtype == torch.long
        and index.is_contiguous()
        and into[0].numel() == rows[0].numel()
        and into[0].numel() > 0
    )


def add_rows_into(into: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> None:
    """``into.index_add_(0, index, rows)`` with the rows widened to ``into``'s dtype: each
    row added onto its slot one after the other. The compiled loop does it in one read
    (half precision widened as it goes); torch's ``index_add_`` makes the same sums, bit
    for bit (on CPU it adds one row after the other too)."""
    if _compiled_rows(into, rows, index):
        _native.add_rows(
            into.data_ptr(), into.shape[0], rows.data_ptr(), rows.shape[0],
            KINDS[rows.dtype], into[0].numel(), index.data_ptr(),
        )  # fmt: skip
        return
    into.index_add_(0, index, rows.to(into.dtype))


def means_in_order(
    into: torch.Tensor,
    rows: torch.Tensor,
    index: torch.Tensor,
    complete_after: torch.Tensor,
    sizes: torch.Tensor,
) -> bool | None:
    """Add every row onto its slot (``into`` zero-filled, rows in order), dividing slot s by
    ``sizes[s]`` as soon as row ``complete_after[s]`` has been added (while it is in
    cache); whether every mean is finite. One call of the compiled loop; None, having done
    nothing, where it cannot take these tensors (the caller then does the same in blocks)."""
    if not (
        _compiled_rows(into, rows, index)
        and complete_after.dtype == torch.long
        and complete_after.is_contiguous()
        and sizes.dtype == torch.float32
        and sizes.is_contiguous()
        and sizes.shape[0] == complete_after.shape[0] <= into.shape[0]
    ):
        return None
    return _native.means_in_order(
        into.data_ptr(), into.shape[0], rows.data_ptr(), rows.shape[0], KINDS[rows.dtype],
        into[0].numel(), index.data_ptr(), complete_after.data_ptr(), sizes.shape[0],
        sizes.data_ptr(),
    )  # fmt: skip
