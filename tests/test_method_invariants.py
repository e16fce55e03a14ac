"""The invariants of DESIGN §2, checked for every registered method over random batches, on
the CPU path and on the accelerator path (the branches a GPU takes, forced on CPU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ltbm
from ltbm.methods.registry import METHODS

MERGING = {"ltbm", "global", "pool"}
SELECTING = {"prune", "uniform", "random", "segment_topk"}
MERGE_THEN_SELECT = {"adaptive_diverse"}
"""Slots are runs of consecutive sources, some runs dropped: sizes sum to the sources of the
kept runs, between K and the valid length."""
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
ATTENTION_VARIANTS = {
    "ltbm+attention": ("ltbm", {"weighting": "attention"}),
    "global+attention": ("global", {"weighting": "attention"}),
    "segment_topk+attention": ("segment_topk", {"scorer": "attention"}),
    "adaptive_diverse+attention": ("adaptive_diverse", {"weighting": "attention"}),
}
"""Settings that read the encoder's attention, run on random queries and keys."""
CASES = sorted(METHODS) + sorted(ATTENTION_VARIANTS)
THRESHOLDS = [-1.0, 0.0, 0.5, 0.9, 1.0]

pytestmark = pytest.mark.usefixtures("on_every_path")


def make_method(name: str, keep_ratio: float, window: int = 2) -> ltbm.Method:
    """The method of a case; ``window`` also sets segment_topk's S and adaptive_diverse's
    threshold (one drawn knob per case)."""
    name, params = ATTENTION_VARIANTS.get(name, (name, {}))
    defaults = {
        "ltbm": {"window": window},
        "prune": {"scorer": "norm"},
        "segment_topk": {"scorer": "norm", "segments": window},
        "adaptive_diverse": {"weighting": "size", "threshold": THRESHOLDS[window % 5]},
    }.get(name, {})
    return ltbm.get_method(name, keep_ratio=keep_ratio, **{**defaults, **params})


def attention_signals(tokens: torch.Tensor, lengths: torch.Tensor, seed: int = 0) -> dict:
    """Random last-layer queries and keys ``[B, 2, N, 4]`` (NaN past each clip's length,
    which must never be read) for the methods that ask for attention."""
    batch, width, _ = tokens.shape
    generator = torch.Generator().manual_seed(seed)
    queries, keys = torch.randn(2, batch, 2, width, 4, generator=generator)
    padding = torch.arange(width)[None, None, :, None] >= lengths[:, None, None, None]
    return {
        "queries": queries.masked_fill(padding, float("nan")),
        "keys": keys.masked_fill(padding, float("nan")),
    }


def compress(name: str, tokens, lengths, keep_ratio: float, window: int = 2, seed: int = 0):
    """Run a case on a batch, with attention signals where the method needs them."""
    method = make_method(name, keep_ratio, window)
    lengths = torch.full((tokens.shape[0],), tokens.shape[1]) if lengths is None else lengths
    signals = attention_signals(tokens, lengths, seed) if method.needs_attention else {}
    return method(tokens, lengths, **signals)


def family(name: str) -> str:
    return ATTENTION_VARIANTS.get(name, (name, {}))[0]


@st.composite
def batches(draw):
    """A batch of clips of different valid lengths, padded with junk."""
    batch = draw(st.integers(1, 4))
    width = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 12))
    lengths = draw(st.lists(st.integers(0, width), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(DTYPES))
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, width, dim, generator=generator).to(dtype)
    # Repeated tokens create exact ties, which the methods must break deterministically.
    if draw(st.booleans()) and width > 3:
        tokens[:, 1::3] = tokens[:, 0:1]
    return tokens, torch.tensor(lengths)


ratios = st.sampled_from([0.01, 0.1, 0.15, 0.25, 0.33, 0.5, 0.75, 0.9, 1.0])


