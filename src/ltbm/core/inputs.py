"""Checks on what users hand to a method, with messages that say how to fix the input."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ltbm.core.budget import check_keep_ratio, kept_tokens
from ltbm.core.syncs import host_values, is_host_tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ClipLengths(NamedTuple):
    """Valid lengths of a batch: ``on_device``, a long tensor on the tokens' device, and
    ``host``, the same values as Python integers, so that K and every shape that follows
    from the lengths are decided without reading the device."""

    on_device: torch.Tensor
    host: tuple[int, ...]


def clip_lengths(
    tokens: torch.Tensor, lengths: torch.Tensor | None, check_finite: bool = True
) -> ClipLengths:
    """Validate ``tokens [B, N, D]`` and ``lengths [B]`` (all N when ``lengths`` is None);
    return the lengths as a long tensor on the tokens' device and as Python integers.
    ``check_finite=False`` skips the NaN/Inf check for a caller that folds it into a pass it
    makes anyway (the merge kernel checks the row norms it computes, see
    :func:`refuse_non_finite`).

    Lengths given on the host (a list, or a CPU tensor beside tokens on a GPU, as a
    processor returns them) are checked there and sent to the device without waiting for
    it; lengths on the tokens' device are read back once."""
    check_token_tensor(tokens)
    batch, width, _ = tokens.shape
    if lengths is None:
        on_device = torch.full((batch,), width, dtype=torch.long, device=tokens.device)
        host = (width,) * batch
    else:
        given = lengths
        if not isinstance(lengths, torch.Tensor):  # built on the host
            given = _as_length_tensor(lengths, batch, None)
        if given.dim() != 1 or given.shape[0] != batch:
            raise ValueError(
                f"lengths must be a 1-D tensor with one valid length per clip ({batch}), got "
                f"shape {list(given.shape)}"
            )
        if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got {given.dtype}")
        # Built here from Python values, kept on the host beside tokens elsewhere, or
        # marked as host memory by whoever made it (a backbone adapter).
        on_host = given.device.type == "cpu" and (
            given is not lengths or given.device != tokens.device or is_host_tensor(given)
        )
        host = tuple(host_values(given) if on_host else given.tolist())
        if any(n < 0 or n > width for n in host):
            raise ValueError(
                f"lengths must lie in [0, {width}] (the tokens tensor has {width} positions), "
                f"got {list(host)}"
            )
        on_device = given.long() if given.device == tokens.device else to_device(host, tokens)
    if check_finite:
        refuse_non_finite(tokens, on_device, host)
    return ClipLengths(on_device, host)


def to_device(values: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Host integers as a long tensor on ``like``'s device, sent without waiting for the
    device (a blocking copy from host memory would wait for its queue to drain)."""
    return torch.tensor(list(values), dtype=torch.long).to(like.device, non_blocking=True)


def _as_length_tensor(lengths, batch: int, device: torch.device | None) -> torch.Tensor:
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


def refuse_non_finite(
    tokens: torch.Tensor, lengths: torch.Tensor, host: Sequence[int] | None = None
) -> None:
    """Raise if the valid tokens of any clip hold NaN or ±Inf (``host``: the lengths as
    Python integers, when known, spares reading them back)."""
    bad = non_finite_clips(tokens, lengths, host)
    if bad:
        raise ValueError(
            f"tokens hold NaN or Inf in the valid positions of clips {bad}; check the audio "
            "fed to the encoder (NaN or Inf samples pass through it) and the encoder's output "
            "(in float16 it can overflow: run the encoder in bfloat16 or float32)"
        )


def non_finite_clips(
    tokens: torch.Tensor, lengths: torch.Tensor, host: Sequence[int] | None = None
) -> list[int]:
    """Clips whose valid tokens hold NaN or ±Inf. A clip's sum is finite whenever all its
    elements are (NaN and ±Inf propagate); a non-finite sum may also be an overflow of
    finite values, so only then are the clip's extremes read, which are NaN or infinite
    exactly when some element is. One read of the data and one of the device (all sums
    at once) in the usual case, no copy."""
    values = list(host) if host is not None else lengths.tolist()
    clips = [clip for clip, length in enumerate(values) if length]
    if not clips:
        return []
    dtype = working_dtype(tokens.dtype)
    sums = torch.stack([tokens[clip, : values[clip]].sum(dtype=dtype) for clip in clips])
    finite = torch.isfinite(sums)
    if bool(finite.all()):
        return []
    bad = []
    for clip, clip_finite in zip(clips, finite.tolist(), strict=True):
        valid = tokens[clip, : values[clip]]
        extremes = torch.stack([valid.amax(), valid.amin()])
        if not clip_finite and not bool(torch.isfinite(extremes).all()):
            bad.append(clip)
    return bad


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision methods compute in: float64 for float64 tokens (nothing is lost),
    float32 for everything else (half precision is widened, exactly)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def valid_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` bool: True at positions below each clip's length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def kept_per_clip(host: Sequence[int], keep_ratio: float) -> list[int]:
    """K of every clip, as Python integers, from host lengths."""
    check_keep_ratio(keep_ratio)
    return [kept_tokens(int(n), keep_ratio) for n in host]


def is_positive_integer(value: object) -> bool:
    """A whole number of at least one: an integer, or a float with no fraction (as a JSON
    or command-line value may arrive); never a bool."""
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and value.is_integer()
    )
    return integral and not isinstance(value, bool) and value >= 1


def check_window(window: int | None) -> int | None:
    """A window is a positive integer (or None for no window); anything else is refused."""
    if window is None:
        return None
    if not is_positive_integer(window):
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
