"""LTBM versus Global Merge: same kernel, only the window differs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ltbm
from ltbm.methods import matching


@settings(max_examples=50, deadline=None)
@given(
    width=st.integers(2, 60),
    extra_window=st.integers(0, 5),
    keep_ratio=st.sampled_from([0.1, 0.25, 0.5, 0.8]),
    seed=st.integers(0, 10_000),
)
def test_window_covering_the_sequence_is_global(width, extra_window, keep_ratio, seed):
    tokens = torch.randn(2, width, 8, generator=torch.Generator().manual_seed(seed))
    lengths = torch.tensor([width, max(1, width // 2)])
    local = ltbm.compress(tokens, lengths, "ltbm", keep_ratio, window=width + extra_window)
    global_ = ltbm.compress(tokens, lengths, "global", keep_ratio)
    assert torch.equal(local.plan.slot_index, global_.plan.slot_index)
    assert torch.equal(local.tokens, global_.tokens)


@settings(max_examples=40, deadline=None)
@given(width=st.integers(2, 50), window=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_banded_scores_agree_with_dense_scores(width, window, seed):
    """The band computes the same best partners as the dense matrix restricted to the band."""
    generator = torch.Generator().manual_seed(seed)
    metric = torch.randn(1, width, 6, generator=generator)
    distances = [matching.max_distance(w) for w in range(1, window + 1)]
    norms, dots = matching.norms_and_neighbour_dots(metric, distances, torch.float32)
    length = torch.tensor([width])
    score, partner = matching.banded_best_partners(norms, dots, length, window)
    a, b = metric[:, 0::2], metric[:, 1::2]
    dense = torch.nn.functional.cosine_similarity(a[0, :, None], b[0, None, :], dim=-1)
    a_pos = 2 * torch.arange(a.shape[1])[:, None]
    b_pos = 2 * torch.arange(b.shape[1])[None, :] + 1
    dense = dense.masked_fill((a_pos - b_pos).abs() > 2 * window - 1, float("-inf"))
    if b.shape[1]:
        expected_score, _ = dense.max(-1)
        assert torch.allclose(score[0], expected_score, atol=1e-6)
        chosen = dense.gather(1, partner[0][:, None])[:, 0]
        assert torch.allclose(chosen, expected_score, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keep_ratio", [0.05, 0.25, 0.4])
def test_in_order_sums_give_the_plans_of_the_bag_sums(monkeypatch, dtype, keep_ratio):
    """A round whose successor is the last reads its rows once, in order, into a ring
    (window 1); with that path switched off, every slot's rows summed as a bag give the
    same plans and tokens (junk padding, mixed lengths, exact ties, tiny blocks)."""
    from ltbm.core import slot_sums

    monkeypatch.setattr(slot_sums, "BLOCK_ELEMENTS", 24 * 9)
    tokens = torch.randn(3, 301, 24, generator=torch.Generator().manual_seed(12))
    tokens[:, 7::5] = tokens[:, 2:3]
    lengths = torch.tensor([301, 180, 7])
    tokens[1, 180:] = 1e4
    tokens = tokens.to(dtype)
    used = []
    in_order = slot_sums.sum_rows_in_order

    def recorded(*args):
        used.append(in_order(*args))
        return used[-1]

    monkeypatch.setattr(matching, "sum_rows_in_order", recorded)
    streamed = ltbm.compress(tokens, lengths, "ltbm", keep_ratio)
    assert used and all(used)
    monkeypatch.setattr(matching, "sum_rows_in_order", lambda *args: False)
    bagged = ltbm.compress(tokens, lengths, "ltbm", keep_ratio)
    assert torch.equal(streamed.plan.slot_index, bagged.plan.slot_index)
    assert [e.tolist() for e in streamed.plan.history] == [e.tolist() for e in bagged.plan.history]
    assert torch.equal(streamed.tokens, bagged.tokens)


def test_in_order_sums_refuse_slots_out_of_row_order(monkeypatch):
    """Slots that do not follow the rows (so that too many would be open at once) are
    refused before anything is shown: the caller then sums bags."""
    from ltbm.core import slot_sums

    monkeypatch.setattr(slot_sums, "BLOCK_ELEMENTS", 8 * 100)  # blocks of 100 rows
    rows = torch.randn(4000, 8)
    slot_of_row = torch.arange(4000) % 2000  # slot s gets rows s and s + 2000
    shown = []
    done = slot_sums.sum_rows_in_order(
        rows, slot_of_row, 2000, torch.float32, lambda *args: shown.append(args)
    )
    assert not done and not shown
    in_order = torch.arange(4000) // 2
    sums = torch.empty(2000, 8)

    def keep(start, stop, block):
        sums[start:stop] = block

    assert slot_sums.sum_rows_in_order(rows, in_order, 2000, torch.float32, keep)
    assert torch.equal(sums, rows[0::2] + rows[1::2])


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 40),
    window=st.integers(1, 4),
    blocks=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    seed=st.integers(0, 10_000),
)
def test_streamed_neighbour_dots_equal_the_whole_tensor_ones(width, window, blocks, seed):
    """Norms and band dots taken block by block (blocks shorter than the band, pairs across
    blocks and across clips) equal those of the whole tensor, bit for bit."""
    from ltbm.methods.neighbour_dots import StreamedNeighbourDots

    rows = torch.randn(3, width, 1280, generator=torch.Generator().manual_seed(seed))
    distances = matching.band_distances(window)
    norms, dots = matching.norms_and_neighbour_dots(rows, distances, torch.float32)
    streamed = StreamedNeighbourDots(3, width, distances, torch.float32, rows.device)
    flat, start = rows.reshape(3 * width, 1280), 0
    while start < flat.shape[0]:
        stop = min(flat.shape[0], start + blocks[start % len(blocks)])
        streamed.visit(start, stop, flat[start:stop].clone())
        start = stop
    streamed_norms, streamed_dots = streamed.result()
    assert torch.equal(streamed_norms, norms)
    assert sorted(streamed_dots) == sorted(dots)
    for d in distances:
        assert torch.equal(streamed_dots[d], dots[d]), d


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(3, 80),
    window=st.integers(1, 6),
    keep_ratio=st.sampled_from([0.05, 0.2, 0.4, 0.7]),
    seed=st.integers(0, 10_000),
)
def test_ltbm_merges_only_within_the_window_in_every_round(width, window, keep_ratio, seed):
    tokens = torch.randn(1, width, 6, generator=torch.Generator().manual_seed(seed))
    plan = ltbm.compress(tokens, None, "ltbm", keep_ratio, window=window).plan
    for edges in plan.history:
        distance = (edges[:, 1] - edges[:, 2]).abs()
        assert bool((distance <= 2 * window - 1).all())


@settings(max_examples=40, deadline=None)
@given(width=st.integers(4, 80), window=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_one_round_slots_gather_around_a_destination(width, window, seed):
    """With K ≥ N/2 a single round suffices: every slot is a B frame plus A frames that lie
    at most 2 * window - 1 positions from it."""
    tokens = torch.randn(1, width, 6, generator=torch.Generator().manual_seed(seed))
    plan = ltbm.compress(tokens, None, "ltbm", 0.55, window=window).plan
    assert len(plan.history) <= 1
    for slot in range(int(plan.kept[0])):
        frames = torch.nonzero(plan.slot_index[0] == slot)[:, 0]
        if len(frames) == 1:
            continue
        destinations = frames[frames % 2 == 1]
        assert len(destinations) == 1, "a merged slot has exactly one B frame"
        assert bool(((frames - destinations[0]).abs() <= 2 * window - 1).all())


def unbroken(plan) -> torch.Tensor:
    """Real slots whose source frames are one unbroken run."""
    spans, sizes = plan.spans, plan.sizes
    return ((spans[..., 1] - spans[..., 0] + 1) == sizes)[plan.slot_mask]


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(2, 160),
    short=st.integers(1, 160),
    keep_ratio=st.sampled_from([0.01, 0.05, 0.15, 0.25, 0.5, 0.9]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]),
    seed=st.integers(0, 10_000),
)
def test_window_one_tokens_are_unbroken_runs_of_frames(width, short, keep_ratio, dtype, seed):
    """The README's claim: at window 1 every kept token is the mean of one unbroken run of
    neighbouring frames, in every round, for any length, padding and keep ratio (each round
    merges a token into an adjacent one, and runs stay in order)."""
    tokens = torch.randn(2, width, 6, generator=torch.Generator().manual_seed(seed)).to(dtype)
    lengths = torch.tensor([width, min(short, width)])
    plan = ltbm.compress(tokens, lengths, "ltbm", keep_ratio, window=1).plan
    assert bool(unbroken(plan).all())


@pytest.mark.parametrize("method, window", [("ltbm", 2), ("global", None)])
def test_wider_windows_and_global_can_join_frames_that_are_not_neighbours(method, window):
    """Frames x y z x: at window 2 (or without one) the first x merges with its copy three
    positions on, past y and z, so "one unbroken run" holds at window 1 only."""
    x, y, z = torch.eye(3)
    tokens = torch.stack([x, y, z, x])[None]
    params = {} if window is None else {"window": window}
    plan = ltbm.compress(tokens, None, method, 0.75, **params).plan
    slot = int(plan.slot_index[0, 0])
    assert plan.spans[0, slot].tolist() == [0, 3] and int(plan.sizes[0, slot]) == 2
    assert not bool(unbroken(plan).all())
    assert bool(unbroken(ltbm.compress(tokens, None, "ltbm", 0.75, window=1).plan).all())


def repeated_segments(segment: int = 5, dim: int = 16, seed: int = 0) -> torch.Tensor:
    """Segments X Y Z X: the last segment is an exact copy of the first, an odd distance
    away, so every even frame of the first X has a perfect match in the other X's B set."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, dim, generator=generator) * 3
    parts = [centres[i] + 0.6 * torch.randn(segment, dim, generator=generator) for i in range(3)]
    parts.append(parts[0].clone())
    return torch.cat(parts)[None]


