"""Qwen2.5-Omni's thinker: compressed audio keeps the model's time axis. Each kept slot sits
at the model's own position of its centroid frame, and the text after the audio keeps the
position it has without compression (the generic checks are in test_backbone_families)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tone

import ltbm
from ltbm.backbones.synthetic import save_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = save_model("qwen2_5_omni_thinker", tmp_path_factory.mktemp("omni"))
    return ltbm.load(str(folder), method=None)


def audio_and_after(batch, token_id: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multimodal positions (first axis) of a row's audio slots and of the text after them."""
    ids = batch.input_ids[row]
    positions = batch.llm_inputs["position_ids"][1, row]
    audio = (ids == token_id).nonzero().flatten()
    return positions[audio], positions[audio[-1] + 1 :]


@pytest.mark.parametrize("method", ["ltbm", "prune"])
def test_slots_sit_at_their_centroid_time_and_text_keeps_its_place(pipe, method):
    clips = [tone(3.0), tone(7.3, 300.0, seed=1)]
    full = pipe.prepare(clips, "Describe it.", method=None)
    params = {"scorer": "norm"} if method == "prune" else {}
    chosen = ltbm.get_method(method, keep_ratio=0.25, **params)
    batch = pipe.prepare(clips, "Describe it.", method=chosen)
    token_id = pipe.model.config.audio_token_id
    encoded = pipe.adapter.encode(*_features(pipe, clips), [1, 1], attention=False)
    centroids = chosen.plan(encoded.tokens, encoded.lengths).centroids
    for row, k in enumerate(batch.kept_tokens):
        uncompressed, text_after = audio_and_after(full, token_id, row)
        slots, compressed_text_after = audio_and_after(batch, token_id, row)
        expected = uncompressed[0] + centroids[row, :k].round().long()
        assert torch.equal(slots, expected)
        assert torch.equal(compressed_text_after, text_after)
        assert bool((slots[1:] >= slots[:-1]).all())


def _features(pipe, clips):
    inputs, _, _ = pipe.encoder_inputs(clips, "Describe it.")
    return inputs["input_features"], inputs["feature_attention_mask"]


def test_whole_omni_checkpoint_runs_its_thinker(tmp_path, pipe):
    """A Qwen2.5-Omni checkpoint (model_type qwen2_5_omni) loads without its talker and the
    pipeline drives the thinker; the drop-in accepts the whole model too."""
    folder = save_model("qwen2_5_omni", tmp_path / "omni")
    whole = ltbm.load(str(folder), method="pool", keep_ratio=0.25)
    assert type(whole) is type(pipe)
    assert whole.model.config.model_type == "qwen2_5_omni_thinker"
    [result] = whole.generate(tone(3.0), "Describe it.", max_new_tokens=2)
    assert (result.audio_tokens, result.kept_tokens) == (75, 19)
    parent = transformers_model(folder)
    with ltbm.compressed(parent, whole.processor, whole.method) as block:
        assert block.model is parent.thinker and parent.thinker._forward_pre_hooks
    assert not parent.thinker._forward_pre_hooks


def transformers_model(folder):
    from transformers import Qwen2_5OmniForConditionalGeneration

    return Qwen2_5OmniForConditionalGeneration.from_pretrained(folder)
