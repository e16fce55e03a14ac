"""The Plan: which source token feeds which output slot, computed once, applied to anything.

Every method (merging, pooling, pruning, sampling) produces the same object, so there is one
way to turn a plan into compressed features, sizes, spans or an un-merged sequence. A plan
is cheap to apply many times: to the encoder tokens, to attention scores, to positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ltbm.core.device_path import uses_accelerator_path
from ltbm.core.inputs import working_dtype
from ltbm.core.memory import fresh_empty, fresh_zeros
from ltbm.core.scaling import times_power_of_two, unit_exponents
from ltbm.core.slot_sums import all_finite, means_in_order, sum_rows_in_order, sum_rows_into_slots

APPLY_BLOCK_ELEMENTS = 1 << 17
"""Elements of a block of source rows weighted at once by ``apply``'s general ``index_add_``
path (weights other than one, gradients, non-finite sums; 512 KiB of float32)."""

SOURCE_BLOCK_ELEMENTS = 1 << 20
"""Elements of a block of consecutive source rows that ``apply`` adds into the slots at
once (4 MiB of float32): the slots they complete are finished while still in cache."""

NOT_KEPT = -1
"""Slot index of a source that feeds no output slot (pruned, or padding)."""


@dataclass(frozen=True, eq=False)
class HostFacts:
    """What the method that made a plan knows on the host, so that applying the plan reads
    nothing back from the device: K of every clip and, where known, the number of its kept
    sources, for the very ``slot_index`` tensor it made; and the ``weights`` tensor it made
    with every kept weight one. A plan of other tensors (``dataclasses.replace``, new
    weights) keeps only the facts about the tensors it shares."""

    kept: tuple[int, ...]
    sources: tuple[int, ...] | None
    slot_index: torch.Tensor = field(repr=False)
    unit_weights: torch.Tensor | None = field(repr=False)


@dataclass(frozen=True)
class Plan:
    """A source→slot assignment for a batch of clips.

    A plan is immutable: its derived statistics (``num_slots``, ``sizes``, ``slot_mask``,
    ``is_selection``) are computed once and cached, so applying it again costs only the
    gather or the weighted sum.

    Attributes:
        slot_index: ``[B, N]`` long; the output slot each source feeds, or ``NOT_KEPT``.
        weights: ``[B, N]`` float32; each source's weight inside its slot (0 where not kept).
        kept: ``[B]`` long; K, the number of output slots of each clip.
        history: optional per-round record of merges for inspection and tests: a list of
            ``[E, 3]`` long tensors ``(clip, a_position, b_position)`` in the positions of the
            sequence as it was at the start of that round.
    """

    slot_index: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    history: list[torch.Tensor] = field(default_factory=list, compare=False, repr=False)
    host: HostFacts | None = field(default=None, compare=False, repr=False)

    @property
    def host_facts(self) -> HostFacts | None:
        """:attr:`host`, where it speaks of this plan's own ``slot_index``."""
        facts = self.host
        return facts if facts is not None and facts.slot_index is self.slot_index else None

    # ------------------------------------------------------------------ shape
    @property
    def batch_size(self) -> int:
        return self.slot_index.shape[0]

    @property
    def num_sources(self) -> int:
        return self.slot_index.shape[1]

    @cached_property
    def num_slots(self) -> int:
        """Width of the padded output: the largest K in the batch."""
        if self.host_facts is not None:
            return max(self.host_facts.kept, default=0)
        return int(self.kept.max()) if self.kept.numel() else 0

    @cached_property
    def slot_mask(self) -> torch.Tensor:
        """``[B, K_max]`` bool; True on real output slots, False on padding."""
        slots = torch.arange(self.num_slots, device=self.kept.device)
        return slots[None, :] < self.kept[:, None]

    # ------------------------------------------------------------- statistics
    @cached_property
    def _flat_index(self) -> tuple[torch.Tensor, int]:
        """Flattened destination row per source; not-kept sources go to a dump row. Cached:
        every statistic and every ``apply`` (twice on the in-order path) needs it."""
        width = self.num_slots
        dump = self.batch_size * width
        rows = torch.arange(self.batch_size, device=self.slot_index.device)[:, None] * width
        flat = torch.where(self.slot_index >= 0, rows + self.slot_index, dump)
        return flat.reshape(-1), dump

    def _reduce(self, values: torch.Tensor, reduce: str, fill: float) -> torch.Tensor:
        """Reduce a per-source ``[B, N]`` tensor into ``[B, K_max]`` per slot."""
        flat, dump = self._flat_index
        out = torch.full((dump + 1,), fill, dtype=values.dtype, device=values.device)
        out = out.scatter_reduce(0, flat, values.reshape(-1), reduce=reduce, include_self=True)
        return out[:dump].reshape(self.batch_size, self.num_slots)

    @cached_property
    def sizes(self) -> torch.Tensor:
        """``[B, K_max]`` long; how many source tokens each slot holds (0 on padding)."""
        kept = (self.slot_index >= 0).long()
        return self._reduce(kept, "sum", 0)

    @property
    def spans(self) -> torch.Tensor:
        """``[B, K_max, 2]`` long; first and last source frame of each slot (-1 on padding)."""
        positions = torch.arange(self.num_sources, device=self.slot_index.device)
        positions = positions.expand_as(self.slot_index)
        first = self._reduce(positions, "amin", self.num_sources)
        last = self._reduce(positions, "amax", -1)
        first = torch.where(self.slot_mask, first, -1)
        return torch.stack([first, last], dim=-1)

    @property
    def centroids(self) -> torch.Tensor:
        """``[B, K_max]`` float64; mean source frame of each slot: its place in time."""
        positions = torch.arange(self.num_sources, device=self.slot_index.device)
        positions = positions.expand_as(self.slot_index).double()
        kept = (self.slot_index >= 0).double()
        total = self._reduce(positions * kept, "sum", 0.0)
        return total / self.sizes.clamp(min=1).double()

    @cached_property
    def unit_weights(self) -> bool:
        """Every kept source weighs one (true of every built-in method)."""
        if self.host is not None and self.host.unit_weights is self.weights:
            return True
        return bool(((self.weights == 1) | (self.slot_index < 0)).all())

    @cached_property
    def is_selection(self) -> bool:
        """True when every slot holds exactly one source with weight one (pruning, sampling,
        or no compression): then ``apply`` is an exact gather."""
        facts = self.host_facts
        if facts is not None and facts.sources is not None:
            return self.unit_weights and facts.sources == facts.kept
        return self.unit_weights and bool(((self.sizes == 1) | ~self.slot_mask).all())

    @cached_property
    def _first_sources(self) -> torch.Tensor:
        positions = torch.arange(self.num_sources, device=self.slot_index.device)
        positions = positions.expand_as(self.slot_index)
        first = self._reduce(positions, "amin", self.num_sources)
        return torch.where(self.slot_mask, first, 0)

    def first_sources(self) -> torch.Tensor:
        """``[B, K_max]`` long; the first source of each slot (0 on padding slots)."""
        return self._first_sources

    def selected_sources(self) -> torch.Tensor:
        """``[B, K_max]`` long; for a selection plan, the source index of each slot (0 on
        padding slots, which ``apply`` zeroes)."""
        positions = torch.arange(self.num_sources, device=self.slot_index.device)
        positions = positions.expand_as(self.slot_index)
        return self._reduce(positions, "amax", 0)

    # ------------------------------------------------------------------ apply
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Compress ``x`` ``[B, N, ...]`` to ``[B, K_max, ...]``: the weighted mean of each
        slot's sources, accumulated in float32 (float64 for float64 ``x``) and returned in
        ``x``'s dtype. Padding slots
        are zero. A selection plan gathers, so keep_ratio = 1 is the identity bit for bit."""
        _check_tensor("apply", x, "[B, N, ...]")
        if x.shape[:2] != self.slot_index.shape:
            raise ValueError(
                f"plan was made for [B, N] = {list(self.slot_index.shape)} but x has shape "
                f"{list(x.shape)}; apply a plan to tensors of the clips it was computed on"
            )
        if self.is_selection:
            return self._gather_selected(x)
        dtype = working_dtype(x.dtype)
        out, finite = self._means_and_finite(x, dtype, x.dtype)
        if not finite:
            # Rare: non-finite sources (exact infinities need the slow path), or finite
            # sources whose sum overflows (tokens near the dtype's largest value: averaged
            # scaled down by a power of two, then back).
            out = self._weighted_means_by_index_add(x, dtype)
            out = self._rescaled_means(x, out)
        return out.to(x.dtype)

    def _gather_selected(self, x: torch.Tensor) -> torch.Tensor:
        """A selection plan's output: its rows copied whole. One ``index_select`` over the
        clips' rows (a row copy, where ``gather`` with an expanded index reads an index per
        element: 3× slower), into a fresh buffer, and only the padding slots zeroed."""
        batch, slots = self.batch_size, self.num_slots
        feature_shape = x.shape[2:]
        offsets = torch.arange(batch, device=x.device)[:, None] * self.num_sources
        index = (self.selected_sources().to(x.device) + offsets).reshape(-1)
        rows = x.reshape(batch * self.num_sources, *feature_shape)
        if x.requires_grad:
            out = torch.index_select(rows, 0, index)
        else:
            out = fresh_empty((batch * slots, *feature_shape), x.dtype, x.device)
            torch.index_select(rows, 0, index, out=out)
        padding = self._padding_slots(x.device)
        if padding.numel():
            out = (
                out.index_fill(0, padding, 0) if x.requires_grad else out.index_fill_(0, padding, 0)
            )
        return out.reshape(batch, slots, *feature_shape)

    def _padding_slots(self, device: torch.device) -> torch.Tensor:
        """Flat indices of the padding slots (past each clip's K) in ``[B · K_max]``, listed
        on the host when K is known there."""
        facts, slots = self.host_facts, self.num_slots
        if facts is None:
            return (~self.slot_mask.to(device)).reshape(-1).nonzero().squeeze(1)
        rows = [
            clip * slots + k for clip, kept in enumerate(facts.kept) for k in range(kept, slots)
        ]
        return torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)

    def _weighted_means(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``[B, K_max, ...]`` weighted mean per slot in ``dtype``. Padding slots are zero."""
        return self._means_and_finite(x, dtype, dtype)[0]

    def _means_and_finite(
        self, x: torch.Tensor, dtype: torch.dtype, out_dtype: torch.dtype
    ) -> tuple[torch.Tensor, bool]:
        """``[B, K_max, ...]`` weighted mean per slot computed in ``dtype`` and returned in
        ``out_dtype``, and whether every real slot's mean is finite (a NaN, an infinity or a
        sum that overflowed sends ``apply`` to its slow path).

        Each slot's sources are added onto zero in source order: on CPU by one in-order read
        of the input (the compiled loop, or ``index_add_`` a block at a time; half precision
        widened as it is read and rounded back a block at a time), otherwise by
        :mod:`ltbm.core.slot_sums`' bags. Either way finiteness is checked on blocks of means
        while they are in cache: no full-size float32 copy. Padding slots are zero."""
        if not self.unit_weights or (x.requires_grad and torch.is_grad_enabled()):
            # Weights other than one, or gradients wanted (the sums are written into
            # buffers, which autograd cannot follow): the index_add_ path, same sums.
            means = self._weighted_means_by_index_add(x, dtype)
            return means.to(out_dtype), all_finite(means)
        if not uses_accelerator_path(x):  # elsewhere index_add_ adds in no fixed order
            if x.dtype == dtype:  # add the input in order, in place, into the output
                return self._means_in_source_order(x, dtype)
            in_order = self._means_in_row_order(x, dtype, out_dtype)  # widened in a ring
            if in_order is not None:
                return in_order
        batch, width, slots = self.batch_size, self.num_sources, self.num_slots
        feature_shape = x.shape[2:]
        out = fresh_empty((batch * slots, *feature_shape), out_dtype, x.device)
        first = self.first_sources().to(x.device)
        clip = torch.arange(batch, device=x.device)[:, None]
        kept = self.slot_index.to(x.device) >= 0
        is_first = kept & (
            torch.arange(width, device=x.device)
            == first.gather(1, self.slot_index.to(x.device).clamp(min=0))
        )
        extra_clip, extra_source = self._extra_sources(kept & ~is_first)
        extra_slot = extra_clip * slots + self.slot_index.to(x.device)[extra_clip, extra_source]
        sizes = self.sizes.to(device=x.device, dtype=dtype).clamp(min=1)
        real = self.slot_mask.to(x.device).reshape(-1)
        facts = self.host_facts
        all_real = all(k == slots for k in facts.kept) if facts else bool(real.all())
        checks = []

        def check_finite(start: int, stop: int, means: torch.Tensor) -> None:
            # Padding slots hold their clip's first row (maybe junk): left out of the check.
            if not all_real:
                real_here = real[start:stop].reshape(-1, *([1] * (means.dim() - 1)))
                means = torch.where(real_here, means, 0)
            checks.append(all_finite(means))

        sum_rows_into_slots(
            x.reshape(batch * width, *feature_shape),
            (clip * width + first).reshape(-1),
            extra_slot,
            extra_clip * width + extra_source,
            dtype=dtype,
            out=out,
            divisors=sizes.reshape(-1),
            visit=check_finite,
        )
        out = out.view(batch, slots, *feature_shape)
        if not all_real:
            padding = ~self.slot_mask.to(x.device)
            out.masked_fill_(padding.reshape(batch, slots, *([1] * len(feature_shape))), 0)
        return out, all(checks)

    def _extra_sources(self, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip, source) of every kept source that is not its slot's first, in row-major
        order; their number is known on the host when K and the kept sources are."""
        facts = self.host_facts
        if facts is None or facts.sources is None:
            return torch.nonzero(extra, as_tuple=True)
        count = sum(facts.sources) - sum(facts.kept)
        found = torch.nonzero_static(extra, size=count)
        return found[:, 0], found[:, 1]

    def _means_in_source_order(
        self, x: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, bool]:
        """Means per slot (``x`` already in ``dtype``, on CPU) and whether all are finite.

        The sources are added onto zeros one row after the other (``add_rows_into``: the
        compiled loop, or ``index_add_`` a cache-sized block of consecutive source rows at
        a time): the input is read once, in order, and each slot gets its sources in source
        order (the same sums, bit for bit, as ``slot_sums`` makes). No temporary is
        allocated. A slot is divided by its size (and checked) as soon as it and every slot
        before it are complete, while its row is still in cache.
        """
        feature_shape = x.shape[2:]
        flat, dump = self._flat_index
        out = fresh_zeros((dump + 1, *feature_shape), dtype, x.device)
        source = x.reshape(-1, *feature_shape)
        sizes = self.sizes.to(dtype=dtype).clamp(min=1).reshape(-1)
        # Slots 0..s are complete once the source rows read so far reach past the last
        # source of each of them (rows are flattened clip after clip).
        positions = torch.arange(self.num_sources, device=x.device)
        last = self._reduce(positions.expand_as(self.slot_index), "amax", -1)
        clip_start = torch.arange(self.batch_size, device=x.device)[:, None] * self.num_sources
        last = torch.where(last >= 0, clip_start + last, -1).reshape(-1)
        complete_after = torch.cummax(last, 0).values if last.numel() else last
        means = out[:dump].view(self.batch_size, self.num_slots, *feature_shape)
        finite = means_in_order(out, source, flat, complete_after, sizes)
        if finite is not None:
            return means, finite
        sizes = sizes.reshape(-1, *([1] * len(feature_shape)))
        rows = max(1, SOURCE_BLOCK_ELEMENTS // max(source[0].numel(), 1))
        stops = list(range(rows, source.shape[0], rows)) + [source.shape[0]]
        done_after = torch.searchsorted(complete_after, torch.tensor(stops)).tolist()
        checks, done = [], 0
        for start, stop, ready in zip([0, *stops[:-1]], stops, done_after, strict=True):
            out.index_add_(0, flat[start:stop], source[start:stop])
            if ready > done:
                finished = out[done:ready]
                finished.div_(sizes[done:ready])
                checks.append(all_finite(finished))
                done = ready
        return means, all(checks)

    def _means_in_row_order(
        self, x: torch.Tensor, dtype: torch.dtype, out_dtype: torch.dtype
    ) -> tuple[torch.Tensor, bool] | None:
        """Means per slot and whether all are finite, from one in-order read of ``x`` (CPU): the
        sources are added onto zero in source order (``slot_sums.sum_rows_in_order``, the
        same sums, bit for bit, as the bags), and each slot is divided, rounded to
        ``out_dtype`` and checked as soon as it is complete, while in cache.
        None when the plan's slots do not follow the source order closely enough."""
        feature_shape = x.shape[2:]
        flat, dump = self._flat_index
        slot_of_row = torch.where(flat == dump, -1, flat).to(x.device)
        out = fresh_empty((dump, *feature_shape), out_dtype, x.device)
        flat_out = out.view(dump, -1)
        sizes = self.sizes.to(device=x.device, dtype=dtype).clamp(min=1).reshape(-1, 1)
        checks = []

        def finish(start: int, stop: int, sums: torch.Tensor) -> None:
            sums.div_(sizes[start:stop])
            flat_out[start:stop].copy_(sums)
            checks.append(all_finite(sums))

        source = x.reshape(-1, *feature_shape)
        if not sum_rows_in_order(source, slot_of_row, dump, dtype, finish):
            return None
        return out.view(self.batch_size, self.num_slots, *feature_shape), all(checks)

    def _weighted_means_by_index_add(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The general case (weights other than one): weighted sources added per slot."""
        feature_shape = x.shape[2:]
        flat, dump = self._flat_index
        flat = flat.to(x.device)
        weights = self.weights.reshape(-1).to(device=x.device, dtype=dtype)
        values = x.reshape(-1, *feature_shape)
        # Not-kept sources (padding may hold anything, even NaN) land in the dump row only.
        total = torch.zeros((dump + 1, *feature_shape), dtype=dtype, device=x.device)
        rows = max(1, APPLY_BLOCK_ELEMENTS // max(values[0].numel(), 1))
        for start in range(0, values.shape[0], rows):
            block = values[start : start + rows].to(dtype)
            block = block * weights[start : start + rows].reshape(-1, *([1] * len(feature_shape)))
            total.index_add_(0, flat[start : start + rows], block)
        weight_sum = torch.zeros(dump + 1, dtype=dtype, device=x.device)
        weight_sum.index_add_(0, flat, weights)
        weight_sum = weight_sum.clamp(min=torch.finfo(dtype).tiny)
        total.div_(weight_sum.reshape(-1, *([1] * len(feature_shape))))
        return total[:dump].reshape(self.batch_size, self.num_slots, *feature_shape)

    def _rescaled_means(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Means of clips whose sums overflowed, computed on the clip scaled so that its
        largest kept magnitude lies in [0.5, 1). Sources that are themselves NaN or infinite
        leave the result as it was (non-finite, as it should be)."""
        dtype = out.dtype
        kept = (self.slot_index >= 0).to(x.device).reshape(*x.shape[:2], *([1] * (x.dim() - 2)))
        magnitudes = torch.where(kept, x.to(dtype).abs(), 0.0)
        largest = magnitudes.reshape(x.shape[0], -1).amax(dim=1)
        if not bool(torch.isfinite(largest).all()):
            return out
        shape = (-1, *([1] * (x.dim() - 1)))
        exponents = unit_exponents(largest).reshape(shape)
        scaled = times_power_of_two(x.to(dtype), -exponents)
        return times_power_of_two(self._weighted_means(scaled, dtype), exponents)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """Broadcast slots ``[B, K_max, ...]`` back to sources ``[B, N, ...]``; sources that
        feed no slot get zeros. Useful to draw what each frame became, or to undo merging."""
        _check_tensor("unmerge", y, "[B, K_max, ...]")
        if y.shape[:2] != (self.batch_size, self.num_slots):
            raise ValueError(
                f"unmerge expects [B, K_max] = {[self.batch_size, self.num_slots]} leading "
                f"dims, got {list(y.shape)}"
            )
        feature_shape = y.shape[2:]
        index = self.slot_index.clamp(min=0).to(y.device)
        index = index.reshape(*index.shape, *([1] * len(feature_shape)))
        out = torch.gather(y, 1, index.expand(-1, -1, *feature_shape))
        kept = (self.slot_index >= 0).reshape(*self.slot_index.shape, *([1] * len(feature_shape)))
        return torch.where(kept.to(y.device), out, torch.zeros((), dtype=y.dtype))


def _check_tensor(name: str, value: object, shape: str) -> None:
    """A plan maps tensors; a list or an array gets a message, not an AttributeError."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} takes a torch.Tensor {shape}, got {type(value).__name__}; convert it "
            "first (torch.as_tensor(x))"
        )


def plan_from_slots(
    slot_index: torch.Tensor,
    kept: torch.Tensor,
    history=None,
    host_kept: Sequence[int] | None = None,
    host_sources: Sequence[int] | None = None,
) -> Plan:
    """A plan in which every kept source has weight one (merging, pooling, selection).
    ``host_kept`` and ``host_sources`` (K and the kept sources of every clip, as Python
    integers: the lengths for merging and pooling, K for a selection), when the method knows
    them, let the plan be applied without reading the device."""
    weights = (slot_index >= 0).float()
    host = None
    if host_kept is not None:
        sources = None if host_sources is None else tuple(host_sources)
        host = HostFacts(tuple(host_kept), sources, slot_index, weights)
    return Plan(slot_index, weights, kept, list(history or []), host)
