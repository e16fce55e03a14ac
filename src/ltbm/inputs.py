"""Checks on what users hand to a method, with messages that say how to fix the input."""

from __future__ import annotations

import torch

from ltbm.budget import check_keep_ratio, kept_tokens

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tokens(tokens: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Validate ``tokens [B, N, D]`` and ``lengths [B]``; return lengths as a long tensor on
    the tokens' device (all N when ``lengths`` is None)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor [B, N, D], got {type(tokens).__name__}")
    if tokens.dim() != 3:
        hint = " (add a batch dimension: tokens[None])" if tokens.dim() == 2 else ""
        raise ValueError(
            f"tokens must have shape [batch, tokens, features], got {tokens.dim()}-D shape "
            f"{list(tokens.shape)}{hint}"
        )
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"tokens must be floating point (float32, float16, bfloat16), got {tokens.dtype}"
        )
    batch, width, _ = tokens.shape
    if lengths is None:
        lengths = torch.full((batch,), width, dtype=torch.long, device=tokens.device)
    else:
        lengths = torch.as_tensor(lengths, device=tokens.device)
        if lengths.dim() != 1 or lengths.shape[0] != batch:
            raise ValueError(
                f"lengths must be a 1-D tensor with one valid length per clip ({batch}), got "
                f"shape {list(lengths.shape)}"
            )
        if lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got {lengths.dtype}")
        lengths = lengths.long()
        if bool((lengths < 0).any()) or bool((lengths > width).any()):
            raise ValueError(
                f"lengths must lie in [0, {width}] (the tokens tensor has {width} positions), "
                f"got {lengths.tolist()}"
            )
    bad = non_finite_clips(tokens, lengths)
    if bad:
        raise ValueError(
            f"tokens hold NaN or Inf in the valid positions of clips {bad}; check the encoder "
            "output (float16 overflow is a common cause: run the encoder in bfloat16 or float32)"
        )
    return lengths


def non_finite_clips(tokens: torch.Tensor, lengths: torch.Tensor) -> list[int]:
    """Clips whose valid tokens hold NaN or ±Inf. The extremes of a slice are NaN or infinite
    exactly when some element is, and computing them reads the data once without a copy."""
    bad = []
    for clip, length in enumerate(lengths.tolist()):
        if length == 0:
            continue
        valid = tokens[clip, :length]
        extremes = torch.stack([valid.amax(), valid.amin()])
        if not bool(torch.isfinite(extremes).all()):
            bad.append(clip)
    return bad


def valid_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` bool: True at positions below each clip's length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def budgets(lengths: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """K per clip, from the one budget rule."""
    check_keep_ratio(keep_ratio)
    return torch.tensor(
        [kept_tokens(int(n), keep_ratio) for n in lengths.tolist()],
        dtype=torch.long,
        device=lengths.device,
    )


def check_window(window: int | None) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(
            f"window must be a positive integer (how many positions apart two tokens may be "
            f"and still merge), got {window!r}; use method='global' for no window"
        )
    return int(window)
