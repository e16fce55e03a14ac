"""Core numerics: plans do not depend on the tokens' scale, float64 is exact, and inputs that
cannot be compressed meaningfully are refused with a message instead of a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ltbm

MERGING = [("ltbm", {"window": 1}), ("ltbm", {"window": 3}), ("global", {})]
ALL_CONTENT_METHODS = [
    *MERGING,
    ("prune", {"scorer": "norm"}),
    ("segment_topk", {"scorer": "norm"}),
    ("adaptive_diverse", {"weighting": "size"}),
]


def random_tokens(dtype=torch.float32, shape=(3, 60, 24), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


LENGTHS = torch.tensor([60, 41, 7])


def reference_means(tokens: torch.Tensor, plan: ltbm.Plan) -> torch.Tensor:
    """Each slot's mean computed the slow way in float64 (float64 tokens stay exact)."""
    out = torch.zeros(plan.batch_size, plan.num_slots, tokens.shape[-1], dtype=torch.float64)
    for clip in range(plan.batch_size):
        for slot in range(int(plan.kept[clip])):
            sources = torch.nonzero(plan.slot_index[clip] == slot)[:, 0]
            out[clip, slot] = tokens[clip, sources].double().mean(0)
    return out


@pytest.mark.parametrize(("method", "params"), ALL_CONTENT_METHODS)
@pytest.mark.parametrize("scale", [1e20, 1e-30, 2.0**100, 2.0**-100])
def test_float32_plans_do_not_depend_on_scale(method, params, scale):
    tokens = random_tokens()
    plain = ltbm.compress(tokens, LENGTHS, method, 0.2, **params)
    scaled = ltbm.compress(tokens * scale, LENGTHS, method, 0.2, **params)
    assert torch.equal(plain.plan.slot_index, scaled.plan.slot_index)
    assert [e.tolist() for e in plain.plan.history] == [e.tolist() for e in scaled.plan.history]
    assert bool(torch.isfinite(scaled.tokens).all())


@pytest.mark.parametrize(("method", "params"), MERGING)
def test_power_of_two_scale_gives_exactly_scaled_tokens(method, params):
    """Scaling by 2^k is exact, so the compressed tokens are the plain ones times 2^k, bit
    for bit, however far k moves them (1e-30 to 1e38 here)."""
    tokens = random_tokens()
    plain = ltbm.compress(tokens, LENGTHS, method, 0.2, **params).tokens
    for shift in (-100, 60, 124):
        scaled = ltbm.compress(tokens * 2.0**shift, LENGTHS, method, 0.2, **params).tokens
        assert torch.equal(scaled, plain * 2.0**shift)


