"""Qwen2-Audio (``Qwen2AudioForConditionalGeneration``) with compressed audio tokens.

One clip is one 30 s window: 3000 mel frames → Whisper-style encoder → AvgPool(2) and
LayerNorm → 750 tokens at 25 Hz, of which N are valid (``f = (L-1)//2 + 1; N = (f-2)//2 + 1``
for L valid mel frames) → one Linear projector → ``<|AUDIO|>`` placeholders.

The model's own forward has no audio-feature hook and its merging code moved between
releases, so ltbm runs the encoder exactly as that forward does (same bidirectional mask
over the valid frames), compresses the tokens, projects them and generates from
``inputs_embeds``: nothing in transformers is patched.

Longer audio than 30 s is refused (the feature extractor would silently cut it); use Audio
Flamingo 3 for long audio. Silent audio works: the encoder still makes N tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ltbm.backbones.hf.adapter import AudioAdapter, EncodedAudio, encoder_token_count
from ltbm.backbones.hf.attention_capture import AttentionCapture, last_attention
from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.core.syncs import host_list, host_tensor

MAX_SECONDS = 30.0


class Qwen2AudioAdapter(AudioAdapter):
    """Runs the Qwen2-Audio encoder the way ``Qwen2AudioModel.forward`` does."""

    model_type = "qwen2_audio"
    mask_key = "feature_attention_mask"
    frame_rate = 25.0

    def encode(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
        attention: bool,
    ) -> EncodedAudio:
        if any(w != 1 for w in windows):
            raise ValueError("Qwen2-Audio takes one 30 s window per clip")
        device = self.tower.conv1.weight.device
        features = features.to(device, self.tower.conv1.weight.dtype)
        mel_lengths = frame_mask.to(device).sum(-1).long()
        mask = self._encoder_mask(features, mel_lengths)
        # Token counts from the processor's mask, on the host where it arrives.
        lengths = host_tensor(encoder_token_count(frame_mask.sum(-1).long()))
        width = max(host_list(lengths), default=0)
        signals: dict[str, torch.Tensor] = {}
        if attention:
            with AttentionCapture(last_attention(self.tower)) as capture:
                hidden = self.tower(features, attention_mask=mask).last_hidden_state
            queries, keys = capture.queries_keys()
        else:
            hidden = self.tower(features, attention_mask=mask).last_hidden_state
        if attention:
            # The prune scorer pools frames onto tokens by the ratio of their widths, so the
            # frames are cropped with the tokens (2 frames per token).
            frames = width * (queries.shape[2] // hidden.shape[1])
            signals = {"queries": queries[:, :, :frames], "keys": keys[:, :, :frames]}
        return EncodedAudio(hidden[:, :width], lengths, signals)

    def _encoder_mask(self, features: torch.Tensor, mel_lengths: torch.Tensor):
        """The encoder's attention mask over valid conv frames, built with the same
        transformers helper and arguments as ``Qwen2AudioModel.forward``, so attention over
        padding is masked identically (and the uncompressed path matches bit for bit)."""
        from transformers.masking_utils import create_bidirectional_mask

        batch, _, mel_frames = features.shape
        frames = (mel_frames - 2) // 2 + 1
        valid = (mel_lengths - 1) // 2 + 1
        mask_2d = (torch.arange(frames, device=features.device)[None, :] < valid[:, None]).long()
        text_dtype = self.model.get_input_embeddings().weight.dtype
        dummy = torch.zeros((batch, frames, 1), dtype=text_dtype, device=features.device)
        return create_bidirectional_mask(
            config=self.tower.config, inputs_embeds=dummy, attention_mask=mask_2d
        )


class Qwen2AudioPipeline(HFPipeline):
    """Qwen2-Audio (base or Instruct) with a bound compression method.

    Plain-string prompts are wrapped in the processor's chat template with one audio item
    (``Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>`` for the Instruct model); a string that
    already holds ``<|AUDIO|>`` is used as written, e.g. the base model's
    ``"<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"``.
    """

    name = "qwen2-audio"
    adapter_class = Qwen2AudioAdapter

    def max_seconds(self) -> float:
        return self.feature_window_seconds(MAX_SECONDS)

    def fallback_prompt(self, text: str) -> str:
        bos = getattr(self.processor, "audio_bos_token", "<|audio_bos|>")
        eos = getattr(self.processor, "audio_eos_token", "<|audio_eos|>")
        return f"{bos}{self.audio_token}{eos}{text}"

    def _too_long_hint(self) -> str:
        return (
            "split it into clips of at most 30 s (the feature extractor would otherwise cut "
            "it silently), or use Audio Flamingo 3, which takes up to 10 minutes"
        )
