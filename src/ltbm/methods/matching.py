"""Bipartite token merging, local (LTBM) or global: one kernel, the window is the only switch.

Each round splits the current sequence by position into A (even) and B (odd). Every A token
finds its most similar B token (cosine similarity of the merged features), either among the
``window`` nearest B tokens on either side, at most 2·window − 1 positions away (LTBM), or
among all of them (Global Merge). The ``r = min(n - K, |A|)`` best edges merge A into B (a
size-weighted mean, so a slot is the plain mean of its source frames), survivors are put
back in temporal order (by their mean source frame), and rounds repeat until exactly K
tokens remain.

With a window, scores outside the band are never computed: time and memory are
O(N · window · D), linear in the audio length. Without one, scores come from cache-sized
blocks of the A×B matrix, so memory stays bounded while time is quadratic.

The kernel is written to read its input as few times as possible (it exists to save
time): the first round reads the input tokens in place, in row blocks that stay in cache
while their norms and band dot products are computed (half precision is widened one block
at a time), and the finiteness check is read off those norms. Merged rows are summed a
block at a time (``slot_sums``); the next round's norms and band dot products are taken
from each block while it is in cache, so a banded last round needs no merged rows at all,
and the rows other rounds need go to workspaces that later rounds reuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ltbm.core.device_path import uses_accelerator_path
from ltbm.core.inputs import (
    check_window,
    clip_lengths,
    kept_per_clip,
    refuse_non_finite,
    to_device,
    valid_mask,
    working_dtype,
)
from ltbm.core.memory import fresh_empty
from ltbm.core.plan import NOT_KEPT, Plan, plan_from_slots
from ltbm.core.scaling import times_power_of_two, unit_exponents
from ltbm.core.slot_sums import sum_rows_in_order, sum_rows_into_slots
from ltbm.methods.dense_certified import certified_best_partners
from ltbm.methods.dense_scores import filtered_best_partners
from ltbm.methods.neighbour_dots import StreamedNeighbourDots

DENSE_BLOCK_ELEMENTS = 1 << 22
"""How many A×B scores the dense path holds at once (16 MiB of float32, cache-sized)."""

ROW_BLOCK_ELEMENTS = 1 << 19
"""Elements per thread in a row block of the banded pass (2 MiB of float32 per thread: stays
in cache). Blocks grow with the thread count: many small operations were much slower on
several threads of a busy machine, where every operation waits for all its threads."""

SAFE_NORMS = (2.0**-20, 2.0**40)
"""Largest token norm of a clip for which no rescaling is needed: dot products of merged
tokens then stay far from overflow and underflow in float32. Outside it, the clip is scaled
by a power of two first (exact), so the plan does not depend on the tokens' scale."""


def band_offsets(window: int) -> range:
    """Offsets j - i from A index i to the ``window`` nearest B indices j on either side.

    A token i sits at position 2i and B token j at 2j + 1, so the distance |2(j - i) + 1| is
    always odd: window w allows positions ±1, ±3, …, ±(2w − 1), that is offsets -w … w - 1.
    Counting B neighbours rather than positions makes every integer w a distinct setting
    (a bound on the position distance made 2k and 2k − 1 the same band).
    """
    return range(-window, window)


def max_distance(window: int) -> int:
    """The farthest position (in the current sequence) an A token may merge with: 2w − 1."""
    return 2 * window - 1


