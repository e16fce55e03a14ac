"""Global Merge's best partners on CPU: a cheap pre-filter, then exact scores for few pairs.

Every A token needs the B token of highest cosine similarity (ties: the earliest). The
full A×B matrix of exact float32 scores costs one float32 matrix multiply, which both
Global Merge and ToMe pay. Here the matrix is only *approximated*, by a matrix multiply of
unit-normalised rows in a low precision (bfloat16 where the CPU runs it about 4× faster
than float32, float32 elsewhere). A rigorous bound ``E`` on |approximate − exact| keeps, for
each A row, the candidates {j : approx_j could still be the maximum}; only these get an
exact score, and the winner is taken from them with the usual tie rule. Rows with too many
candidates (similar tokens) are filtered again in float32, whose bound is ~100× tighter;
rows still crowded (near duplicates) get every column's exact score from a float64 matrix
multiply whose rounding to float32 is certified, so the worst case costs about twice the
old float32 multiply instead of an exact score per pair.

The exact score is one canonical computation, whichever filter ran: :func:`exact_scores`
(float64 products, which are exact for float32 inputs, summed by ``torch.sum`` in its fixed
order over a contiguous row, divided by the norms computed the same way, rounded to
float32). It is a function of the pair of tokens only, so plans cannot depend on the path,
the block sizes or the thread count; a token and its exact copy score exactly 1, which
keeps the tie rules exact for repeated tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltbm.core.memory import fresh_empty

BFLOAT16_MIN_COLUMNS = 512
"""Below this many B tokens the float32 filter is cheaper overall: its matrix multiply is
small, and it leaves about one candidate per row to score exactly instead of five to ten
(measured crossover between 375 and 750 B tokens at D = 1280)."""

CANDIDATE_LIMIT = 64
"""Rows with more candidates than this (or than 1/32 of the B tokens, after the float32
filter) are settled by the next level: scoring a candidate exactly costs about as much as
40 columns of the float64 multiply."""

CERTIFY_SHARE = 4
"""bfloat16 rows whose candidates are over 1/4 of the B tokens (near duplicates of much of
the clip) skip the float32 filter, which would rarely settle them, for the float64 one."""

PAIR_CHUNK = 256
"""Candidate pairs scored at once: two [chunk, D] float64 buffers (2.6 MB at D = 1280)."""

FLOAT32_ROUNDOFF = 2.0**-24


@dataclass(frozen=True)
class Filter:
    """A low-precision matrix multiply and what bounds its rounding."""

    dtype: torch.dtype
    input_roundoff: float  # relative rounding of each normalised element to ``dtype``
    output_roundoff: float  # relative rounding of each result to ``dtype`` (0: float32 out)


BFLOAT16 = Filter(torch.bfloat16, 2.0**-8, 2.0**-8)
FLOAT32 = Filter(torch.float32, 0.0, 0.0)

_forced: dict[str, object] = {}


@contextlib.contextmanager
def forced_path(
    filter_: Filter | None = None, candidate_limit: int | None = None, certify: bool = False
) -> Iterator:
    """For tests: run the dense path with this filter and/or candidate limit (``0`` sends
    every row to the next level), or score every pair by the certified float64 multiply,
    whatever the machine supports."""
    saved = dict(_forced)
    settings = (("filter", filter_), ("limit", candidate_limit), ("certify", certify or None))
    _forced.update({k: v for k, v in settings if v is not None})
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(saved)


@functools.cache
def fast_bfloat16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX), through
    oneDNN. Elsewhere bfloat16 is emulated and slower than float32, so the filter is float32."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_filter(num_b: int) -> Filter:
    """The filter for a clip of ``num_b`` B tokens (tests may force one)."""
    if "filter" in _forced:
        return _forced["filter"]
    fast = fast_bfloat16_matmul() and num_b >= BFLOAT16_MIN_COLUMNS
    return BFLOAT16 if fast else FLOAT32


def error_bound(filter_: Filter, dim: int) -> float:
    """Bound on |filter score − exact score| before the filter's output rounding (which
    :func:`thresholds` adds per row), for rows of ``dim`` elements.

    Filter rows are divided by their exact norms rounded to float32 (relative error u32 per
    element, twice: the norm and the quotient); rounding to the filter dtype adds u_f. So
    each product a_k·b_k/(|a||b|) is off by at most (1 + u32)⁴(1 + u_f)² − 1 of its
    magnitude, and the magnitudes sum to at most 1 (Cauchy–Schwarz). Accumulating ``dim``
    products in float32 adds γ = (dim + 1)·u32 / (1 − (dim + 1)·u32) times the same sum,
    whatever the order. The exact score is itself rounded to float32 (u32, plus float64's
    hair). A margin covers flushed subnormals and the rounding of the thresholds.
    """
    u32, uf = FLOAT32_ROUNDOFF, filter_.input_roundoff
    growth = (1 + u32) ** 4 * (1 + uf) ** 2
    accumulation = (dim + 1) * u32 / (1 - (dim + 1) * u32) * growth
    exact_rounding = u32 + 1e-12
    return ((growth - 1) + accumulation + exact_rounding) * 1.01 + 1e-6


def thresholds(row_max: torch.Tensor, bound: float, output_roundoff: float) -> torch.Tensor:
    """Per row, the least filter score a column can have and still be the exact maximum.

    With e_j = E + u'|s_j| the bound on |s_j − exact_j| (u' = u/(1 − u) for the output
    rounding), the winner's exact score is at least m − E − u'|m| (m = the row's largest
    filter score), and column j can reach it only if s_j + E + u'|s_j| ≥ that, i.e.
    f(s_j) ≥ Q with f(s) = s + u'|s| increasing and Q = m − 2E − u'|m|.
    """
    u = output_roundoff / (1 - output_roundoff)
    m = row_max.double()
    q = m - 2 * bound - u * m.abs()
    return rounded_down(torch.where(q >= 0, q / (1 + u), q / (1 - u)), row_max.dtype)


def rounded_down(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` in ``dtype``, each rounded to the nearest representable value below it, so
    that comparing filter scores with them in their own dtype keeps every candidate."""
    nearest = values.to(dtype)
    lower = torch.nextafter(nearest, torch.full_like(nearest, float("-inf")))
    return torch.where(nearest.double() > values, lower, nearest)


