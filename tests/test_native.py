"""The compiled loops (``ltbm.core._native``) give torch's values, bit for bit.

Plans are decided by the norms and band dot products, and tokens are the slot sums: the
loops may only change how fast they come. Every test compares a loop with the torch
operations it replaces (the same code with the loop switched off)."""

import platform
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ltbm
from ltbm.core import native_dots, slot_sums
from ltbm.methods import matching
from ltbm.methods.neighbour_dots import StreamedNeighbourDots

needs_loop = pytest.mark.skipif(
    native_dots.compiled is None, reason="ltbm.core._native was not built (no C compiler)"
)


@pytest.mark.skipif(
    platform.system() != "Linux" or shutil.which("gcc") is None,
    reason="the extension is built where a C compiler is present",
)
def test_the_loop_is_built_and_matches_torch_here():
    """Where pip had a compiler the extension exists, and its probe finds torch's order for
    the widths encoders use (else every call would silently take the slower path)."""
    assert native_dots.compiled is not None
    for dim in (384, 512, 1024, 1280, 3584):
        assert native_dots.variant_for(dim) is not None, dim


def _streamed(rows, distances, blocks, compiled, batch=1):
    """Norms and dots of ``rows [n, D]`` visited in blocks of the given sizes (cycled)."""
    count = rows.shape[0]
    streamed = StreamedNeighbourDots(batch, count // batch, distances, torch.float32, "cpu")
    streamed.compiled = compiled
    start = 0
    while start < count:
        stop = min(count, start + blocks[start % len(blocks)])
        streamed.visit(start, stop, rows[start:stop])
        start = stop
    return streamed.result()


def _exactly(got, expected):
    """Equal bit for bit, NaN where the other has NaN."""
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def _assert_same(got, expected):
    norms, dots = got
    expected_norms, expected_dots = expected
    _exactly(norms, expected_norms)
    assert sorted(dots) == sorted(expected_dots)
    for d, values in dots.items():
        _exactly(values, expected_dots[d])


@needs_loop
@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 60),
    dim=st.sampled_from([8, 16, 24, 72, 384, 1280, 1296]),
    window=st.integers(1, 5),
    blocks=st.lists(st.integers(1, 25), min_size=1, max_size=6),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 10_000),
)
def test_loop_equals_torch_operations(count, dim, window, blocks, dtype, seed):
    """Any block split (blocks shorter than the band, pairs reaching into earlier blocks),
    any band, rows of every scale and of every dtype the loop reads in place."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(count, 1, generator=generator) * 6)
    rows = (torch.randn(count, dim, generator=generator) * scales).to(dtype)
    distances = matching.band_distances(window)
    expected = _streamed(rows.float(), distances, blocks, compiled=False)
    assert native_dots.accepts(rows, distances) == (native_dots.variant_for(dim) is not None)
    _assert_same(_streamed(rows, distances, blocks, compiled=True), expected)


@needs_loop
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_loop_equals_torch_on_special_values(dtype):
    """Zero rows, signed zeros, subnormals, the dtype's extremes, infinities and NaN: the
    same numbers (NaN where torch gives NaN)."""
    info = torch.finfo(dtype)
    rows = torch.randn(12, 64).to(dtype)
    rows[1] = 0
    rows[2] = -0.0
    rows[3, :5] = torch.tensor([info.tiny / 4, -info.tiny, info.max, -info.max, info.eps])
    rows[5, 7] = float("inf")
    rows[8, 3] = float("nan")
    rows[10] = info.max
    distances = [1, 3]
    expected = _streamed(rows.float(), distances, [5], compiled=False)
    _assert_same(_streamed(rows, distances, [5], compiled=True), expected)


@needs_loop
def test_every_half_precision_value_is_widened_exactly():
    """All 65536 float16 bit patterns (bfloat16 is a shift) reach the loop as torch widens
    them: a row holding one value has that value's magnitude as its norm."""
    values = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    rows = torch.zeros(65536, 8, dtype=torch.float16)
    rows[:, 0] = values
    norms, _ = _streamed(rows, [], [65536], compiled=True)
    expected, _ = _streamed(rows.float(), [], [65536], compiled=False)
    _exactly(norms, expected)


def test_rows_the_loop_cannot_take_go_to_torch():
    """Strided rows, float64, widths no variant covers: refused by ``accepts``, so the
    class computes them with torch operations."""
    rows = torch.randn(10, 64)
    assert not native_dots.accepts(rows[:, ::2], [1])
    assert not native_dots.accepts(rows.double(), [1])
    assert not native_dots.accepts(torch.randn(10, 12), [1])
    assert not native_dots.accepts(rows, list(range(1, 40)))


@needs_loop
def test_first_round_reads_half_precision_in_place_with_the_same_plans():
    """The first round takes half precision rows without a widened copy; its plans equal
    those made with the loop switched off."""
    tokens = torch.randn(2, 301, 64, generator=torch.Generator().manual_seed(3)).half()
    lengths = torch.tensor([301, 177])
    with_loop = ltbm.compress(tokens, lengths, "ltbm", 0.25, window=2)
    original = StreamedNeighbourDots.takes_in_place
    StreamedNeighbourDots.takes_in_place = lambda self, rows: False
    try:
        without = ltbm.compress(tokens, lengths, "ltbm", 0.25, window=2)
    finally:
        StreamedNeighbourDots.takes_in_place = original
    assert torch.equal(with_loop.plan.slot_index, without.plan.slot_index)
    assert torch.equal(with_loop.tokens, without.tokens)


