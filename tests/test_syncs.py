"""How often a compress call makes a GPU's host wait for the device, counted on CPU.

The counter (:mod:`ltbm.core.syncs`) is checked on the operations it must and must not
count; then every registered method's count on the accelerator path is pinned by an upper
bound, so that a read of the device added back fails here, and the pipeline's steps are
counted through ``benchmarks/pipeline_syncs.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ltbm
from ltbm.core.device_path import forced
from ltbm.core.syncs import SyncCounter, host_list, host_tensor, host_values, is_host_tensor
from ltbm.methods import METHODS, get_method
from ltbm.methods.pruning import attention_received

ROOT = Path(__file__).resolve().parents[1]

GLOBAL_ROUNDS = 2 * 2
"""Global's waits besides the others: per round (two here), the list of pairs its float64
multiply could not settle, and when there are any, one copy of their rows to the host."""

BOUNDS: list[tuple[str, dict, int]] = [
    # The checks whose answer decides a path or raises an error, one read each: the tokens'
    # finiteness (ltbm and global fold it into the norms they compute), the means'
    # finiteness in apply (merging, pooling), the queries' and keys' (attention), norms
    # that underflow (scorer norm); adaptive_diverse's numbers of runs and of greedy steps
    # depend on the data; a plan with attention weights is asked whether they are all one
    # (and, where the kept sources are not known on the host, whether it is a selection).
    ("ltbm", {}, 2),
    ("ltbm", {"window": 3}, 2),
    ("ltbm", {"weighting": "attention"}, 4),
    ("global", {}, 2 + GLOBAL_ROUNDS),
    ("global", {"weighting": "attention"}, 4 + GLOBAL_ROUNDS),
    ("pool", {}, 2),
    ("prune", {}, 2),
    ("prune", {"scorer": "norm"}, 2),
    ("segment_topk", {}, 2),
    ("segment_topk", {"scorer": "norm"}, 2),
    ("adaptive_diverse", {}, 6),
    ("adaptive_diverse", {"weighting": "size"}, 4),
    ("uniform", {}, 1),
    ("random", {}, 1),
]
"""Upper bounds on the syncs of one call with lengths given on the host, B clips of
different lengths, N = 120, keep ratio 0.25 (two rounds of merging)."""

DEFAULT_BOUND = 12
"""For a registered method without a bound of its own (one added later). Give it one."""


def settings() -> list[tuple[str, dict, int]]:
    """Every bound above for a registered method, and every other registered method with
    its defaults under the default bound."""
    listed = {name for name, _, _ in BOUNDS}
    known = [bound for bound in BOUNDS if bound[0] in METHODS]
    return known + [(name, {}, DEFAULT_BOUND) for name in sorted(METHODS) if name not in listed]


def default_bound(name: str) -> int:
    return next((b for n, p, b in BOUNDS if n == name and not p), DEFAULT_BOUND)


def setting_id(setting: tuple[str, dict, int]) -> str:
    name, params, _ = setting
    return name + "".join(f"-{key}={value}" for key, value in params.items())


def batch(clips: int, width: int = 120, dim: int = 16, seed: int = 0):
    """Tokens of clips of different lengths, their lengths, and attention signals."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(clips, width, dim, generator=generator)
    lengths = [width - 9 * clip for clip in range(clips)]
    queries = torch.randn(clips, 2, width, 4, generator=generator)
    keys = torch.randn(clips, 2, width, 4, generator=generator)
    return tokens, lengths, {"queries": queries, "keys": keys}


def count(name: str, params: dict, tokens, lengths, signals) -> SyncCounter:
    """The syncs of one call on the accelerator path (attention signals where needed)."""
    method = ltbm.get_method(name, keep_ratio=0.25, **params)
    given = signals if method.needs_attention else {}
    with forced("accelerator"), SyncCounter(sites=True) as syncs:
        method(tokens, lengths, **given)
    return syncs


# ------------------------------------------------------------------------- the counter
def test_the_counter_counts_each_kind_of_wait_once():
    x = torch.arange(6.0)
    with forced("accelerator"), SyncCounter() as syncs:
        x[0].item()
        x.tolist()
        bool(x[1] > 0)
        int(x[2])
        torch.nonzero(x)
        x[x > 2]
        torch.bincount(x.long())
        x.cpu()
        x.sum() * 2  # no wait: stays on the device
        torch.nonzero_static(x > 2, size=3)  # no wait: the size is given
    assert syncs.by_kind == {
        "item": 1,
        "tolist": 1,
        "bool": 1,
        "int": 1,
        "nonzero": 1,
        "boolean index": 1,
        "bincount": 1,
        "to host": 1,
    }
    assert syncs.total == 8