KEPT_BUFFER_BYTES = 4 << 20
"""Scratch buffers up to this size outlive the call (one set per thread). Fresh ones are
faulted in again by every call: at N = 750 that made Global 1.5× slower than ToMe-in-rounds,
with them kept it runs level. About 12 MB stay allocated per thread that ran Global; larger
buffers (the unit rows of long clips) belong to the call."""

_kept_buffers = threading.local()


class Scratch:
    """Buffers reused by every block and clip of one call. Fresh memory costs a page fault
    per 4 KiB page: widening 256 rows into a new float64 buffer took 5× as long as into a
    reused one, which made the small inputs twice as slow as the plain matrix multiply.
    Small ones are kept for the thread's next call (``kept``); large ones are huge-page
    mappings (:func:`ltbm.core.memory.fresh_empty`), returned to the system when the call ends
    rather than kept in the heap under the next round's buffers."""

    def __init__(self, kept: dict[str, torch.Tensor] | None = None) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.kept = {} if kept is None else kept

    @classmethod
    def of_this_thread(cls) -> Scratch:
        """A scratch whose small buffers are this thread's, kept between calls."""
        if not hasattr(_kept_buffers, "buffers"):
            _kept_buffers.buffers = {}
        return cls(_kept_buffers.buffers)

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape)
        nbytes = size * dtype.itemsize
        store = self.kept if nbytes <= KEPT_BUFFER_BYTES else self.buffers
        buffer = store.get(name)
        # A buffer made under torch.inference_mode (vLLM runs its models in it) cannot be
        # written outside it, so the thread's next call outside makes a new one.
        stale = (
            buffer is not None and buffer.is_inference() and not torch.is_inference_mode_enabled()
        )
        if buffer is None or stale or buffer.numel() < size or buffer.dtype != dtype:
            buffer = store[name] = fresh_empty((size,), dtype, torch.device("cpu"))
        return buffer[:size].view(shape)


def dot64(a_rows: torch.Tensor, b_rows: torch.Tensor) -> torch.Tensor:
    """Dot product of each pair of rows, the canonical way: products of float32 (or half)
    values are exact in float64, and ``sum`` over a contiguous last dimension adds them in
    one fixed order per row (rows are never split across threads when there are several),
    so the result depends only on the two rows."""
    return products_summed(a_rows.to(torch.float64, copy=True), b_rows)


