"""Whisper in PyTorch (transformers' ``WhisperForConditionalGeneration``) as an ltbm backbone.

The weights are the CTranslate2 files ltbm ships (tiny.en, base), converted on load by
:mod:`ltbm.backbones.whisper.ct2_weights`, or any Whisper checkpoint in transformers' format.
It feeds the decoder exactly what the CTranslate2 backbone feeds it (the shared
:class:`~ltbm.backbones.whisper.frames.WhisperFrames`: the valid frames at 50 or 25 Hz,
compressed, then the last second of the 30 s window), and adds what CTranslate2 does not
expose:

* the encoder's last-layer attention for ``prune(scorer="attention")``, captured from the
  layer's own ``q_proj``/``k_proj`` (the model stays on SDPA);
* batches of clips with different decoder lengths in one ``generate``: transformers'
  Whisper decoder passes no mask to its cross-attention, so a forward pre-hook (public torch
  API) gives every ``encoder_attn`` an additive mask over each clip's padding rows, only
  while ltbm generates (:mod:`~ltbm.backbones.whisper.cross_attention`);
* the model's own ``generate`` under ``ltbm.compressed(model, processor, method)``
  (:mod:`ltbm.backbones.whisper.dropin`), which uses the same functions.

Decoding is greedy by default: transformers' beam search is not CTranslate2's (different
stopping and length normalisation), so beam results of the two backbones are not
comparable, while greedy results are token for token (``benchmarks/whisper_conversion.py``).
"""

from __future__ import annotations

import copy
import logging
import platform
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltbm.backbones.base import Generation, check_flag, check_method_argument
from ltbm.backbones.hf.adapter import module_device_dtype
from ltbm.backbones.hf.attention_capture import AttentionCapture, last_attention, needs_attention
from ltbm.backbones.hf.clips import AudioSource, pair, read_clip
from ltbm.backbones.hf.size_aware import (
    check_biasable,
    clip_log_sizes,
    cross_attention,
    cross_attention_bias,
    encoder_key_bias,
)
from ltbm.backbones.whisper.cross_attention import (
    CrossAttentionMask,
    pad_rows,
    whisper_encoder,
)
from ltbm.backbones.whisper.frames import (
    DEFAULT_MAX_NEW_TOKENS,
    ByteLevelDecoder,
    EncodedClip,
    WhisperFrames,
    check_max_new_tokens,
    check_prompts,
    english_prompt,
    new_token_limit,
)
from ltbm.backbones.whisper.mel import CHUNK_SECONDS, log_mel_spectrogram
from ltbm.io.audio import is_silent
from ltbm.methods import Compressed, Method

GENERATE_NOTICES = (
    "Both `max_new_tokens`",
    "Passing `generation_config` together with generation-related arguments",
    "The attention mask is not set with a batched input",
)
"""What transformers' Whisper ``generate`` logs about its own inner call, on every batch:
it passes its suppress tokens beside the generation config, restores the model's default
``max_length`` beside our ``max_new_tokens`` (which takes precedence, as intended), and
cannot tell that the batch's decoder prompts, all the same length, have no padding."""


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(GENERATE_NOTICES)


@contextmanager
def without_generate_notices():
    """Drop :data:`GENERATE_NOTICES` (a line each per batch of a 327-clip sweep) while the
    pipeline generates; every other message of transformers passes."""
    logger = logging.getLogger("transformers.generation.utils")
    notices = _DropNotices()
    logger.addFilter(notices)
    try:
        yield
    finally:
        logger.removeFilter(notices)


DEFAULT = object()
"""Sentinel for "the pipeline's bound method" in :meth:`WhisperHF.generate`."""


