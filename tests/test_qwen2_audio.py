"""Qwen2-Audio through transformers: parity at keep_ratio 1, exactly K tokens for every
method, attention scoring without eager attention, the drop-in context manager, and clear
errors. A tiny random model built from the real classes, loaded with ltbm.load."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_checks import (
    METHOD_CASES,
    assert_behaves_as_before,
    assert_llm_gets_k,
    assert_parity_with_transformers,
    method_id,
    placeholder_counts,
    processor_inputs,
    text_tokens,
)
from tiny_models import build_qwen2_audio, tone

import ltbm
from ltbm.backbones.base import Backbone
from ltbm.backbones.families.qwen2_audio import Qwen2AudioPipeline
from ltbm.io.audio import AudioError
from ltbm.methods.pruning import attention_received, pool_frames_to_tokens
from ltbm.methods.registry import DEFAULT_WINDOW

transformers = pytest.importorskip("transformers")

PROMPTS = ["Generate the caption in English:", "Describe the sound in one sentence."]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return ltbm.load(str(model_dir), method=None)


@pytest.fixture(scope="module")
def clips():
    """Two clips of different lengths in one batch (75 and 182 encoder tokens)."""
    return [tone(3.0), tone(7.3, 300.0, seed=1)]


@pytest.fixture(scope="module")
def texts(pipe):
    """The prompts as a transformers user writes them: chat messages with one audio item."""
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


def test_load_picks_the_backbone_from_the_config(model_dir):
    pipe = ltbm.load(str(model_dir), keep_ratio=0.5)
    assert isinstance(pipe, Qwen2AudioPipeline)
    assert isinstance(pipe, Backbone)
    assert pipe.method.params() == {"method": "ltbm", "keep_ratio": 0.5, "window": DEFAULT_WINDOW}
    info = pipe.describe()
    assert info["model_type"] == "qwen2_audio"
    assert info["method"]["method"] == "ltbm"
    assert info["transformers"] == transformers.__version__


def test_load_passes_method_parameters(model_dir):
    pipe = ltbm.load(str(model_dir), method="prune", keep_ratio=0.3, scorer="norm")
    assert pipe.method.params() == {"method": "prune", "keep_ratio": 0.3, "scorer": "norm"}
    with pytest.raises(ValueError, match="takes no window"):
        ltbm.load(str(model_dir), method="pool", window=5)
    with pytest.raises(ValueError, match="accepts 'keep_ratio', 'scorer'"):
        ltbm.load(str(model_dir), method="prune", scorr="norm")


@pytest.mark.parametrize("method", [None, ltbm.get_method("ltbm", keep_ratio=1.0, window=3)])
def test_keep_ratio_one_matches_transformers(pipe, clips, texts, method):
    assert_parity_with_transformers(pipe, clips, PROMPTS, texts, method)


@pytest.mark.parametrize("case", METHOD_CASES, ids=method_id)
def test_every_method_gives_the_llm_exactly_k_tokens(pipe, clips, prompt_tokens, case, monkeypatch):
    name, params = case
    method = ltbm.get_method(name, keep_ratio=0.25, **params)
    assert_llm_gets_k(pipe, clips, PROMPTS, method, prompt_tokens, monkeypatch)


def test_token_count_follows_the_mel_frames(pipe, clips):
    batch = pipe.prepare(clips, PROMPTS)
    mel = [int(np.ceil(len(c) / 160)) for c in clips]
    expected = [((m - 1) // 2 + 1 - 2) // 2 + 1 for m in mel]
    assert batch.audio_tokens == expected == [75, 182]


def test_attention_scorer_keeps_sdpa_and_matches_eager_attention(model_dir, pipe):
    """The captured queries/keys give the attention the last encoder layer really computes
    (checked against eager attention weights), while the model itself stays on SDPA."""
    clips = [tone(3.0), tone(6.0, 300.0, seed=1)]  # an even number of conv frames each
    captured = {}
    method = ltbm.get_method("prune", keep_ratio=0.25, scorer="attention")

    def spy(tokens, lengths, **signals):
        captured.update(signals, lengths=lengths)
        return ltbm.Prune.__call__(method, tokens, lengths, **signals)

    pipe.prepare(clips, PROMPTS, method=_Spy(method, spy))
    assert pipe.model.config._attn_implementation == "sdpa"
    assert pipe.adapter.tower.config._attn_implementation == "sdpa"

    eager = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation="eager"
    )
    inputs = processor_inputs(pipe.processor, ["<|AUDIO|>"] * 2, clips)
    frames = (inputs["feature_attention_mask"].sum(-1) - 1) // 2 + 1
    mask = torch.arange(1500)[None, :] < frames[:, None]
    attention_mask = torch.where(mask, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
    with torch.no_grad():
        out = eager.model.audio_tower(
            inputs["input_features"], attention_mask=attention_mask, output_attentions=True
        )
    weights = out.attentions[-1]
    lengths = captured["lengths"]
    width = captured["queries"].shape[2]
    ours = attention_received(captured["queries"], captured["keys"], lengths * 2)
    for clip, n in enumerate(lengths.tolist()):
        probs = weights[clip, :, : 2 * n, : 2 * n]
        expected = probs.sum(dim=(0, 1)) / (probs.shape[0] * 2 * n)
        torch.testing.assert_close(ours[clip, : 2 * n], expected, rtol=1e-4, atol=1e-6)
    assert pool_frames_to_tokens(ours, width // 2).shape[1] == width // 2


class _Spy(ltbm.Method):
    """Wraps a method to see the signals the adapter hands it."""

    name = "spy"

    def __init__(self, inner, call):
        super().__init__(inner.keep_ratio)
        self.inner, self.call = inner, call

    @property
    def needs_attention(self):
        return self.inner.needs_attention

    def __call__(self, tokens, lengths=None, **signals):
        return self.call(tokens, lengths, **signals)


def test_attention_is_captured_only_when_the_method_needs_it(pipe, clips):
    seen = {}

    def spy(tokens, lengths, **signals):
        seen.update(signals)
        return ltbm.Pool.__call__(inner, tokens, lengths)

    inner = ltbm.get_method("pool", keep_ratio=0.5)
    pipe.prepare(clips, PROMPTS, method=_Spy(inner, spy))
    assert seen == {}
    attention = pipe.adapter.tower.layers[-1].self_attn
    assert not attention.q_proj._forward_hooks and not attention.k_proj._forward_hooks


def test_single_clip_path_and_silence(tmp_path, pipe):
    """A file at another rate is read and resampled; silence still gives N tokens."""
    import soundfile

    path = tmp_path / "clip.wav"
    soundfile.write(path, tone(2.0)[::2], 8000)
    method = ltbm.get_method("ltbm", keep_ratio=0.25)
    [result] = pipe.generate(str(path), PROMPTS[0], method=method, max_new_tokens=2)
    assert result.audio_tokens == 50 and result.kept_tokens == 13
    [silent] = pipe.generate(np.zeros(32000, np.float32), None, method=method, max_new_tokens=2)
    assert silent.extra["silent"] and silent.kept_tokens == 13


def test_raw_prompt_with_placeholder_is_used_as_written(pipe, clips):
    raw = "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"
    batch = pipe.prepare(clips[:1], raw, method=ltbm.get_method("pool", keep_ratio=0.5))
    ids = pipe.processor.tokenizer(raw.replace("<|AUDIO|>", "<|AUDIO|>" * 38)).input_ids
    assert batch.input_ids[0].tolist() == ids


def test_bfloat16(model_dir, clips):
    pipe = ltbm.load(str(model_dir), method="ltbm", keep_ratio=0.25, torch_dtype="bfloat16")
    batch = pipe.prepare(clips, PROMPTS)
    assert batch.inputs_embeds.dtype == torch.bfloat16
    assert batch.kept_tokens == [19, 46]
    prune = ltbm.get_method("prune", keep_ratio=0.25, scorer="attention")
    assert pipe.generate(clips, PROMPTS, method=prune, max_new_tokens=2)[1].kept_tokens == 46


# ------------------------------------------------------------------------------ drop-in
def test_compressed_context_manager_and_exact_restore(pipe, clips, texts):
    model, processor = pipe.model, pipe.processor
    method = ltbm.get_method("ltbm", keep_ratio=0.25, window=3)
    before_inputs = processor_inputs(processor, texts, clips)
    with torch.no_grad():
        before_logits = model(**before_inputs).logits
    before_tokens = model.generate(**before_inputs, max_new_tokens=4, do_sample=False)

    with ltbm.compressed(model, processor, method):
        inputs = processor_inputs(processor, texts, clips)
        assert placeholder_counts(inputs["input_ids"], model.config.audio_token_id) == [19, 46]
        with torch.no_grad():
            inside = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
        with pytest.raises(ValueError, match="inside ltbm.compressed"):
            model(**before_inputs)

    batch = pipe.prepare(clips, PROMPTS, method=method)
    with torch.no_grad():
        expected = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask)
    valid = inputs["attention_mask"].bool()
    assert torch.equal(inside[valid], expected.logits[valid])

    after_inputs = processor_inputs(processor, texts, clips)
    assert all(torch.equal(after_inputs[k], before_inputs[k]) for k in before_inputs)
    assert_behaves_as_before(model, processor, after_inputs, before_logits, before_tokens, 4)


@pytest.mark.parametrize(
    "case",
    [
        ("segment_topk", {"scorer": "attention"}),
        ("adaptive_diverse", {"weighting": "attention"}),
        ("ltbm", {"weighting": "attention"}),
    ],
    ids=method_id,
)
def test_dropin_feeds_the_attention_methods_as_the_pipeline_does(pipe, clips, texts, case):
    """Methods added later that read encoder attention get it through the drop-in too: the
    same logits as the pipeline's, K placeholders per clip."""
    name, params = case
    model, processor = pipe.model, pipe.processor
    method = ltbm.get_method(name, keep_ratio=0.25, **params)
    with ltbm.compressed(model, processor, method):
        inputs = processor_inputs(processor, texts, clips)
        assert placeholder_counts(inputs["input_ids"], model.config.audio_token_id) == [19, 46]
        with torch.no_grad():
            inside = model(**inputs).logits
    batch = pipe.prepare(clips, PROMPTS, method=method)
    with torch.no_grad():
        expected = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask)
    valid = inputs["attention_mask"].bool()
    assert torch.equal(inside[valid], expected.logits[valid])


