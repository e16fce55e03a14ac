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
    channel audio is averaged to mono; any rate is resampled (soxr, high quality). Integer
    arrays are scaled from their PCM range; float audio far outside [-1, 1] (integer PCM
    passed as float, say) and truncated WAV files are refused (see :func:`check_scale`).
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
    if rate < MIN_SAMPLE_RATE:
        raise AudioError(
            f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz, where no speech or sound "
            "the models know survives: a damaged header, or the rate passed in kHz? Pass the "
            "rate in Hz (e.g. 16000)"
        )
    if not np.issubdtype(samples.dtype, np.number) or np.iscomplexobj(samples):
        raise AudioError(f"audio must be real numeric samples, got dtype {samples.dtype}")
    samples = _as_float(samples)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.ndim != 1:
        raise AudioError(f"audio must be 1-D (time) or 2-D (time, channels), got {samples.shape}")
    if samples.size == 0:
        raise AudioError("the audio is empty (0 samples)")
    check_samples(samples)
    if rate != target_rate:
        samples = resample(samples, rate, target_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


MIN_SAMPLE_RATE = 1000
"""The lowest rate accepted: 8 kHz telephone audio is the lowest real source; a rate of a
few hertz is a damaged header (or kHz passed for Hz), and resampling it would invent
seconds of audio out of a handful of samples."""

FLOAT_LIMIT = 2.0
"""Float audio peaking above this is refused: no real recording overshoots full scale by
6 dB, while integer PCM passed as float peaks in the thousands."""


def _as_float(samples: np.ndarray) -> np.ndarray:
    """Float32 samples; integer PCM is scaled to [-1, 1) by its type's range."""
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        middle = (int(info.max) + int(info.min) + 1) / 2  # 0 for signed, 128 for uint8
        scale = (int(info.max) - int(info.min) + 1) / 2
        return ((samples.astype(np.float64) - middle) / scale).astype(np.float32)
    return samples.astype(np.float32, copy=False)


def check_samples(samples: np.ndarray) -> None:
    """What every backbone needs of decoded samples, checked in one place for files read by
    :func:`load_audio` and for arrays handed to a backbone directly: floating point (integer
    PCM must be scaled first, which ``load_audio`` does), finite, and on the [-1, 1] scale
    (:func:`check_scale`). NaN or Inf samples would reach the encoder and come out as NaN
    tokens, or as a transcript of garbage, without a word."""
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(
            f"the samples are {samples.dtype}, not floating point; scale integer PCM to "
            "[-1, 1] first: ltbm.io.audio.load_audio(samples, sample_rate=16000) does it"
        )
    if not np.isfinite(samples).all():
        raise AudioError(
            "the audio holds NaN or Inf samples; check the decoder or the processing that "
            "produced them"
        )
    check_scale(samples)


def check_scale(samples: np.ndarray) -> None:
    """Refuse float audio that is not on the [-1, 1] scale: whole numbers above 1 (integer
    PCM passed as float) or a peak above :data:`FLOAT_LIMIT`."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak <= 1.0:
        return
    if peak > FLOAT_LIMIT or bool(np.all(samples == np.round(samples))):
        raise AudioError(
            f"the audio peaks at {peak:g}, far outside [-1, 1]: integer PCM passed as float? "
            "Divide int16 samples by 32768 (int32 by 2**31), or pass the integer array itself"
        )


def audio_warnings(samples: np.ndarray) -> list[str]:
    """What is odd but usable about a clip, for its result record: a peak slightly above
    full scale (accepted up to :data:`FLOAT_LIMIT`) or digital silence."""
    found = []
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 1.0:
        found.append(f"samples reach {peak:.3g}, outside [-1, 1] (clipped or mis-scaled source)")
    if is_silent(samples):
        found.append("silent (RMS below -80 dBFS)")
    return found


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
    _check_wav_complete(path)
    return samples, int(rate)


def _check_wav_complete(path: Path) -> None:
    """Refuse a WAV file whose data chunk is shorter than its header says (an interrupted
    download or copy): libsndfile reads what is there without a word."""
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        size = path.stat().st_size
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk = handle.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                available = size - position - 8
                if 0 < declared < 0xFFFFFFFF and available < declared:
                    raise AudioError(
                        f"{path} is truncated: its header declares {declared} bytes of audio, "
                        f"the file holds {available}. Download or copy it again"
                    )
                return
            position += 8 + declared + (declared & 1)


def is_silent(samples: np.ndarray, threshold: float = 1e-4) -> bool:
    """True when the clip's RMS is below ``threshold`` (about -80 dBFS)."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < threshold


def duration_seconds(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    return len(samples) / rate