def segment_of(frame: torch.Tensor, segment: int = 5) -> torch.Tensor:
    return torch.div(frame, segment, rounding_mode="floor")


def test_locality_is_visible_on_repeated_segments():
    tokens = repeated_segments()
    local = ltbm.compress(tokens, None, "ltbm", 0.5, window=2).plan
    global_ = ltbm.compress(tokens, None, "global", 0.5).plan
    local_spans = segment_of(local.spans[0])
    global_spans = segment_of(global_.spans[0])
    # LTBM never joins frames that lie segments apart ...
    assert bool(((local_spans[:, 1] - local_spans[:, 0]) <= 1).all())
    # ... while Global Merge joins the first X with its copy three segments later.
    assert bool(((global_spans[:, 1] - global_spans[:, 0]) == 3).any())


def test_merged_token_is_mean_of_its_frames():
    tokens = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]])
    result = ltbm.compress(tokens, None, "ltbm", 0.5, window=1)
    assert result.plan.spans[0].tolist() == [[0, 1], [2, 3]]
    assert torch.allclose(result.tokens[0], torch.tensor([[1.0, 0.05], [0.05, 1.0]]))


def test_band_never_builds_the_square_matrix(monkeypatch):
    """LTBM with a window must not call the dense scorer, whatever the length."""

    def forbidden(*args, **kwargs):
        raise AssertionError("dense scores computed for a windowed merge")

    monkeypatch.setattr(matching, "dense_best_partners", forbidden)
    tokens = torch.randn(2, 3000, 4)
    result = ltbm.compress(tokens, torch.tensor([3000, 2001]), "ltbm", 0.25, window=3)
    assert result.lengths.tolist() == [750, 501]


