"""Whisper's log-mel front end in plain torch, so the embedded default needs no transformers.

Whisper models are trained on one exact feature recipe: 16 kHz audio zero-padded to 30 s,
a 400-point Hann STFT with hop 160 (100 frames per second), power spectrum, Slaney mel
filters, log10, a floor 8 (log10 units) below the clip's maximum, then ``(x + 4) / 4``.
Any drift from it (another mel scale, another padding) costs accuracy, so the recipe is
copied from openai/whisper's ``log_mel_spectrogram`` and checked against transformers'
``WhisperFeatureExtractor`` in the tests.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS
"""Whisper's encoder always sees exactly 30 s (3000 mel frames)."""
CHUNK_FRAMES = CHUNK_SAMPLES // HOP_LENGTH


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa's default, the one Whisper was trained with): linear
    below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mels = freq / f_sp
    above = freq >= min_log_hz
    mels[above] = min_log_mel + np.log(freq[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    freqs = f_sp * mels
    above = mels >= min_log_mel
    freqs[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return freqs


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> torch.Tensor:
    """``[n_mels, N_FFT // 2 + 1]`` Slaney-normalised triangular filters from 0 to 8 kHz,
    equal to ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)``."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = _mel_to_hz(
        np.linspace(
            _hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([SAMPLE_RATE / 2]))[0], n_mels + 2
        )
    )
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """``[n_mels, 3000]`` float32 log-mel features of one clip of at most 30 s at 16 kHz,
    zero-padded to 30 s exactly as Whisper's own front end does."""
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio [samples], got shape {list(audio.shape)}")
    if audio.shape[0] > CHUNK_SAMPLES:
        raise ValueError(
            f"log_mel_spectrogram takes at most {CHUNK_SECONDS} s ({CHUNK_SAMPLES} samples), "
            f"got {audio.shape[0]} samples"
        )
    padded = torch.zeros(CHUNK_SAMPLES, dtype=torch.float32)
    padded[: audio.shape[0]] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(padded, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()
