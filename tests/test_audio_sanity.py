"""Audio that would be scored silently wrong is refused or flagged: integer PCM passed as
float, samples far outside [-1, 1], truncated WAV files."""

from __future__ import annotations

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")

from ltbm.io.audio import AudioError, audio_warnings, load_audio  # noqa: E402


def sine(seconds: float = 0.5, peak: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (peak * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def test_integer_arrays_are_scaled_from_their_pcm_range():
    pcm = (sine() * 32768).astype(np.int16)
    assert np.allclose(load_audio(pcm, 16_000), sine(), atol=1e-4)
    unsigned = (sine() * 128 + 128).astype(np.uint8)
    assert np.allclose(load_audio(unsigned, 16_000), sine(), atol=1e-2)


def test_integer_pcm_passed_as_float_is_refused():
    with pytest.raises(AudioError, match="integer PCM passed as float"):
        load_audio((sine() * 32768).round().astype(np.float32), 16_000)
    with pytest.raises(AudioError, match="peaks at 5"):
        load_audio(sine(peak=5.0), 16_000)


def test_a_slight_overshoot_is_accepted_and_flagged():
    samples = load_audio(sine(peak=1.3), 16_000)
    assert "outside [-1, 1]" in audio_warnings(samples)[0]
    assert audio_warnings(sine()) == []
    assert audio_warnings(np.zeros(1600, np.float32)) == ["silent (RMS below -80 dBFS)"]


def test_a_truncated_wav_is_refused(tmp_path):
    whole = tmp_path / "whole.wav"
    soundfile.write(str(whole), sine(1.0), 16_000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:20_000])
    with pytest.raises(AudioError, match="cut.wav is truncated: its header declares 32000"):
        load_audio(cut)
    assert load_audio(whole).shape == (16_000,)


def test_a_sample_rate_of_a_few_hertz_is_refused(tmp_path):
    with pytest.raises(AudioError, match="below 1000 Hz"):
        load_audio(sine(), sample_rate=16)  # kHz passed for Hz
    path = tmp_path / "damaged.wav"
    soundfile.write(path, sine()[:5], 1)
    with pytest.raises(AudioError, match="damaged header"):
        load_audio(path)
    assert load_audio(sine(), sample_rate=8000).shape == (16000,)
