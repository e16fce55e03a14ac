"""Row norms and neighbour dot products of merged rows, taken while each block is in cache.

A merge round builds its merged rows a cache-sized block at a time (``slot_sums``); the
next round needs only their norms and the dot products of rows 1, 3, …, 2w − 1 apart.
Computing them from the block just summed saves reading the merged rows back from memory,
and when the next round is the last one the merged rows need not be written at all. The
first round takes the input's values through the same class
(:func:`ltbm.methods.matching.norms_and_neighbour_dots`), so every round reduces the same
way; the values do not depend on how the rows are cut into blocks (each norm and dot
product is the same reduction of the same row or rows).

On CPU the compiled loop of :mod:`ltbm.core.native_dots` takes each block in one read where it
gives torch's values (it also reads half precision rows in place); torch operations
(a norm, then a multiply and a row sum per distance) do the work elsewhere.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from ltbm.core import native_dots
from ltbm.core.device_path import uses_accelerator_path

PIECE_ROWS = 4096
"""Fewest rows per piece when the compiled loop splits a long stretch across threads."""


class StreamedNeighbourDots:
    """Collects ``norms [B, n]`` and ``dots[d] [B, n]`` of a ``[B·n, D]`` sequence of rows
    (clip after clip) that arrives in consecutive blocks, through :meth:`visit`."""

    def __init__(
        self, batch: int, width: int, distances: list[int], dtype: torch.dtype, device
    ) -> None:
        self.batch, self.width, self.distances, self.dtype = batch, width, distances, dtype
        self.reach = max(distances, default=0)
        self.norms = torch.empty(batch * width, dtype=dtype, device=device)
        self.dots = {d: torch.zeros(batch * width, dtype=dtype, device=device) for d in distances}
        self.tail: torch.Tensor | None = None  # the last ``reach`` rows seen so far, in dtype
        self.product: torch.Tensor | None = None
        self.compiled = dtype == torch.float32 and not uses_accelerator_path(device)

    def takes_in_place(self, rows: torch.Tensor) -> bool:
        """Whether :meth:`visit` reads these rows as they are (half precision included)."""
        return self.compiled and native_dots.accepts(rows, self.distances)

    def visit(self, start: int, stop: int, rows: torch.Tensor) -> None:
        """Take rows ``start`` to ``stop`` (flat positions) while they are in cache: rows in
        ``dtype``, or any rows :meth:`takes_in_place` accepts."""
        if self.takes_in_place(rows):
            self._visit_compiled(start, rows)
        else:
            self._visit_with_torch(start, stop, rows)
        if self.reach:
            tail = rows[-self.reach :].to(self.dtype, copy=True)
            if self.tail is not None and tail.shape[0] < self.reach:
                tail = torch.cat([self.tail, tail])[-self.reach :]
            self.tail = tail

    def _visit_compiled(self, start: int, rows: torch.Tensor) -> None:
        """The compiled loop, in one piece per torch thread for long stretches (the first
        round's whole input): torch's own operations would use every thread, and the loop
        releases the GIL. A piece takes the rows just before it for the pairs that reach
        back; each pair is written by the piece of its later row."""
        dots = {d: self.dots[d] for d in self.distances}
        count = rows.shape[0]
        pieces = min(torch.get_num_threads(), count // PIECE_ROWS)
        if pieces <= 1:
            native_dots.norms_and_dots(rows, self.tail, self.norms, dots, start)
            return
        bounds = [count * piece // pieces for piece in range(pieces + 1)]

        def run(piece: int) -> None:
            low, high = bounds[piece], bounds[piece + 1]
            previous = self.tail
            if low > 0 and self.reach:
                previous = rows[max(0, low - self.reach) : low].to(torch.float32)
            native_dots.norms_and_dots(rows[low:high], previous, self.norms, dots, start + low)

        with ThreadPoolExecutor(pieces) as pool:
            list(pool.map(run, range(pieces)))

    def _visit_with_torch(self, start: int, stop: int, rows: torch.Tensor) -> None:
        torch.linalg.vector_norm(rows, dim=-1, out=self.norms[start:stop])
        count = stop - start
        if self.product is None or self.product.shape[0] < count:
            self.product = torch.empty_like(rows)
        if self.tail is not None:
            self._dots_across(start, rows)
        for d in self.distances:
            pairs = count - d
            if pairs <= 0:
                continue
            product = self.product[:pairs]
            torch.mul(rows[:pairs], rows[d:], out=product)
            torch.sum(product, -1, out=self.dots[d][start : start + pairs])

    def _dots_across(self, start: int, rows: torch.Tensor) -> None:
        """Pairs whose first row lies in an earlier block and second in this one."""
        tail_start = start - self.tail.shape[0]
        for d in self.distances:
            first = max(tail_start, start - d)  # earlier rows t with t + d in this block
            last = min(start, start + rows.shape[0] - d)
            if last <= first:
                continue
            earlier = self.tail[first - tail_start : last - tail_start]
            later = rows[first + d - start : last + d - start]
            torch.sum(earlier * later, -1, out=self.dots[d][first:last])

    def result(self) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``norms [B, n]`` and ``dots[d] [B, n]``, zero where t + d is past the clip's row."""
        shape = (self.batch, self.width)
        dots = {d: values.view(shape) for d, values in self.dots.items()}
        for d, values in dots.items():
            values[:, max(self.width - d, 0) :] = 0
        return self.norms.view(shape), dots