def norms_and_neighbour_dots(
    x: torch.Tensor, distances: list[int], dtype: torch.dtype
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Row norms ``[B, n]`` of ``x [B, n, D]`` and, for every distance d, the dot products
    ``x_t · x_{t+d}`` ``[B, n]`` (zero where t + d ≥ n), in ``dtype``.

    One sweep over row blocks, read in place (widened to ``dtype`` one block at a time if
    needed), handed to the :class:`StreamedNeighbourDots` that also takes the merged rows'
    values: one implementation, so the first round and later ones reduce the same way.
    """
    batch, width, dim = x.shape
    streamed = StreamedNeighbourDots(batch, width, distances, dtype, x.device)
    if batch * width == 0:
        return streamed.result()
    try:  # clips one after the other, as the streamed rows are: blocks may span clips
        sources = [x.view(batch * width, dim)]
    except RuntimeError:  # a strided view: clip by clip, no copy
        sources = list(x)
    rows = max(1, ROW_BLOCK_ELEMENTS * max(1, torch.get_num_threads()) // max(dim, 1))
    in_place = streamed.takes_in_place(sources[0])
    if uses_accelerator_path(x) or in_place:
        # accelerators: one block, as few kernel launches as possible; the compiled loop:
        # one call, every row read once, in place
        rows = sources[0].shape[0]
    widened = None
    if x.dtype != dtype and not in_place:
        widened = torch.empty(min(rows, sources[0].shape[0]), dim, dtype=dtype, device=x.device)
    offset = 0
    for source in sources:
        for start in range(0, source.shape[0], rows):
            block = source[start : start + rows]
            if widened is not None:
                block = widened[: block.shape[0]].copy_(block)
            streamed.visit(offset + start, offset + start + block.shape[0], block)
        offset += source.shape[0]
    return streamed.result()


def banded_best_partners(
    norms: torch.Tensor, dots: dict[int, torch.Tensor], length: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner of every A token within the band, from the neighbour dot products.

    A token i (position 2i) and B token j = i + o (position 2i + 2o + 1) are ``d = |2o + 1|``
    apart: their dot product is ``dots[d]`` at the earlier of the two positions. Scores are
    cosine similarities. Returns the best score (``-inf`` where there is no valid partner)
    and the B index. Ties go to the earliest B token.
    """
    batch, width = norms.shape
    na, nb = (width + 1) // 2, width // 2
    num_a, num_b = (length + 1) // 2, length // 2
    a_norm, b_norm = norms[:, 0::2], norms[:, 1::2]
    offsets = band_offsets(window)
    scores = torch.full(
        (batch, na, len(offsets)), float("-inf"), dtype=norms.dtype, device=norms.device
    )
    a_index = torch.arange(na, device=norms.device)
    for column, offset in enumerate(offsets):
        lo, hi = max(0, -offset), min(na, nb - offset)
        if hi <= lo:
            continue
        distance = abs(2 * offset + 1)
        # Forward pairs start at the A position (even), backward pairs at the B one (odd).
        pair_dots = dots[distance][:, 0::2] if offset >= 0 else dots[distance][:, 1::2]
        first = lo if offset >= 0 else lo + offset
        dot = pair_dots[:, first : first + hi - lo]
        norm = a_norm[:, lo:hi] * b_norm[:, lo + offset : hi + offset]
        b_index = a_index[lo:hi] + offset
        valid = (b_index[None, :] < num_b[:, None]) & (a_index[None, lo:hi] < num_a[:, None])
        scores[:, lo:hi, column] = (dot / norm).masked_fill(~valid, float("-inf"))
    best_score, best = scores.max(dim=-1)
    best_b = (a_index[None, :] + best + offsets.start).clamp(0, max(nb - 1, 0))
    return best_score, best_b


def dense_best_partners(
    x: torch.Tensor, norms: torch.Tensor, length: torch.Tensor, host: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner of every A token among all B tokens of its clip (Global Merge).

    Float32 work decides by the canonical float32 cosine of each pair: on the CPU path
    through :mod:`ltbm.methods.dense_scores` (a low-precision pre-filter, then exact scores
    for the few candidates), on the accelerator path through
    :mod:`ltbm.methods.dense_certified` (every clip at once, certified float64 scores): the
    same plans either way. Float64 work, per clip, takes only the clip's valid rows (no
    padding columns to mask); A×B dot products are computed in cache-sized row blocks and
    divided in place by |a|·|b|. ``host``: the lengths as Python integers, when known (else
    read back).
    """
    if norms.dtype == torch.float32:
        if uses_accelerator_path(x):
            return certified_best_partners(x, length)
        return filtered_best_partners(x, length, DENSE_BLOCK_ELEMENTS)
    batch, width, _ = x.shape
    na = (width + 1) // 2
    dtype = norms.dtype
    best_score = torch.full((batch, na), float("-inf"), dtype=dtype, device=x.device)
    best_b = torch.zeros((batch, na), dtype=torch.long, device=x.device)
    for clip, n in enumerate(length.tolist() if host is None else host):
        num_a, num_b = (n + 1) // 2, n // 2
        if num_b == 0:
            continue
        b_columns = torch.empty(x.shape[2], num_b, dtype=dtype, device=x.device)
        b_columns.copy_(x[clip, 1 : 2 * num_b : 2].T)
        b_norm = norms[clip, 1 : 2 * num_b : 2]
        rows = max(1, DENSE_BLOCK_ELEMENTS // num_b)
        scores = torch.empty(min(rows, num_a), num_b, dtype=dtype, device=x.device)
        denominators = torch.empty_like(scores)
        for start in range(0, num_a, rows):
            stop = min(num_a, start + rows)
            block, denominator = scores[: stop - start], denominators[: stop - start]
            torch.mm(x[clip, 2 * start : 2 * stop : 2].to(dtype), b_columns, out=block)
            a_norm = norms[clip, 2 * start : 2 * stop : 2]
            torch.mul(a_norm[:, None], b_norm[None, :], out=denominator)
            score, index = block.div_(denominator).max(dim=-1)
            best_score[clip, start:stop] = score
            best_b[clip, start:stop] = index
    return best_score, best_b


def is_dense(window: int | None, width: int) -> bool:
    """Whether a round over ``width`` positions compares every A×B pair: no window, or one
    that covers the whole sequence."""
    return window is None or window >= width


def round_merges(length: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Merges per clip this round: r = min(n − K, |A|), never negative."""
    return torch.minimum(length - kept, (length + 1) // 2).clamp(min=0)


def host_round_merges(length: Sequence[int], kept: Sequence[int]) -> list[int]:
    """:func:`round_merges` on the host: how many merges each round makes follows from the
    lengths and K alone, so the rounds are planned without reading the device."""
    return [max(0, min(n - k, (n + 1) // 2)) for n, k in zip(length, kept, strict=True)]


def rounds_left(length: Sequence[int], kept: Sequence[int]) -> bool:
    """Whether any clip still holds more than its K tokens."""
    return any(n > k for n, k in zip(length, kept, strict=True))


def band_distances(window: int) -> list[int]:
    """Position distances whose dot products window w needs: 1, 3, …, 2w − 1."""
    return [max_distance(w) for w in range(1, window + 1)]


def best_partners(
    x: torch.Tensor | None,
    length: torch.Tensor,
    window: int | None,
    dtype: torch.dtype,
    measured: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None,
    host: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row norms and the best B partner (score, B index) of every A token of ``x``.

    ``measured``: the norms and band dot products of ``x``, when the round that made ``x``
    took them already (then ``x`` itself may be None: a banded last round needs no rows).
    ``host``: the lengths as Python integers.
    """
    width = x.shape[1] if measured is None else measured[0].shape[1]
    dense = is_dense(window, width)
    if measured is None:
        norms, dots = norms_and_neighbour_dots(x, [] if dense else band_distances(window), dtype)
    else:
        norms, dots = measured
    # The floor makes an all-zero token score 0 instead of NaN.
    norms.clamp_(min=1e-12)
    if dense:
        score, partner = dense_best_partners(x, norms, length, host)
    else:
        score, partner = banded_best_partners(norms, dots, length, window)
    return norms, score, partner


class Workspaces:
    """Merged features of successive rounds: each round writes into the buffer the round
    before last used (the sequence only shrinks), so fresh memory is paged in only twice."""

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.turn = 0

    def take(
        self, batch: int, width: int, dim: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        size = batch * width * dim
        self.turn = 1 - self.turn
        buffer = self.buffers[self.turn]
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[self.turn] = fresh_empty((size,), dtype, device)
        return buffer[:size].view(batch, width, dim)


class RoundMerge(NamedTuple):
    """What one round decided, in the positions of the sequence it started from."""

    sizes: torch.Tensor  # [B, n'] sources per new token
    frame_sums: torch.Tensor  # [B, n'] float64 sum of their frame indices
    length: torch.Tensor  # [B] new valid lengths
    to_new: torch.Tensor  # [B, n] new position of every current position
    edges: torch.Tensor  # [E, 3] merged pairs (clip, a_pos, b_pos)
    keep: torch.Tensor  # [B, n'] the current position each new token starts from
    merge_a: torch.Tensor  # [B, |A|] which A tokens merged
    merged_clip: torch.Tensor  # [E] clip of every merged A token, in row-major order
    merged_a: torch.Tensor  # [E] its A index


def _merge_round(
    sizes: torch.Tensor,
    frame_sums: torch.Tensor,
    length: torch.Tensor,
    kept: torch.Tensor,
    best_score: torch.Tensor,
    best_b: torch.Tensor,
    host_length: Sequence[int],
    host_merges: Sequence[int],
) -> RoundMerge:
    """One round of bipartite merging on the current sequences, given each A token's best
    partner: which edges merge, and the new tokens' sizes, frame sums and temporal order.
    ``host_length``, ``host_merges``: the lengths and merges of each clip as Python integers
    (:func:`host_round_merges`), which fix every size here without a read of the device."""
    batch, width = sizes.shape
    merges = round_merges(length, kept)

    # The r best edges of each clip; a stable sort breaks ties by position. When every
    # column merges (full-length clips, r = |A|), no ranking is needed.
    if all(r == best_score.shape[1] for r in host_merges):
        merge_a = torch.ones_like(best_score, dtype=torch.bool)
    else:
        order = torch.sort(best_score, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        merge_a = rank < merges[:, None]

    positions = torch.arange(width, device=sizes.device).expand(batch, width)
    target = positions.clone()
    target[:, 0::2] = torch.where(merge_a, 2 * best_b + 1, positions[:, 0::2])
    # Each clip merges exactly its r A tokens: their number is known without asking.
    merged = torch.nonzero_static(merge_a, size=sum(host_merges))
    merged_clip, merged_a = merged[:, 0], merged[:, 1]
    edges = torch.stack([merged_clip, 2 * merged_a, target[merged_clip, 2 * merged_a]], dim=1)

    # Sizes and frame sums after merging (cheap [B, n] tensors), then temporal order.
    merged_sizes = torch.zeros_like(sizes).scatter_add_(1, target, sizes)
    merged_frames = torch.zeros_like(frame_sums).scatter_add_(1, target, frame_sums)
    survives = (positions < length[:, None]) & (target == positions)
    key = torch.where(survives, merged_frames / merged_sizes.clamp(min=1), torch.inf)
    order = torch.sort(key, dim=1, stable=True).indices
    new_position = torch.empty_like(order).scatter_(1, order, positions.contiguous())
    to_new = new_position.gather(1, target)

    new_length = length - merges
    longest = max((n - r for n, r in zip(host_length, host_merges, strict=True)), default=0)
    keep = order[:, :longest]
    return RoundMerge(
        merged_sizes.gather(1, keep),
        merged_frames.gather(1, keep),
        new_length,
        to_new,
        edges,
        keep,
        merge_a,
        merged_clip,
        merged_a,
    )


def _next_round_input(
    x: torch.Tensor,
    merge: RoundMerge,
    kept: torch.Tensor,
    window: int | None,
    workspaces: Workspaces,
    dtype: torch.dtype,
    host_length: Sequence[int],
    host_kept: Sequence[int],
) -> tuple[torch.Tensor | None, tuple[torch.Tensor, dict[int, torch.Tensor]] | None]:
    """What the next round reads: the merged rows (written only if it needs them) and, for
    a banded window, their norms and band dot products, taken while each block of merged
    rows is in cache. (None, None) when there is no next round. ``host_length`` and
    ``host_kept``: the new lengths and K as Python integers.

    Each merged row is its survivor's row plus the rows merged into it, added in A order
    (rows past a clip's length are ignored later).
    """
    if not rounds_left(host_length, host_kept):
        return None, None  # that was the last round: the plan needs only the assignment
    batch, width = merge.to_new.shape
    new_width, dim = merge.keep.shape[1], x.shape[2]
    after_next = host_round_merges(host_length, host_kept)
    lengths_after = [n - r for n, r in zip(host_length, after_next, strict=True)]
    next_is_last = not rounds_left(lengths_after, host_kept)
    dense = is_dense(window, new_width)
    streamed = None
    if not dense:
        distances = band_distances(window)
        streamed = StreamedNeighbourDots(batch, new_width, distances, dtype, x.device)
    merged = None
    if dense or not next_is_last:
        merged = workspaces.take(batch, new_width, dim, dtype, x.device)
    elif not uses_accelerator_path(x):  # only the norms and dots are needed: try one in-order read
        slot_of_row = _slots_in_row_order(merge, new_width)
        rows = x.reshape(batch * width, dim)
        if slot_of_row is not None and sum_rows_in_order(
            rows, slot_of_row, batch * new_width, dtype, streamed.visit
        ):
            return None, streamed.result()
    clip_rows = torch.arange(batch, device=x.device)[:, None]
    a_clip, a_index = merge.merged_clip, merge.merged_a
    sum_rows_into_slots(
        x.reshape(batch * width, dim),
        (clip_rows * width + merge.keep).reshape(-1),
        a_clip * new_width + merge.to_new[a_clip, 2 * a_index],
        a_clip * width + 2 * a_index,
        dtype=dtype,
        out=None if merged is None else merged.view(batch * new_width, dim),
        visit=None if streamed is None else streamed.visit,
    )
    return merged, None if streamed is None else streamed.result()


def _slots_in_row_order(merge: RoundMerge, new_width: int) -> torch.Tensor | None:
    """The new token (flat ``[B · n']`` index) each current row is added into, -1 for rows
    past the new lengths, if adding every new token's rows in row order gives the same sum
    as its survivor first and then the merged rows in A order; else None.

    They agree when at most one merged row comes before the survivor (then the first two
    additions onto zero only swap, and a + b = b + a exactly): always with a window of 1.
    """
    batch, width = merge.to_new.shape
    clip = torch.arange(batch, device=merge.to_new.device)[:, None]
    real = merge.to_new < merge.length[:, None]
    slot_of_row = torch.where(real, clip * new_width + merge.to_new, -1).reshape(-1)
    survivor = (clip * width + merge.keep).reshape(-1)
    rows = torch.arange(batch * width, device=slot_of_row.device)
    earlier = real.reshape(-1) & (rows < survivor[slot_of_row.clamp(min=0)])
    if bool((torch.bincount(slot_of_row[earlier], minlength=1) > 1).any()):
        return None
    return slot_of_row


def rescaled_tokens(
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    dtype: torch.dtype,
    clips: list[int],
    host: Sequence[int],
) -> torch.Tensor:
    """A working copy of the tokens in which each listed clip is scaled by a power of two
    (exactly) so that its largest magnitude lies in [0.5, 1); padding is zeroed. ``host``:
    the lengths as Python integers."""
    x = tokens.to(dtype).masked_fill(~valid_mask(lengths, tokens.shape[1])[:, :, None], 0.0)
    largest = torch.zeros(tokens.shape[0], dtype=dtype, device=tokens.device)
    for clip in clips:
        if host[clip]:
            largest[clip] = x[clip, : host[clip]].abs().amax()
    return times_power_of_two(x, -unit_exponents(largest)[:, None, None])


def clips_to_rescale(norms: torch.Tensor, lengths: torch.Tensor) -> list[int]:
    """Clips whose largest valid token norm is not finite (NaN, Inf, or an overflow of
    finite values) or lies outside :data:`SAFE_NORMS`."""
    if norms.shape[1] == 0:
        return []
    # amax propagates NaN, so one masked maximum catches NaN, Inf and overflow alike.
    largest = torch.where(valid_mask(lengths, norms.shape[1]), norms, 0.0).amax(dim=1)
    low, high = SAFE_NORMS
    outside = ~torch.isfinite(largest) | (largest > high) | ((largest > 0) & (largest < low))
    return [clip for clip, out in enumerate(outside.tolist()) if out]  # one read


@torch.no_grad()
def bipartite_merge_plan(
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
    keep_ratio: float,
    window: int | None,
) -> Plan:
    """Plan for merging each clip down to ``kept_tokens(length, keep_ratio)`` tokens.

    ``window=None`` is Global Merge; an integer w restricts matches to the w nearest B
    tokens on either side in the current sequence, at most 2w − 1 positions away (LTBM).
    A window that covers the whole sequence is the same as none.
    """
    window = check_window(window)
    clip = clip_lengths(tokens, lengths, check_finite=False)
    lengths, host_kept = clip.on_device, kept_per_clip(clip.host, keep_ratio)
    kept = to_device(host_kept, tokens)
    batch, width, _ = tokens.shape
    dtype = working_dtype(tokens.dtype)
    valid = valid_mask(lengths, width)

    sizes = valid.long()
    frames = torch.arange(width, device=tokens.device, dtype=torch.float64)
    frame_sums = torch.where(valid, frames, 0.0)
    where = torch.where(valid, torch.arange(width, device=tokens.device), NOT_KEPT)
    length, host_length = lengths.clone(), list(clip.host)
    history = []
    x, measured, workspaces = tokens, None, Workspaces()
    first_round = True
    while rounds_left(host_length, host_kept):  # rounds planned on the host
        norms, best_score, best_b = best_partners(x, length, window, dtype, measured, host_length)
        if first_round:
            rescale = clips_to_rescale(norms, length)
            if rescale:
                # Rare: NaN/Inf (refused here) or extreme scales; rescale, then start over.
                refuse_non_finite(tokens, lengths, clip.host)
                x = rescaled_tokens(tokens, lengths, dtype, rescale, clip.host)
                norms, best_score, best_b = best_partners(x, length, window, dtype, None, clip.host)
            first_round = False
        host_merges = host_round_merges(host_length, host_kept)
        merge = _merge_round(
            sizes, frame_sums, length, kept, best_score, best_b, host_length, host_merges
        )
        host_length = [n - r for n, r in zip(host_length, host_merges, strict=True)]
        x, measured = _next_round_input(
            x, merge, kept, window, workspaces, dtype, host_length, host_kept
        )
        sizes, frame_sums, length = merge.sizes, merge.frame_sums, merge.length
        where = torch.where(where >= 0, merge.to_new.gather(1, where.clamp(min=0)), NOT_KEPT)
        history.append(merge.edges)
    if first_round:  # no round ran (keep ratio 1, or clips of at most two tokens)
        refuse_non_finite(tokens, lengths, clip.host)
    return plan_from_slots(where, kept, history, host_kept, clip.host)
