"""Segment-wise top-K: the clip cut into S equal stretches of time, the best tokens of each kept.

Gibier et al., "Segmentwise Pruning in Audio-Language Models" (arXiv 2511.14293, ICASSP
2026), observed that the tokens an encoder attends to most cluster in time, so a plain top-K
spends its budget on a few moments; keeping the best tokens *per segment* spreads the budget
over the whole clip. They keep ⌊K/S⌋ tokens per segment; here the budget is split so that
every clip keeps exactly K = kept_tokens(n, keep_ratio) tokens (DESIGN §2):

- Segment s of a clip of n valid tokens covers positions [⌊s·n/S⌋, ⌊(s+1)·n/S⌋): lengths
  differ by at most one, and when n < S some segments are empty.
- Segment s is owed K·L_s/n tokens (L_s its length); it gets the floor of that, and the
  K − Σ floors tokens left go one each to the segments with the largest remainders
  (largest-remainder, or Hamilton, apportionment).
  A segment never gets more than its length, and may get none (an empty segment, or a short
  owed share that won no remainder). Segments that tie on the remainder at the cut share
  the extra tokens evenly spread (the centred stride of ``uniform``), so that a budget
  smaller than S still covers the clip.
- Within a segment, the highest scores win; equal scores go to the earlier token.

With S = 1 this is ``prune``'s plan exactly.
"""

from __future__ import annotations

import torch

from ltbm.core.inputs import (
    clip_lengths,
    is_positive_integer,
    kept_per_clip,
    to_device,
    valid_mask,
)
from ltbm.core.plan import NOT_KEPT, Plan, plan_from_slots
from ltbm.methods.pruning import check_scores, token_scores

DEFAULT_SEGMENTS = 10
"""S, the paper's setting for 30 s clips (arXiv 2511.14293)."""


def check_segments(segments: int) -> int:
    """S is a positive integer; anything else is refused with the fix."""
    if not is_positive_integer(segments):
        raise ValueError(
            f"segments must be a positive integer (how many equal stretches of time each clip "
            f"is cut into), got {segments!r}; 1 is plain top-K"
        )
    return int(segments)


def segment_starts(lengths: torch.Tensor, segments: int) -> torch.Tensor:
    """``[B, S + 1]`` long: first position of every segment, then each clip's length."""
    s = torch.arange(segments + 1, device=lengths.device)
    return torch.div(s[None, :] * lengths[:, None], segments, rounding_mode="floor")


def segment_budgets(starts: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` long: tokens kept from each segment (``starts``: :func:`segment_starts`),
    summing to ``kept`` per clip.

    Largest remainder on the shares K·L_s/n, in exact integer arithmetic: the floors first,
    then one more token for each of the K − Σ floors segments with the largest remainders.
    Where segments tie on the remainder at the cut, the extra tokens are spread evenly over
    the tied segments (the centred stride :func:`spread_picks`), not given to the first ones:
    with equal segments every remainder ties, and K < S would otherwise keep only the start
    of the clip."""
    segments = starts.shape[1] - 1
    seg_lengths = starts[:, 1:] - starts[:, :-1]
    owed = kept[:, None] * seg_lengths
    n = starts[:, -1:].clamp(min=1)
    base = torch.div(owed, n, rounding_mode="floor")
    remainder = owed - base * n
    left = kept - base.sum(1)
    # The remainder at the cut: the left-th largest (none when nothing is left over).
    ranked = torch.sort(remainder, dim=1, descending=True).values
    cut = ranked.gather(1, (left - 1).clamp(min=0)[:, None])
    above = (remainder > cut) & (left[:, None] > 0)
    tied = (remainder == cut) & (left[:, None] > 0)
    extra_tied = left - above.sum(1)
    tied_rank = tied.long().cumsum(1) - 1
    chosen = spread_picks(tied.sum(1), extra_tied, segments)
    return base + above.long() + (tied & chosen.gather(1, tied_rank.clamp(min=0))).long()


def spread_picks(count: torch.Tensor, picks: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` bool: which of ``count`` items (ranks 0 … count − 1) get one of
    ``picks`` ≤ count, evenly spread: ranks ⌊(2i + 1)·count / (2·picks)⌋ for i < picks (the
    stride ``uniform`` keeps tokens by)."""
    i = torch.arange(width, device=count.device)[None, :]
    stride = 2 * picks.clamp(min=1)[:, None]
    rank = torch.div((2 * i + 1) * count[:, None], stride, rounding_mode="floor")
    target = torch.where(i < picks[:, None], rank, width)
    out = torch.zeros(count.shape[0], width + 1, dtype=torch.bool, device=count.device)
    return out.scatter_(1, target, True)[:, :width]


def segment_ids(starts: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` long: the segment of every position (``starts``: :func:`segment_starts`);
    S for padding."""
    positions = torch.arange(width, device=starts.device).expand(starts.shape[0], width)
    return torch.searchsorted(starts[:, 1:].contiguous(), positions.contiguous(), right=True)


@torch.no_grad()
def segment_topk_plan(
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
    keep_ratio: float,
    segments: int = DEFAULT_SEGMENTS,
    scorer: str = "attention",
    queries: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
) -> Plan:
    """Keep, from each of ``segments`` equal stretches of every clip, its share of the K
    tokens (largest remainder), the highest-scoring ones, in temporal order. ``scorer`` and
    ``queries``/``keys``/``scores`` as in :func:`ltbm.methods.pruning.prune_plan`."""
    segments = check_segments(segments)
    clip = clip_lengths(tokens, lengths)
    lengths, host_kept = clip.on_device, kept_per_clip(clip.host, keep_ratio)
    kept = to_device(host_kept, tokens)
    batch, width, _ = tokens.shape
    if scores is None:
        scores = token_scores(tokens, lengths, scorer, queries, keys)
    else:
        check_scores(scores, tokens, lengths)
    valid = valid_mask(lengths, width)
    starts = segment_starts(lengths, segments)
    seg = segment_ids(starts, width)
    # Order every clip by (segment, score descending, position): two stable sorts.
    by_score = torch.sort(
        scores.float().masked_fill(~valid, float("-inf")), dim=1, descending=True, stable=True
    ).indices
    by_segment = torch.sort(seg.gather(1, by_score), dim=1, stable=True).indices
    order = by_score.gather(1, by_segment)
    # The rank of each token within its segment is its place in that order minus the
    # segment's first place (segments keep their positions' count, so it is their start;
    # padding, "segment" S, starts at the clip's length).
    allowed = torch.cat([segment_budgets(starts, kept), kept.new_zeros(batch, 1)], 1)
    seg_sorted = seg.gather(1, order)
    rank = torch.arange(width, device=tokens.device)[None, :] - starts.gather(1, seg_sorted)
    keep_sorted = (rank < allowed.gather(1, seg_sorted)) & (seg_sorted < segments)
    keep = torch.zeros_like(valid).scatter_(1, order, keep_sorted)
    slot_index = torch.where(keep, keep.long().cumsum(1) - 1, NOT_KEPT)
    return plan_from_slots(slot_index, kept, None, host_kept, host_kept)  # K kept, one each
