"""Fixed average pooling: content-agnostic groups of consecutive tokens."""

from __future__ import annotations

import torch

from ltbm.core.inputs import budgets, check_tokens, valid_mask
from ltbm.core.plan import NOT_KEPT, Plan, plan_from_slots


@torch.no_grad()
def pool_plan(tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float) -> Plan:
    """Average consecutive tokens into K groups of ⌈N/K⌉ or ⌊N/K⌋ (source i → slot ⌊iK/N⌋)."""
    lengths = check_tokens(tokens, lengths)
    kept = budgets(lengths, keep_ratio)
    width = tokens.shape[1]
    positions = torch.arange(width, device=tokens.device)[None, :]
    slot = torch.div(
        positions * kept[:, None], lengths.clamp(min=1)[:, None], rounding_mode="floor"
    )
    slot_index = torch.where(valid_mask(lengths, width), slot, NOT_KEPT)
    return plan_from_slots(slot_index, kept)
