"""Global Merge's filtered dense search: exact argmax whichever filter runs, same plans."""

from __future__ import annotations

import pytest
import torch

import ltbm
from ltbm.methods import dense_certified, dense_scores
from ltbm.methods.dense_certified import certified_best_partners
from ltbm.methods.dense_scores import BFLOAT16, FLOAT32, forced_path

PATHS = {
    "bfloat16 filter": dict(filter_=BFLOAT16),
    "float32 filter": dict(filter_=FLOAT32),
    "crowded rows to the next level": dict(filter_=BFLOAT16, candidate_limit=0),
    "every pair by the certified float64 multiply": dict(certify=True),
}


def tokens_of(kind: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Small token batches that exercise each path: random, exact repeats (ties), near
    duplicates (huge candidate sets: the float32 re-filter), extreme and mixed scales."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(3, 150, 48, generator=generator)
    if kind == "ties":
        tokens[:, 1::3] = tokens[:, 0:1]
        tokens[:, 10:20] = tokens[:, 30:40] * 4.0
        tokens[:, 50:60] = 0.0
    elif kind == "near duplicates":
        tokens = tokens[:, :1] + 1e-4 * tokens
    elif kind == "extreme scales":
        tokens[0] *= 1e-30
        tokens[1] *= 1e30
        tokens[2] *= torch.logspace(-6, 6, 150)[:, None]
    return tokens, torch.tensor([150, 97, 4])


def brute_force(x: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every A×B pair scored by the canonical computation; earliest B index among equals."""
    width = x.shape[1]
    best_score = torch.full((x.shape[0], (width + 1) // 2), float("-inf"))
    best_b = torch.zeros(best_score.shape, dtype=torch.long)
    for clip, n in enumerate(length.tolist()):
        a, b = x[clip, 0:n:2], x[clip, 1:n:2]
        if b.shape[0] == 0:
            continue
        a_norm, b_norm = dense_scores.exact_norms(a), dense_scores.exact_norms(b)
        rows = torch.arange(a.shape[0]).repeat_interleave(b.shape[0])
        cols = torch.arange(b.shape[0]).repeat(a.shape[0])
        scores = dense_scores.exact_scores(a[rows], b[cols], a_norm[rows], b_norm[cols])
        scores = scores.view(a.shape[0], b.shape[0])
        top = scores.amax(dim=1)
        first = torch.where(scores == top[:, None], torch.arange(b.shape[0]), b.shape[0])
        best_score[clip, : a.shape[0]], best_b[clip, : a.shape[0]] = top, first.amin(dim=1)
    return best_score, best_b


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("kind", ["random", "ties", "near duplicates"])
def test_best_partners_are_the_exact_argmax(kind, path):
    """Whatever the filter keeps, the winner is the canonical maximum, ties to the earliest."""
    tokens, lengths = tokens_of(kind)
    with forced_path(**PATHS[path]):
        score, partner = dense_scores.filtered_best_partners(tokens, lengths, 1000)
    expected_score, expected_partner = brute_force(tokens, lengths)
    assert torch.equal(partner, expected_partner)
    assert torch.equal(score, expected_score)


@pytest.mark.parametrize("kind", ["random", "ties", "near duplicates", "extreme scales"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_path_gives_the_same_plan(kind, dtype):
    tokens, lengths = tokens_of(kind, seed=3)
    tokens = tokens.to(dtype)
    results = {}
    for name, settings in PATHS.items():
        with forced_path(**settings):
            results[name] = ltbm.compress(tokens, lengths, "global", 0.2)
    first = results.pop(sorted(PATHS)[0])
    for result in results.values():
        assert torch.equal(result.plan.slot_index, first.plan.slot_index)
        assert len(result.plan.history) == len(first.plan.history)
        for edges, first_edges in zip(result.plan.history, first.plan.history, strict=True):
            assert torch.equal(edges, first_edges)
        assert torch.equal(result.tokens, first.tokens)


def test_near_duplicates_take_the_certified_multiply(monkeypatch):
    """Near-duplicate tokens leave nearly every column a candidate; those rows are settled
    by the float64 multiply (and still get the exact winner, checked above)."""
    calls = []
    certified = dense_scores.certified_winners
    monkeypatch.setattr(
        dense_scores, "certified_winners", lambda *args: calls.append(1) or certified(*args)
    )
    for kind, expected in (("near duplicates", True), ("random", False)):
        calls.clear()
        tokens, lengths = tokens_of(kind)
        with forced_path(filter_=BFLOAT16):
            dense_scores.filtered_best_partners(tokens, lengths, 1000)
        assert bool(calls) == expected


def test_certified_scores_are_the_canonical_ones():
    """Every pair's score from the float64 multiply equals :func:`exact_scores` bit for bit,
    including pairs near a float32 rounding midpoint (settled the canonical way)."""
    generator = torch.Generator().manual_seed(9)
    a, b = torch.randn(40, 1280, generator=generator), torch.randn(300, 1280, generator=generator)
    b[5] = a[3]  # an exact copy: score 1
    clip = dense_scores.Clip.of(a, b, dense_scores.Scratch())
    score, partner = dense_scores.certified_winners(clip, torch.arange(40))
    rows = torch.arange(40).repeat_interleave(300)
    cols = torch.arange(300).repeat(40)
    exact = dense_scores.exact_scores(a[rows], b[cols], clip.a_norm[rows], clip.b_norm[cols])
    exact = exact.view(40, 300)
    assert torch.equal(score, exact.amax(dim=1))
    assert torch.equal(
        partner, torch.where(exact == score[:, None], cols.view(40, 300), 300).amin(1)
    )
    assert partner[3] == 5 and score[3] == 1.0


@pytest.mark.parametrize("kind", ["random", "near duplicates", "extreme scales"])
def test_bfloat16_scores_stay_within_the_bound(kind):
    """The rigorous bound, checked against every pair at the encoder width."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(64, 1280, generator=generator)
    if kind == "near duplicates":
        x = x[:1] + 1e-3 * x
    elif kind == "extreme scales":
        x *= torch.logspace(-20, 20, 64)[:, None]
    a, b = x[0::2], x[1::2]
    clip = dense_scores.Clip.of(a, b, dense_scores.Scratch())
    a_unit = clip.unit(a, clip.a_norm, torch.bfloat16, "a")
    approx = a_unit @ clip.unit(b, clip.b_norm, torch.bfloat16, "b").T
    rows = torch.arange(32).repeat_interleave(32)
    cols = torch.arange(32).repeat(32)
    exact = dense_scores.exact_scores(a[rows], b[cols], clip.a_norm[rows], clip.b_norm[cols])
    u = BFLOAT16.output_roundoff / (1 - BFLOAT16.output_roundoff)
    allowed = dense_scores.error_bound(BFLOAT16, 1280) + u * approx.double().abs().flatten()
    assert bool(((approx.double().flatten() - exact.double()).abs() <= allowed).all())


def test_exact_copies_score_exactly_one():
    tokens = torch.randn(20, 1280, generator=torch.Generator().manual_seed(2))
    for copy in (tokens, tokens * 8.0):
        a_norm, b_norm = dense_scores.exact_norms(tokens), dense_scores.exact_norms(copy)
        assert bool((dense_scores.exact_scores(tokens, copy, a_norm, b_norm) == 1.0).all())


def test_exact_scores_do_not_depend_on_batch_or_threads():
    """A pair's score is the same alone, among others, and on any number of threads."""
    generator = torch.Generator().manual_seed(7)
    a, b = torch.randn(300, 1280, generator=generator), torch.randn(300, 1280, generator=generator)
    a_norm, b_norm = dense_scores.exact_norms(a), dense_scores.exact_norms(b)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batched = dense_scores.exact_scores(a, b, a_norm, b_norm)
    finally:
        torch.set_num_threads(threads)
    alone = [
        dense_scores.exact_scores(a[i : i + 1], b[i : i + 1], a_norm[i : i + 1], b_norm[i : i + 1])
        for i in (0, 17, 299)
    ]
    assert torch.equal(torch.cat(alone), batched[[0, 17, 299]])


def test_the_filter_follows_the_machine_and_the_size():
    large = dense_scores.BFLOAT16_MIN_COLUMNS
    expected = BFLOAT16 if dense_scores.fast_bfloat16_matmul() else FLOAT32
    assert dense_scores.default_filter(large) == expected
    assert dense_scores.default_filter(large - 1) == FLOAT32
    with forced_path(filter_=FLOAT32):
        assert dense_scores.default_filter(large) == FLOAT32
    with forced_path(filter_=BFLOAT16):
        assert dense_scores.default_filter(2) == BFLOAT16
    assert dense_scores.default_filter(large) == expected


def test_encoder_width_plans_agree_across_paths_and_threads():
    """At the encoder width, with clips wide enough for the bfloat16 filter by default: the
    same plan from the default path, the float32 filter, the certified multiply, and on two
    threads."""
    generator = torch.Generator().manual_seed(12)
    tokens = torch.randn(2, 1100, 1280, generator=generator)
    tokens[1, 600:] = tokens[1, 600:601] + 1e-3 * tokens[1, 600:]  # a near-duplicate stretch
    lengths = torch.tensor([1100, 1030])
    reference = ltbm.compress(tokens, lengths, "global", 0.25).plan
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        plans = [ltbm.compress(tokens, lengths, "global", 0.25).plan]
    finally:
        torch.set_num_threads(threads)
    for settings in (dict(filter_=FLOAT32), dict(certify=True)):
        with forced_path(**settings):
            plans.append(ltbm.compress(tokens, lengths, "global", 0.25).plan)
    for plan in plans:
        assert torch.equal(plan.slot_index, reference.slot_index)
        for edges, reference_edges in zip(plan.history, reference.history, strict=True):
            assert torch.equal(edges, reference_edges)


def test_kept_scratch_buffers_never_leak_between_calls_or_threads():
    """Small scratch buffers outlive a call (one set per thread): a call after calls of other
    shapes, and calls running at once on two threads, give the plan of a first call."""
    import threading

    first, _ = tokens_of("random", seed=3)
    other, _ = tokens_of("ties", seed=4)
    lengths = torch.tensor([150, 97, 4])
    expected = ltbm.compress(first, lengths, "global", keep_ratio=0.25).plan.slot_index
    ltbm.compress(other[:, :120], torch.tensor([120, 60, 2]), "global", keep_ratio=0.1)
    assert torch.equal(ltbm.compress(first, lengths, "global", keep_ratio=0.25).plan.slot_index,
                       expected)  # fmt: skip
    results: list[torch.Tensor] = []

    def run(tokens: torch.Tensor) -> None:
        for _ in range(5):
            plan = ltbm.compress(tokens, lengths, "global", keep_ratio=0.25).plan
            results.append(plan.slot_index if tokens is first else None)

    threads = [threading.Thread(target=run, args=(t,)) for t in (first, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = [r for r in results if r is not None]
    assert len(kept) == 5 and all(torch.equal(r, expected) for r in kept)


def test_a_call_outside_inference_mode_after_one_inside_it():
    """vLLM runs models under torch.inference_mode: the scratch buffers a call keeps from
    there cannot be written outside it, so the next call outside must not reuse them."""
    tokens, lengths = tokens_of("random", seed=5)
    with torch.inference_mode():
        inside = ltbm.compress(tokens, lengths, "global", keep_ratio=0.25).plan.slot_index
    outside = ltbm.compress(tokens, lengths, "global", keep_ratio=0.25).plan.slot_index
    assert torch.equal(inside, outside)


@pytest.mark.parametrize("kind", ["random", "ties", "near duplicates", "extreme scales"])
@pytest.mark.parametrize("block_elements", [1 << 26, 1000, 1])
def test_accelerator_path_partners_are_the_exact_argmax(kind, block_elements):
    """The accelerator path (every clip in one batched float64 multiply, certified) gives
    the canonical winners, in one block, in blocks of rows, and clip by clip (a batch that
    does not fit the block)."""
    tokens, lengths = tokens_of(kind)
    score, partner = certified_best_partners(tokens, lengths, block_elements)
    expected_score, expected_partner = brute_force(tokens, lengths)
    assert torch.equal(partner, expected_partner)
    assert torch.equal(score, expected_score)


def test_accelerator_path_scores_unsettled_pairs_the_canonical_way(monkeypatch):
    """With a margin so wide that no pair is settled by the multiply, every pair is scored on
    the host the canonical way: the same winners, so the margin only decides the cost."""
    tokens, lengths = tokens_of("ties")
    sent = []
    host_scores = dense_certified.host_scores
    monkeypatch.setattr(dense_certified, "margin", lambda dim: 1.0)
    monkeypatch.setattr(
        dense_certified, "host_scores", lambda a, b: sent.append(len(a)) or host_scores(a, b)
    )
    score, partner = certified_best_partners(tokens, lengths)
    expected_score, expected_partner = brute_force(tokens, lengths)
    assert torch.equal(partner, expected_partner) and torch.equal(score, expected_score)
    valid_pairs = sum(((n + 1) // 2) * (n // 2) for n in lengths.tolist())
    assert sum(sent) == valid_pairs
