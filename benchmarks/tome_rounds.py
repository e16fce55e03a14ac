"""ToMe applied in rounds: the reference Global Merge is timed against.

Written for this benchmark from the algorithm of Bolya et al., "Token Merging: Your ViT but
Faster" (ICLR 2023), as their paper and reference implementation describe it: bipartite
soft matching (cosine similarity of L2-normalised tokens, A = even and B = odd positions,
every A token's best B partner from the full A×B matrix, the r best edges merge) followed by
a size-weighted merge (features scaled by their size, summed into their partner, divided by
the summed sizes). ToMe removes r tokens per transformer layer; here the round is repeated
on the merged sequence until K tokens remain, with r = min(n − K, |A|) as in ``global``.
Like the original, it keeps no temporal order (unmerged A tokens first, then B) and has no
padding: every clip in the batch has the same length.
"""

from __future__ import annotations

import torch


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, ...]:
    """Indices of one matching step on ``metric [B, n, D]``: unmerged A rows, merged A rows
    and, for each merged A row, its B partner."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, 0::2], metric[:, 1::2]
    scores = a @ b.transpose(1, 2)
    best_score, best_b = scores.max(dim=-1)
    ranked = best_score.argsort(dim=-1, descending=True)
    merged_a, unmerged_a = ranked[:, :r], ranked[:, r:]
    partner = best_b.gather(1, merged_a)
    return unmerged_a, merged_a, partner


def merge_sum(x: torch.Tensor, unmerged_a, merged_a, partner) -> torch.Tensor:
    """Sum every merged A row into its B partner; unmerged A rows come first, then B."""
    a, b = x[:, 0::2], x[:, 1::2]
    features = x.shape[-1]
    kept_a = a.gather(1, unmerged_a[..., None].expand(-1, -1, features))
    moved = a.gather(1, merged_a[..., None].expand(-1, -1, features))
    b = b.scatter_reduce(1, partner[..., None].expand(-1, -1, features), moved, reduce="sum")
    return torch.cat([kept_a, b], dim=1)


@torch.no_grad()
def tome_rounds(tokens: torch.Tensor, kept: int) -> torch.Tensor:
    """Merge ``tokens [B, N, D]`` down to ``kept`` tokens per clip with size-weighted ToMe
    steps; returns the merged features ``[B, kept, D]`` in the input's dtype."""
    x = tokens.float()
    size = torch.ones(*x.shape[:2], 1, dtype=x.dtype)
    while x.shape[1] > kept:
        n = x.shape[1]
        r = min(n - kept, (n + 1) // 2)
        indices = bipartite_soft_matching(x, r)
        # Size-weighted mean: merge x·size and size by summing, then divide.
        weighted = merge_sum(x * size, *indices)
        size = merge_sum(size, *indices)
        x = weighted / size
    return x.to(tokens.dtype)