class WhisperHF(WhisperFrames):
    """Whisper in PyTorch with a bound compression method: ``generate(audios)`` transcribes,
    the encoder's frames compressed to K per clip plus the uncompressed last second.

    Build it with :meth:`from_ct2` (the shipped tiny.en or base, or a CTranslate2 folder),
    ``ltbm.load("whisper-base")``, or around a model and processor you hold:
    ``WhisperHF(model, processor, method)``.

    Args:
        frame_rate, tail_seconds: as for the CTranslate2 backbone (50 or 25 Hz; the last
            second of the window appended uncompressed).
        beam_size: 1 (greedy, the default) or transformers' beam search.
        encode_batch: clips per encoder call; decode_batch: clips per ``generate``.
        cache_clips: encoder outputs kept, so a sweep encodes each clip once (as
            :class:`~ltbm.backbones.whisper.ct2.WhisperCT2`; with the attention scorer each
            clip also keeps its last layer's queries and keys, 4.6 MB for tiny.en, 6.1 MB
            for base).
        size_aware: the decoder's cross-attention gives each compressed row the weight of
            the frames it stands for (log(size) added to its logits;
            :mod:`ltbm.backbones.hf.size_aware`); eager or sdpa attention only.
        model_name, model_id, weights_sha256: what the run identity records (set by
            :meth:`from_ct2`).
    """

    name = "whisper-hf"

    def __init__(
        self,
        model: nn.Module,
        processor: Any = None,
        method: Method | None = None,
        *,
        frame_rate: int | None = None,
        tail_seconds: float = 1.0,
        beam_size: int = 1,
        encode_batch: int = 8,
        decode_batch: int = 8,
        cache_clips: int = 400,
        size_aware: bool = False,
        model_name: str | None = None,
        model_id: str | None = None,
        weights_sha256: str | None = None,
        vocabulary: ByteLevelDecoder | None = None,
    ) -> None:
        self._init_frames(frame_rate, False, tail_seconds, beam_size, encode_batch, cache_clips)
        self.model = model.eval()
        self.processor = processor
        self.method = check_method_argument(method)
        self.decode_batch = max(1, int(decode_batch))
        self.encoder = whisper_encoder(model)
        self.model_name = model_name
        self.model_id = model_id or getattr(model.config, "_name_or_path", None) or None
        self.weights_sha256 = weights_sha256
        self.tokenizer = vocabulary or _vocabulary_from(processor)
        generation = model.generation_config
        self.multilingual = bool(getattr(generation, "is_multilingual", False))
        self.prompt_ids = english_prompt(self.tokenizer.token_id, self.multilingual)
        self.size_aware = check_flag("size_aware", size_aware)
        if self.size_aware:
            self.check_size_aware()

    # -------------------------------------------------------------- construction
    @classmethod
    def from_ct2(
        cls,
        model: str | Path | None = None,
        method: Method | None = None,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        threads: int | None = None,
        **settings: Any,
    ) -> WhisperHF:
        """The shipped ``tiny.en`` (default) or ``base``, or a CTranslate2 Whisper folder,
        converted to transformers' classes (see :mod:`~ltbm.backbones.whisper.ct2_weights`).
        ``threads`` sets torch's CPU threads (for the whole process); default: torch's own."""
        from ltbm.backbones.whisper.models import resolve_model, shipped_model, weights_sha256

        target = _one_device(device)
        folder, name = resolve_model(model)
        if not (folder / "model.bin").is_file():
            raise FileNotFoundError(
                f"no CTranslate2 model at {folder} (model.bin missing); pass tiny.en, base or "
                "the folder of a converted Whisper model"
            )
        model_object, processor = load_ct2_whisper(folder, dtype=_torch_dtype(dtype))
        if threads:
            torch.set_num_threads(int(threads))
        model_object.to(target)
        model_id = shipped_model(name).model_id if name else folder.name
        return cls(
            model_object,
            processor,
            method,
            model_name=name or folder.name,
            model_id=model_id,
            weights_sha256=weights_sha256(folder / "model.bin"),
            vocabulary=ByteLevelDecoder.from_model_dir(folder),
            **settings,
        )

    @classmethod
    def check_environment(cls) -> None:
        """Nothing beyond transformers (``ltbm.load`` calls it)."""

    @classmethod
    def load_processor(cls, source: str) -> Any:
        import transformers

        return transformers.WhisperProcessor.from_pretrained(source)

    @classmethod
    def finish_loading(cls, model: nn.Module, source: str) -> None:
        """Nothing to do beyond ``from_pretrained``."""

    @classmethod
    def compression(cls, model: nn.Module, processor: Any, method: Method | None, **options: Any):
        """The drop-in for ``ltbm.compressed`` (:mod:`ltbm.backbones.whisper.dropin`)."""
        from ltbm.backbones.whisper.dropin import WhisperCompression

        return WhisperCompression(model, processor, method, **options)

    def max_seconds(self) -> float:
        """Longest clip: Whisper's one 30 s window."""
        return float(CHUNK_SECONDS)

    # ------------------------------------------------------------------- public
    def generate(
        self,
        audios: AudioSource | Sequence[AudioSource],
        prompts: Any = None,
        method: Method | None | object = DEFAULT,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int | None = None,
        size_aware: bool | object = DEFAULT,
    ) -> list[Generation]:
        """Transcribe clips (paths, or 16 kHz mono arrays, ≤ 30 s each), their encoder frames
        compressed by ``method`` (default: the bound one; None: no compression), with
        size-aware cross-attention if ``size_aware`` (default: the bound setting)."""
        clips, prompt_list = pair(audios, prompts)
        check_prompts(self.name, prompt_list, len(clips))
        check_max_new_tokens(max_new_tokens)
        method = self.method if method is DEFAULT else check_method_argument(method)
        self.check_method(method)
        size_aware = (
            self.size_aware if size_aware is DEFAULT else check_flag("size_aware", size_aware)
        )
        if size_aware:
            self.check_size_aware()
        samples = [read_clip(i, clip) for i, clip in enumerate(clips)]
        size = batch_size or len(samples)
        results: list[Generation] = []
        for start in range(0, len(samples), size):
            encoded = self.encode(samples[start : start + size], needs_attention(method))
            compressed = self.compress(encoded, method)
            results += self.decode(encoded, compressed, max_new_tokens, size_aware)
        return results

    def decode(
        self,
        encoded: list[EncodedClip],
        compressed: Compressed | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        size_aware: bool | None = None,
    ) -> list[Generation]:
        """Generate from each clip's (compressed) frames plus its tail, ``decode_batch``
        clips per ``generate``, clips of different lengths masked apart; ``size_aware``
        (default: the bound setting) biases the cross-attention by each row's size."""
        check_max_new_tokens(max_new_tokens)
        size_aware = self.size_aware if size_aware is None else size_aware
        rows = self.batch_decoder_rows(encoded, compressed)
        sizes = clip_log_sizes(compressed) if size_aware else None
        sequences: list[list[int]] = []
        for start in range(0, len(rows), self.decode_batch):
            end = start + self.decode_batch
            batch_sizes = None if sizes is None else sizes[start:end]
            sequences += self.run_decoder(rows[start:end], max_new_tokens, batch_sizes)
        return [
            self._generation(clip, compressed, index, ids)
            for index, (clip, ids) in enumerate(zip(encoded, sequences, strict=True))
        ]

    def run_decoder(
        self,
        rows: list[torch.Tensor],
        max_new_tokens: int,
        log_sizes: list[torch.Tensor] | None = None,
    ) -> list[list[int]]:
        """Generated ids (prompt and end token removed) for each clip's decoder input rows;
        ``log_sizes`` (each clip's slot log-sizes) biases the cross-attention."""
        from transformers.modeling_outputs import BaseModelOutput

        device, dtype = module_device_dtype(self.model)
        hidden = pad_rows(rows).to(device, dtype)
        bias = None if log_sizes is None else encoder_key_bias(log_sizes, hidden.shape[1])
        # The padding mask's hooks first: the bias is added to the mask they set.
        with (
            torch.no_grad(),
            CrossAttentionMask(self.model) as mask,
            cross_attention_bias(self.model, bias),
            without_generate_notices(),
        ):
            mask.set([r.shape[0] for r in rows], hidden.shape[1], hidden)
            output = self.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                **self.generate_kwargs(max_new_tokens),
            )
        return [self._new_tokens(row.tolist()) for row in output]

    def generate_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """The settings that make transformers' ``generate`` decode as the CTranslate2
        backbone does: the same prompt (English forced on a multilingual model), the same
        limit on new tokens (CTranslate2 stops at about half the length it is given:
        :func:`~ltbm.backbones.whisper.frames.new_token_limit`), greedy or ``beam_size``
        beams."""
        config = copy.deepcopy(self.model.generation_config)
        config.max_length = None
        config.max_new_tokens = new_token_limit(len(self.prompt_ids), max_new_tokens)
        config.num_beams = self.beam_size
        config.do_sample = False
        kwargs: dict[str, Any] = {"generation_config": config}
        if self.multilingual:
            kwargs.update(language="en", task="transcribe")
        return kwargs

    def _new_tokens(self, ids: list[int]) -> list[int]:
        """The generated ids up to the end token. Whisper's ``generate`` returns them without
        the prompt; a version that keeps the prompt has it cut here."""
        prompt = len(self.prompt_ids)
        new = ids[prompt:] if ids[:prompt] == self.prompt_ids else ids
        end = self.tokenizer.first_special
        return new[: new.index(end)] if end in new else new

    def _generation(
        self, clip: EncodedClip, compressed: Compressed | None, index: int, ids: list[int]
    ) -> Generation:
        kept = clip.valid if compressed is None else int(compressed.lengths[index])
        return Generation(
            text=self.tokenizer.decode(ids),
            audio_tokens=clip.valid,
            kept_tokens=kept,
            extra={"silent": clip.silent, "generated_tokens": len(ids)},
        )

    # ------------------------------------------------------------------ encoder
    def _run_encoder(self, clips: list[np.ndarray], attention: bool = False) -> list[EncodedClip]:
        device, dtype = module_device_dtype(self.model)
        mels = np.stack([log_mel_spectrogram(a, self.model.config.num_mel_bins) for a in clips])
        features = torch.from_numpy(mels).to(device, dtype)
        queries = keys = None
        with torch.no_grad():
            if attention:
                with AttentionCapture(last_attention(self.encoder)) as capture:
                    frames = self.encoder(features).last_hidden_state
                queries, keys = (x.float() for x in capture.queries_keys())
            else:
                frames = self.encoder(features).last_hidden_state
        # On the model's device: compression runs where the encoder ran, with no round trip.
        frames = frames.float()
        return [
            self.encoded_clip(
                frames[i],
                a.shape[0],
                is_silent(a),
                None if queries is None else queries[i],
                None if keys is None else keys[i],
            )
            for i, a in enumerate(clips)
        ]

    # --------------------------------------------------------------- identity
    def check_size_aware(self) -> None:
        """Refuse, before any work, an attention kernel that takes no bias."""
        check_biasable(cross_attention(self.model))

    def describe(self) -> dict[str, Any]:
        """Model, versions and settings, written into every result."""
        import transformers

        return {
            **self.identity(),
            "method": self.method.params() if self.method is not None else None,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "intra_threads": torch.get_num_threads(),
            "pool_to_25hz": self.pool_to_25hz,
        }

    def identity(self) -> dict[str, Any]:
        """Every setting that decides a transcript: what decides any Hugging Face pipeline's
        (checkpoint, dtype, device type, attention kernel, generation config:
        :func:`~ltbm.backbones.hf.identity.hf_identity`), the SHA-256 of the CTranslate2
        weights it was converted from, frame rate, tail, beam and prompt."""
        from ltbm.backbones.hf.identity import hf_identity

        identity = hf_identity(self)
        identity.update(
            model=self.model_id,
            frame_rate_hz=self.rate,
            tail_frames=self.tail_frames,
            beam_size=self.beam_size,
            prompt_ids=list(self.prompt_ids),
        )
        if self.weights_sha256 is not None:
            identity["weights_sha256"] = self.weights_sha256
        return identity


