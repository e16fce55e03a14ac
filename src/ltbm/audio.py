"""Reading and resampling audio, with errors that say what is wrong with the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
"""Every backbone in ltbm takes 16 kHz mono audio."""


class AudioError(ValueError):
    """Audio that cannot be used, with the reason and the fix in the message."""


def load_audio(
    source, sample_rate: int | None = None, target_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Return mono float32 audio at ``target_rate`` from a file path or an array.

    An array must come with its ``sample_rate``; a file's own rate is read from it. Multi-
    channel audio is averaged to mono; any rate is resampled (soxr, high quality).
    """
    if isinstance(source, (str, Path)):
        samples, rate = _read_file(Path(source))
    else:
        if sample_rate is None:
            raise AudioError(
                "an audio array needs its sample rate: pass sample_rate=... (e.g. 16000)"
            )
        samples, rate = np.asarray(source), int(sample_rate)
        if samples.ndim == 2 and samples.shape[0] < samples.shape[1] and samples.shape[0] <= 8:
            samples = samples.T  # [channels, time] → [time, channels]
    if rate <= 0:
        raise AudioError(f"sample rate must be positive, got {rate}")
    if not np.issubdtype(samples.dtype, np.number):
        raise AudioError(f"audio must be numeric samples, got dtype {samples.dtype}")
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.ndim != 1:
        raise AudioError(f"audio must be 1-D (time) or 2-D (time, channels), got {samples.shape}")
    if samples.size == 0:
        raise AudioError("the audio is empty (0 samples)")
    if not np.isfinite(samples).all():
        raise AudioError("the audio holds NaN or Inf samples")
    if rate != target_rate:
        samples = resample(samples, rate, target_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32)


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"expected an audio file, got a directory: {path}")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(
            f"cannot read {path}: {error}. Supported formats are those of libsndfile "
            "(wav, flac, ogg/vorbis, mp3 with libsndfile ≥ 1.1); convert others with "
            "`sox in.xyz -r 16000 out.wav` or ffmpeg"
        ) from None
    return samples, int(rate)


def is_silent(samples: np.ndarray, threshold: float = 1e-4) -> bool:
    """True when the clip's RMS is below ``threshold`` (about -80 dBFS)."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < threshold


def duration_seconds(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    return len(samples) / rate
