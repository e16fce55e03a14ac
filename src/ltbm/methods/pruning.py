"""Score-based pruning: keep the K highest-scoring tokens, in temporal order."""

from __future__ import annotations

import math

import torch

from ltbm.core.inputs import clip_lengths, kept_per_clip, to_device, valid_mask, working_dtype
from ltbm.core.plan import Plan
from ltbm.methods.selection import selection_plan, top_scoring

SCORERS = ("attention", "norm")
UNDERFLOW_NORM = 2.0**-60
"""Below this norm, squares of the elements may have underflowed: recompute the row scaled."""
BLOCK_ELEMENTS = 1 << 24
"""Attention probabilities held at once (64 MiB of float32), whatever batch and heads."""


@torch.no_grad()
def attention_received(
    queries: torch.Tensor, keys: torch.Tensor, frame_lengths: torch.Tensor
) -> torch.Tensor:
    """Mean attention each key frame receives: softmax(QKᵀ/√d) over valid keys, averaged over
    heads and valid queries. ``queries``/``keys`` are ``[B, H, F, d]`` from the encoder's last
    layer; computed in query blocks so the F×F matrix is never held whole."""
    check_attention_inputs(queries, keys, frame_lengths)
    batch, heads, frames, head_dim = keys.shape
    key_valid = valid_mask(frame_lengths, frames)
    received = torch.zeros(batch, frames, dtype=torch.float32, device=keys.device)
    scale = 1.0 / math.sqrt(head_dim)
    keys_t = keys.float().transpose(-1, -2)
    block = max(1, BLOCK_ELEMENTS // max(batch * heads * frames, 1))
    for start in range(0, frames, block):
        q = queries[:, :, start : start + block].float()
        logits = torch.matmul(q, keys_t) * scale
        logits = logits.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        query_valid = key_valid[:, start : start + block]
        probs = probs * query_valid[:, None, :, None]
        received += probs.sum(dim=(1, 2))
    return received / (heads * frame_lengths.clamp(min=1)[:, None])


def feature_norms(tokens: torch.Tensor) -> torch.Tensor:
    """L2 norm of every token in the working precision. Where the sum of squares overflows
    or underflows (finite tokens near the ends of the dtype's range), the row is divided by
    its largest magnitude first, so the ranking does not depend on the tokens' scale."""
    norms = torch.linalg.vector_norm(tokens, dim=-1, dtype=working_dtype(tokens.dtype))
    extreme = torch.isinf(norms) | (norms < UNDERFLOW_NORM)
    if bool(extreme.any()):
        rows = tokens[extreme].to(norms.dtype)
        largest = rows.abs().amax(dim=-1, keepdim=True)
        unit = rows / torch.where(largest > 0, largest, 1.0)
        norms[extreme] = torch.linalg.vector_norm(unit, dim=-1) * largest[:, 0]
    return norms


def pool_frames_to_tokens(frame_scores: torch.Tensor, width: int) -> torch.Tensor:
    """Average frame scores over the encoder's own pooling (e.g. 1500 frames → 750 tokens)."""
    frames = frame_scores.shape[1]
    if frames == width:
        return frame_scores
    if frames % width:
        raise ValueError(
            f"attention covers {frames} frames but there are {width} tokens; frames must be "
            "a whole multiple of tokens (the encoder's pooling factor)"
        )
    return frame_scores.reshape(frame_scores.shape[0], width, frames // width).mean(-1)


@torch.no_grad()
def prune_plan(
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
    keep_ratio: float,
    scorer: str = "norm",
    queries: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
) -> Plan:
    """Keep the K highest-scoring tokens. ``scorer="norm"`` scores by feature L2 norm;
    ``scorer="attention"`` by attention received in the encoder's last layer, from the
    ``queries``/``keys`` that layer computed (a backbone adapter captures them). ``scores``
    ``[B, N]`` overrides both with the caller's own."""
    clip = clip_lengths(tokens, lengths)
    lengths, host_kept = clip.on_device, kept_per_clip(clip.host, keep_ratio)
    kept = to_device(host_kept, tokens)
    width = tokens.shape[1]
    if scores is None:
        scores = token_scores(tokens, lengths, scorer, queries, keys)
    else:
        check_scores(scores, tokens, lengths)
    chosen = top_scoring(scores, valid_mask(lengths, width), kept, max(host_kept, default=0))
    return selection_plan(chosen, kept, width, host_kept)


def check_scores(scores: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> None:
    """Caller-given scores: a real-valued ``[B, N]`` tensor without NaN at valid positions
    (a NaN would rank nowhere and silently keep the first K tokens)."""
    if not isinstance(scores, torch.Tensor) or scores.is_meta:
        raise TypeError(f"scores must be a [B, N] tensor with data, got {type(scores).__name__}")
    if scores.shape != tokens.shape[:2]:
        raise ValueError(
            f"scores must be [B, N] = {list(tokens.shape[:2])}, got {list(scores.shape)}"
        )
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"scores must be real numbers, got {scores.dtype}")
    valid = valid_mask(lengths.to(scores.device), scores.shape[1])
    if bool((torch.isnan(scores.float()) & valid).any()):
        raise ValueError("scores hold NaN at valid positions; give every valid token a score")


def check_attention_inputs(queries: torch.Tensor, keys: torch.Tensor, frame_lengths) -> None:
    """Queries and keys: same ``[B, H, F, d]`` shape, data, finite on the valid frames (a NaN
    would turn every attention weight of its clip into NaN, then into zero scores)."""
    for name, value in (("queries", queries), ("keys", keys)):
        if not isinstance(value, torch.Tensor) or value.is_meta or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor with data [B, heads, F, d]")
    if queries.shape != keys.shape or queries.dim() != 4:
        raise ValueError(
            "attention scoring needs queries and keys of the same shape [B, heads, frames, "
            f"head_dim], got {list(queries.shape)} and {list(keys.shape)}"
        )
    if keys.shape[0] != frame_lengths.shape[0]:
        raise ValueError(
            f"queries and keys have batch size {keys.shape[0]} but the tokens have "
            f"{frame_lengths.shape[0]}; pass the last-layer queries and keys of the same batch "
            "[B, heads, frames, head_dim]"
        )
    # One read of the device for every clip: which clips hold a non-finite valid frame.
    valid = valid_mask(frame_lengths.to(keys.device), keys.shape[2])
    flags = torch.stack(
        [(~torch.isfinite(v).all(dim=(1, 3)) & valid).any(dim=1) for v in (queries, keys)]
    )
    for name, bad in zip(("queries", "keys"), flags.tolist(), strict=True):
        if any(bad):
            raise ValueError(
                f"{name} hold NaN or Inf in the valid frames of clip {bad.index(True)}; check "
                "the encoder's last attention layer (float16 overflow is a common cause)"
            )


def token_scores(
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    scorer: str,
    queries: torch.Tensor | None,
    keys: torch.Tensor | None,
) -> torch.Tensor:
    """Importance score of every token under the named scorer."""
    if scorer == "norm":
        return feature_norms(tokens)
    if scorer == "attention":
        if queries is None or keys is None:
            raise ValueError(
                "scorer='attention' needs the encoder's last-layer queries and keys "
                "(prune_plan(..., queries=q, keys=k)); a backbone adapter supplies them. "
                "Use scorer='norm' when attention is not reachable"
            )
        factor = keys.shape[2] // max(tokens.shape[1], 1)
        frame_scores = attention_received(queries, keys, lengths * max(factor, 1))
        return pool_frames_to_tokens(frame_scores, tokens.shape[1])
    raise ValueError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