@needs_loop
@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 80),
    slots=st.integers(1, 12),
    dim=st.sampled_from([1, 7, 64, 1280]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 10_000),
)
def test_add_rows_equals_index_add(count, slots, dim, dtype, seed):
    """Rows added onto their slots one after the other, any slot order with repeats: the
    sums of ``index_add_`` on the widened rows, bit for bit."""
    generator = torch.Generator().manual_seed(seed)
    rows = (torch.randn(count, dim, generator=generator) * 1e3).to(dtype)
    index = torch.randint(0, slots, (count,), generator=generator)
    start = torch.randn(slots, dim, generator=generator)
    expected = start.clone().index_add_(0, index, rows.float())
    got = start.clone()
    slot_sums.add_rows_into(got, rows, index)
    _exactly(got, expected)


def _without_loops(monkeypatch):
    """Switch both compiled loops off: the torch operations they replace run instead."""
    monkeypatch.setattr(slot_sums, "_native", None)
    monkeypatch.setattr(StreamedNeighbourDots, "takes_in_place", lambda self, rows: False)


@needs_loop
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("method", "options"),
    [("ltbm", {"window": 1}), ("ltbm", {"window": 3}), ("global", {}), ("pool", {})],
)
def test_compress_is_the_same_with_and_without_the_loops(monkeypatch, dtype, method, options):
    """Plans and tokens, padded clips included, whether the loops run or not."""
    generator = torch.Generator().manual_seed(11)
    tokens = (torch.randn(3, 257, 48, generator=generator) * 40).to(dtype)
    lengths = torch.tensor([257, 130, 3])
    with_loops = ltbm.compress(tokens, lengths, method, 0.25, **options)
    _without_loops(monkeypatch)
    without = ltbm.compress(tokens, lengths, method, 0.25, **options)
    assert torch.equal(with_loops.plan.slot_index, without.plan.slot_index)
    _exactly(with_loops.tokens, without.tokens)


@needs_loop
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_and_overflowing_tokens_agree(monkeypatch, dtype):
    """NaN, infinities, and finite tokens whose sums overflow (``apply``'s slow path): the
    same tokens with and without the loops."""
    info = torch.finfo(dtype)
    clean = torch.randn(2, 64, 16).to(dtype)
    plan = ltbm.compress(clean, None, "ltbm", 0.25).plan
    tokens = clean.clone()
    tokens[0, 5, 3] = float("nan")
    tokens[0, 9, 1] = float("inf")
    tokens[1, :8] = info.max
    with_loops = plan.apply(tokens)
    _without_loops(monkeypatch)
    _exactly(with_loops, plan.apply(tokens))


def test_finite_means_with_a_huge_total_keep_their_exact_values():
    """Means that are all finite are returned as summed, even when their total would
    overflow (the old check summed all means: it sent such tokens to the rescaled path,
    which rounds the clip's small values differently)."""
    tokens = torch.full((1, 8, 4), 1.5e38)  # pairs sum to 3e38: finite; all 16 do not
    tokens[0, :, 0] = 1e-40  # subnormal: a power-of-two rescaling would change it
    plan = ltbm.compress(tokens, None, "pool", 0.5).plan
    expected = plan._weighted_means_by_index_add(tokens, torch.float32)
    _exactly(plan.apply(tokens), expected)


@needs_loop
def test_add_rows_refuses_a_slot_outside_the_destination():
    """A bad index is an error before anything is written, not a write past the buffer."""
    into = torch.zeros(3, 8)
    with pytest.raises(IndexError, match="outside the destination"):
        slot_sums.add_rows_into(into, torch.ones(2, 8), torch.tensor([0, 3]))
    assert not into.any()


@needs_loop
def test_outputs_too_short_for_the_rows_are_refused():
    """The loop writes through raw pointers: outputs that do not cover the rows (or
    previous rows that do not fit before the start) are refused before it runs."""
    rows = torch.randn(6, 64)
    norms, dots = torch.empty(6), {1: torch.zeros(6)}
    with pytest.raises(ValueError, match="norms"):
        native_dots.norms_and_dots(rows, None, torch.empty(5), dots, 0)
    with pytest.raises(ValueError, match="dots"):
        native_dots.norms_and_dots(rows, None, norms, {1: torch.zeros(5)}, 0)
    with pytest.raises(ValueError, match="previous"):
        native_dots.norms_and_dots(rows[2:], rows[:3], norms, dots, 2)
    native_dots.norms_and_dots(rows[2:], rows[:2], norms, dots, 2)
    expected = _streamed(rows, [1], [6], compiled=False)
    _exactly(norms[2:], expected[0][0, 2:])
    _exactly(dots[1][1:5], expected[1][1][0, 1:5])  # pairs whose later row is in the block


@needs_loop
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [1, 3])
def test_pieces_on_several_threads_equal_one_piece(monkeypatch, dtype, window):
    """A long stretch cut into one piece per thread (pairs reaching back across pieces,
    pieces shorter than the band included) gives the values of torch's operations."""
    import ltbm.methods.neighbour_dots as neighbour_dots

    monkeypatch.setattr(neighbour_dots, "PIECE_ROWS", 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        rows = torch.randn(14, 64, generator=torch.Generator().manual_seed(window)).to(dtype)
        distances = matching.band_distances(window)
        got = _streamed(rows, distances, [14], compiled=True)
    finally:
        torch.set_num_threads(threads)
    _assert_same(got, _streamed(rows.float(), distances, [14], compiled=False))


def test_the_loops_can_be_switched_off_for_a_process():
    """``LTBM_COMPILED=0`` (the benchmark's ``ltbm-torch``): torch operations only."""
    import os
    import subprocess
    import sys

    probe = "from ltbm.core import native_dots as n, slot_sums as s; print(n.compiled, s._native)"
    env = {**os.environ, "LTBM_COMPILED": "0"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["None", "None"], done.stderr