def products_summed(
    a64: torch.Tensor, b_rows: torch.Tensor, b64: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`dot64` of contiguous float64 rows ``a64`` (overwritten with the products) and
    ``b_rows`` of any float dtype, widened exactly first (into ``b64`` when given): a
    float64 multiply of two float64 tensors is vectorised, one that mixes dtypes ran 2–3×
    slower. Widening is exact, so the products are the same either way."""
    if a64.shape[0] == 1:  # a single output element would be summed across threads
        return products_summed(a64.expand(2, -1).clone(), b_rows.expand(2, -1))[:1]
    if b_rows.dtype != torch.float64:
        b_rows = (torch.empty_like(a64) if b64 is None else b64).copy_(b_rows)
    return a64.mul_(b_rows).sum(-1)


def exact_norms(rows: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
    """float64 norms of ``rows`` from :func:`dot64`, floored at 1e-12 like the kernel's
    (an all-zero token then scores 0, not NaN)."""
    scratch = scratch or Scratch()
    norms = torch.empty(rows.shape[0], dtype=torch.float64)
    for start in range(0, rows.shape[0], PAIR_CHUNK):
        chunk = rows[start : start + PAIR_CHUNK]
        widened = scratch.take("products", chunk.shape, torch.float64)
        widened.copy_(chunk)
        norms[start : start + chunk.shape[0]] = products_summed(widened, widened)
    return norms.sqrt_().clamp_(min=1e-12)


def exact_scores(
    a_rows: torch.Tensor, b_rows: torch.Tensor, a_norm: torch.Tensor, b_norm: torch.Tensor
) -> torch.Tensor:
    """The canonical float32 cosine of each pair of rows, given their :func:`exact_norms`.

    Nearly correctly rounded, and a function of the two tokens only. A token and its exact
    copy score exactly 1 (their dot product is the squared norm, summed in the same order),
    so repeated tokens tie exactly and the tie rules decide, not rounding noise.
    """
    return cosines(dot64(a_rows, b_rows), a_norm, b_norm)


def cosines(dots: torch.Tensor, a_norm: torch.Tensor, b_norm: torch.Tensor) -> torch.Tensor:
    return dots.div_(a_norm * b_norm).float()


@dataclass
class Clip:
    """One clip's A and B rows (views of the features), their exact norms, and the
    buffers of the call."""

    a: torch.Tensor
    b: torch.Tensor
    a_norm: torch.Tensor
    b_norm: torch.Tensor
    scratch: Scratch
    b_units: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, a: torch.Tensor, b: torch.Tensor, scratch: Scratch) -> Clip:
        return cls(a, b, exact_norms(a, scratch), exact_norms(b, scratch), scratch)

    def rows(self, index: torch.Tensor | slice) -> Clip:
        """The same clip restricted to some A rows."""
        a, a_norm = self.a[index], self.a_norm[index]
        return Clip(a, self.b, a_norm, self.b_norm, self.scratch, self.b_units)

    def b_unit(self, dtype: torch.dtype) -> torch.Tensor:
        """The unit B rows in ``dtype``, made once per clip."""
        if dtype not in self.b_units:
            self.b_units[dtype] = self.unit(self.b, self.b_norm, dtype, f"b_unit {dtype}")
        return self.b_units[dtype]

    def unit(
        self, rows: torch.Tensor, norm: torch.Tensor, dtype: torch.dtype, name: str
    ) -> torch.Tensor:
        """``rows`` divided by their norms in float32, then rounded to ``dtype``, into the
        buffer ``name`` (a few rows at a time: no float32 copy of them all)."""
        out = self.scratch.take(name, tuple(rows.shape), dtype)
        step = PAIR_CHUNK
        for start in range(0, rows.shape[0], step):
            stop = min(rows.shape[0], start + step)
            divided = out[start:stop] if dtype == torch.float32 else None
            if divided is None:
                divided = self.scratch.take("divided", (stop - start, rows.shape[1]), torch.float32)
            torch.div(rows[start:stop], norm[start:stop, None].float(), out=divided)
            if dtype != torch.float32:
                out[start:stop].copy_(divided)
        return out


def pair_scores(clip: Clip, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Canonical scores (:func:`exact_scores`) of the pairs (A row, B row), in chunks
    through reused buffers."""
    scratch, dim = clip.scratch, clip.a.shape[1]
    scores = torch.empty(rows.shape[0], dtype=torch.float32)
    for start in range(0, rows.shape[0], PAIR_CHUNK):
        r, c = rows[start : start + PAIR_CHUNK], cols[start : start + PAIR_CHUNK]
        a_rows = scratch.take("a rows", (r.shape[0], dim), clip.a.dtype)
        b_rows = scratch.take("b rows", (r.shape[0], dim), clip.b.dtype)
        products = scratch.take("products", (r.shape[0], dim), torch.float64)
        widened_b = scratch.take("widened b", (r.shape[0], dim), torch.float64)
        products.copy_(torch.index_select(clip.a, 0, r, out=a_rows))
        b_selected = torch.index_select(clip.b, 0, c, out=b_rows)
        dots = products_summed(products, b_selected, widened_b)
        scores[start : start + r.shape[0]] = cosines(dots, clip.a_norm[r], clip.b_norm[c])
    return scores


def pair_winners(
    clip: Clip, rows: torch.Tensor, cols: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact best score and earliest best column of each of ``count`` rows, from candidate
    pairs (a row without any, possible only for NaN scores, gets ``-inf``)."""
    scores = pair_scores(clip, rows, cols)
    best = torch.full((count,), float("-inf")).scatter_reduce_(0, rows, scores, "amax")
    is_best = scores == best[rows]
    first = torch.full((count,), clip.b.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, rows[is_best], cols[is_best], "amin")
    return best, first.clamp_(max=max(clip.b.shape[0] - 1, 0))


def candidates(
    approx: torch.Tensor, filter_: Filter, bound: float, limit: int, scratch: Scratch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, column) of every candidate in a block of filter scores, for the rows with at
    most ``limit`` of them, and each row's count (crowded rows are left to the next level,
    without listing their many candidates)."""
    least = thresholds(approx.amax(dim=1), bound, filter_.output_roundoff)
    mask = torch.ge(approx, least[:, None], out=scratch.take("mask", approx.shape, torch.bool))
    counts = row_counts(mask)
    calm = counts <= limit
    if bool(calm.all()):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        return rows, cols, counts
    calm_rows = torch.nonzero(calm)[:, 0]
    rows, cols = torch.nonzero(mask[calm_rows], as_tuple=True)
    return calm_rows[rows], cols, counts


def row_counts(mask: torch.Tensor) -> torch.Tensor:
    """True entries per row, as float32 (exact below 2²⁴). Summed as bytes, a few thousand
    columns at a time: a bool ``sum`` widened the whole block to int64 (10× slower), and a
    float32 sum of it all made a float32 copy of the block."""
    counts = torch.zeros(mask.shape[0], dtype=torch.float32)
    for start in range(0, mask.shape[1], 2048):
        counts += mask[:, start : start + 2048].view(torch.uint8).sum(dim=1, dtype=torch.float32)
    return counts


def filter_scores(clip: Clip, a_unit: torch.Tensor, b_unit: torch.Tensor) -> torch.Tensor:
    """The filter's approximate cosines of a block of unit A rows with all unit B rows."""
    shape = (a_unit.shape[0], b_unit.shape[0])
    out = clip.scratch.take(f"approx {a_unit.dtype}", shape, a_unit.dtype)
    return torch.mm(a_unit, b_unit.T, out=out)


def certify_margin(dim: int) -> float:
    """Bound on |q − q*| for a float64-multiply cosine q and the canonical one q* (before
    rounding to float32): both dot products are within γ = (dim + 1)·2⁻⁵³/(1 − …) of the
    exact one, relative to Σ|a_k b_k| ≤ ‖a‖‖b‖ (Cauchy–Schwarz), and each division rounds
    once; doubled as a margin (it also covers forming q ± margin in float64)."""
    u = 2.0**-53
    gamma = (dim + 1) * u / (1 - (dim + 1) * u)
    return 2 * (2 * gamma * (1 + 4 * gamma) * (1 + 2 * u) + 4 * u)


def certified_winners(clip: Clip, a_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Winners of the rows ``a_index`` with the canonical score of *every* column, at the
    speed of a float64 multiply. Rounding to nearest is monotonic, so where q − margin and
    q + margin round to the same float32, so does the canonical score, bit for bit; the few
    other pairs (within the margin of a rounding midpoint: about one in 10⁵) are scored the
    canonical way. For near-duplicate tokens, which no filter narrows down."""
    redo, scratch = clip.rows(a_index), clip.scratch
    num_b, dim = clip.b.shape
    b64 = scratch.take("b64", (num_b, dim), torch.float64).copy_(clip.b)
    a64 = scratch.take("a64", tuple(redo.a.shape), torch.float64).copy_(redo.a)
    quotient = torch.mm(a64, b64.T).div_(redo.a_norm[:, None] * clip.b_norm[None, :])
    margin = certify_margin(dim)
    scores = (quotient - margin).float()
    unsettled = scores != (quotient + margin).float()
    rows, cols = torch.nonzero(unsettled, as_tuple=True)
    if rows.shape[0]:
        scores[rows, cols] = pair_scores(redo, rows, cols)
    best = scores.amax(dim=1)
    columns = torch.arange(num_b).expand_as(scores)
    first = torch.where(scores == best[:, None], columns, num_b).amin(dim=1)
    return best, first.clamp_(max=num_b - 1)


def filtered_winners(
    clip: Clip, index: slice | torch.Tensor, filter_: Filter, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Winners of some A rows: filter, exact scores of their few candidates, and the next
    level for crowded rows (float32 filter, then the certified float64 multiply)."""
    if _forced.get("certify"):
        return certified_winners(clip, index)
    block, num_b = clip.rows(index), clip.b.shape[0]
    a_unit = clip.unit(block.a, block.a_norm, filter_.dtype, f"a_unit {filter_.dtype}")
    approx = filter_scores(clip, a_unit, clip.b_unit(filter_.dtype))
    bound = error_bound(filter_, clip.a.shape[1])
    last = filter_ == FLOAT32
    limit = max(limit, num_b // 32) if last else limit
    rows, cols, counts = candidates(approx, filter_, bound, limit, clip.scratch)
    best_score, best_b = pair_winners(block, rows, cols, block.a.shape[0])
    crowded = counts > limit
    if not bool(crowded.any()):
        return best_score, best_b
    certify = crowded if last else crowded & (counts > num_b // CERTIFY_SHARE)
    levels = (
        (crowded & ~certify, lambda rows: filtered_winners(clip, rows, FLOAT32, limit)),
        (certify, lambda rows: certified_winners(clip, rows)),
    )
    for chosen, settle in levels:
        picked = torch.nonzero(chosen)[:, 0]
        if picked.shape[0]:
            in_clip = picked + index.start if isinstance(index, slice) else index[picked]
            best_score[picked], best_b[picked] = settle(in_clip)
    return best_score, best_b


def clip_best_partners(
    clip: Clip, block_elements: int, filter_: Filter, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact best score and B index of every A row of one clip, in row blocks."""
    num_a, num_b = clip.a.shape[0], clip.b.shape[0]
    best_score = torch.empty(num_a, dtype=torch.float32)
    best_b = torch.empty(num_a, dtype=torch.long)
    step = max(1, block_elements // num_b)
    if step > 64:  # whole tiles of rows: 559 rows ran 25% slower than 544 or 576
        step -= step % 32
    for start in range(0, num_a, step):
        stop = min(num_a, start + step)
        winners = filtered_winners(clip, slice(start, stop), filter_, limit)
        best_score[start:stop], best_b[start:stop] = winners
    return best_score, best_b


def filtered_best_partners(
    x: torch.Tensor, length: torch.Tensor, block_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best B partner (exact float32 score, earliest B index among equals) of every A token
    among all B tokens of its clip, for float32 work on CPU."""
    batch, width, _ = x.shape
    na = (width + 1) // 2
    best_score = torch.full((batch, na), float("-inf"), dtype=torch.float32)
    best_b = torch.zeros((batch, na), dtype=torch.long)
    limit = int(_forced.get("limit", CANDIDATE_LIMIT))
    scratch = Scratch.of_this_thread()
    for index, n in enumerate(length.tolist()):
        num_a, num_b = (n + 1) // 2, n // 2
        if num_b == 0:
            continue
        clip = Clip.of(x[index, 0 : 2 * num_a : 2], x[index, 1 : 2 * num_b : 2], scratch)
        filter_ = default_filter(num_b)
        score, partner = clip_best_partners(clip, block_elements, filter_, limit)
        best_score[index, :num_a], best_b[index, :num_a] = score, partner
    return best_score, best_b
