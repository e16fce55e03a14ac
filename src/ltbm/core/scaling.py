"""Exact rescaling by powers of two, so results do not depend on the scale of the input.

Multiplying by a power of two changes only a float's exponent: it is exact whenever the
result is a normal number. Cosine similarities, rankings and means are therefore unchanged,
bit for bit, when a clip is brought into a safe range this way, while dot products of tokens
near 1e20 (float32) or 1e300 (float64) no longer overflow and tiny ones no longer underflow.
"""

from __future__ import annotations

import torch


def unit_exponents(largest: torch.Tensor) -> torch.Tensor:
    """Integer e per entry with ``largest · 2^-e`` in [0.5, 1); 0 where ``largest`` is zero
    or not finite (nothing to rescale)."""
    _, exponents = torch.frexp(largest)
    usable = torch.isfinite(largest) & (largest > 0)
    return torch.where(usable, exponents, 0).long()


def times_power_of_two(x: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``x · 2^exponents`` (exponents broadcast against x), exact while results are normal.
    Applied as two factors of about half the exponent each, so that neither factor
    overflows or underflows the dtype even when the total shift spans its whole range."""
    first = torch.div(exponents, 2, rounding_mode="floor")
    second = exponents - first
    two = torch.tensor(2.0, dtype=x.dtype, device=x.device)
    return x * torch.pow(two, first.to(x.dtype)) * torch.pow(two, second.to(x.dtype))
