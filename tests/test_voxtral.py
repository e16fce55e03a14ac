"""Voxtral through its real processor (mistral-common's tokenizer, a tiny tekken vocabulary):
at keep 1 the logits and greedy tokens equal the model's own on the processor's own inputs;
at keep 0.25 the LLM receives exactly K of the 375-per-window tokens per clip, two clips of
different lengths (one and two windows) in one batch; the drop-in is refused clearly."""

from __future__ import annotations

import pytest
import torch
from hf_checks import assert_llm_gets_k, text_tokens
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
    from ltbm.backbones.voxtral import wav_base64

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


def test_dropin_is_refused_with_the_way_out(pipe):
    with pytest.raises(TypeError, match=r"ltbm.pipeline\(model, processor, method\)"):
        ltbm.compressed(pipe.model, pipe.processor, ltbm.get_method("pool", keep_ratio=0.5))


def test_bfloat16_gives_k_tokens(pipe, clips, tmp_path):
    folder = save_model("voxtral", tmp_path / "voxtral")
    half = ltbm.load(str(folder), method="ltbm", keep_ratio=0.25, torch_dtype="bfloat16")
    batch = half.prepare(clips, PROMPTS)
    assert batch.inputs_embeds.dtype == torch.bfloat16
    assert batch.kept_tokens == [94, 188]