def size_weighted_reference(tokens, lengths, plan) -> torch.Tensor:
    """apply() computed the slow way: for each slot, the mean of its sources in float64."""
    out = torch.zeros(plan.batch_size, plan.num_slots, tokens.shape[-1], dtype=torch.float64)
    for clip in range(plan.batch_size):
        for slot in range(int(plan.kept[clip])):
            sources = torch.nonzero(plan.slot_index[clip] == slot)[:, 0]
            weights = plan.weights[clip, sources].double()
            values = tokens[clip, sources].double()
            out[clip, slot] = (values * weights[:, None]).sum(0) / weights.sum()
    return out


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=60, deadline=None)
@given(data=batches(), keep_ratio=ratios, window=st.integers(1, 12))
def test_invariants(name, data, keep_ratio, window):
    tokens, lengths = data
    result = compress(name, tokens, lengths, keep_ratio, window)
    plan = result.plan
    expected_k = [ltbm.kept_tokens(int(n), keep_ratio) for n in lengths]

    # Exactly K slots per clip, in the output and in the plan.
    assert result.lengths.tolist() == expected_k
    assert result.tokens.shape == (len(lengths), max(expected_k), tokens.shape[-1])
    assert result.tokens.dtype == tokens.dtype
    sizes = plan.sizes
    for clip, k in enumerate(expected_k):
        assert bool((sizes[clip, :k] >= 1).all()), "every real slot holds a source"
        assert bool((sizes[clip, k:] == 0).all()), "padding slots hold nothing"

    # Sizes sum to the valid length (merging, pooling) or to K (selection); merged runs,
    # some dropped, hold consecutive sources and sum to between K and the valid length.
    total = sizes.sum(1).tolist()
    if family(name) in MERGE_THEN_SELECT:
        assert all(k <= t <= n for k, t, n in zip(expected_k, total, lengths.tolist(), strict=True))
        spans = plan.spans
        widths = spans[..., 1] - spans[..., 0] + 1
        assert torch.equal(torch.where(plan.slot_mask, widths, 0), sizes)
    else:
        assert total == (lengths.tolist() if family(name) in MERGING else expected_k)

    # Padding sources are never used; output past K is zero.
    width = tokens.shape[1]
    padding = torch.arange(width)[None, :] >= lengths[:, None]
    assert bool((plan.slot_index[padding] == -1).all())
    assert bool((result.tokens[~plan.slot_mask] == 0).all())

    # apply() is the size-weighted mean of each slot's sources.
    reference = size_weighted_reference(tokens, lengths, plan)
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(
        tokens.dtype, 1e-12
    )
    scale = (reference.abs().max().item() if reference.numel() else 0.0) + 1.0
    assert torch.allclose(result.tokens.double(), reference, atol=tolerance * scale, rtol=0)

    # Slots keep temporal order (by mean source frame), and selections by source frame.
    centroids = plan.centroids
    for clip, k in enumerate(expected_k):
        order = centroids[clip, :k]
        assert bool((order[1:] >= order[:-1]).all())

    # Deterministic: the same input gives the same plan.
    again = compress(name, tokens, lengths, keep_ratio, window).plan
    assert torch.equal(again.slot_index, plan.slot_index)
    assert torch.equal(again.weights, plan.weights)


BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_ratio_one_is_identity_bit_for_bit(name, dtype):
    tokens = torch.randn(3, 17, 8).to(dtype)
    tokens[0, 3] = -0.0  # the sign of zero survives too
    tokens[1, 4:7] = tokens[1, 3]  # a run that merging methods would merge below ratio 1
    lengths = torch.tensor([17, 9, 1])
    result = compress(name, tokens, lengths, 1.0)
    assert result.lengths.tolist() == [17, 9, 1]
    valid = torch.arange(17)[None, :] < lengths[:, None]
    bits = BITS.get(dtype, torch.int16)
    assert torch.equal(result.tokens[valid].view(bits), tokens[valid].view(bits))


