"""What both Whisper backbones (CTranslate2 and PyTorch) do the same way: clips in, encoder
frames out, compressed, and handed to the decoder with the uncompressed end of the window.

    audio (16 kHz mono) → log-mel padded to 30 s → encoder → [1500, D] at 50 Hz
    → the N valid frames (50 per second of audio; pairs averaged at 25 Hz) → compressed to K
    → + the last second of the encoder's 30 s window, uncompressed → the decoder.

Why the trailing frames: cut right at the end of speech, the decoder never sees the end of
its window, loops and repeats itself (DESIGN §4). Whisper was trained on windows that always
end at 30 s, and the encoder's last frames (its positions 29–30 s, over padding) are what
says "the window is over". They are not audio tokens: ``audio_tokens`` is N and
``kept_tokens`` is K, both counted on the valid part.

A backbone subclass says how its encoder runs (:meth:`WhisperFrames._run_encoder`) and how
its decoder generates; encoding with a cache, compression and the decoder's input rows are
shared here, so the two backbones feed their decoders the same frames.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ltbm.backbones.whisper.mel import CHUNK_SAMPLES, CHUNK_SECONDS
from ltbm.io.audio import SAMPLE_RATE, AudioError, check_samples
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
the limit is tight (a 29 s clip lost its last 25 tokens at 128), so leave headroom. What
CTranslate2 makes of it: see :func:`new_token_limit`."""


