"""``ltbm.compressed(model, processor, method)`` for transformers' Whisper.

::

    with ltbm.compressed(model, processor, ltbm.get_method("ltbm", keep_ratio=0.25)):
        inputs = processor(audio, sampling_rate=16000, return_tensors="pt")
        ids = model.generate(**inputs)

Whisper has no audio placeholders: its decoder reads the encoder's output through
cross-attention. Inside the block, on these instances only and undone exactly on exit:

* the processor's ``feature_extractor`` is wrapped so that it also returns
  ``attention_mask`` (each clip's valid mel frames), which says where each clip's audio ends
  in its 30 s window;
* a forward hook on the encoder (public torch API) replaces its ``[B, 1500, D]`` output by,
  per clip, the K compressed tokens of its N valid frames followed by the uncompressed last
  second of its window, zero-padded to the longest clip: the same rows the ``whisper-hf``
  pipeline gives its decoder (shared code, :class:`~ltbm.backbones.whisper.frames.WhisperFrames`);
* forward pre-hooks on the decoder's cross-attention mask each clip's padding rows
  (:class:`~ltbm.backbones.whisper.cross_attention.CrossAttentionMask`);
* with ``size_aware=True``, the same cross-attention also adds each row's log(size)
  (:mod:`ltbm.backbones.hf.size_aware`, hooked after the padding mask).

``model.generate`` passes ``attention_mask`` to the encoder; a plain ``model(...)`` forward does
not, so a pre-hook on the model hands it over. Encoder states passed in by the caller
(``encoder_outputs=``) are used as given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ltbm.backbones.base import check_flag, check_method_argument
from ltbm.backbones.hf.attention_capture import AttentionCapture, last_attention, needs_attention
from ltbm.backbones.hf.size_aware import (
    KeyBias,
    clip_log_sizes,
    cross_attention,
    encoder_key_bias,
    positional_names,
)
from ltbm.backbones.whisper.cross_attention import (
    CrossAttentionMask,
    pad_rows,
    whisper_encoder,
)
from ltbm.backbones.whisper.frames import EncodedClip, WhisperFrames
from ltbm.methods import Method

MEL_HOP = 160
"""Samples per mel frame: a clip of L valid mel frames holds about ``160 L`` samples."""


class _Frames(WhisperFrames):
    """The shared frame logic with the drop-in's settings (no cache: the caller's batch)."""

    name = "whisper-hf"

    def __init__(self, frame_rate: int | None, tail_seconds: float) -> None:
        self._init_frames(frame_rate, False, tail_seconds, 1, 1, 0)


class _WithFrameMask:
    """A feature extractor that always returns ``attention_mask`` (each clip's valid frames);
    everything else is the wrapped extractor's."""

    def __init__(self, extractor: Any) -> None:
        self.wrapped = extractor

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("return_attention_mask", True)
        return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class WhisperCompression:
    """The state of one ``compressed(...)`` block on a Whisper model."""

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        method: Method | None,
        *,
        size_aware: bool = False,
        frame_rate: int | None = None,
        tail_seconds: float = 1.0,
    ) -> None:
        check_method_argument(method)
        check_flag("size_aware", size_aware)
        self.model = model
        self.processor = processor
        self.method = method
        self.encoder = whisper_encoder(model)
        self.frames = _Frames(frame_rate, tail_seconds)
        self.cross = CrossAttentionMask(model)
        self._key_bias: KeyBias | None = None
        if size_aware and method is not None:  # refused here if the kernel takes no bias
            self._key_bias = KeyBias(cross_attention(model), cross=True)
        self.last: dict[str, list[int]] | None = None
        """N, K and decoder rows per clip of the last compressed batch."""
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._saved_extractor: tuple[bool, Any] | None = None
        self._forward_mask: torch.Tensor | None = None
        self._capture: AttentionCapture | None = None
        self._parameters = positional_names(model.forward)

    # ------------------------------------------------------------------ attach
    def attach(self) -> WhisperCompression:
        from ltbm.backbones.hf.dropin import claim

        claim(self.model, self.processor)
        if self.method is None:
            return self
        if self.processor is not None and hasattr(self.processor, "feature_extractor"):
            had_own = "feature_extractor" in vars(self.processor)
            extractor = self.processor.feature_extractor
            self._saved_extractor = (had_own, extractor)
            self.processor.feature_extractor = _WithFrameMask(extractor)
        self._handles = [
            self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True),
            self.encoder.register_forward_pre_hook(self._encoder_pre_hook, with_kwargs=True),
            self.encoder.register_forward_hook(self._encoder_hook, with_kwargs=True),
        ]
        self.cross.attach()
        if self._key_bias is not None:  # after the padding mask: the bias adds to it
            self._key_bias.attach()
        return self

    def detach(self) -> None:
        from ltbm.backbones.hf.dropin import release

        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.cross.detach()
        if self._key_bias is not None:
            self._key_bias.detach()
        self._close_capture()
        if self._saved_extractor is not None:
            had_own, extractor = self._saved_extractor
            if had_own:
                self.processor.feature_extractor = extractor
            else:
                delattr(self.processor, "feature_extractor")
            self._saved_extractor = None
        self._forward_mask = None
        release(self.model, self.processor)

    def __enter__(self) -> WhisperCompression:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ------------------------------------------------------------------- hooks
    def _model_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """A plain forward does not pass ``attention_mask`` to the encoder: keep it for it."""
        inputs = dict(zip(self._parameters, args, strict=False)) | kwargs
        if inputs.get("input_features") is not None:
            self._forward_mask = inputs.get("attention_mask")

    def _encoder_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if needs_attention(self.method):
            self._close_capture()
            self._capture = AttentionCapture(last_attention(self.encoder)).__enter__()

    def _encoder_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any):
        features = args[0] if args else kwargs.get("input_features")
        frame_mask = kwargs.get("attention_mask")
        frame_mask = self._forward_mask if frame_mask is None else frame_mask
        self._forward_mask = None
        queries = keys = None
        if self._capture is not None:
            queries, keys = self._capture.queries_keys()
            self._close_capture()
        if frame_mask is None:
            raise ValueError(
                "inside ltbm.compressed(...), Whisper needs each clip's length: pass the "
                "attention_mask the processor returns inside the block, e.g. inputs = "
                "processor(audio, sampling_rate=16000, return_tensors='pt'); "
                "model.generate(**inputs)"
            )
        hidden = output.last_hidden_state
        clips = self._clips(hidden, frame_mask, features, queries, keys)
        compressed = self.frames.compress(clips, self.method)
        rows = self.frames.batch_decoder_rows(clips, compressed)
        padded = pad_rows(rows).to(hidden.device, hidden.dtype)
        self.cross.set([r.shape[0] for r in rows], padded.shape[1], padded)
        if self._key_bias is not None:
            sizes = clip_log_sizes(compressed)
            self._key_bias.bias = (
                None if sizes is None else encoder_key_bias(sizes, padded.shape[1])
            )
        self.last = {
            "audio_tokens": [c.valid for c in clips],
            "kept_tokens": compressed.lengths.tolist(),
            "decoder_rows": [r.shape[0] for r in rows],
        }
        return type(output)(last_hidden_state=padded)

    def _clips(self, hidden, frame_mask, features, queries, keys) -> list[EncodedClip]:
        mel_frames = frame_mask.sum(-1).long().tolist()
        if len(mel_frames) != hidden.shape[0]:
            raise ValueError(
                f"attention_mask has {len(mel_frames)} rows for {hidden.shape[0]} clips"
            )
        if features is not None and frame_mask.shape[-1] != features.shape[-1]:
            raise ValueError(
                f"attention_mask covers {frame_mask.shape[-1]} mel frames but the features "
                f"have {features.shape[-1]}; pass the processor's own outputs"
            )
        if min(mel_frames) < 1:
            raise ValueError("a clip has no valid mel frame (an empty clip)")
        frames = hidden.float()  # compressed on the model's device, no round trip
        return [
            self.frames.encoded_clip(
                frames[i],
                mel * MEL_HOP,
                False,
                None if queries is None else queries[i].float(),
                None if keys is None else keys[i].float(),
            )
            for i, mel in enumerate(mel_frames)
        ]

    def _close_capture(self) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
