"""The plugin against ltbm's transformers path and against stock vLLM, on tiny random
Qwen2-Audio and Audio Flamingo 3 checkpoints, two clips of different lengths per batch.

Tolerances, and why: the encoder (transformers' modules in both), the method and the
projector run the same code on the same tensors, so the audio embeddings agree to float32
rounding; the LLM does not run the same code (vLLM's CPU attention and fused kernels versus
transformers' SDPA, a packed batch versus a padded one), so its logits may differ by float32
rounding. First-token logprobs are compared to 1e-4 (observed: at most 4.8e-7; another value
of a method parameter moves them by 1e-2 or more), the top-5 candidates must be the same
tokens and greedy tokens equal. Against stock vLLM at keep ratio 1 nothing differs but the
class, so that comparison is exact.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOP, Output, reference, run

import ltbm
from ltbm.core.budget import kept_tokens
from ltbm.methods import get_method

KEEPS = (1.0, 0.5, 0.25)
METHODS = ("ltbm", "global", "pool")
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module", params=["qwen2_audio", "audioflamingo3"])
def family(request, checkpoints, clips):
    """Every engine of one family, run once: stock vLLM, then the plugin for each method and
    keep ratio; and ltbm's transformers pipeline on the same clips."""
    model_type = request.param
    folder, audios = checkpoints[model_type], clips[model_type]
    grid = {
        (method, keep): run(folder, model_type, audios, {"method": method, "keep_ratio": keep})
        for method in METHODS
        for keep in KEEPS
    }
    stock = run(folder, model_type, audios, None)
    pipe = ltbm.load(str(folder), method=None)
    return model_type, folder, audios, grid, stock, pipe


def text_tokens(pipe, model_type: str) -> int:
    from conftest import PROMPTS

    return len(pipe.tokenizer(PROMPTS[model_type])["input_ids"]) - 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("keep", KEEPS)
def test_prompt_holds_text_plus_k_per_clip(family, method, keep):
    model_type, _, audios, grid, _, pipe = family
    ref = reference(pipe, model_type, audios, None)  # N per clip, uncompressed
    audio_id = pipe.adapter.audio_token_id
    for output, n in zip(grid[method, keep], ref.audio_tokens, strict=True):
        k = kept_tokens(n, keep)
        assert output.prompt_ids.count(audio_id) == k
        assert len(output.prompt_ids) == text_tokens(pipe, model_type) + k
    assert ref.audio_tokens[0] != ref.audio_tokens[1]
    if model_type == "audioflamingo3":
        assert max(ref.audio_tokens) > 750  # the long clip spans two 30 s windows


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("keep", KEEPS)
def test_matches_ltbm_transformers_path(family, method, keep):
    model_type, _, audios, grid, _, pipe = family
    ref = reference(pipe, model_type, audios, get_method(method, keep_ratio=keep))
    for clip, output in enumerate(grid[method, keep]):
        assert output.prompt_ids == ref.prompt_ids[clip]
        assert output.tokens == ref.tokens[clip]
        top = ref.logprobs[clip].topk(TOP)
        assert set(output.top) == set(top.indices.tolist())
        for token, logprob in output.top.items():
            assert abs(logprob - float(ref.logprobs[clip, token])) <= LOGPROB_ATOL


@pytest.mark.parametrize("method", METHODS)
def test_keep_one_equals_stock_vllm_exactly(family, method):
    _, _, _, grid, stock, _ = family
    assert grid[method, 1.0] == stock