def new_token_limit(prompt_length: int, max_new_tokens: int) -> int:
    """How many tokens CTranslate2's Whisper generates at most when whisper-ct2 asks for
    ``max_new_tokens`` after a prompt of ``prompt_length``.

    whisper-ct2 passes ``max_length = min(prompt + max_new_tokens, 448)``, and CTranslate2
    (``src/models/whisper.cc``) decodes at most ``min(max_length // 2, max_length -
    (prompt - 1))`` steps, half the length as openai/whisper's ``sample_len``. So the default
    224 stops a clip after 113 new tokens with tiny.en's 2-token prompt and 114 with base's
    4 (measured: a looping clip gives 32, 64, 113, 150, 224 tokens for max_length 64, 128,
    226, 300, 448). whisper-hf applies the same limit, so the two backbones stop at the same
    token. The tiny.en outputs of every existing run rest on this limit, so it stays."""
    max_length = min(prompt_length + max_new_tokens, MAX_DECODER_POSITIONS)
    return max(0, min(max_length // 2, max_length - (prompt_length - 1)))


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
    queries: torch.Tensor | None = None
    """``[heads, F, head_dim]``: the encoder's last-layer queries on the 50 Hz frames under
    the valid tokens (F = N at 50 Hz, 2N at 25 Hz), where the backbone captured them for the
    attention scorer; None otherwise."""
    keys: torch.Tensor | None = None


class ByteLevelDecoder:
    """Token ids → text for Whisper's GPT-2 byte-level BPE, from the model's own
    ``vocabulary.txt`` (no tokenizer library needed)."""

    def __init__(self, vocabulary: list[str], first_special: int) -> None:
        self.vocabulary = vocabulary
        self.first_special = first_special
        self.byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}

    @classmethod
    def from_model_dir(cls, model_dir: Any) -> ByteLevelDecoder:
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


def english_prompt(token_id: Any, multilingual: bool) -> list[int]:
    """The decoder prompt that transcribes English without timestamps: start, then (for a
    multilingual model, which would otherwise guess the language) ``<|en|><|transcribe|>``,
    then ``<|notimestamps|>``. ``token_id`` maps a token to its id."""
    tokens = ["<|startoftranscript|>"]
    if multilingual:
        tokens += ["<|en|>", "<|transcribe|>"]
    return [token_id(token) for token in [*tokens, "<|notimestamps|>"]]


class WhisperFrames:
    """Encoding with a per-clip cache, batched compression of the valid frames and the
    decoder's input rows: the part of a Whisper backbone that does not depend on the runtime.

    Subclasses call :meth:`_init_frames` and implement ``_run_encoder(clips, attention)``."""

    name: str

    def _init_frames(
        self,
        frame_rate: int | None,
        pool_to_25hz: bool,
        tail_seconds: float,
        beam_size: int,
        encode_batch: int,
        cache_clips: int,
    ) -> None:
        check_settings(tail_seconds, beam_size)
        self.rate = resolve_frame_rate(frame_rate, pool_to_25hz)
        self.pool_to_25hz = self.rate != ENCODER_RATE
        self.tail_seconds = float(tail_seconds)
        self.tail_frames = round(tail_seconds * self.rate)
        self.beam_size = int(beam_size)
        self.encode_batch = max(1, int(encode_batch))
        self.cache_clips = max(0, int(cache_clips))
        self._cache: OrderedDict[bytes, EncodedClip] = OrderedDict()

    # ------------------------------------------------------------------ encoding
    def encode(self, audios: list[np.ndarray], attention: bool = False) -> list[EncodedClip]:
        """Encoder frames of every clip (in batches of ``encode_batch``); clips seen
        recently come from the cache, byte-identical audio giving identical frames.
        ``attention``: also capture the last layer's queries and keys (a cached clip
        without them is encoded again)."""
        clips = [check_clip(audio, i) for i, audio in enumerate(audios)]
        keys = [hashlib.blake2b(clip.tobytes(), digest_size=16).digest() for clip in clips]
        found = {
            key: self._cache[key]
            for key in keys
            if key in self._cache and (not attention or self._cache[key].queries is not None)
        }
        missing = [i for i, key in enumerate(keys) if key not in found]
        for start in range(0, len(missing), self.encode_batch):
            batch = missing[start : start + self.encode_batch]
            for index, clip in zip(
                batch, self._run_encoder([clips[i] for i in batch], attention), strict=True
            ):
                found[keys[index]] = clip
        for key in keys:
            self._remember(key, found[key])
        return [found[key] for key in keys]

    def _run_encoder(self, clips: list[np.ndarray], attention: bool) -> list[EncodedClip]:
        raise NotImplementedError

    def _remember(self, key: bytes, clip: EncodedClip) -> None:
        if not self.cache_clips:
            return
        self._cache[key] = clip
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)

    def encoded_clip(
        self,
        frames: torch.Tensor,
        num_samples: int,
        silent: bool,
        queries: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> EncodedClip:
        """One clip from its ``[1500, D]`` encoder output at 50 Hz (and, for the attention
        scorer, its last layer's ``[heads, 1500, head_dim]`` queries and keys), at this
        backbone's rate: N counted, pairs averaged at 25 Hz, attention cut to the frames under
        the valid tokens."""
        valid = valid_frames(num_samples)
        if self.pool_to_25hz:
            frames = pool_pairs(frames)
            valid = math.ceil(valid / 2)
        if queries is not None and keys is not None:
            covered = valid * (ENCODER_RATE // self.rate)
            queries, keys = queries[:, :covered].clone(), keys[:, :covered].clone()
        return EncodedClip(frames, valid, num_samples, silent, queries, keys)

    # --------------------------------------------------------------- compression
    def check_prompt(self, template: str) -> None:
        """Refuse a text prompt up front: Whisper transcribes and takes none."""
        if template:
            raise ValueError(
                f"{self.name} transcribes and takes no text prompt; drop --prompt {template!r}"
            )

    def compress(self, encoded: list[EncodedClip], method: Method | None) -> Compressed | None:
        """Compress the valid frames of every clip in one batched call (padding past each
        clip's N is never mixed in); None when ``method`` is None."""
        if method is None or not encoded:
            return None
        self.check_method(method)
        lengths = torch.tensor([clip.valid for clip in encoded], dtype=torch.long)
        width = int(lengths.max())
        tokens = torch.stack([clip.frames[:width] for clip in encoded])
        if not getattr(method, "needs_attention", False):
            return method(tokens, lengths)
        return method(tokens, lengths, **attention_signals(encoded, width, self.rate))

    def check_method(self, method: Method | None) -> None:
        """Refuse, before any work, a method this backbone cannot feed."""

    def decoder_rows(
        self, encoded: list[EncodedClip], compressed: Compressed | None, index: int
    ) -> torch.Tensor:
        """``[K + tail, D]`` float32: clip ``index``'s kept tokens, then the last
        ``tail_frames`` of its encoder window (fewer when the clip nearly fills 30 s)."""
        clip = encoded[index]
        if compressed is None:
            return self._with_tail(clip, clip.frames[: clip.valid])
        kept = compressed.tokens[index, : int(compressed.lengths[index])].float()
        return self._with_tail(clip, kept)

    def batch_decoder_rows(
        self, encoded: list[EncodedClip], compressed: Compressed | None
    ) -> list[torch.Tensor]:
        """:meth:`decoder_rows` of every clip, reading the kept counts to the host once (one
        device wait per batch, not one per clip)."""
        if compressed is None:
            return [self._with_tail(clip, clip.frames[: clip.valid]) for clip in encoded]
        counts = compressed.lengths.tolist()
        return [
            self._with_tail(clip, compressed.tokens[index, :count].float())
            for index, (clip, count) in enumerate(zip(encoded, counts, strict=True))
        ]

    def _with_tail(self, clip: EncodedClip, kept: torch.Tensor) -> torch.Tensor:
        window = clip.frames.shape[0]
        tail = clip.frames[max(clip.valid, window - self.tail_frames) :]
        return torch.cat([kept, tail], dim=0)

    @property
    def run_name(self) -> str:
        """The backbone's folder under a task: 25 Hz runs apart from 50 Hz ones, and a
        model other than tiny.en apart from tiny.en (``whisper-ct2-base-25hz``)."""
        name = self.name
        if getattr(self, "model_name", None) not in (None, "tiny.en"):
            name = f"{name}-{self.model_name}"
        return name if self.rate == ENCODER_RATE else f"{name}-{self.rate}hz"

    @property
    def frame_seconds(self) -> float:
        """Seconds of audio per token at this backbone's rate (0.02 or 0.04)."""
        return 1.0 / self.rate


def attention_signals(encoded: list[EncodedClip], width: int, rate: int) -> dict[str, Any]:
    """The captured queries and keys of every clip, zero-padded to ``[C, heads, F, d]`` with F
    the frames under ``width`` tokens (the prune scorer pools frames onto tokens by the ratio
    of the widths and masks each clip's frames past its N)."""
    if any(clip.queries is None or clip.keys is None for clip in encoded):
        raise RuntimeError("the clips were encoded without attention; encode(..., attention=True)")
    frames = width * (ENCODER_RATE // rate)
    signals = {}
    for name in ("queries", "keys"):
        first = getattr(encoded[0], name)
        out = first.new_zeros((len(encoded), first.shape[0], frames, first.shape[2]))
        for index, clip in enumerate(encoded):
            value = getattr(clip, name)
            out[index, :, : value.shape[1]] = value
        signals[name] = out
    return signals


def check_settings(tail_seconds: float, beam_size: int, threads: int | None = None) -> None:
    """A backbone's numbers, refused with a message rather than a runtime's type error
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
    if threads is not None and not _whole(threads, 0):
        raise ValueError(
            f"intra_threads must be a whole number of CPU threads ≥ 1 (0 or None: every core "
            f"this process may use), got {threads!r}"
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


def check_clip(audio: np.ndarray, index: int) -> np.ndarray:
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


def check_prompts(name: str, prompts: list[str | None] | None, count: int) -> None:
    if prompts is None:
        return
    if len(prompts) != count:
        raise ValueError(f"got {len(prompts)} prompts for {count} clips; pass one per clip")
    if any(p for p in prompts):
        raise ValueError(
            f"{name} transcribes and takes no text prompt; pass prompts=None (or empty strings)"
        )
