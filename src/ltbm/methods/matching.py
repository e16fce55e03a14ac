"""Bipartite token merging, local (LTBM) or global: one kernel, the window is the only switch.

Each round splits the current sequence by position into A (even) and B (odd). Every A token
finds its most similar B token (cosine similarity of the merged features), either among the
B tokens at most ``window`` positions away (LTBM) or among all of them (Global Merge). The
``r = min(n - K, |A|)`` best edges merge A into B (a size-weighted mean, so a slot is the plain
mean of its source frames), survivors are put back in temporal order (by their mean source
frame), and rounds repeat until exactly K tokens remain.

With a window, scores outside the band are never computed: time and memory are
O(N · window · D), linear in the audio length. Without one, scores come from a dense A×B
matrix computed in row blocks, so memory stays bounded while time is quadratic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ltbm.inputs import budgets, check_tokens, check_window, valid_mask
from ltbm.plan import NOT_KEPT, Plan, plan_from_slots

DENSE_BLOCK_ELEMENTS = 1 << 24
"""How many A×B scores the dense path holds at once (64 MiB of float32)."""


def band_offsets(window: int) -> range:
    """Offsets j - i from A index i to the B indices j within ``window`` positions.

    A token i sits at position 2i and B token j at 2j + 1, so the distance is |2(j - i) + 1|;
    it is at most ``window`` exactly for the offsets returned here.
    """
    return range(-((window + 1) // 2), (window - 1) // 2 + 1)


def banded_best_partners(
    a: torch.Tensor, b: torch.Tensor, num_a: torch.Tensor, num_b: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner of every A token within the band, without forming the A×B matrix.

    ``a [B, na, D]`` and ``b [B, nb, D]`` are unit vectors; ``num_a``/``num_b`` count the
    valid rows per clip. Returns the best score (``-inf`` where there is no valid partner)
    and the B index. Ties go to the earliest B token.
    """
    batch, na, _ = a.shape
    nb = b.shape[1]
    a_index = torch.arange(na, device=a.device)
    scores, partners = [], []
    for offset in band_offsets(window):
        b_index = a_index + offset
        inside = (b_index >= 0) & (b_index < nb)
        lo, hi = max(0, -offset), min(na, nb - offset)
        score = torch.full((batch, na), float("-inf"), device=a.device)
        if hi > lo:
            score[:, lo:hi] = torch.linalg.vecdot(a[:, lo:hi], b[:, lo + offset : hi + offset])
        valid = inside[None, :] & (b_index[None, :] < num_b[:, None])
        scores.append(score.masked_fill(~valid, float("-inf")))
        partners.append(b_index.clamp(0, max(nb - 1, 0)).expand(batch, na))
    scores_t = torch.stack(scores, dim=-1)
    best = scores_t.argmax(dim=-1, keepdim=True)
    best_score = scores_t.gather(-1, best).squeeze(-1)
    best_b = torch.stack(partners, dim=-1).gather(-1, best).squeeze(-1)
    a_valid = a_index[None, :] < num_a[:, None]
    return best_score.masked_fill(~a_valid, float("-inf")), best_b


