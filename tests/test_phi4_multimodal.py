"""Phi-4-multimodal beyond the family checks (tests/test_backbone_families.py): one clip, for
which the processor gives no audio mask and the model runs its encoder without one; audio
past 40 s, which the encoder cuts into blocks of 500 tokens; the speech LoRA the released
checkpoint ships, applied by ``ltbm.load`` (with peft) or refused (without)."""

from __future__ import annotations

import json

import pytest
import torch
from hf_checks import assert_dropin_restores, assert_parity_with_transformers, processor_inputs
from tiny_models import tone

import ltbm
from ltbm.backbones.hf.identity import hf_identity, loaded_adapters
from ltbm.backbones.hf.shipped_lora import min_peft, peft_usable
from ltbm.backbones.synthetic import save_model
from ltbm.io.audio import AudioError

transformers = pytest.importorskip("transformers")

PROMPT = "Describe the sound in one sentence."


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_model("phi4_multimodal", tmp_path_factory.mktemp("phi4"))


@pytest.fixture(scope="module")
def pipe(folder):
    return ltbm.load(str(folder), method=None)


def test_one_clip_matches_the_models_own_generate(pipe):
    clips = [tone(2.5, 300.0)]
    assert "audio_attention_mask" not in processor_inputs(
        pipe.processor, [pipe.render(PROMPT)], clips
    )
    for method in (None, ltbm.get_method("ltbm", keep_ratio=1.0)):
        assert_parity_with_transformers(pipe, clips, [PROMPT], [pipe.render(PROMPT)], method)


def test_one_clip_dropin_restores_the_model(pipe):
    clips, method = [tone(2.5, 300.0)], ltbm.get_method("ltbm", keep_ratio=0.25)
    assert_dropin_restores(pipe, clips, [PROMPT], [pipe.render(PROMPT)], method)


def test_too_short_clip_is_refused_in_one_line(pipe):
    with pytest.raises(AudioError, match="clip 1 is too short .*400"):
        pipe.generate([tone(1.0), tone(0.0125)], PROMPT, max_new_tokens=1)
    [result] = pipe.generate([tone(0.025)], PROMPT, max_new_tokens=1)
    assert result.audio_tokens == 1


def test_dropin_refuses_images_it_would_drop(pipe):
    """With an image, the model projects audio with its vision-speech projector; the drop-in
    path embeds audio alone, so such a call is refused rather than run without the image."""
    texts, clips = [pipe.render(PROMPT)], [tone(2.5, 300.0)]
    with ltbm.compressed(pipe.model, pipe.processor, ltbm.get_method("ltbm", keep_ratio=0.5)):
        inputs = processor_inputs(pipe.processor, texts, clips)
        with pytest.raises(ValueError, match="image_pixel_values"), torch.no_grad():
            pipe.model(**inputs, image_pixel_values=torch.zeros(1, 1, 3, 28, 28))


def test_audio_past_40_seconds_one_clip_at_a_time(pipe):
    """45 s: the encoder unfolds 563 tokens into blocks of 500. transformers' unfold fails on
    a batch of such clips (the model's own forward too), so a batch is refused up front."""
    clips, prompts = [tone(45.0, 300.0), tone(3.0, 500.0, seed=1)], [PROMPT, "Transcribe"]
    with pytest.raises(ValueError, match="batch_size=1"):
        pipe.prepare(clips, prompts)
    inputs = processor_inputs(pipe.processor, [pipe.render(p) for p in prompts], clips)
    with pytest.raises(RuntimeError), torch.no_grad():
        pipe.model(**inputs)
    assert_parity_with_transformers(pipe, clips[:1], prompts[:1], [pipe.render(PROMPT)], None)
    method = ltbm.get_method("ltbm", keep_ratio=0.25)
    results = pipe.generate(clips, prompts, method=method, max_new_tokens=2, batch_size=1)
    assert [(r.audio_tokens, r.kept_tokens) for r in results] == [(563, 141), (38, 10)]


def speech_lora_folder(tmp_path):
    """A tiny checkpoint with a random (non-zero) LoRA on the LLM in ``speech-lora/``, as the
    released checkpoint ships it."""
    from peft import LoraConfig

    folder = save_model("phi4_multimodal", tmp_path / "phi4-lora")
    model = transformers.Phi4MultimodalForCausalLM.from_pretrained(folder)
    lora = LoraConfig(r=2, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False)
    model.add_adapter(lora, adapter_name="speech")
    model.save_pretrained(folder / "speech-lora")
    return folder


def test_speech_lora_is_applied_by_load(tmp_path):
    if not peft_usable():
        pytest.skip(f"needs peft >= {min_peft()} (transformers' minimum for load_adapter)")
    folder = speech_lora_folder(tmp_path)
    pipe = ltbm.load(str(folder), method=None)
    assert pipe.model.active_adapters() == ["speech"]
    clips, prompts = [tone(3.0, 300.0), tone(5.0, 500.0, seed=1)], [PROMPT, PROMPT]
    texts = [pipe.render(p) for p in prompts]
    assert_parity_with_transformers(pipe, clips, prompts, texts, None)
    base = transformers.Phi4MultimodalForCausalLM.from_pretrained(folder).eval()
    inputs = processor_inputs(pipe.processor, texts, clips)
    with torch.no_grad():
        assert not torch.equal(base(**inputs).logits, pipe.model(**inputs).logits)
    # Runs with and without the adapter must not share results.
    assert list(hf_identity(pipe)["lora_adapters"]) == ["speech"]
    assert loaded_adapters(base) == {}


def test_identity_of_a_model_without_adapters_is_unchanged(pipe):
    """No adapter, no key: runs stored before adapters were recorded keep their identity."""
    identity = hf_identity(pipe)
    assert "lora_adapters" not in identity
    assert identity["model_type"] == "phi4_multimodal"


def test_weights_in_a_subfolder_enter_the_identity(tmp_path):
    """A local checkpoint's shipped LoRA (``speech-lora/``) is part of its weights: other
    adapter weights give another identity, so their runs never share results."""
    from ltbm.backbones.hf.identity import _folder_fingerprint

    (tmp_path / "speech-lora").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "speech-lora" / "adapter_model.safetensors").write_bytes(b"0" * 8)
    before = _folder_fingerprint(str(tmp_path))
    assert set(before) == {"config.json", "speech-lora/adapter_model.safetensors"}
    (tmp_path / "speech-lora" / "adapter_model.safetensors").write_bytes(b"0" * 9)
    assert _folder_fingerprint(str(tmp_path)) != before


def test_speech_lora_without_peft_is_refused(folder, tmp_path):
    if peft_usable():
        pytest.skip("peft is installed: the LoRA is applied instead")
    lora = tmp_path / "phi4-lora"
    save_model("phi4_multimodal", lora)
    (lora / "speech-lora").mkdir()
    (lora / "speech-lora" / "adapter_config.json").write_text(json.dumps({"r": 2}))
    with pytest.raises(ValueError, match="pip install .peft>="):
        ltbm.load(str(lora), method=None)
    model = transformers.Phi4MultimodalForCausalLM.from_pretrained(lora)
    processor = transformers.AutoProcessor.from_pretrained(folder)
    with pytest.raises(ValueError, match="LoRA adapter .speech-lora/. that is not active"):
        ltbm.pipeline(model, processor)
    with pytest.raises(ValueError, match="LoRA adapter .speech-lora/. that is not active"):
        ltbm.compressed(model, processor, ltbm.get_method("ltbm", keep_ratio=0.25))
