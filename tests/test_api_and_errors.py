"""The public API, the budget rule and the messages bad input gets."""

from __future__ import annotations

import pytest
import torch

import ltbm
from ltbm.methods.pruning import attention_received


@pytest.mark.parametrize(
    ("n", "ratio", "expected"),
    [
        (750, 1.0, 750),
        (750, 0.25, 188),
        (750, 0.15, 113),
        (10, 0.3, 3),
        (3, 0.01, 2),
        (1, 0.5, 1),
        (0, 0.5, 0),
        (15000, 0.25, 3750),
        (100, 0.33, 33),
    ],
)
def test_kept_tokens(n, ratio, expected):
    assert ltbm.kept_tokens(n, ratio) == expected


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), "half"])
def test_bad_keep_ratio(ratio):
    with pytest.raises(ValueError, match="keep_ratio"):
        ltbm.compress(torch.randn(1, 10, 4), keep_ratio=ratio)


@pytest.mark.parametrize("window", [0, -2, 1.5])
def test_bad_window(window):
    with pytest.raises(ValueError, match="window must be a positive integer"):
        ltbm.compress(torch.randn(1, 10, 4), window=window)


def test_ltbm_without_window_points_to_global():
    with pytest.raises(ValueError, match="method='global'"):
        ltbm.LTBM(0.5, window=None)


def test_nan_and_inf_tokens_are_refused():
    tokens = torch.randn(2, 10, 4)
    tokens[1, 3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf .* clips \[1\]"):
        ltbm.compress(tokens)


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ([11, 3], r"lengths must lie in \[0, 10\]"),
        ([-1, 3], "lengths must lie"),
        ([3], "one valid length per clip"),
        ([[3, 3]], "1-D"),
    ],
)
def test_bad_lengths(lengths, message):
    with pytest.raises(ValueError, match=message):
        ltbm.compress(torch.randn(2, 10, 4), torch.tensor(lengths))


def test_float_lengths_refused():
    with pytest.raises(TypeError, match="integers"):
        ltbm.compress(torch.randn(2, 10, 4), torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize("shape", [(10, 4), (1, 2, 10, 4), (10,)])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match="tokens must have shape"):
        ltbm.compress(torch.randn(*shape))


def test_integer_tokens_refused():
    with pytest.raises(TypeError, match="floating point"):
        ltbm.compress(torch.ones(1, 10, 4, dtype=torch.long))


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown method 'tome'.*ltbm, global, pool, prune"):
        ltbm.compress(torch.randn(1, 10, 4), method="tome")


def test_unknown_parameter_lists_accepted_ones():
    with pytest.raises(
        ValueError, match="takes no parameter 'windw'.*accepts 'keep_ratio', 'window'"
    ):
        ltbm.compress(torch.randn(1, 10, 4), method="ltbm", windw=3)


def test_objects_and_function_agree():
    tokens = torch.randn(2, 30, 8)
    lengths = torch.tensor([30, 21])
    by_name = ltbm.compress(tokens, lengths, method="ltbm", keep_ratio=0.25, window=3)
    by_object = ltbm.LTBM(keep_ratio=0.25, window=3)(tokens, lengths)
    assert torch.equal(by_name.tokens, by_object.tokens)
    assert repr(ltbm.LTBM(0.25, 3)) == "LTBM(keep_ratio=0.25, window=3)"


def test_attention_prune_needs_queries_and_keys():
    with pytest.raises(ValueError, match="queries and keys"):
        ltbm.compress(torch.randn(1, 10, 4), method="prune", scorer="attention")


def test_attention_scorer_keeps_the_most_attended_tokens():
    """Queries that all point at frames 2 and 7 make those the most attended."""
    keys = torch.zeros(1, 2, 10, 4)
    keys[0, :, 2] = torch.tensor([8.0, 0, 0, 0])
    keys[0, :, 7] = torch.tensor([0, 8.0, 0, 0])
    queries = torch.ones(1, 2, 10, 4)
    tokens = torch.randn(1, 10, 3)
    result = ltbm.compress(
        tokens, None, "prune", 0.2, scorer="attention", queries=queries, keys=keys
    )
    assert result.plan.spans[0, :, 0].tolist() == [2, 7]


def test_attention_scores_pool_frames_to_tokens():
    """Twice as many frames as tokens (the encoder's AvgPool): scores average in pairs."""
    queries = torch.randn(2, 3, 20, 4)
    keys = torch.randn(2, 3, 20, 4)
    lengths = torch.tensor([10, 6])
    received = attention_received(queries, keys, lengths * 2)
    # Each valid query's attention sums to one across valid keys.
    assert torch.allclose(received.sum(1), torch.ones(2), atol=1e-5)
    assert bool((received[1, 12:] == 0).all())
    result = ltbm.compress(
        torch.randn(2, 10, 3), lengths, "prune", 0.5, scorer="attention", queries=queries, keys=keys
    )
    assert result.lengths.tolist() == [5, 3]


def test_random_is_seeded_and_seeds_differ():
    tokens = torch.randn(1, 100, 4)
    first = ltbm.compress(tokens, None, "random", 0.2, seed=3).plan.slot_index
    again = ltbm.compress(tokens, None, "random", 0.2, seed=3).plan.slot_index
    other = ltbm.compress(tokens, None, "random", 0.2, seed=4).plan.slot_index
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_prune_by_norm_keeps_the_largest_tokens():
    tokens = torch.ones(1, 8, 2)
    tokens[0, [1, 6]] *= 10
    result = ltbm.compress(tokens, None, "prune", 0.25, scorer="norm")
    assert result.plan.spans[0, :, 0].tolist() == [1, 6]


def test_plan_refuses_tensors_of_other_clips():
    plan = ltbm.compress(torch.randn(1, 10, 4), keep_ratio=0.5).plan
    with pytest.raises(ValueError, match="plan was made for"):
        plan.apply(torch.randn(1, 12, 4))


def test_plan_applies_to_any_trailing_shape():
    tokens = torch.randn(2, 12, 4)
    plan = ltbm.compress(tokens, torch.tensor([12, 7]), keep_ratio=0.5).plan
    positions = torch.arange(12, dtype=torch.float32).expand(2, 12)
    assert torch.allclose(plan.apply(positions), plan.centroids.float())


def test_registered_method_is_usable_by_name(monkeypatch):
    monkeypatch.setattr(ltbm.methods.registry, "METHODS", dict(ltbm.METHODS))

    @ltbm.register
    class FirstK(ltbm.Uniform):
        """Keeps the first K tokens (a test method)."""

        name = "first"

    assert "first" in ltbm.methods.registry.METHODS
    assert isinstance(ltbm.get_method("first", keep_ratio=0.5), FirstK)
    with pytest.raises(TypeError, match="class attribute `name`"):
        ltbm.register(type("Nameless", (), {}))


def test_methods_command_lists_every_method_with_its_whole_summary():
    from typer.testing import CliRunner

    from ltbm.cli import app
    from ltbm.methods.registry import METHODS

    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "3000"})  # one line a row
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    for name in METHODS:
        assert f" {name} " in text
    assert "unbroken run of neighbouring tokens." in text, "LTBM's summary is cut short"