def load_ct2_whisper(folder: Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """``WhisperForConditionalGeneration`` and ``WhisperProcessor`` from a CTranslate2 Whisper
    folder: the converted weights, and a processor from its ``tokenizer.json`` with the
    feature extractor for its number of mel bins."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    from ltbm.backbones.whisper.ct2_weights import load_whisper

    model = load_whisper(folder, dtype=dtype)
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(
            f"{tokenizer_file} not found: the PyTorch Whisper needs the tokenizer.json that "
            "CTranslate2's converter copies next to model.bin"
        )
    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_file))
    features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    return model, WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def _vocabulary_from(processor: Any) -> ByteLevelDecoder:
    """The byte-level decoder from a processor's tokenizer, for checkpoints without
    CTranslate2's ``vocabulary.txt``: the same text from the same ids as the CT2 backbone."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("WhisperHF needs the model's processor (or tokenizer) to decode ids")
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return ByteLevelDecoder(list(tokens), end)


def _one_device(device: Any) -> torch.device:
    """The device the converted model moves to, checked before the weights are read: one
    device (cpu, cuda:0), not a device map (``auto``, a dict), which only ``from_pretrained``
    takes, and which torch would refuse with its own message after the conversion."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"whisper-hf runs on one device, got {device!r}; pass one such as 'cpu' or "
            "'cuda:0' (device maps such as 'auto' are for checkpoints from_pretrained reads)"
        ) from None


def _torch_dtype(value: str | torch.dtype) -> torch.dtype:
    """A floating dtype from its name; ``auto`` is float32, the weights' compute type on CPU."""
    value = "float32" if value == "auto" else value
    resolved = value if isinstance(value, torch.dtype) else getattr(torch, str(value), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown dtype {value!r}; use float32, float16 or bfloat16")
    return resolved