@pytest.mark.parametrize(("method", "params"), MERGING)
def test_float64_is_computed_exactly_even_near_its_largest_values(method, params):
    tokens = random_tokens(torch.float64)
    plain = ltbm.compress(tokens, LENGTHS, method, 0.2, **params)
    assert plain.tokens.dtype == torch.float64
    assert torch.allclose(plain.tokens, reference_means(tokens, plain.plan), rtol=1e-13, atol=0)
    huge = ltbm.compress(tokens * 1e300, LENGTHS, method, 0.2, **params)
    assert torch.equal(huge.plan.slot_index, plain.plan.slot_index)
    assert bool(torch.isfinite(huge.tokens).all())
    expected = reference_means(tokens * 1e300, plain.plan)
    assert torch.allclose(huge.tokens, expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_means_of_tokens_near_the_largest_float_do_not_overflow(dtype):
    """Two tokens near 3e38 average to a finite token: the sum that would overflow is taken
    on the clip scaled down by a power of two."""
    tokens = (random_tokens(shape=(1, 40, 8)).abs() + 1) * 1e38
    tokens = tokens.clamp(max=torch.finfo(dtype).max).to(dtype)
    result = ltbm.compress(tokens, None, "pool", 0.25)
    assert bool(torch.isfinite(result.tokens).all())
    expected = reference_means(tokens, result.plan)
    assert torch.allclose(result.tokens.double(), expected, rtol=1e-2, atol=0)


@pytest.mark.parametrize("name", sorted(ltbm.METHODS))
def test_width_zero_tokens_are_refused(name):
    params = {"prune": {"scorer": "norm"}}.get(name, {})
    with pytest.raises(ValueError, match="no features"):
        ltbm.compress(torch.zeros(2, 10, 0), None, name, 0.5, **params)


@pytest.mark.parametrize("name", sorted(ltbm.METHODS))
def test_meta_tokens_are_refused(name):
    params = {"prune": {"scorer": "norm"}}.get(name, {})
    with pytest.raises(ValueError, match="meta device"):
        ltbm.compress(torch.zeros(2, 10, 4, device="meta"), None, name, 0.5, **params)


@pytest.mark.parametrize(
    "name", ["ltbm", "global", "pool", "prune", "segment_topk", "adaptive_diverse"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_non_finite_valid_tokens_are_refused(name, value, dtype):
    tokens = random_tokens(dtype)
    tokens[1, 40, 3] = value
    params = {
        "prune": {"scorer": "norm"},
        "segment_topk": {"scorer": "norm"},
        "adaptive_diverse": {"weighting": "size"},
    }.get(name, {})
    with pytest.raises(ValueError, match=r"NaN or Inf .* clips \[1\]"):
        ltbm.compress(tokens, LENGTHS, name, 0.3, **params)


def test_finite_tokens_whose_norms_overflow_are_accepted():
    tokens = random_tokens(shape=(1, 30, 64)).sign() * 3e38
    result = ltbm.compress(tokens, None, "ltbm", 0.25)
    assert result.lengths.tolist() == [8]
    assert bool(torch.isfinite(result.tokens).all())


def test_prune_refuses_nan_scores_at_valid_positions():
    tokens = random_tokens()
    scores = torch.randn(3, 60)
    scores[2, 3] = float("nan")
    with pytest.raises(ValueError, match="scores hold NaN"):
        ltbm.compress(tokens, LENGTHS, "prune", 0.3, scores=scores)
    scores[2, 3] = 0.0
    scores[2, 50] = float("nan")  # padding of clip 2 (length 7): ignored
    assert ltbm.compress(tokens, LENGTHS, "prune", 0.3, scores=scores).lengths.tolist() == [
        18,
        13,
        3,
    ]


@pytest.mark.parametrize("which", ["queries", "keys"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_prune_refuses_non_finite_queries_and_keys(which, value):
    signals = {"queries": torch.randn(3, 2, 60, 4), "keys": torch.randn(3, 2, 60, 4)}
    signals[which][0, 1, 5, 2] = value
    with pytest.raises(ValueError, match=f"{which} hold NaN or Inf .* clip 0"):
        ltbm.compress(random_tokens(), LENGTHS, "prune", 0.3, scorer="attention", **signals)


def test_prune_refuses_scores_of_the_wrong_kind():
    with pytest.raises(TypeError, match="scores must be"):
        ltbm.compress(random_tokens(), LENGTHS, "prune", 0.3, scores=[[1.0] * 60] * 3)
    with pytest.raises(ValueError, match=r"scores must be \[B, N\]"):
        ltbm.compress(random_tokens(), LENGTHS, "prune", 0.3, scores=torch.randn(3, 59))


@pytest.mark.parametrize("seed", [1.7, 2.0, True, False, -1, 2**63, "3", None])
def test_random_refuses_seeds_that_are_not_integers(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        ltbm.Random(0.5, seed=seed)
    with pytest.raises(ValueError, match="seed must be an integer"):
        ltbm.compress(random_tokens(), LENGTHS, "random", 0.5, seed=seed)


def test_random_accepts_integer_seeds_of_any_integer_type():
    tokens = random_tokens()
    plain = ltbm.compress(tokens, LENGTHS, "random", 0.5, seed=7).plan.slot_index
    numpy_seed = ltbm.compress(tokens, LENGTHS, "random", 0.5, seed=np.int64(7)).plan.slot_index
    assert torch.equal(plain, numpy_seed)


@pytest.mark.parametrize("window", [True, float("inf"), float("nan"), "3", 2.5, 0])
def test_windows_that_are_not_positive_integers_are_refused(window):
    with pytest.raises(ValueError, match="window must be a positive integer"):
        ltbm.LTBM(0.5, window=window)


@pytest.mark.parametrize("name", ["ltbm", "global", "pool"])
def test_gradients_flow_through_apply(name):
    """Each source's gradient of the summed output is 1 / (size of its slot)."""
    tokens = random_tokens().requires_grad_()
    result = ltbm.compress(tokens, LENGTHS, name, 0.25)
    result.tokens.sum().backward()
    plan = result.plan
    sizes = plan.sizes.gather(1, plan.slot_index.clamp(min=0)).double()
    expected = torch.where(plan.slot_index >= 0, 1.0 / sizes, 0.0)
    assert torch.allclose(tokens.grad.double(), expected[:, :, None].expand_as(tokens.grad))
    plain = ltbm.compress(tokens.detach(), LENGTHS, name, 0.25)
    assert torch.equal(result.tokens.detach(), plain.tokens)
