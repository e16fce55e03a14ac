"""Floor baselines that keep K tokens chosen without looking at them."""

from __future__ import annotations

import torch

from ltbm.core.inputs import budgets, check_tokens
from ltbm.core.plan import Plan
from ltbm.methods.selection import selection_plan


@torch.no_grad()
def uniform_plan(tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float) -> Plan:
    """Keep every (N/K)-th token, centred in its stride: index ⌊(2j + 1)·N / 2K⌋."""
    lengths = check_tokens(tokens, lengths)
    kept = budgets(lengths, keep_ratio)
    width = int(kept.max()) if kept.numel() else 0
    slots = torch.arange(width, device=tokens.device)[None, :]
    chosen = torch.div(
        (2 * slots + 1) * lengths[:, None], 2 * kept.clamp(min=1)[:, None], rounding_mode="floor"
    )
    return selection_plan(chosen, kept, tokens.shape[1])


@torch.no_grad()
def random_plan(
    tokens: torch.Tensor, lengths: torch.Tensor | None, keep_ratio: float, seed: int = 0
) -> Plan:
    """Keep K tokens drawn at random. Each clip draws from its own generator seeded with
    ``seed``, so a clip's choice does not depend on what else is in the batch."""
    lengths = check_tokens(tokens, lengths)
    kept = budgets(lengths, keep_ratio)
    width = int(kept.max()) if kept.numel() else 0
    chosen = torch.zeros((len(lengths), width), dtype=torch.long)
    for clip, (length, k) in enumerate(zip(lengths.tolist(), kept.tolist(), strict=True)):
        generator = torch.Generator().manual_seed(int(seed))
        chosen[clip, :k] = torch.randperm(length, generator=generator)[:k].sort().values
    return selection_plan(chosen.to(tokens.device), kept, tokens.shape[1])
