"""Checks on what users hand to a method, with messages that say how to fix the input."""

from __future__ import annotations

import numbers

import torch

from ltbm.core.budget import check_keep_ratio, kept_tokens

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tokens(
    tokens: torch.Tensor, lengths: torch.Tensor | None, check_finite: bool = True
) -> torch.Tensor:
    """Validate ``tokens [B, N, D]`` and ``lengths [B]``; return lengths as a long tensor on
    the tokens' device (all N when ``lengths`` is None). ``check_finite=False`` skips the
    NaN/Inf check for a caller that folds it into a pass it makes anyway (the merge kernel
    checks the row norms it computes, see :func:`refuse_non_finite`)."""
    check_token_tensor(tokens)
    batch, width, _ = tokens.shape
    if lengths is None:
        lengths = torch.full((batch,), width, dtype=torch.long, device=tokens.device)
    else:
        lengths = _as_length_tensor(lengths, batch, tokens.device)
        if lengths.dim() != 1 or lengths.shape[0] != batch:
            raise ValueError(
                f"lengths must be a 1-D tensor with one valid length per clip ({batch}), got "
                f"shape {list(lengths.shape)}"
            )
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got {lengths.dtype}")
        lengths = lengths.long()
        if bool((lengths < 0).any()) or bool((lengths > width).any()):
            raise ValueError(
                f"lengths must lie in [0, {width}] (the tokens tensor has {width} positions), "
                f"got {lengths.tolist()}"
            )
    if check_finite:
        refuse_non_finite(tokens, lengths)
    return lengths


def _as_length_tensor(lengths, batch: int, device: torch.device) -> torch.Tensor:
    """``lengths`` as a tensor, or a TypeError naming what was given: text such as "300"
    is not a length (torch's own error speaks of an invalid data type)."""
    hint = (
        f"lengths must be a 1-D tensor (or list) of integers, one valid length per clip "
        f"({batch}), e.g. torch.tensor([750, 512]); got"
    )
    if isinstance(lengths, (str, bytes)):
        raise TypeError(f"{hint} the text {lengths!r}")
    try:
        return torch.as_tensor(lengths, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{hint} {type(lengths).__name__} {lengths!r:.60}") from None


def check_token_tensor(tokens: torch.Tensor) -> None:
    """Refuse what no method can compress: not a dense floating-point ``[B, N, D]`` tensor
    with data and at least one feature."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor [B, N, D], got {type(tokens).__name__}")
    if tokens.is_meta:
        raise ValueError(
            "tokens are on the meta device (a shape without data); run the encoder with real "
            "weights on a real device (cpu, cuda) before compressing"
        )
    if tokens.layout != torch.strided:
        raise TypeError(
            f"tokens must be a dense tensor, got layout {tokens.layout}; call .to_dense()"
        )
    if tokens.dim() != 3:
        hint = " (add a batch dimension: tokens[None])" if tokens.dim() == 2 else ""
        raise ValueError(
            f"tokens must have shape [batch, tokens, features], got {tokens.dim()}-D shape "
            f"{list(tokens.shape)}{hint}"
        )
    if tokens.dtype not in FLOAT_DTYPES:
        raise TypeError(
            "tokens must be floating point (float32, float16, bfloat16 or float64), got "
            f"{tokens.dtype}"
        )
    if tokens.shape[2] == 0:
        raise ValueError(
            f"tokens have no features (shape {list(tokens.shape)}, D = 0): similarity needs at "
            "least one feature per token; pass the encoder's output [B, N, D] with D >= 1"
        )


def refuse_non_finite(tokens: torch.Tensor, lengths: torch.Tensor) -> None:
    """Raise if the valid tokens of any clip hold NaN or ±Inf."""
    bad = non_finite_clips(tokens, lengths)
    if bad:
        raise ValueError(
            f"tokens hold NaN or Inf in the valid positions of clips {bad}; check the audio "
            "fed to the encoder (NaN or Inf samples pass through it) and the encoder's output "
            "(in float16 it can overflow: run the encoder in bfloat16 or float32)"
        )


def non_finite_clips(tokens: torch.Tensor, lengths: torch.Tensor) -> list[int]:
    """Clips whose valid tokens hold NaN or ±Inf. A clip's sum is finite whenever all its
    elements are (NaN and ±Inf propagate); a non-finite sum may also be an overflow of
    finite values, so only then are the clip's extremes read, which are NaN or infinite
    exactly when some element is. One read of the data in the usual case, no copy."""
    bad = []
    for clip, length in enumerate(lengths.tolist()):
        if length == 0:
            continue
        valid = tokens[clip, :length]
        if bool(torch.isfinite(valid.sum(dtype=working_dtype(valid.dtype)))):
            continue
        extremes = torch.stack([valid.amax(), valid.amin()])
        if not bool(torch.isfinite(extremes).all()):
            bad.append(clip)
    return bad


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision methods compute in: float64 for float64 tokens (nothing is lost),
    float32 for everything else (half precision is widened, exactly)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    """A window is a positive integer (or None for no window); anything else is refused."""
    if window is None:
        return None
    integral = isinstance(window, numbers.Integral) or (
        isinstance(window, float) and window.is_integer()
    )
    if isinstance(window, bool) or not integral or window < 1:
        raise ValueError(
            f"window must be a positive integer (how many B tokens on each side an A token "
            f"may merge with), got {window!r}; use method='global' for no window"
        )
    return int(window)


def check_seed(seed: int) -> int:
    """A seed is a non-negative integer below 2**63: a float such as 1.7 (silently 1) or a
    bool would make two different settings share one random draw."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return int(seed)
