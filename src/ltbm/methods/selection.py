"""Plans that keep K of the source tokens as they are (pruning and sampling)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ltbm.core.plan import NOT_KEPT, Plan, plan_from_slots


def selection_plan(
    chosen: torch.Tensor, kept: torch.Tensor, width: int, host_kept: Sequence[int] | None = None
) -> Plan:
    """Plan that keeps ``chosen [B, K_max]`` source indices (ascending within each clip's
    first K entries; entries past K are ignored) as slots 0..K-1. ``host_kept``: K as Python
    integers, when known (the plan is then applied without reading the device)."""
    batch, slots = chosen.shape
    slot_index = torch.full((batch, width + 1), NOT_KEPT, dtype=torch.long, device=chosen.device)
    slot_ids = torch.arange(slots, device=chosen.device).expand(batch, slots)
    in_budget = slot_ids < kept[:, None]
    target = torch.where(in_budget, chosen, width)  # slots past K write to a dump column
    slot_index.scatter_(1, target, torch.where(in_budget, slot_ids, NOT_KEPT))
    return plan_from_slots(slot_index[:, :width], kept, None, host_kept, host_kept)


def top_scoring(
    scores: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor, width: int | None = None
) -> torch.Tensor:
    """Indices of the K highest scores of each clip, in temporal order; ties go to the
    earlier token, padding is never chosen. ``width``: the largest K, when known on the
    host."""
    masked = scores.float().masked_fill(~valid, float("-inf"))
    ranked = torch.sort(masked, dim=1, descending=True, stable=True).indices
    if width is None:
        width = int(kept.max()) if kept.numel() else 0
    best = ranked[:, :width]
    # Keep temporal order among the first K; entries past K sort to the end.
    slot_ids = torch.arange(width, device=scores.device)[None, :]
    key = torch.where(slot_ids < kept[:, None], best, scores.shape[1])
    return torch.sort(key, dim=1).values.clamp(max=max(scores.shape[1] - 1, 0))