def test_cpu_tensors_count_only_on_the_forced_path():
    x = torch.arange(4)
    with SyncCounter() as syncs:
        x.tolist()
        bool(x.any())
    assert syncs.total == 0
    with forced("accelerator"), SyncCounter() as syncs:
        host_values(x)  # a host tensor, read as such
        host_list(host_tensor([1, 2]))
    assert syncs.total == 0


def test_host_tensors_are_marked_and_host_values_refuses_the_device():
    marked = host_tensor(torch.tensor([3, 4], dtype=torch.int32))
    assert is_host_tensor(marked) and marked.dtype == torch.long
    assert not is_host_tensor(torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="reads host tensors"):
        host_values(torch.zeros(2, device="meta"))


def test_steps_are_counted_apart():
    x = torch.arange(3)
    with forced("accelerator"), SyncCounter() as syncs:
        syncs.step = "first"
        x.tolist()
        syncs.step = "second"
        x[0].item()
        x[1].item()
    assert syncs.by_step == {"first": 1, "second": 2}


# --------------------------------------------------------------------------- methods
@pytest.mark.parametrize("setting", settings(), ids=setting_id)
def test_sync_count_of_each_method_is_pinned(setting):
    name, params, bound = setting
    tokens, lengths, signals = batch(4)
    syncs = count(name, params, tokens, lengths, signals)
    assert syncs.total <= bound, f"{name}: {syncs.total} syncs, at {dict(syncs.by_site)}"


@pytest.mark.parametrize("setting", settings(), ids=setting_id)
def test_lengths_on_the_device_cost_one_read_and_on_the_host_none(setting):
    """Lengths given on the host (a list, or a tensor a backbone adapter marked as host
    memory) are never read back; on the tokens' device, once."""
    name, params, _ = setting
    tokens, lengths, signals = batch(3)
    on_host = count(name, params, tokens, lengths, signals).total
    marked = count(name, params, tokens, host_tensor(lengths), signals).total
    on_device = count(name, params, tokens, torch.tensor(lengths), signals).total
    assert marked == on_host
    assert on_device == on_host + 1


@pytest.mark.parametrize("setting", settings(), ids=setting_id)
def test_sync_count_does_not_grow_with_the_batch(setting):
    """No read per clip: eight clips wait as often as one (global may add, per round, one
    copy of pairs its multiply could not settle, which depends on the data)."""
    name, params, _ = setting
    one = count(name, params, *batch(1)).total
    eight = count(name, params, *batch(8)).total
    assert one <= eight <= one + (2 if name == "global" else 0)


def attention_settings() -> list[tuple[str, dict, int]]:
    return [bound for bound in settings() if get_method(bound[0], **bound[1]).needs_attention]


@pytest.mark.parametrize("setting", attention_settings(), ids=setting_id)
def test_received_scores_wait_no_more_than_queries_and_keys(setting):
    """Scores handed over by a backbone (Audio Flamingo 3) take the one read that checks
    the queries and keys (for NaN), and one more where they weigh frames (for negative
    values)."""
    name, params, _ = setting
    tokens, lengths, signals = batch(3)
    scores = attention_received(signals["queries"], signals["keys"], torch.tensor(lengths))
    from_signals = count(name, params, tokens, lengths, signals).total
    from_scores = count(name, params, tokens, lengths, {"scores": scores}).total
    weighs = getattr(get_method(name, **params), "weighting", None) == "attention"
    assert from_scores <= from_signals + int(weighs)


def test_frozen_plan_cases_wait_as_bounded():
    """The frozen set's merging inputs (mixed lengths, junk and NaN padding, ties, half
    precision) stay within the bounds on the accelerator path, lengths on the host."""
    from frozen_plans import merge_cases

    worst: dict[str, int] = {}
    for _, tokens, lengths, method, params in merge_cases():
        host = lengths.tolist()
        with forced("accelerator"), SyncCounter() as syncs:
            ltbm.compress(tokens, host, method, **params)
        worst[method] = max(worst.get(method, 0), syncs.total)
    rounds = 4  # keep 0.1: at most four rounds
    assert worst["ltbm"] <= default_bound("ltbm")
    assert worst["global"] <= 2 + 2 * rounds


# -------------------------------------------------------------------------- pipeline
def test_pipeline_steps_wait_only_where_they_must(tmp_path):
    """The tiny Qwen2-Audio's pipeline: the processor, the projector and the scatter into
    K placeholders never wait for the device; compress waits as the method does."""
    out = tmp_path / "syncs.json"
    args = ["--batch-size", "2", "--seconds", "3", "--new-tokens", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pipeline_syncs.py"), *args],
        check=True, capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) >= {"none", "ltbm", "global", "pool", "uniform", "random"}
    for name, row in rows.items():
        assert row["processor"] == row["projector"] == row["scatter"] == 0, row
        assert row["compress"] <= default_bound(name), row
    assert rows["none"]["compress"] == 0
