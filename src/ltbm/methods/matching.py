"""Bipartite token merging, local (LTBM) or global: one kernel, the window is the only switch.

Each round splits the current sequence by position into A (even) and B (odd). Every A token
finds its most similar B token (cosine similarity of the merged features), either among the
``window`` nearest B tokens on either side, at most 2·window − 1 positions away (LTBM), or
among all of them (Global Merge). The ``r = min(n - K, |A|)`` best edges merge A into B (a
size-weighted mean, so a slot is the plain mean of its source frames), survivors are put back
in temporal order (by their mean source frame), and rounds repeat until exactly K tokens remain.

With a window, scores outside the band are never computed: time and memory are
O(N · window · D), linear in the audio length. Without one, scores come from a dense A×B
matrix computed in row blocks, so memory stays bounded while time is quadratic.
"""

from __future__ import annotations

import torch

from ltbm.inputs import budgets, check_tokens, check_window, valid_mask
from ltbm.plan import NOT_KEPT, Plan, plan_from_slots

DENSE_BLOCK_ELEMENTS = 1 << 24
"""How many A×B scores the dense path holds at once (64 MiB of float32)."""


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


def banded_best_partners(
    a: torch.Tensor,
    b: torch.Tensor,
    a_norm: torch.Tensor,
    b_norm: torch.Tensor,
    num_a: torch.Tensor,
    num_b: torch.Tensor,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner of every A token within the band, without forming the A×B matrix.

    ``a [B, na, D]`` and ``b [B, nb, D]`` are features with their norms ``[B, na]``,
    ``[B, nb]``; ``num_a``/``num_b`` count the valid rows per clip. Scores are cosine
    similarities. Returns the best score (``-inf`` where there is no valid partner) and the
    B index. Ties go to the earliest B token.
    """
    batch, na, _ = a.shape
    nb = b.shape[1]
    a_index = torch.arange(na, device=a.device)
    scores, partners = [], []
    for offset in band_offsets(window):
        b_index = a_index + offset
        lo, hi = max(0, -offset), min(na, nb - offset)
        score = torch.full((batch, na), float("-inf"), device=a.device)
        if hi > lo:
            dots = _row_dots(a[:, lo:hi], b[:, lo + offset : hi + offset])
            score[:, lo:hi] = dots / (a_norm[:, lo:hi] * b_norm[:, lo + offset : hi + offset])
        valid = (b_index[None, :] >= 0) & (b_index[None, :] < num_b[:, None])
        scores.append(score.masked_fill(~valid, float("-inf")))
        partners.append(b_index.clamp(0, max(nb - 1, 0)).expand(batch, na))
    stacked = torch.stack(scores, dim=-1)
    best = stacked.argmax(dim=-1, keepdim=True)
    best_score = stacked.gather(-1, best).squeeze(-1)
    best_b = torch.stack(partners, dim=-1).gather(-1, best).squeeze(-1)
    a_valid = a_index[None, :] < num_a[:, None]
    return best_score.masked_fill(~a_valid, float("-inf")), best_b


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products ``[B, m]`` of two ``[B, m, D]`` strided views. One einsum per
    clip: a 2-D einsum reads strided rows in place, a batched one copies them first."""
    return torch.stack([torch.einsum("nd,nd->n", a[i], b[i]) for i in range(a.shape[0])])


def dense_best_partners(
    a: torch.Tensor,
    b: torch.Tensor,
    a_norm: torch.Tensor,
    b_norm: torch.Tensor,
    num_a: torch.Tensor,
    num_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner of every A token among all B tokens (Global Merge), in row blocks."""
    batch, na, _ = a.shape
    nb = b.shape[1]
    b_columns = b.transpose(1, 2).contiguous()
    b_valid = torch.arange(nb, device=a.device)[None, None, :] < num_b[:, None, None]
    rows = max(1, DENSE_BLOCK_ELEMENTS // max(batch * nb, 1))
    best_score = torch.full((batch, na), float("-inf"), device=a.device)
    best_b = torch.zeros((batch, na), dtype=torch.long, device=a.device)
    for start in range(0, na if nb else 0, rows):
        block = torch.bmm(a[:, start : start + rows], b_columns)
        block = block / (a_norm[:, start : start + rows, None] * b_norm[:, None, :])
        block = block.masked_fill(~b_valid, float("-inf"))
        index = block.argmax(dim=-1, keepdim=True)
        best_score[:, start : start + rows] = block.gather(-1, index).squeeze(-1)
        best_b[:, start : start + rows] = index.squeeze(-1)
    a_valid = torch.arange(na, device=a.device)[None, :] < num_a[:, None]
    return best_score.masked_fill(~a_valid, float("-inf")), best_b


def best_partners(
    sums: torch.Tensor, length: torch.Tensor, window: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner (score, B index) of every A token of the current sequences."""
    # Dividing dot products by norms avoids writing a normalised copy of every token; the
    # floor makes an all-zero token score 0 instead of NaN.
    norms = torch.linalg.vector_norm(sums, dim=-1).clamp(min=1e-12)
    a, b = sums[:, 0::2], sums[:, 1::2]
    a_norm, b_norm = norms[:, 0::2], norms[:, 1::2]
    num_a, num_b = (length + 1) // 2, length // 2
    if window is None or window >= sums.shape[1]:
        return dense_best_partners(a, b, a_norm, b_norm, num_a, num_b)
    return banded_best_partners(a, b, a_norm, b_norm, num_a, num_b, window)


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
    new positions ``[B, n]`` and the merged edges ``[E, 3]`` (clip, a_pos, b_pos). After the
    last round the features are not needed and come back as None.
    """
    batch, width, dim = sums.shape
    merges = torch.minimum(length - kept, (length + 1) // 2).clamp(min=0)
    best_score, best_b = best_partners(sums, length, window)

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
    key = torch.where(survives, merged_frames / merged_sizes.clamp(min=1), torch.inf)
    order = torch.sort(key, dim=1, stable=True).indices
    new_position = torch.empty_like(order).scatter_(1, order, positions.contiguous())
    to_new = new_position.gather(1, target)

    new_length = length - merges
    new_width = int(new_length.max()) if batch else 0
    keep = order[:, :new_width]
    if not bool((new_length > kept).any()):
        # Last round: the plan needs only the assignment, not the merged features.
        return None, None, None, new_length, to_new, edges
    # Per clip, survivors are gathered in their new order (rows past a clip's length are
    # ignored later), then every merged A row is added onto its B row; unmerged A rows go
    # to a spare last row. Both read the current rows in place: no temporary copies.
    new_sums = sums.new_empty(batch, new_width + 1, dim)
    for clip in range(batch):
        torch.index_select(sums[clip], 0, keep[clip], out=new_sums[clip, :new_width])
        a_target = torch.where(merge_a[clip], to_new[clip, 0::2], new_width)
        new_sums[clip].index_add_(0, a_target, sums[clip, 0::2])
    return (
        new_sums[:, :new_width],
        merged_sizes.gather(1, keep),
        merged_frames.gather(1, keep),
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

    ``window=None`` is Global Merge; an integer w restricts matches to the w nearest B tokens
    on either side in the current sequence, at most 2w − 1 positions away (LTBM). A window
    that covers the whole sequence is the same as none.
    """
    window = check_window(window)
    lengths = check_tokens(tokens, lengths)
    kept = budgets(lengths, keep_ratio)
    batch, width, _ = tokens.shape
    valid = valid_mask(lengths, width)

    sums = tokens.float().contiguous()
    if bool((lengths < width).any()):  # padding may hold anything: zero it once
        sums = sums.masked_fill(~valid[:, :, None], 0.0)
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
    """Local Temporal Bipartite Merging: each A token matches only its ``window`` nearest B
    tokens on either side (positions ±1, ±3, …, ±(2·window − 1))."""
    if window is None:
        raise ValueError("ltbm needs an integer window; use method='global' for no window")
    return bipartite_merge_plan(tokens, lengths, keep_ratio, window)


def global_plan(tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float) -> Plan:
    """Global Merge: the LTBM procedure with every A×B pair allowed."""
    return bipartite_merge_plan(tokens, lengths, keep_ratio, None)
