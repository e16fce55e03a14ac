"""Global Merge's best partners on the accelerator path: all clips at once, certified scores.

The CPU path (:mod:`ltbm.methods.dense_scores`) decides every A token's partner by the
canonical float32 cosine of :func:`~ltbm.methods.dense_scores.exact_scores`, a function of
the two tokens only. This path gives the same scores, so the same plans, in a form that
suits a GPU: one float64 batched matrix multiply per block of A rows across every clip of
the batch (padding rows zeroed, padding pairs masked), divided by float64 row norms. Each
quotient q is within a proven margin of the canonical value before its rounding to float32
(:func:`margin`, which also covers norms summed in another order than the canonical ones);
where q − margin and q + margin round to the same float32, that float32 is the canonical
score, bit for bit. Of the other pairs (near a float32 rounding midpoint, or cosines near
zero, where float32 is finer than the margin), those that could be their row's maximum
(near-ties: a handful per block) are scored the canonical way on the host, whatever the
device, so plans do not depend on the device's summation order.

One read of device values by the host per block: the list of those unsettled pairs (and,
when there are any, one copy of their rows to the host). A block holds the rows of every
clip (the batch) when ``batch × (B tokens + features)`` elements fit the block budget;
beyond that, clip after clip.
"""

from __future__ import annotations

import torch

from ltbm.methods.dense_scores import certify_margin, cosines, products_summed

BLOCK_ELEMENTS = 1 << 26
"""float64 elements of a block's quotients and A rows (512 MiB): large blocks, few launches."""


def margin(dim: int) -> float:
    """Bound on |q − q*| for a quotient q of a float64 matrix multiply divided by norms summed
    in any order, and the canonical cosine q* before its rounding to float32: the dot
    products' bound (:func:`~ltbm.methods.dense_scores.certify_margin`) plus the norms'. Each
    norm is within γ/2 + u of the exact one relative to it (a float64 sum of ``dim`` exact
    squares, γ = (dim + 1)·u/(1 − (dim + 1)·u), then a square root), so two norms of one row
    differ by at most γ + 2u and the product of two by 2γ + 4u relative; doubled as a
    margin."""
    u = 2.0**-53
    gamma = (dim + 1) * u / (1 - (dim + 1) * u)
    return certify_margin(dim) + 2 * (2 * gamma + 4 * u)


def row_norms(rows: torch.Tensor) -> torch.Tensor:
    """float64 norms of float64 rows ``[..., D]``, floored at 1e-12 as the kernel's are."""
    flat = rows.reshape(-1, rows.shape[-1])
    squares = products_summed(flat.clone(), flat)
    return squares.sqrt_().clamp_(min=1e-12).view(rows.shape[:-1])


def host_scores(a_rows: torch.Tensor, b_rows: torch.Tensor) -> torch.Tensor:
    """Canonical float32 cosines of pairs of float64 rows (exact copies of the tokens),
    computed on the host the way :func:`~ltbm.methods.dense_scores.exact_scores` does."""
    pairs = torch.stack([a_rows, b_rows]).cpu()
    a_host, b_host = pairs[0], pairs[1]
    dots = products_summed(a_host.clone(), b_host)
    return cosines(dots, row_norms(a_host), row_norms(b_host)).to(a_rows.device)


def certified_best_partners(
    x: torch.Tensor, length: torch.Tensor, block_elements: int = BLOCK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner (canonical float32 score, earliest B index among equals) of every A
    token of ``x [B, n, D]`` among all valid B tokens of its clip; ``-inf`` and 0 where
    there is none (A rows past the clip's length, clips of fewer than two tokens)."""
    batch, width, dim = x.shape
    na, nb = (width + 1) // 2, width // 2
    best_score = torch.full((batch, na), float("-inf"), dtype=torch.float32, device=x.device)
    best_b = torch.zeros((batch, na), dtype=torch.long, device=x.device)
    if batch == 0 or nb == 0:
        return best_score, best_b
    if batch > 1 and batch * (nb + dim) > block_elements:  # the batch does not fit: clips
        for clip in range(batch):
            score, partner = certified_best_partners(x[clip : clip + 1], length[clip : clip + 1])
            best_score[clip], best_b[clip] = score[0], partner[0]
        return best_score, best_b
    a_valid = torch.arange(na, device=x.device)[None, :] < ((length + 1) // 2)[:, None]
    b_valid = torch.arange(nb, device=x.device)[None, :] < (length // 2)[:, None]
    b64 = x[:, 1 : 2 * nb : 2].to(torch.float64).masked_fill_(~b_valid[:, :, None], 0.0)
    b_norm = row_norms(b64)
    rows = max(1, block_elements // (batch * (nb + dim)))
    for start in range(0, na, rows):
        stop = min(na, start + rows)
        valid_a = a_valid[:, start:stop]
        a64 = x[:, 2 * start : 2 * stop : 2].to(torch.float64).masked_fill_(~valid_a[:, :, None], 0)
        scores = _certified_scores(a64, b64, row_norms(a64), b_norm, valid_a, b_valid)
        # max along a row gives the first of equal maxima: ties go to the earliest B token
        best_score[:, start:stop], best_b[:, start:stop] = scores.max(dim=-1)
    return best_score, best_b


def _certified_scores(
    a64: torch.Tensor,
    b64: torch.Tensor,
    a_norm: torch.Tensor,
    b_norm: torch.Tensor,
    a_valid: torch.Tensor,
    b_valid: torch.Tensor,
) -> torch.Tensor:
    """``[B, a, b]`` scores of every A row with every B row of its clip: ``-inf`` on pairs
    with padding, the canonical float32 cosine wherever it could be its row's maximum, and
    below the maximum elsewhere.

    Each pair's canonical score lies in [low, high], the roundings of q ∓ margin; the row's
    maximum is at least the largest low. A pair whose high is below that cannot be the
    maximum nor tie with it, so only the unsettled pairs (low ≠ high) that reach it need
    their canonical score: near-ties, a handful. Without that restriction, cosines near
    zero (where float32 is finer than the margin) sent about one pair in 250 of random
    tokens of width 1280 to the host. Non-finite quotients (NaN or infinite tokens, which
    the caller refuses or rescales) are never sent: NaN reaches no floor, ±inf is settled."""
    quotient = torch.bmm(a64, b64.transpose(1, 2)).div_(a_norm[:, :, None] * b_norm[:, None, :])
    quotient.masked_fill_(~b_valid[:, None, :], float("-inf"))
    quotient.masked_fill_(~a_valid[:, :, None], float("-inf"))
    bound = margin(a64.shape[-1])
    high = quotient.add(bound).float()
    scores = quotient.sub_(bound).float()
    del quotient
    floor = scores.amax(dim=-1, keepdim=True)
    unsettled = scores.ne(high).logical_and_(high.ge(floor))
    clip, row, column = torch.nonzero(unsettled, as_tuple=True)
    if clip.numel():
        scores[clip, row, column] = host_scores(a64[clip, row], b64[clip, column])
    return scores
