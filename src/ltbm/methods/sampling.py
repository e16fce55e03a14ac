"""Floor baselines that keep K tokens chosen without looking at them."""

from __future__ import annotations

import torch

from ltbm.core.inputs import clip_lengths, kept_per_clip, to_device
from ltbm.core.plan import Plan
from ltbm.methods.selection import selection_plan


@torch.no_grad()
def uniform_plan(tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float) -> Plan:
    """Keep every (N/K)-th token, centred in its stride: index ⌊(2j + 1)·N / 2K⌋."""
    clip = clip_lengths(tokens, lengths)
    lengths, host_kept = clip.on_device, kept_per_clip(clip.host, keep_ratio)
    kept = to_device(host_kept, tokens)
    slots = torch.arange(max(host_kept, default=0), device=tokens.device)[None, :]
    chosen = torch.div(
        (2 * slots + 1) * lengths[:, None], 2 * kept.clamp(min=1)[:, None], rounding_mode="floor"
    )
    return selection_plan(chosen, kept, tokens.shape[1], host_kept)


@torch.no_grad()
def random_plan(
    tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float, seed: int = 0
) -> Plan:
    """Keep K tokens drawn at random. Each clip draws from its own generator seeded with
    ``seed``, so a clip's choice does not depend on what else is in the batch."""
    clip_set = clip_lengths(tokens, lengths)
    host_kept = kept_per_clip(clip_set.host, keep_ratio)
    kept = to_device(host_kept, tokens)
    # Drawn on the host (CPU generators), then sent to the device without waiting for it.
    chosen = torch.zeros((len(host_kept), max(host_kept, default=0)), dtype=torch.long)
    for clip, (length, k) in enumerate(zip(clip_set.host, host_kept, strict=True)):
        generator = torch.Generator().manual_seed(int(seed))
        chosen[clip, :k] = torch.randperm(length, generator=generator)[:k].sort().values
    chosen = chosen.to(tokens.device, non_blocking=True)
    return selection_plan(chosen, kept, tokens.shape[1], host_kept)