@pytest.mark.parametrize("name", CASES)
def test_keep_ratio_one_returns_padding_rows_as_zeros(name):
    """What the README states: at keep_ratio=1 the valid rows come back bit for bit and the
    rows past each clip's length are zeros, whatever the padding held, so a batch padded
    with zeros comes back unchanged; the output is max(lengths) rows wide."""
    tokens = torch.randn(3, 12, 5)
    lengths = torch.tensor([10, 4, 7])
    padded = tokens.clone()
    padded[torch.arange(12)[None, :] >= lengths[:, None]] = 0.0
    garbage = padded.clone()
    garbage[torch.arange(12)[None, :] >= lengths[:, None]] = 7.0
    from_zeros = compress(name, padded, lengths, 1.0).tokens
    from_garbage = compress(name, garbage, lengths, 1.0).tokens
    assert from_zeros.shape == (3, 10, 5)
    assert torch.equal(from_zeros, padded[:, :10]) and torch.equal(from_garbage, from_zeros)


@pytest.mark.parametrize("name", CASES)
def test_padding_content_is_ignored(name):
    """Changing what lies past a clip's length, even to NaN, changes nothing."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 30, 6, generator=generator)
    lengths = torch.tensor([30, 18])
    first = compress(name, tokens, lengths, 0.3)
    tokens[1, 18:] = float("nan")
    second = compress(name, tokens, lengths, 0.3)
    assert torch.equal(first.plan.slot_index, second.plan.slot_index)
    assert torch.equal(first.plan.weights, second.plan.weights)
    assert torch.equal(first.tokens, second.tokens)


@pytest.mark.parametrize("name", CASES)
def test_clip_result_does_not_depend_on_batch(name):
    """A clip compressed alone or beside others (with padding) gives the same tokens."""
    generator = torch.Generator().manual_seed(1)
    long_clip = torch.randn(1, 40, 5, generator=generator)
    short_clip = torch.randn(1, 23, 5, generator=generator)
    batch = torch.cat([long_clip, torch.cat([short_clip, torch.zeros(1, 17, 5)], 1)])
    lengths = torch.tensor([40, 23])
    method = make_method(name, 0.25)
    signals = attention_signals(batch, lengths) if method.needs_attention else {}
    together = method(batch, lengths, **signals)
    alone_signals = {k: v[1:, :, :23] for k, v in signals.items()}
    alone = method(short_clip, None, **alone_signals)
    k = int(alone.lengths[0])
    assert torch.allclose(together.tokens[1, :k], alone.tokens[0], atol=1e-6)


def test_unmerge_broadcasts_slots_back_to_sources():
    tokens = torch.randn(2, 20, 4)
    lengths = torch.tensor([20, 11])
    result = ltbm.compress(tokens, lengths, "ltbm", 0.3, window=2)
    back = result.plan.unmerge(result.tokens)
    assert back.shape == tokens.shape
    for clip in range(2):
        for source in range(20):
            slot = int(result.plan.slot_index[clip, source])
            expected = result.tokens[clip, slot] if slot >= 0 else torch.zeros(4)
            assert torch.equal(back[clip, source], expected)


def test_spans_cover_each_slot_sources():
    tokens = torch.randn(1, 50, 4)
    plan = ltbm.compress(tokens, None, "pool", 0.1).plan
    assert plan.spans[0].tolist() == [[0, 9], [10, 19], [20, 29], [30, 39], [40, 49]]
    assert plan.sizes[0].tolist() == [10] * 5


@pytest.mark.parametrize("method", ["uniform", "random", "prune"])
def test_selection_apply_copies_the_selected_rows(method):
    """A selection plan's output is its selected rows bit for bit, zeros on padding slots,
    for a non-contiguous input too, and gradients flow to exactly those rows."""
    tokens = torch.randn(3, 4, 40, dtype=torch.float64).transpose(1, 2)  # [3, 40, 4], a view
    lengths = torch.tensor([40, 17, 2])
    params = {"scorer": "norm"} if method == "prune" else {}
    plan = ltbm.get_method(method, keep_ratio=0.25, **params).plan(tokens, lengths)
    source = plan.selected_sources()
    expected = torch.stack([tokens[b, source[b]] for b in range(3)])
    expected[~plan.slot_mask] = 0
    assert torch.equal(plan.apply(tokens), expected)
    leaf = tokens.detach().requires_grad_()
    plan.apply(leaf).sum().backward()
    assert int(leaf.grad.sum()) == 4 * int(plan.slot_mask.sum())
