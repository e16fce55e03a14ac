"""Adaptive merging of similar neighbours, then a diverse choice of K merged tokens.

In the spirit of SA-MAP (Similarity-Attention driven Merging And Pruning, 2026): speech
holds runs of near-identical frames, so merge those first (keeping what they say), then
drop the merged tokens that repeat others (keeping the variety). Per clip of n valid
tokens and budget K = kept_tokens(n, keep_ratio):

1. **Runs.** Scan the clip in time: a run starts at the first token; each next token joins
   the current run when its cosine similarity to the run's weighted mean is at least
   ``threshold``, and starts a new run otherwise. The mean is size-weighted (every frame one)
   or attention-weighted (:mod:`ltbm.methods.weighting`). The scan is sequential in time,
   batched over clips, with no host synchronisation.
2. **Too few runs** (R < K): the K − R joins with the lowest similarity are undone (ties:
   the earlier token), leaving exactly K runs, all kept. At keep ratio 1 every join is
   undone: the identity.
3. **Enough runs** (R ≥ K): K runs are chosen by greedy max-min diversity on the cosine
   similarity of their means: first the run of largest weight (most frames, or most
   attention; ties: the earlier run), then again and again the run whose highest similarity
   to the runs chosen so far is lowest (ties: the earlier run). Sequential in K, batched
   over clips.

The chosen runs become the K slots in temporal order; the others are dropped. So a slot is
a union of consecutive sources and sizes sum to the sources of the kept runs: at least K,
at most n (n exactly when R ≤ K).
"""

from __future__ import annotations

import math
import numbers

import torch

from ltbm.core.inputs import clip_lengths, kept_per_clip, to_device, valid_mask, working_dtype
from ltbm.core.plan import NOT_KEPT, Plan, plan_from_slots
from ltbm.core.scaling import times_power_of_two, unit_exponents
from ltbm.methods.weighting import attention_weights, check_weighting, reweighted

DEFAULT_THRESHOLD = 0.9
"""Cosine similarity a token needs with its run's mean to join it (see the design notes:
chosen on Whisper tiny.en frames of real speech; SA-MAP's code reads its threshold from the
environment and publishes no default)."""


def check_threshold(threshold: float) -> float:
    """A cosine similarity: a real number in [-1, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ValueError(f"threshold must be a number in [-1, 1], got {threshold!r}")
    value = float(threshold)
    if math.isnan(value) or not -1.0 <= value <= 1.0:
        raise ValueError(
            f"threshold must be a cosine similarity in [-1, 1] (a token joins its run at "
            f"or above it), got {threshold!r}; e.g. 0.9"
        )
    return value


def time_major(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A working copy ``[N, B, D]`` (float32, or float64 for float64 tokens; time first, so
    each step of the scan reads one contiguous block) with padding zeroed and each clip
    scaled by a power of two (exactly) so its largest magnitude lies in [0.5, 1): sums of a
    run cannot overflow, and the plan does not depend on the tokens' scale."""
    batch, width, dim = tokens.shape
    x = torch.empty((width, batch, dim), dtype=working_dtype(tokens.dtype), device=tokens.device)
    x.copy_(tokens.transpose(0, 1))
    x.masked_fill_(~valid_mask(lengths, width).T[:, :, None], 0.0)
    largest = x.abs().amax(dim=(0, 2)) if x.numel() else x.new_zeros(batch)
    return times_power_of_two(x, -unit_exponents(largest)[None, :, None])