def test_pipeline_around_a_held_model(pipe, clips):
    method = ltbm.get_method("uniform", keep_ratio=0.5)
    wrapped = ltbm.pipeline(pipe.model, pipe.processor, method)
    assert wrapped.prepare(clips, PROMPTS).kept_tokens == [38, 91]


def test_compressed_without_method_changes_nothing(pipe, clips, texts):
    with ltbm.compressed(pipe.model, pipe.processor, None):
        inputs = processor_inputs(pipe.processor, texts, clips)
        assert placeholder_counts(inputs["input_ids"], pipe.model.config.audio_token_id) == [
            75,
            182,
        ]
        assert not pipe.model._forward_pre_hooks


def test_compressed_refuses_nesting(pipe):
    method = ltbm.get_method("pool", keep_ratio=0.5)
    with ltbm.compressed(pipe.model, pipe.processor, method):
        with pytest.raises(RuntimeError, match="already inside"):
            ltbm.compressed(pipe.model, pipe.processor, method).attach()
    assert not pipe.model._forward_pre_hooks


# ------------------------------------------------------------------------------- errors
def test_empty_audio_is_refused(pipe):
    with pytest.raises(AudioError, match="clip 1: the audio is empty"):
        pipe.prepare([tone(1.0), np.zeros(0, np.float32)], PROMPTS)


