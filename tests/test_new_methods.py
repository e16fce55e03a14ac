"""segment_topk, adaptive_diverse and attention weighting: their rules, on hand-made cases.

The invariants every method keeps (exactly K, temporal order, padding, dtypes, identity at
keep 1, determinism) are checked in ``test_method_invariants.py``; here each rule the
methods add is checked against a value worked out by hand or by brute force.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ltbm
from ltbm.methods.adaptive import adaptive_diverse_plan, max_min_pick
from ltbm.methods.pruning import attention_received
from ltbm.methods.segments import segment_budgets, segment_starts
from ltbm.methods.weighting import MIN_ATTENTION_WEIGHT


def budgets_of(n: int, k: int, segments: int) -> list[int]:
    starts = segment_starts(torch.tensor([n]), segments)
    return segment_budgets(starts, torch.tensor([k]))[0].tolist()


# ----------------------------------------------------------------- segment_topk
@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 400), segments=st.integers(1, 30), data=st.data())
def test_segment_budgets_are_a_largest_remainder_split_of_k(n, segments, data):
    k = data.draw(st.integers(min(n, 2), n)) if n else 0
    budget = budgets_of(n, k, segments)
    starts = segment_starts(torch.tensor([n]), segments)[0].tolist()
    lengths = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    shares = [Fraction(k * length, max(n, 1)) for length in lengths]
    assert sum(budget) == k
    for b, share, length in zip(budget, shares, lengths, strict=True):
        assert math.floor(share) <= b <= math.floor(share) + 1, "floor, plus at most one"
        assert b <= length
    # Largest remainder: no segment left at its floor has a larger remainder than one
    # that got an extra token.
    pairs = list(zip(budget, shares, strict=True))
    given_extra = [share - math.floor(share) for b, share in pairs if b > share]
    left_out = [share - math.floor(share) for b, share in pairs if b < share]
    if given_extra and left_out:
        assert min(given_extra) >= max(left_out)


def test_segment_budgets_spread_tied_remainders_over_the_clip():
    # 30 s at 25 Hz, keep 0.25: ten shares of 18.8; the 8 extra tokens go to evenly spread
    # segments, not to the first eight.
    assert budgets_of(750, 188, 10) == [19, 19, 18, 19, 19, 19, 19, 18, 19, 19]
    # Fewer tokens than segments: one each for two segments spread over the clip.
    assert budgets_of(40, 2, 10) == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    # Fewer tokens than segments in a clip shorter than S: empty segments get nothing.
    starts = segment_starts(torch.tensor([7]), 10)[0].tolist()
    assert starts == [0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 7]
    assert budgets_of(7, 2, 10) == [0, 0, 1, 0, 0, 0, 0, 0, 1, 0]


def test_segment_topk_keeps_the_best_tokens_of_each_segment():
    scores = torch.tensor([[5.0, 1, 2, 9, 1, 8, 3, 3, 0, 0, 4, 6]])
    tokens = torch.randn(1, 12, 3)
    # Three segments of four tokens, K = 6: two per segment, the best two of each; in the
    # middle segment the two 3s tie and the earlier one is kept.
    plan = ltbm.get_method("segment_topk", keep_ratio=0.5, segments=3, scorer="norm").plan(
        tokens, None, scores=scores
    )
    assert plan.selected_sources()[0].tolist() == [0, 3, 5, 6, 10, 11]
    # Ties inside a segment go to the earlier token.
    flat = torch.zeros(1, 12)
    plan = ltbm.get_method("segment_topk", keep_ratio=0.5, segments=3).plan(
        tokens, None, scores=flat
    )
    assert plan.selected_sources()[0].tolist() == [0, 1, 4, 5, 8, 9]


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_one_segment_is_prune(ratio):
    tokens = torch.randn(3, 50, 6, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([50, 31, 4])
    prune = ltbm.compress(tokens, lengths, "prune", ratio, scorer="norm").plan
    one = ltbm.compress(tokens, lengths, "segment_topk", ratio, segments=1, scorer="norm").plan
    assert torch.equal(prune.slot_index, one.slot_index)


def test_segment_topk_attention_scores_are_prunes():
    """The attention scorer is prune's: the encoder's last-layer attention each token
    receives, here from queries and keys over twice as many frames as tokens."""
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 20, 8, generator=generator)
    lengths = torch.tensor([20, 13])
    queries, keys = torch.randn(2, 2, 3, 40, 4, generator=generator)
    method = ltbm.get_method("segment_topk", keep_ratio=0.3, segments=4, scorer="attention")
    plan = method.plan(tokens, lengths, queries=queries, keys=keys)
    received = attention_received(queries, keys, lengths * 2).reshape(2, 20, 2).mean(-1)
    expected = method.plan(tokens, lengths, scores=received)
    assert torch.equal(plan.slot_index, expected.slot_index)
    with pytest.raises(ValueError, match="queries and keys"):
        method.plan(tokens, lengths)


@pytest.mark.parametrize("segments", [0, -1, 2.5, True, "10"])
def test_bad_segment_counts_are_refused(segments):
    with pytest.raises(ValueError, match="segments must be a positive integer"):
        ltbm.get_method("segment_topk", keep_ratio=0.5, segments=segments)


# ------------------------------------------------------------- adaptive_diverse
def unit(angle_degrees: float) -> list[float]:
    angle = math.radians(angle_degrees)
    return [math.cos(angle), math.sin(angle)]


def test_max_min_pick_on_points_of_a_circle():
    # Runs at 0, 10, 85, 100 and 180 degrees. The heaviest (10) comes first; then the one
    # farthest from it (180); then the one whose nearest chosen run is farthest: 85 is 75
    # degrees from 10, 100 is 80 from 180, so 100; then 85 (15 from 100) before 0 (10 from 10).
    units = torch.tensor([[unit(a) for a in (0, 10, 85, 100, 180)]], dtype=torch.float64)
    mass = torch.tensor([[1.0, 3.0, 1.0, 1.0, 2.0]], dtype=torch.float64)
    runs = torch.tensor([5])
    chosen = max_min_pick(units, mass, runs, torch.tensor([3]))
    assert chosen[0].tolist() == [False, True, False, True, True]
    chosen = max_min_pick(units, mass, runs, torch.tensor([4]))
    assert chosen[0].tolist() == [False, True, True, True, True]
    # Runs past R are never chosen; a clip with R <= K keeps every run.
    chosen = max_min_pick(units, mass, torch.tensor([2]), torch.tensor([2]))
    assert chosen[0].tolist() == [True, True, False, False, False]


def test_max_min_pick_breaks_ties_by_position():
    units = torch.tensor([[unit(0), unit(90), unit(90), unit(0)]])
    # Equal masses: the earlier run seeds; the two runs at 90 degrees tie: the earlier wins.
    chosen = max_min_pick(units, torch.ones(1, 4), torch.tensor([4]), torch.tensor([2]))
    assert chosen[0].tolist() == [True, True, False, False]


def hand_clip() -> torch.Tensor:
    """Runs by construction: 3 × a, 2 × b, 1 × c, 2 × a' (a' close to a), in 2-D."""
    a, b, c, a2 = unit(0), unit(90), unit(200), unit(5)
    return torch.tensor([[a, a, a, b, b, c, a2, a2]])


def test_adaptive_runs_then_diverse_choice_by_hand():
    tokens = hand_clip()
    # Runs: [0-2] a, [3-4] b, [5] c, [6-7] a'. K = 3 (keep 0.3 of 8 = 2.4 → 3): the heaviest
    # run (a, 3 frames) first, then c (200 degrees from a), then b (90 from a, 110 from c)
    # before a' (5 from a).
    plan = adaptive_diverse_plan(tokens, None, 0.3, threshold=0.9)
    assert plan.slot_index[0].tolist() == [0, 0, 0, 1, 1, 2, -1, -1]
    assert plan.sizes[0].tolist() == [3, 2, 1]
    assert torch.allclose(plan.apply(tokens)[0], tokens[0, [0, 3, 5]])


def test_adaptive_splits_the_weakest_joins_when_runs_are_too_few():
    tokens = hand_clip()
    # Threshold -1 joins everything into one run; K = 4 undoes the three joins of lowest
    # similarity to the run's mean: c (cos -0.97), the first b (0) and the second b (0.32),
    # not the a' ones (0.83, 0.91).
    plan = adaptive_diverse_plan(tokens, None, 0.5, threshold=-1.0)
    assert plan.kept.tolist() == [4]
    assert plan.slot_index[0].tolist() == [0, 0, 0, 1, 2, 3, 3, 3]
    assert plan.sizes.sum().item() == 8, "with R <= K every run is kept"


def test_adaptive_similarity_is_to_the_run_mean():
    # Token 2 is 60 degrees from token 0 and 30 from token 1: its cosine to the mean of the
    # run {0, 1} (at 15 degrees) is cos 45 = 0.707.
    tokens = torch.tensor([[unit(0), unit(30), unit(60), unit(150)]])
    plan = adaptive_diverse_plan(tokens, None, 0.5, threshold=0.70)
    assert plan.slot_index[0].tolist() == [0, 0, 0, 1]
    # K = 3 > 2 runs: the weaker join (0.707, not 0.866) is undone.
    plan = adaptive_diverse_plan(tokens, None, 0.75, threshold=0.70)
    assert plan.slot_index[0].tolist() == [0, 0, 1, 2]
    # 0.72 > cos 45: runs [0-1], [2], [3]; K = 2 keeps the heaviest and the run farthest
    # from it (150 degrees, not 60).
    plan = adaptive_diverse_plan(tokens, None, 0.5, threshold=0.72)
    assert plan.slot_index[0].tolist() == [0, 0, -1, 1]


def test_adaptive_run_mean_is_of_the_tokens_not_their_directions():
    # A long token pulls the run's mean: the mean of 10·(0°) and 1·(40°) points at 3.4
    # degrees, 56.6 from the 60-degree token (cosine 0.55 < 0.7): it starts a run. (The
    # mean of the unit directions, at 20 degrees, would have taken it in: cosine 0.77.)
    tokens = torch.tensor([[[10.0, 0.0], unit(40), unit(60)]])
    plan = adaptive_diverse_plan(tokens, None, 0.6, threshold=0.7)
    assert plan.slot_index[0].tolist() == [0, 0, 1]


@pytest.mark.parametrize("threshold", [1.5, -1.01, float("nan"), "0.9", True])
def test_bad_thresholds_are_refused(threshold):
    with pytest.raises(ValueError, match="threshold must be"):
        ltbm.get_method("adaptive_diverse", keep_ratio=0.5, threshold=threshold)


def test_bad_weighting_is_refused():
    for name in ("ltbm", "global", "adaptive_diverse"):
        with pytest.raises(ValueError, match="unknown weighting 'mean'"):
            ltbm.get_method(name, keep_ratio=0.5, weighting="mean")


# ------------------------------------------------------------- attention weights
def attention(batch: int, frames: int, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    queries, keys = torch.randn(2, batch, 2, frames, 4, generator=generator)
    return queries, keys


@pytest.mark.parametrize("name", ["ltbm", "global"])
def test_attention_weighting_changes_only_the_weights(name):
    generator = torch.Generator().manual_seed(4)
    tokens = torch.randn(2, 30, 6, generator=generator)
    lengths = torch.tensor([30, 19])
    queries, keys = attention(2, 30)
    size = ltbm.compress(tokens, lengths, name, 0.25)
    weighted = ltbm.compress(
        tokens, lengths, name, 0.25, weighting="attention", queries=queries, keys=keys
    )
    plan = weighted.plan
    assert torch.equal(size.plan.slot_index, plan.slot_index)
    assert [e.tolist() for e in size.plan.history] == [e.tolist() for e in plan.history]
    # The weights: attention received over its clip's mean; one in slots of one source.
    received = attention_received(queries, keys, lengths)
    for clip, n in enumerate(lengths.tolist()):
        expected = received[clip, :n] / received[clip, :n].mean()
        alone = plan.sizes[clip].gather(0, plan.slot_index[clip, :n]) == 1
        expected = torch.where(alone, 1.0, expected.clamp(min=MIN_ATTENTION_WEIGHT))
        assert torch.allclose(plan.weights[clip, :n], expected, rtol=1e-5)
        assert bool((plan.weights[clip, n:] == 0).all())
    # apply is the attention-weighted mean of each slot's frames.
    clip, slot = 0, int(torch.argmax(plan.sizes[0]))
    sources = torch.nonzero(plan.slot_index[0] == slot)[:, 0]
    w = plan.weights[0, sources]
    mean = (tokens[0, sources] * w[:, None]).sum(0) / w.sum()
    assert torch.allclose(weighted.tokens[0, slot], mean, atol=1e-6)
    assert not torch.allclose(weighted.tokens[0, slot], size.tokens[0, slot], atol=1e-4)


def test_ltbm_weighting_is_named_only_when_not_size():
    """Results made before the option existed keep their identity."""
    assert ltbm.get_method("ltbm", keep_ratio=0.25).params() == {
        "method": "ltbm",
        "keep_ratio": 0.25,
        "window": 1,
    }
    assert ltbm.get_method("global", keep_ratio=0.25).params() == {
        "method": "global",
        "keep_ratio": 0.25,
    }
    weighted = ltbm.get_method("ltbm", keep_ratio=0.25, weighting="attention")
    assert weighted.params()["weighting"] == "attention"
    assert weighted.needs_attention
    with pytest.raises(ValueError, match="weighting='size'"):
        weighted(torch.randn(1, 10, 4))


def test_adaptive_attention_weighting_weighs_the_runs():
    tokens = hand_clip()
    queries, keys = attention(1, 8, seed=5)
    sized = adaptive_diverse_plan(tokens, None, 0.3, 0.9)
    weighted = adaptive_diverse_plan(tokens, None, 0.3, 0.9, "attention", queries, keys)
    received = attention_received(queries, keys, torch.tensor([8]))[0]
    weights = received / received.mean()
    # Multi-frame slots weigh their frames by attention; single-frame slots weigh one.
    kept = weighted.slot_index[0] >= 0
    single = weighted.sizes[0].gather(0, weighted.slot_index[0].clamp(min=0)) == 1
    expected = torch.where(kept, torch.where(single, 1.0, weights), 0.0)
    assert torch.allclose(weighted.weights[0], expected, rtol=1e-5)
    assert sized.unit_weights and not weighted.unit_weights


def test_methods_command_shows_the_new_methods_with_their_defaults():
    from typer.testing import CliRunner

    from ltbm.cli import app

    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "3000"})  # one line a row
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert (
        "keep_ratio (default 0.25), segments (default 10), scorer (attention or norm; default "
        "attention)" in text
    )
    assert (
        "keep_ratio (default 0.25), threshold (default 0.9), weighting (size or attention; "
        "default attention)" in text
    )
    assert "keep_ratio (default 0.25), window (default 1), weighting (size or attention" in text
    assert "arXiv 2511.14293" in text and "SA-MAP" in text


@pytest.mark.parametrize(
    ("name", "params"), [("ltbm", {"weighting": "attention"}), ("adaptive_diverse", {})]
)
def test_attention_weights_from_received_scores_equal_those_from_queries_and_keys(name, params):
    """Audio Flamingo 3 hands over the received attention itself (per window): the same
    weights as from the queries and keys it came from."""
    tokens = torch.randn(2, 24, 5, generator=torch.Generator().manual_seed(6))
    lengths = torch.tensor([24, 15])
    queries, keys = attention(2, 24, seed=7)
    method = ltbm.get_method(name, keep_ratio=0.25, **params)
    from_qk = method.plan(tokens, lengths, queries=queries, keys=keys)
    scores = attention_received(queries, keys, lengths)
    from_scores = method.plan(tokens, lengths, scores=scores)
    assert torch.equal(from_qk.slot_index, from_scores.slot_index)
    assert torch.equal(from_qk.weights, from_scores.weights)
    with pytest.raises(ValueError, match="must not be negative"):
        method.plan(tokens, lengths, scores=-scores)
