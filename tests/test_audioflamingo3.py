"""Audio Flamingo 3 through transformers: parity at keep_ratio 1 with a multi-window clip,
exactly K tokens over all windows for every method, per-window attention scores, the
drop-in context manager (window grouping included), and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_checks import (
    METHOD_CASES,
    assert_llm_gets_k,
    assert_parity_with_transformers,
    method_id,
    placeholder_counts,
    processor_inputs,
    text_tokens,
)
from tiny_models import build_audioflamingo3, tone

import ltbm
from ltbm.backbones.families.audioflamingo3 import AudioFlamingo3Pipeline, group_windows
from ltbm.io.audio import AudioError

transformers = pytest.importorskip("transformers")

PROMPTS = ["Describe the sound in one sentence.", "Transcribe the input speech."]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return ltbm.load(str(build_audioflamingo3(tmp_path_factory.mktemp("af3"))), method=None)


@pytest.fixture(scope="module")
def clips():
    """A 3 s clip (one window, 75 tokens) and a 35.3 s clip (two windows: 750 + 132 tokens)
    in one batch."""
    return [tone(3.0), tone(35.3, 300.0, seed=1)]


@pytest.fixture(scope="module")
def texts(pipe):
    return [
        pipe.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for p in PROMPTS
    ]


@pytest.fixture(scope="module")
def prompt_tokens(pipe, clips):
    return text_tokens(pipe, clips, PROMPTS)


def test_load_picks_the_backbone(pipe):
    assert isinstance(pipe, AudioFlamingo3Pipeline)
    assert pipe.describe()["max_audio_seconds"] == 600


@pytest.mark.parametrize("method", [None, ltbm.get_method("ltbm", keep_ratio=1.0, window=3)])
def test_keep_ratio_one_matches_transformers(pipe, clips, texts, method):
    assert_parity_with_transformers(pipe, clips, PROMPTS, texts, method)


def test_long_clip_counts_all_its_windows(pipe, clips):
    batch = pipe.prepare(clips, PROMPTS, method=ltbm.get_method("pool", keep_ratio=0.25))
    assert batch.audio_tokens == [75, 750 + 132]
    assert batch.kept_tokens == [19, 221]
    assert [e["windows"] for e in batch.extra] == [1, 2]


@pytest.mark.parametrize("case", METHOD_CASES, ids=method_id)
def test_every_method_gives_the_llm_exactly_k_tokens(pipe, clips, prompt_tokens, case, monkeypatch):
    name, params = case
    method = ltbm.get_method(name, keep_ratio=0.25, **params)
    assert_llm_gets_k(pipe, clips, PROMPTS, method, prompt_tokens, monkeypatch)


def test_attention_scores_are_per_window_and_comparable(pipe, clips):
    """Each window's scores average 1 (uniform attention scores 1 everywhere), so tokens of
    a short last window are not favoured; the model stays on SDPA."""
    inputs = processor_inputs(pipe.processor, ["<sound>"] * 2, clips)
    encoded = pipe.adapter.encode(
        inputs["input_features"], inputs["input_features_mask"], [1, 2], attention=True
    )
    scores = encoded.signals["scores"]
    assert scores.shape == encoded.tokens.shape[:2]
    for clip, bounds in enumerate([[(0, 75)], [(0, 750), (750, 882)]]):
        for start, end in bounds:
            torch.testing.assert_close(scores[clip, start:end].mean(), torch.tensor(1.0))
    assert pipe.model.config._attn_implementation == "sdpa"


def test_chat_messages_prompt(pipe, clips):
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Hi"}]}]
    [result] = pipe.generate(clips[:1], [chat], max_new_tokens=2)
    assert result.kept_tokens == 75


# ------------------------------------------------------------------------------ drop-in
def test_compressed_context_manager_and_exact_restore(pipe, clips, texts):
    model, processor = pipe.model, pipe.processor
    method = ltbm.get_method("ltbm", keep_ratio=0.25, window=3)
    before_inputs = processor_inputs(processor, texts, clips)
    with torch.no_grad():
        before_logits = model(**before_inputs).logits

    with ltbm.compressed(model, processor, method):
        inputs = processor_inputs(processor, texts, clips)
        assert placeholder_counts(inputs["input_ids"], model.config.audio_token_id) == [19, 221]
        with torch.no_grad():
            inside = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 3

    batch = pipe.prepare(clips, PROMPTS, method=method)
    with torch.no_grad():
        expected = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask)
    valid = inputs["attention_mask"].bool()
    assert torch.equal(inside[valid], expected.logits[valid])

    after_inputs = processor_inputs(processor, texts, clips)
    assert all(torch.equal(after_inputs[k], before_inputs[k]) for k in before_inputs)
    with torch.no_grad():
        assert torch.equal(model(**after_inputs).logits, before_logits)
    assert "replace_audio_token" not in vars(processor)
    assert not model._forward_pre_hooks


def test_group_windows_recovers_clips():
    def keep(n):
        return ltbm.kept_tokens(n, 0.25)

    windows = [750, 750, 132, 75, 750, 750]
    assert group_windows(windows, [408, 19, 375], 750, keep) == [3, 1, 2]


def test_group_windows_refuses_what_it_cannot_tell():
    def same(n):
        return n

    with pytest.raises(ValueError, match="no way to split"):
        group_windows([750, 100], [750, 99], 750, same)
    assert group_windows([750, 750], [750, 750], 750, same) == [1, 1]
    # A budget giving one and two full windows the same K leaves two possible splits.
    with pytest.raises(ValueError, match="more than one way"):
        group_windows([750, 750, 750], [5, 5], 750, lambda n: 5)


# ------------------------------------------------------------------------------- errors
def test_audio_over_ten_minutes_is_refused(pipe):
    with pytest.raises(AudioError, match=r"lasts 601.0 s but audioflamingo3 takes at most 600 s"):
        pipe.prepare([np.zeros(601 * 16000, np.float32)], PROMPTS[0])


def test_empty_audio_is_refused(pipe):
    with pytest.raises(AudioError, match="clip 0: the audio is empty"):
        pipe.prepare([np.zeros(0, np.float32)], PROMPTS[0])


def test_chat_prompt_without_audio_is_refused(pipe, clips):
    chat = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}]}]
    with pytest.raises(ValueError, match="holds 0 audio placeholders"):
        pipe.prepare(clips[:1], [chat])


def test_prompt_count_must_match_clip_count(pipe, clips):
    with pytest.raises(ValueError, match="got 1 audio clip but 2 prompts"):
        pipe.prepare(clips[:1], PROMPTS)