def dense_best_partners(
    a: torch.Tensor, b: torch.Tensor, num_a: torch.Tensor, num_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner of every A token among all B tokens (Global Merge), in row blocks."""
    batch, na, _ = a.shape
    nb = b.shape[1]
    b_valid = torch.arange(nb, device=a.device)[None, None, :] < num_b[:, None, None]
    rows = max(1, DENSE_BLOCK_ELEMENTS // max(batch * nb, 1))
    best_score = torch.full((batch, na), float("-inf"), device=a.device)
    best_b = torch.zeros((batch, na), dtype=torch.long, device=a.device)
    for start in range(0, na, rows):
        block = torch.bmm(a[:, start : start + rows], b.transpose(1, 2))
        block = block.masked_fill(~b_valid, float("-inf"))
        if nb:
            index = block.argmax(dim=-1, keepdim=True)
            best_score[:, start : start + rows] = block.gather(-1, index).squeeze(-1)
            best_b[:, start : start + rows] = index.squeeze(-1)
    a_valid = torch.arange(na, device=a.device)[None, :] < num_a[:, None]
    return best_score.masked_fill(~a_valid, float("-inf")), best_b


def _merge_round(
    sums: torch.Tensor,
    sizes: torch.Tensor,
    frame_sums: torch.Tensor,
    length: torch.Tensor,
    kept: torch.Tensor,
    window: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of bipartite merging on the current sequences.

    Returns the new (sums, sizes, frame_sums, length), the map from current positions to
    new positions ``[B, n]`` and the merged edges ``[E, 3]`` (clip, a_pos, b_pos).
    """
    batch, width, _ = sums.shape
    num_a = (length + 1) // 2
    num_b = length // 2
    merges = torch.minimum(length - kept, num_a).clamp(min=0)

    metric = F.normalize(sums, dim=-1)
    a, b = metric[:, 0::2], metric[:, 1::2]
    if window is None or window >= width:
        best_score, best_b = dense_best_partners(a, b, num_a, num_b)
    else:
        best_score, best_b = banded_best_partners(a, b, num_a, num_b, window)
    del metric, a, b

    # The r best edges of each clip; a stable sort breaks ties by position.
    order = torch.sort(best_score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    merge_a = rank < merges[:, None]

    positions = torch.arange(width, device=sums.device).expand(batch, width)
    target = positions.clone()
    target[:, 0::2] = torch.where(merge_a, 2 * best_b + 1, positions[:, 0::2])
    edges = torch.nonzero(merge_a)
    edges = torch.stack([edges[:, 0], 2 * edges[:, 1], target[:, 0::2][merge_a]], dim=1)

    # Sizes and frame sums after merging (cheap [B, n] tensors), then temporal order.
    merged_sizes = torch.zeros_like(sizes).scatter_add_(1, target, sizes)
    merged_frames = torch.zeros_like(frame_sums).scatter_add_(1, target, frame_sums)
    survives = (positions < length[:, None]) & (target == positions)
    centroid = merged_frames / merged_sizes.clamp(min=1)
    key = torch.where(survives, centroid, torch.inf)
    order = torch.sort(key, dim=1, stable=True).indices
    new_position = torch.empty_like(order).scatter_(1, order, positions.contiguous())
    to_new = new_position.gather(1, target)

    new_length = length - merges
    new_width = int(new_length.max()) if batch else 0
    real = positions < length[:, None]
    dest = torch.where(real, to_new, new_width)  # padding goes to a dump column
    feature_dest = dest[:, :, None].expand(-1, -1, sums.shape[-1])
    new_sums = sums.new_zeros(batch, new_width + 1, sums.shape[-1])
    new_sums.scatter_add_(1, feature_dest, sums)
    new_sizes = sizes.new_zeros(batch, new_width + 1).scatter_add_(1, dest, sizes)
    new_frames = frame_sums.new_zeros(batch, new_width + 1).scatter_add_(1, dest, frame_sums)
    return (
        new_sums[:, :new_width],
        new_sizes[:, :new_width],
        new_frames[:, :new_width],
        new_length,
        to_new,
        edges,
    )


@torch.no_grad()
def bipartite_merge_plan(
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
    keep_ratio: float,
    window: int | None,
) -> Plan:
    """Plan for merging each clip down to ``kept_tokens(length, keep_ratio)`` tokens.

    ``window=None`` is Global Merge; an integer restricts matches to that many positions of
    the current sequence (LTBM). A window that covers the whole sequence is the same as none.
    """
    window = check_window(window)
    lengths = check_tokens(tokens, lengths)
    kept = budgets(lengths, keep_ratio)
    batch, width, _ = tokens.shape
    valid = valid_mask(lengths, width)

    sums = tokens.float().masked_fill(~valid[:, :, None], 0.0)
    sizes = valid.long()
    frames = torch.arange(width, device=tokens.device, dtype=torch.float64)
    frame_sums = torch.where(valid, frames, 0.0)
    where = torch.where(valid, torch.arange(width, device=tokens.device), NOT_KEPT)
    length = lengths.clone()
    history = []
    while bool((length > kept).any()):
        sums, sizes, frame_sums, length, to_new, edges = _merge_round(
            sums, sizes, frame_sums, length, kept, window
        )
        where = torch.where(where >= 0, to_new.gather(1, where.clamp(min=0)), NOT_KEPT)
        history.append(edges)
    return plan_from_slots(where, kept, history)


def ltbm_plan(
    tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float, window: int = 2
) -> Plan:
    """Local Temporal Bipartite Merging: matches only within ``window`` positions."""
    if window is None:
        raise ValueError("ltbm needs an integer window; use method='global' for no window")
    return bipartite_merge_plan(tokens, lengths, keep_ratio, window)


def global_plan(tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float) -> Plan:
    """Global Merge: the LTBM procedure with every A×B pair allowed."""
    return bipartite_merge_plan(tokens, lengths, keep_ratio, None)
