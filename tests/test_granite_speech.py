"""Granite Speech, checked at the model level: its feature extractor needs torchaudio (absent
here), so the inputs are written as the processor writes them: prompt ids with N
placeholders per clip (N from the feature extractor's own counting function), features of
the shape it makes (stacked log-mel pairs at 50 Hz, padded to the batch's longest clip) and
its ``input_features_mask``. At keep 1 our embeddings give the model's own logits and
greedy tokens; at keep 0.25 the LLM receives exactly K tokens per clip; inside
``ltbm.compressed`` the model's own forward and generate take K, and leaving restores it."""

from __future__ import annotations

import pytest
import torch
from hf_checks import (
    LOGITS,
    assert_behaves_as_before,
    left_padded,
    model_level_inputs,
    record_llm_inputs,
)

import ltbm
from ltbm.backbones.synthetic import model_config, tiny_tokenizer

transformers = pytest.importorskip("transformers")

SAMPLES = [48_000, 116_800]
"""3 s and 7.3 s at 16 kHz: the longer clip spans two of the conformer's 4 s blocks."""
PROMPT = "Describe the sound in one sentence.".split()


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


def tiny_model(**config):
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    settings = model_config("granite_speech", "tiny", tokenizer)
    for key, value in config.items():
        setattr(settings, key, value)
    model = transformers.GraniteSpeechForConditionalGeneration(settings).eval()
    model.generation_config.repetition_penalty = 1.3  # as the released checkpoints set it
    return model, tokenizer


@pytest.fixture(scope="module")
def setup():
    from ltbm.backbones.families.granite_speech import GraniteSpeechAdapter

    model, tokenizer = tiny_model()
    return model, tokenizer, GraniteSpeechAdapter(model)


def users_inputs(tokenizer, counts: list[int] | None = None) -> tuple[dict, list[int]]:
    """The processor's outputs for two clips of SAMPLES; ``counts`` overrides the
    placeholders written per clip (the drop-in's processor writes K)."""
    from ltbm.backbones.families.granite_speech import granite_token_count

    n = granite_token_count(SAMPLES)
    frames = (max(SAMPLES) // 160 + 1) // 2  # mel frames of the padded batch, stacked in pairs
    features = torch.randn(len(SAMPLES), frames, 160, generator=torch.Generator().manual_seed(0))
    runs = counts or n
    rows = [["user", *["<|AUDIO|>"] * k, *PROMPT * (1 + i)] for i, k in enumerate(runs)]
    ids, mask = left_padded(
        [tokenizer.convert_tokens_to_ids(row) for row in rows], tokenizer.pad_token_id
    )
    feature_mask = torch.arange(max(n))[None, :] < torch.tensor(n)[:, None]
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "input_features": features,
        "input_features_mask": feature_mask,
    }
    return inputs, n


@pytest.mark.parametrize("method", [None, ltbm.get_method("ltbm", keep_ratio=1.0)])
def test_keep_one_matches_the_models_own_logits_and_tokens(setup, method):
    model, tokenizer, adapter = setup
    inputs, counts = users_inputs(tokenizer)
    audio, ids, mask, embeds = model_level_inputs(model, adapter, inputs, method)
    assert audio.audio_tokens == counts == [30, 75]  # 10 tokens per second
    assert torch.equal(ids, inputs["input_ids"])
    with torch.no_grad():
        reference = model(**inputs).logits
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.equal(reference[mask.bool()], logits[mask.bool()])
    expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    tokens = adapter.llm_generate(
        input_ids=ids, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=5
    )
    assert torch.equal(tokens[:, -5:], expected[:, -5:])


@pytest.mark.parametrize(
    "method",
    [
        ltbm.get_method("ltbm", keep_ratio=0.25),
        ltbm.get_method("prune", keep_ratio=0.25, scorer="norm"),
    ],
    ids=["ltbm", "prune-norm"],
)
def test_keep_quarter_gives_the_llm_k_tokens_per_clip(setup, method):
    model, tokenizer, adapter = setup
    inputs, counts = users_inputs(tokenizer)
    audio, ids, mask, embeds = model_level_inputs(model, adapter, inputs, method)
    expected = [ltbm.kept_tokens(n, 0.25) for n in counts]
    assert audio.kept_tokens == expected == [8, 19]
    assert (ids == adapter.audio_token_id).sum(1).tolist() == expected
    text = inputs["attention_mask"].sum(1) - torch.tensor(counts)
    assert mask.sum(1).tolist() == (text + torch.tensor(expected)).tolist()
    with record_llm_inputs(model) as calls:
        tokens = adapter.llm_generate(
            input_ids=ids, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=2
        )
    assert calls[0][0] == ids.shape[1] == int((text + torch.tensor(expected)).max())
    assert tokens.shape[1] == ids.shape[1] + 2


def test_attention_scorer_is_refused_up_front(setup):
    _, _, adapter = setup
    with pytest.raises(ValueError, match="scorer='norm'"):
        adapter.check_method(ltbm.get_method("prune", keep_ratio=0.25, scorer="attention"))


class PlaceholderWriter:
    """The part of ``GraniteSpeechProcessor`` the drop-in changes, with its own method: the
    real processor cannot be built without torchaudio."""

    audio_token = "<|AUDIO|>"
    replace_audio_token = transformers.GraniteSpeechProcessor.replace_audio_token