def test_too_short_audio_is_refused(pipe):
    with pytest.raises(AudioError, match="clip 0 is too short"):
        pipe.prepare([np.ones(200, np.float32) * 0.1], PROMPTS[0])


def test_audio_over_30_seconds_is_refused(pipe):
    with pytest.raises(AudioError, match=r"clip 0 lasts 31.0 s but qwen2-audio takes at most 30"):
        pipe.prepare([tone(31.0)], PROMPTS[0])


def test_chat_prompt_without_audio_is_refused(pipe, clips):
    chat = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}]}]
    with pytest.raises(ValueError, match=r"prompt 0 holds 0 audio placeholders.*'type': 'audio'"):
        pipe.prepare(clips[:1], [chat])


def test_prompt_count_must_match_clip_count(pipe, clips):
    with pytest.raises(ValueError, match="got 2 audio clips but 3 prompts"):
        pipe.prepare(clips, PROMPTS + ["one more"])


def test_method_must_be_a_method(pipe, clips):
    with pytest.raises(TypeError, match="ltbm.get_method"):
        pipe.prepare(clips, PROMPTS, method="ltbm")


def test_unknown_model_type_is_refused(tmp_path):
    transformers.Qwen2Config(hidden_size=32, num_hidden_layers=1).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="model_type 'qwen2'; supported: qwen2_audio, audioflamingo3"
    ):
        ltbm.load(str(tmp_path))


def test_gemma3n_is_refused_with_the_reason(tmp_path):
    """Gemma 3n is an audio model ltbm knows and declines: its fixed 188-token block."""
    transformers.Gemma3nConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'gemma3n': .*fixed block of 188"):
        ltbm.load(str(tmp_path))


def test_import_ltbm_does_not_import_transformers():
    code = "import sys, ltbm; assert 'transformers' not in sys.modules; ltbm.load"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_arrays_at_other_rates_are_resampled(pipe):
    """A (samples, rate) pair at 44.1 kHz gives the same tokens as the same sound at 16 kHz."""
    clip = tone(2.0)
    import soxr

    at_44k = soxr.resample(clip, 16000, 44100).astype(np.float32)
    batch = pipe.prepare([(at_44k, 44100), clip], "Describe the sound.", None)
    assert batch.audio_tokens[0] == batch.audio_tokens[1] == 50


def test_new_tokens_are_capped_by_the_language_models_positions(pipe, clips, monkeypatch):
    """A model that never stops decodes only up to its last position, and a prompt that
    does not fit at all is refused with the way out."""
    prompt_length = pipe.prepare(clips[:1], PROMPTS[0]).input_ids.shape[1]
    text_config = pipe.model.config.get_text_config()
    monkeypatch.setattr(text_config, "max_position_embeddings", prompt_length + 2)
    [result] = pipe.generate(clips[:1], PROMPTS[0], max_new_tokens=40)
    assert 1 <= len(result.text.split()) <= 2
    monkeypatch.setattr(text_config, "max_position_embeddings", prompt_length)
    with pytest.raises(ValueError, match="stronger compression"):
        pipe.generate(clips[:1], PROMPTS[0], max_new_tokens=4)