@pytest.mark.parametrize("window", [1, 2, 3, 4, 7])
def test_band_offsets_match_the_window(window):
    """Window w reaches the w nearest B tokens on each side: 2w offsets, none beyond 2w - 1."""
    offsets = list(matching.band_offsets(window))
    assert len(offsets) == 2 * window
    for offset in offsets:
        assert abs(2 * offset + 1) <= 2 * window - 1
    outside = [min(offsets) - 1, max(offsets) + 1]
    for offset in outside:
        assert abs(2 * offset + 1) > 2 * window - 1


def test_every_window_is_a_distinct_setting():
    """Windows 1, 2, 3, 4 give four different plans on random input (an earlier definition by
    position distance made 2k - 1 and 2k identical)."""
    tokens = torch.randn(2, 400, 16, generator=torch.Generator().manual_seed(3))
    plans = [ltbm.compress(tokens, None, "ltbm", 0.1, window=w).plan for w in (1, 2, 3, 4)]
    for i in range(len(plans)):
        for j in range(i + 1, len(plans)):
            assert not torch.equal(plans[i].slot_index, plans[j].slot_index), (i + 1, j + 1)


@pytest.mark.parametrize("window", [1, 3, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_sizes_do_not_change_results(monkeypatch, window, dtype):
    """The kernel works in cache-sized blocks of rows and slots; tiny blocks (many of them,
    with pairs and merges crossing block edges) give exactly the same plan and tokens."""
    from ltbm.core import slot_sums

    tokens = torch.randn(3, 257, 24, generator=torch.Generator().manual_seed(11)).to(dtype)
    tokens[:, 5::7] = tokens[:, 3:4]  # exact ties
    lengths = torch.tensor([257, 130, 9])
    method, params = ("global", {}) if window is None else ("ltbm", {"window": window})
    large = ltbm.compress(tokens, lengths, method, 0.15, **params)
    monkeypatch.setattr(matching, "ROW_BLOCK_ELEMENTS", 3 * 24 * 5 // torch.get_num_threads())
    monkeypatch.setattr(matching, "DENSE_BLOCK_ELEMENTS", 50)
    monkeypatch.setattr(slot_sums, "BLOCK_ELEMENTS", 24 * 7)
    small = ltbm.compress(tokens, lengths, method, 0.15, **params)
    assert torch.equal(large.plan.slot_index, small.plan.slot_index)
    assert torch.equal(large.tokens, small.tokens)


@pytest.mark.parametrize("method", ["ltbm", "global", "pool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("block_elements", [1 << 20, 16 * 5])
def test_slot_sums_are_index_add_onto_zeros(monkeypatch, method, dtype, block_elements):
    """Merged tokens are the sums ``index_add_`` makes onto zeros (each slot's sources added
    in source order, in float32 for half precision), divided by the slot size: bit for bit,
    with big or tiny blocks of slots or source rows (slots finished early or late)."""
    from ltbm.core import plan as plan_module
    from ltbm.core import slot_sums

    monkeypatch.setattr(slot_sums, "BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(plan_module, "SOURCE_BLOCK_ELEMENTS", block_elements)
    tokens = torch.randn(2, 120, 16, generator=torch.Generator().manual_seed(4)).to(dtype)
    lengths = torch.tensor([120, 77])
    out = ltbm.compress(tokens, lengths, method, 0.1)
    plan, width = out.plan, out.plan.num_slots
    flat = torch.where(plan.slot_index >= 0, plan.slot_index + width * torch.arange(2)[:, None], -1)
    kept = flat.reshape(-1) >= 0
    sums_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    sums = torch.zeros(2 * width, 16, dtype=sums_dtype)
    sums.index_add_(0, flat.reshape(-1)[kept], tokens.reshape(-1, 16)[kept].to(sums_dtype))
    means = sums / plan.sizes.reshape(-1, 1).clamp(min=1).to(sums_dtype)
    means = torch.where(plan.slot_mask.reshape(-1, 1), means, 0.0).to(dtype)
    assert torch.equal(out.tokens.reshape(-1, 16), means)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slot_sums_without_the_out_overload_give_the_same_tokens(monkeypatch, dtype):
    """Where torch lacks the out= overload of embedding_bag's forward op, the public
    ``embedding_bag`` plus a copy gives the same plan and the same tokens."""
    from ltbm.core import slot_sums

    tokens = torch.randn(3, 300, 40, generator=torch.Generator().manual_seed(8)).to(dtype)
    lengths = torch.tensor([300, 211, 5])
    direct = ltbm.compress(tokens, lengths, "ltbm", 0.1)
    monkeypatch.setattr(slot_sums, "_BAG_SUMS_INTO", None)
    copied = ltbm.compress(tokens, lengths, "ltbm", 0.1)
    assert torch.equal(direct.plan.slot_index, copied.plan.slot_index)
    assert torch.equal(direct.tokens, copied.tokens)
