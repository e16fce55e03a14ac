"""Weights of the frames inside a merged token: all equal (size) or the encoder's attention.

A merged token is the weighted mean of its source frames (``Plan.apply``). With ``"size"``
every frame weighs one, so the token is their plain mean. With ``"attention"`` a frame
weighs the attention it receives in the encoder's last layer (the scorer of ``prune``),
so the frames the encoder itself leans on dominate the merged token (SA-MAP's
attention-guided aggregation). Which frames merge is decided elsewhere; only the weights
change.
"""

from __future__ import annotations

import torch

from ltbm.core.inputs import valid_mask
from ltbm.core.plan import Plan
from ltbm.methods.pruning import check_scores, token_scores

WEIGHTINGS = ("size", "attention")

MIN_ATTENTION_WEIGHT = 1e-6
"""Floor of an attention weight, relative to its clip's mean weight: a frame whose received
attention underflowed to zero still counts a little, so no merged token has weight zero."""


def check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(
            f"unknown weighting {weighting!r}; choose 'size' (the plain mean of the merged "
            "frames) or 'attention' (weighted by the attention each frame receives in the "
            "encoder's last layer)"
        )
    return weighting


def attention_weights(
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    queries: torch.Tensor | None,
    keys: torch.Tensor | None,
    method: str,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, N]`` float32: each valid token's received attention over its clip's mean (so
    weights average one), floored at :data:`MIN_ATTENTION_WEIGHT`; zero on padding. The
    attention comes from the last layer's ``queries``/``keys``, or from ``scores``, the
    received attention a backbone computed itself (Audio Flamingo 3, per window)."""
    valid = valid_mask(lengths, tokens.shape[1])
    if scores is not None:
        check_scores(scores, tokens, lengths)
        if bool(((scores < 0) & valid).any()):  # a mask, not a boolean index: one read
            raise ValueError("attention scores must not be negative (they weigh frames)")
    elif queries is None or keys is None:
        raise ValueError(
            f"{method} with weighting='attention' needs the encoder's last-layer queries and "
            "keys (queries=q, keys=k; a backbone adapter supplies them) or its received "
            "attention (scores=s). Use weighting='size' where attention is not reachable"
        )
    else:
        scores = token_scores(tokens, lengths, "attention", queries, keys)
    scores = torch.where(valid, scores.float(), 0.0)
    mean = scores.sum(1) / lengths.clamp(min=1)
    weights = scores / mean.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return torch.where(valid, weights.clamp(min=MIN_ATTENTION_WEIGHT), 0.0)


def reweighted(plan: Plan, weights: torch.Tensor) -> Plan:
    """The same assignment with each kept source weighing ``weights`` (``[B, N]``). A slot
    of one source keeps weight one: its mean is the source whatever the weight, and a plan
    whose slots all hold one source stays a selection (``apply`` copies it, bit for bit)."""
    kept = plan.slot_index >= 0
    alone = plan.sizes.gather(1, plan.slot_index.clamp(min=0)) == 1 if plan.num_slots else kept
    new = torch.where(kept, torch.where(alone, 1.0, weights.float()), 0.0)
    return Plan(plan.slot_index, new, plan.kept, plan.history, plan.host)  # K still holds
