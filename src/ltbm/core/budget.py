"""The one rule for how many audio tokens survive compression.

The number of placeholder tokens in a prompt is fixed before the encoder runs, so the
processor, every compression method and any serving plugin must agree on it. They all
call :func:`kept_tokens`; nothing else in the project computes K.
"""

from __future__ import annotations

import math

MIN_KEPT = 2
"""K never drops below two (unless the clip is shorter): Qwen2-Audio takes a legacy code
path when no two audio placeholders are adjacent, so a single audio token is unsafe."""


def check_keep_ratio(keep_ratio: float) -> float:
    """Return ``keep_ratio`` as a float, or raise a ValueError that says how to fix it."""
    try:
        ratio = float(keep_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}") from None
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(
            f"keep_ratio must be in (0, 1] (the fraction of audio tokens kept), "
            f"got {keep_ratio!r}; "
            "use 1 for no compression and e.g. 0.25 to keep a quarter"
        )
    return ratio


def check_token_count(n: int) -> int:
    """``n`` as an int, or a ValueError: a token count is a non-negative whole number (a
    Python or numpy integer, a 0-d tensor, or a float with no fraction). None, NaN, text
    and the like are refused with the same message, not with whatever ``int()`` says."""
    try:
        whole = not isinstance(n, (bool, str, bytes)) and math.isfinite(float(n)) and int(n) == n
    except (TypeError, ValueError, OverflowError, RuntimeError):  # None, text, a long tensor
        whole = False
    if not whole or n < 0:
        raise ValueError(
            f"token count n must be a non-negative whole number (the clip's valid tokens), "
            f"got {n!r}"
        )
    return int(n)


def kept_tokens(n: int, keep_ratio: float) -> int:
    """Number of tokens K kept from a clip of ``n`` valid tokens.

    ``K = ceil(n * keep_ratio)`` clamped to ``[min(n, 2), n]``. The product is rounded to
    nine decimals before the ceiling so that ratios such as 0.3 (not exact in binary)
    do not add a token through floating-point noise.
    """
    ratio = check_keep_ratio(keep_ratio)
    n = check_token_count(n)
    kept = math.ceil(round(n * ratio, 9))
    return max(min(n, MIN_KEPT), min(kept, n))