def test_dropin_takes_k_inside_and_restores_the_model_exactly(setup):
    model, tokenizer, adapter = setup
    method = ltbm.get_method("ltbm", keep_ratio=0.25)
    before_inputs, counts = users_inputs(tokenizer)
    with torch.no_grad():
        before_logits = model(**before_inputs).logits
    before_tokens = model.generate(**before_inputs, max_new_tokens=3, do_sample=False)

    writer = PlaceholderWriter()
    with ltbm.compressed(model, writer, method):
        written = [writer.replace_audio_token({"audio_embed_sizes": counts}, i) for i in (0, 1)]
        inputs, _ = users_inputs(tokenizer, [run.count("<|AUDIO|>") for run in written])
        with torch.no_grad():
            inside = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, **LOGITS)

    audio, ids, mask, embeds = model_level_inputs(model, adapter, before_inputs, method)
    assert [run.count("<|AUDIO|>") for run in written] == audio.kept_tokens == [8, 19]
    assert torch.equal(ids, inputs["input_ids"])
    with torch.no_grad():
        expected = model(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.equal(inside[mask.bool()], expected[mask.bool()])
    mine = adapter.llm_generate(
        input_ids=ids, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3, **LOGITS
    )
    assert torch.equal(generated.sequences[:, -3:], mine.sequences[:, -3:])
    assert all(torch.equal(a, b) for a, b in zip(generated.logits, mine.logits, strict=True))

    assert_behaves_as_before(model, writer, before_inputs, before_logits, before_tokens, 3)


def test_a_missing_lora_adapter_is_refused_with_the_fix(tmp_path):
    model, _ = tiny_model(has_lora_adapter=True)
    method = ltbm.get_method("ltbm", keep_ratio=0.25)
    with pytest.raises(ValueError, match="pip install peft"):
        ltbm.compressed(model, PlaceholderWriter(), method)
    # The way out the message names: the config switch, through from_pretrained's kwargs.
    model.save_pretrained(tmp_path)
    reloaded = transformers.GraniteSpeechForConditionalGeneration.from_pretrained(
        tmp_path, has_lora_adapter=False
    )
    with ltbm.compressed(reloaded, PlaceholderWriter(), method):
        pass


def test_load_and_save_model_name_torchaudio_or_work(tmp_path):
    from transformers.utils import is_torchaudio_available

    from ltbm.backbones.hf.loading import pipeline_class
    from ltbm.backbones.synthetic import save_model

    assert pipeline_class("granite_speech").adapter_class.model_type == "granite_speech"
    if is_torchaudio_available():  # not the case in CI: see the README's Backbones table
        folder = save_model("granite_speech", tmp_path / "gs")
        pipe = ltbm.load(str(folder), method="pool", keep_ratio=0.25)
        [result] = pipe.generate(torch.zeros(48_000).numpy(), "Describe it.", max_new_tokens=2)
        assert (result.audio_tokens, result.kept_tokens) == (30, 8)
        return
    with pytest.raises(ImportError, match="needs torchaudio"):
        save_model("granite_speech", tmp_path / "gs")
    model, _ = tiny_model()
    model.config.save_pretrained(tmp_path / "config-only")  # no weights: refused before them
    with pytest.raises(ImportError, match="needs torchaudio"):
        ltbm.load(str(tmp_path / "config-only"), method="ltbm")


def test_the_lora_adapter_is_on_when_the_pipeline_generates():
    """With an adapter loaded (peft), ltbm's generation from embeddings equals the model's own
    generate from features, which turns the adapter on; the model's ``generate`` given the
    same embeddings turns it off and answers differently: the trap ltbm avoids. Skipped
    without a peft that this transformers accepts (none on PyPI when this was written)."""
    from transformers.integrations.peft import MIN_PEFT_VERSION

    peft = pytest.importorskip("peft", minversion=MIN_PEFT_VERSION)
    from ltbm.backbones.families.granite_speech import GraniteSpeechAdapter

    model, tokenizer = tiny_model(has_lora_adapter=True)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model.add_adapter(lora)
    adapter = GraniteSpeechAdapter(model)
    inputs, _ = users_inputs(tokenizer)
    _, ids, mask, embeds = model_level_inputs(model, adapter, inputs, None)
    embedded = {"input_ids": ids, "inputs_embeds": embeds, "attention_mask": mask}
    expected = model.generate(**inputs, max_new_tokens=3, **LOGITS)
    base = model.generate(**embedded, max_new_tokens=3, **LOGITS)
    mine = adapter.llm_generate(**embedded, max_new_tokens=3, **LOGITS)
    assert all(torch.equal(a, b) for a, b in zip(expected.logits, mine.logits, strict=True))
    assert not torch.equal(base.logits[0], mine.logits[0])


def test_bfloat16_keeps_the_dtype_and_the_budget():
    """GPU users load in bfloat16: the features are cast to the encoder's dtype."""
    from ltbm.backbones.families.granite_speech import GraniteSpeechAdapter

    model, tokenizer = tiny_model()
    adapter = GraniteSpeechAdapter(model.to(torch.bfloat16))
    inputs, counts = users_inputs(tokenizer)
    audio, ids, mask, embeds = model_level_inputs(
        model, adapter, inputs, ltbm.get_method("pool", 0.25)
    )
    assert embeds.dtype == torch.bfloat16
    assert audio.kept_tokens == [ltbm.kept_tokens(n, 0.25) for n in counts]
    embedded = {"input_ids": ids, "inputs_embeds": embeds, "attention_mask": mask}
    assert adapter.llm_generate(**embedded, max_new_tokens=2).shape[1] == ids.shape[1] + 2
