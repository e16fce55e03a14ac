"""Fixed average pooling: content-agnostic groups of consecutive tokens."""

from __future__ import annotations

import torch

from ltbm.core.inputs import clip_lengths, kept_per_clip, to_device, valid_mask
from ltbm.core.plan import NOT_KEPT, Plan, plan_from_slots


@torch.no_grad()
def pool_plan(tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float) -> Plan:
    """Average consecutive tokens into K groups of ⌈N/K⌉ or ⌊N/K⌋ (source i → slot ⌊iK/N⌋)."""
    clip = clip_lengths(tokens, lengths)
    lengths, host_kept = clip.on_device, kept_per_clip(clip.host, keep_ratio)
    kept = to_device(host_kept, tokens)
    width = tokens.shape[1]
    positions = torch.arange(width, device=tokens.device)[None, :]
    slot = torch.div(
        positions * kept[:, None], lengths.clamp(min=1)[:, None], rounding_mode="floor"
    )
    slot_index = torch.where(valid_mask(lengths, width), slot, NOT_KEPT)
    return plan_from_slots(slot_index, kept, None, host_kept, clip.host)