def scan_runs(
    x: torch.Tensor, weights: torch.Tensor | None, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequential scan over ``x [N, B, D]``: ``similarity [B, N]``, each token's cosine
    similarity to the run before it (-inf at position 0: always a start), and ``totals
    [N, B, D]``, the weighted sum of the run so far at every position (at a run's last
    token: the whole run's). A handful of small operations per step, none waiting on the
    host."""
    width, batch, _ = x.shape
    weighted = x if weights is None else x * weights.T[:, :, None].to(x.dtype)
    norms = torch.linalg.vector_norm(x, dim=-1)
    similarity = torch.full((width, batch), -math.inf, dtype=x.dtype, device=x.device)
    totals = torch.empty_like(x)
    if width == 0:
        return similarity.T, totals
    tiny = torch.finfo(x.dtype).tiny
    totals[0] = weighted[0]
    for t in range(1, width):
        total = totals[t - 1]
        dot = torch.linalg.vecdot(total, x[t])
        scale = torch.linalg.vector_norm(total, dim=-1).mul_(norms[t]).clamp_(min=tiny)
        join = torch.div(dot, scale, out=similarity[t]).ge(threshold).to(x.dtype)
        torch.addcmul(weighted[t], total, join.unsqueeze_(1), out=totals[t])
    return similarity.T, totals


def run_starts(
    similarity: torch.Tensor, threshold: float, lengths: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """``[B, N]`` bool: the first token of every run, after undoing the weakest joins of
    clips with fewer runs than K (lowest similarity first, ties: the earlier token)."""
    valid = valid_mask(lengths, similarity.shape[1])
    starts = valid & (similarity < threshold)  # position 0 holds -inf: always a start
    missing = (kept - starts.sum(1)).clamp(min=0)
    joins = torch.where(valid & ~starts, similarity, math.inf)
    order = torch.sort(joins, dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return starts | (valid & ~starts & (rank < missing[:, None]))


def max_min_pick(
    units: torch.Tensor, mass: torch.Tensor, runs: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """``[B, R]`` bool: K of each clip's R runs by greedy max-min diversity (clips with
    R ≤ K keep all). ``units [B, R, D]`` are the runs' unit mean vectors, ``mass [B, R]``
    their weights; the seed is the heaviest run, ties to the earlier one everywhere."""
    batch, width, dim = units.shape
    exists = torch.arange(width, device=units.device)[None, :] < runs[:, None]
    chosen = torch.zeros(batch, width + 1, dtype=torch.bool, device=units.device)
    chosen[:, :width] = exists & (runs <= kept)[:, None]
    choosing = runs > kept
    steps = int(torch.where(choosing, kept, 0).max()) if batch else 0
    if steps == 0:
        return chosen[:, :width]
    pick = mass.masked_fill(~exists, -math.inf).argmax(1)
    closest = torch.full((batch, width), -math.inf, dtype=units.dtype, device=units.device)
    dump = torch.full_like(pick, width)
    for step in range(steps):
        active = choosing & (step < kept)
        chosen.scatter_(1, torch.where(active, pick, dump)[:, None], True)
        if step + 1 == steps:
            break
        picked = units[torch.arange(batch, device=units.device), pick][:, :, None]
        closest = torch.maximum(closest, torch.bmm(units, picked)[:, :, 0])
        taken = chosen[:, :width] | ~exists
        pick = closest.masked_fill(taken, math.inf).argmin(1)
    return chosen[:, :width]


def run_means(
    totals: torch.Tensor, weights: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per run: ``units [B, R, D]`` (its weighted mean, unit length), ``mass [B, R]`` (its
    total weight) and the run id of every source (-1 on padding); R = the most runs.
    ``totals [N, B, D]`` are the scan's, so units and mass hold for the scan's runs; a clip
    whose weakest joins were undone keeps all its runs and never reads them."""
    width, batch, dim = totals.shape
    valid = valid_mask(lengths, width)
    run_id = torch.where(valid, starts.long().cumsum(1) - 1, NOT_KEPT)
    runs = starts.sum(1)
    count = int(runs.max()) if batch and width else 0
    # A run's last token is the one before the next start (or the clip's last token).
    positions = torch.arange(width, device=totals.device).expand(batch, width)
    is_last = valid & torch.cat([starts[:, 1:], torch.ones_like(starts[:, :1])], 1)
    is_last |= positions == (lengths - 1)[:, None]
    last = torch.zeros((batch, count + 1), dtype=torch.long, device=totals.device)
    last.scatter_(1, torch.where(is_last, run_id, count), positions)
    clip = torch.arange(batch, device=totals.device)[:, None]
    sums = totals[last[:, :count], clip]
    units = sums / torch.linalg.vector_norm(sums, dim=-1, keepdim=True).clamp(
        min=torch.finfo(sums.dtype).tiny
    )
    mass = torch.zeros(batch, count + 1, dtype=weights.dtype, device=totals.device)
    mass.scatter_add_(1, torch.where(valid, run_id, count), torch.where(valid, weights, 0.0))
    return units, mass[:, :count], run_id


@torch.no_grad()
def adaptive_diverse_plan(
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
    keep_ratio: float,
    threshold: float = DEFAULT_THRESHOLD,
    weighting: str = "size",
    queries: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
) -> Plan:
    """Plan of ``adaptive_diverse`` (module docstring): merge runs of similar neighbours,
    then keep K runs by max-min diversity, in temporal order. Attention weighting reads the
    last layer's ``queries``/``keys`` or the received attention ``scores``."""
    threshold = check_threshold(threshold)
    weighting = check_weighting(weighting)
    clip = clip_lengths(tokens, lengths)
    lengths, host_kept = clip.on_device, kept_per_clip(clip.host, keep_ratio)
    kept = to_device(host_kept, tokens)
    width = tokens.shape[1]
    attention = weighting == "attention"
    if attention:
        weights = attention_weights(tokens, lengths, queries, keys, "adaptive_diverse", scores)
    else:
        weights = valid_mask(lengths, width).float()
    x = time_major(tokens, lengths)
    similarity, totals = scan_runs(x, weights if attention else None, threshold)
    starts = run_starts(similarity, threshold, lengths, kept)
    units, mass, run_id = run_means(totals, weights.to(x.dtype), starts, lengths)
    chosen = max_min_pick(units, mass, starts.sum(1), kept)
    slot_of_run = torch.where(chosen, chosen.long().cumsum(1) - 1, NOT_KEPT)
    slot_of_run = torch.cat([slot_of_run, slot_of_run.new_full((len(kept), 1), NOT_KEPT)], 1)
    slot_index = slot_of_run.gather(1, torch.where(run_id >= 0, run_id, units.shape[1]))
    plan = plan_from_slots(slot_index, kept, None, host_kept)  # the kept sources vary
    return reweighted(plan, weights) if attention else plan
