"""Qwen3-Omni's thinker, checked at the model level: its processor needs torchvision (absent
here), so the prompt ids are written out with N placeholders per clip, N from the
processor's own counting function, and the features come from the Whisper feature
extractor it uses. At keep 1 our embeddings and positions give the model's own logits and
greedy tokens; at keep 0.25 each clip gets exactly K tokens at their centroid positions."""

from __future__ import annotations

import pytest
import torch
from hf_checks import left_padded, model_level_inputs
from tiny_models import tone

import ltbm
from ltbm.backbones.synthetic import model_config
from ltbm.backbones.synthetic.parts import tiny_tokenizer, whisper_features

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def setup():
    from ltbm.backbones.families.qwen3_omni_moe import Qwen3OmniAdapter

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = model_config("qwen3_omni_moe_thinker", "tiny", tokenizer)
    model = transformers.Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()
    return model, tokenizer, Qwen3OmniAdapter(model)


def users_inputs(tokenizer, clips):
    """Left-padded prompts with one placeholder run per clip, as the processor writes them."""
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import (
        _get_feat_extract_output_lengths as processor_count,
    )

    audio = whisper_features()(
        clips, sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    counts = processor_count(audio["attention_mask"].sum(-1)).tolist()
    words = tokenizer.convert_tokens_to_ids
    rows = [
        words(["<|im_start|>", "user", "<|audio_bos|>"] + ["<|AUDIO|>"] * n + ["<|audio_eos|>"])
        + words("Describe the sound in one sentence.".split()) * (1 + i)
        for i, n in enumerate(counts)
    ]
    ids, mask = left_padded(rows, tokenizer.pad_token_id)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "input_features": audio["input_features"],
        "feature_attention_mask": audio["attention_mask"],
    }
    return inputs, counts


def ours(model, adapter, inputs, method):
    """What the pipeline hands the LLM: K placeholders per clip, their rows, positions."""
    audio, ids, mask, embeds = model_level_inputs(model, adapter, inputs, method)
    return audio, ids, mask, embeds, adapter.llm_inputs(ids, mask, audio)


def test_keep_one_matches_the_models_own_logits_and_tokens(setup):
    model, tokenizer, adapter = setup
    inputs, counts = users_inputs(tokenizer, [tone(3.0), tone(7.3, 300.0, seed=1)])
    audio, ids, mask, embeds, extra = ours(model, adapter, inputs, None)
    assert audio.audio_tokens == counts == [39, 95]
    assert torch.equal(ids, inputs["input_ids"])
    with torch.no_grad():
        reference = model(**inputs).logits
        logits = model(inputs_embeds=embeds, attention_mask=mask, **extra).logits
    assert torch.equal(reference[mask.bool()], logits[mask.bool()])
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    tokens = model.generate(
        input_ids=ids, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4, **extra
    )
    assert torch.equal(tokens[:, -4:], expected[:, -4:])


def test_keep_quarter_gives_k_tokens_at_their_centroid_positions(setup):
    model, tokenizer, adapter = setup
    inputs, counts = users_inputs(tokenizer, [tone(3.0), tone(7.3, 300.0, seed=1)])
    method = ltbm.get_method("ltbm", keep_ratio=0.25)
    audio, ids, mask, embeds, extra = ours(model, adapter, inputs, method)
    expected = [ltbm.kept_tokens(n, 0.25) for n in counts]
    assert audio.kept_tokens == expected
    assert (ids == adapter.audio_token_id).sum(1).tolist() == expected
    centroids = audio.compressed.plan.centroids.round().long()
    for row, k in enumerate(expected):
        audio_at = (ids[row] == adapter.audio_token_id).nonzero().flatten()
        slots = extra["position_ids"][1, row, audio_at]
        assert torch.equal(slots - slots[0] + centroids[row, 0], centroids[row, :k])
    tokens = model.generate(
        input_ids=ids, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=2, **extra
    )
    assert tokens.shape[1] == ids.shape[1] + 2


def test_save_model_needs_torchvision_for_the_processor(tmp_path):
    from transformers.utils import is_torchvision_available

    from ltbm.backbones.synthetic import save_model

    if is_torchvision_available():
        folder = save_model("qwen3_omni_moe_thinker", tmp_path / "q3")
        pipe = ltbm.load(str(folder), method="pool", keep_ratio=0.25)
        [result] = pipe.generate(tone(3.0), "Describe it.", max_new_tokens=2)
        assert (result.audio_tokens, result.kept_tokens) == (39, 10)
    else:
        with pytest.raises(ImportError, match="needs torchvision"):
            save_model("qwen3_omni_moe_thinker", tmp_path / "q3")
