"""Voxtral through its real processor (mistral-common's tokenizer, a tiny tekken vocabulary):
at keep 1 the logits and greedy tokens equal the model's own on the processor's own inputs;
at keep 0.25 the LLM receives exactly K of the 375-per-window tokens per clip, two clips of
different lengths (one and two windows) in one batch; inside ``ltbm.compressed`` the
model's own ``generate(**processor.apply_chat_template(...))`` equals the pipeline, and the
block restores model and processor exactly."""

from __future__ import annotations

import pytest
import torch
from hf_checks import (
    assert_dropin_restores,
    assert_llm_gets_k,
    placeholder_counts,
    record_llm_inputs,
    text_tokens,
)
from tiny_models import tone

import ltbm
from ltbm.backbones.synthetic import save_model

pytest.importorskip("transformers")
pytest.importorskip("mistral_common")

PROMPTS = ["Describe the sound in one sentence.", "Transcribe the input speech."]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return ltbm.load(str(save_model("voxtral", tmp_path_factory.mktemp("voxtral"))), method=None)


@pytest.fixture(scope="module")
def clips():
    return [tone(3.0), tone(35.3, 300.0, seed=1)]


def users_inputs(pipe, clips):
    """What a transformers user hands Voxtral: apply_chat_template with the audio inline."""
    from ltbm.backbones.families.voxtral import wav_base64

    conversations = [
        [{"role": "user", "content": [{"type": "audio", "base64": wav_base64(c)}, text]}]
        for c, text in zip(clips, [{"type": "text", "text": p} for p in PROMPTS], strict=True)
    ]
    return pipe.processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_tensors="pt"
    )


@pytest.mark.parametrize("method", [None, ltbm.get_method("ltbm", keep_ratio=1.0)])
def test_keep_one_matches_the_models_own_generate(pipe, clips, method):
    inputs = users_inputs(pipe, clips)
    batch = pipe.prepare(clips, PROMPTS, method=method)
    assert batch.audio_tokens == batch.kept_tokens == [375, 750]
    assert torch.equal(batch.input_ids, inputs["input_ids"])
    with torch.no_grad():
        reference = pipe.model(**inputs).logits
        ours = pipe.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask)
    valid = inputs["attention_mask"].bool()
    assert torch.equal(reference[valid], ours.logits[valid])
    expected = pipe.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    tokens = pipe.model.generate(
        input_ids=batch.input_ids,
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=4,
        do_sample=False,
    )
    width = inputs["input_ids"].shape[1]
    assert torch.equal(tokens[:, width:], expected[:, width:])


@pytest.mark.parametrize("name", ["ltbm", "pool", "random"])
def test_llm_gets_exactly_k_per_clip(pipe, clips, name, monkeypatch):
    method = ltbm.get_method(name, keep_ratio=0.25)
    text = text_tokens(pipe, clips, PROMPTS)
    assert_llm_gets_k(pipe, clips, PROMPTS, method, text, monkeypatch)


def test_chat_prompt_with_one_audio_item(pipe, clips):
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Hi"}]}]
    [result] = pipe.generate(clips[:1], [chat], method=None, max_new_tokens=2)
    assert result.kept_tokens == 375
    with pytest.raises(ValueError, match="holds 0 audio items"):
        pipe.prepare(clips[:1], [[{"role": "user", "content": [{"type": "text", "text": "x"}]}]])


@pytest.mark.parametrize("name", ["ltbm", "pool"])
def test_dropin_equals_the_pipeline_and_restores(pipe, clips, name):
    method = ltbm.get_method(name, keep_ratio=0.25)
    assert_dropin_restores(pipe, clips, PROMPTS, None, method, lambda: users_inputs(pipe, clips))


def test_dropin_llm_gets_exactly_k_per_clip(pipe, clips):
    method = ltbm.get_method("ltbm", keep_ratio=0.25)
    expected = [ltbm.kept_tokens(n, 0.25) for n in (375, 750)]
    with ltbm.compressed(pipe.model, pipe.processor, method):
        inputs = users_inputs(pipe, clips)
        with record_llm_inputs(pipe.model) as calls:
            pipe.model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    batch = pipe.prepare(clips, PROMPTS, method=method)
    assert placeholder_counts(inputs["input_ids"], 24) == batch.kept_tokens == expected
    assert torch.equal(inputs["input_ids"], batch.input_ids)  # left-padded, as the pipeline
    assert torch.equal(inputs["attention_mask"], batch.attention_mask)
    assert (
        calls[0][0]
        == inputs["input_ids"].shape[1]
        < users_inputs(pipe, clips)["input_ids"].shape[1]
    )


def test_dropin_resizes_transcription_requests(pipe, clips):
    def request():
        return pipe.processor.apply_transcription_request(
            audio=clips, model_id="tiny", language="en", format=["wav", "wav"], return_tensors="pt"
        )

    before = request()
    with ltbm.compressed(pipe.model, pipe.processor, ltbm.get_method("pool", keep_ratio=0.5)):
        inside = request()
        tokens = pipe.model.generate(**inside, max_new_tokens=2, min_new_tokens=2)
    assert placeholder_counts(before["input_ids"], 24) == [375, 750]
    assert placeholder_counts(inside["input_ids"], 24) == [188, 375]
    assert tokens.shape == (2, inside["input_ids"].shape[1] + 2)
    assert torch.equal(request()["input_ids"], before["input_ids"])


def test_budget_tells_the_windows_apart():
    """N = 375 x windows and the hook sees only K, so K must name the window count: for every
    keep ratio above 1/375, kept_tokens(375 w) strictly increases with w (up to 30 min)."""
    for step in range(3, 1001):
        kept = [ltbm.kept_tokens(375 * w, step / 1000) for w in range(1, 61)]
        assert kept == sorted(set(kept)), step / 1000  # strictly increasing


def test_dropin_refuses_an_ambiguous_batch(pipe, clips):
    """At keep 0.002 both clips keep 2 tokens: 3 windows split (1, 2) or (2, 1)."""
    with ltbm.compressed(pipe.model, pipe.processor, ltbm.get_method("pool", keep_ratio=0.002)):
        inputs = users_inputs(pipe, clips)
        assert placeholder_counts(inputs["input_ids"], 24) == [2, 2]
        with pytest.raises(ValueError, match="more than one way to split 3 windows"):
            pipe.model(**inputs)


def test_bfloat16_gives_k_tokens(pipe, clips, tmp_path):
    folder = save_model("voxtral", tmp_path / "voxtral")
    half = ltbm.load(str(folder), method="ltbm", keep_ratio=0.25, torch_dtype="bfloat16")
    batch = half.prepare(clips, PROMPTS)
    assert batch.inputs_embeds.dtype == torch.bfloat16
    assert batch.kept_tokens == [94, 188]