@pytest.mark.parametrize(
    "engine",
    [
        # Blocks of 32 tokens (the CPU backend's smallest): only full blocks are cached.
        pytest.param({"enable_prefix_caching": True, "block_size": 32}, id="prefix-caching"),
        pytest.param(
            {"enable_chunked_prefill": True, "max_num_batched_tokens": 32}, id="chunked-prefill"
        ),
    ],
)
def test_prefix_caching_and_chunked_prefill_change_nothing(family, engine):
    """Same outputs with prefix caching (a second pass served from the cache) and with the
    prompt prefilled 32 tokens at a time (the audio run cut across steps)."""
    from conftest import generate, serving

    model_type, folder, audios, grid, _, _ = family
    settings = {"method": "ltbm", "keep_ratio": 0.25}
    with serving(folder, settings, **engine) as llm:
        passes = [generate(llm, model_type, audios) for _ in range(2)]
    expected = grid["ltbm", 0.25]
    for outputs in passes:
        for output, want in zip(outputs, expected, strict=True):
            assert same_output(output, want)
    if engine.get("enable_prefix_caching"):
        # The second pass reuses every full block of the prompt but the one holding its
        # last token (which is computed again to give the first logits).
        block = engine["block_size"]
        cached = [(len(o.prompt_ids) - 1) // block * block for o in passes[1]]
        assert [o.cached_tokens for o in passes[1]] == cached and max(cached) > 0


def same_output(a: Output, b: Output, atol: float = 1e-5) -> bool:
    """Same prompt and tokens; logprobs within float32 rounding of a different batching."""
    return (
        a.prompt_ids == b.prompt_ids
        and a.tokens == b.tokens
        and set(a.top) == set(b.top)
        and all(abs(a.top[t] - b.top[t]) <= atol for t in a.top)
    )


OTHER_PARAMETERS = [
    pytest.param({"method": "prune"}, {"scorer": "norm"}, id="prune-attention"),
    pytest.param({"method": "random", "method_seed": 3}, {"seed": 0}, id="random-seed-3"),
    pytest.param({"method": "ltbm", "window": 3}, {"window": 1}, id="ltbm-window-3"),
    pytest.param({"method": "segment_topk", "segments": 4}, {"segments": 10}, id="segments-4"),
    pytest.param(
        {"method": "adaptive_diverse", "weighting": "attention"},
        {"weighting": "size"},
        id="adaptive-attention-weighting",
    ),
]
"""Settings, and another value of the same parameter (to show that it matters here)."""


@pytest.mark.parametrize("settings, other", OTHER_PARAMETERS)
def test_every_method_parameter_reaches_the_model(family, settings, other):
    """Prune's attention scorer (queries and keys captured on vLLM's encoder modules),
    random's seed, ltbm's window, segment_topk's segments and adaptive_diverse's attention
    weighting, against the transformers path with the same method; the parameter's other
    value gives other logprobs, so the match is not by chance."""
    model_type, folder, audios, _, _, pipe = family
    outputs = run(folder, model_type, audios, {**settings, "keep_ratio": 0.5})
    params = {k.removeprefix("method_"): v for k, v in settings.items() if k != "method"}
    method = get_method(settings["method"], keep_ratio=0.5, **params)
    ref = reference(pipe, model_type, audios, method)
    for clip, output in enumerate(outputs):
        assert output.prompt_ids == ref.prompt_ids[clip]
        assert output.tokens == ref.tokens[clip]
        assert set(output.top) == set(ref.logprobs[clip].topk(TOP).indices.tolist())
        for token, logprob in output.top.items():
            assert abs(logprob - float(ref.logprobs[clip, token])) <= LOGPROB_ATOL
    changed = reference(pipe, model_type, audios, get_method(method.name, 0.5, **other))
    assert (changed.logprobs - ref.logprobs).abs().max() > 100 * LOGPROB_ATOL


@pytest.mark.parametrize("model_type", ["qwen2_audio", "audioflamingo3"])
def test_audio_embeds_pass_through_uncompressed(model_type, checkpoints):
    """Precomputed audio embeddings are the user's: the plugin hands all 30 rows to the LLM,
    exactly as stock vLLM does."""
    from conftest import PROMPTS, serving
    from vllm import SamplingParams

    folder = checkpoints[model_type]
    embeds = torch.randn(1, 30, 64, generator=torch.Generator().manual_seed(0))
    request = {
        "prompt": PROMPTS[model_type],
        "multi_modal_data": {"audio": {"audio_embeds": embeds}},
    }
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=TOP)
    results = []
    for settings in ({"method": "ltbm", "keep_ratio": 0.25}, None):
        with serving(folder, settings, enable_mm_embeds=True) as llm:
            result = llm.generate([request], params, use_tqdm=False)[0]
        top = {t: lp.logprob for t, lp in result.outputs[0].logprobs[0].items()}
        results.append((list(result.prompt_token_ids), list(result.outputs[0].token_ids), top))
    assert results[0] == results[1]
    pipe = ltbm.load(str(folder), method=None)
    assert len(results[0][0]) == text_tokens(pipe, model_type) + 30
