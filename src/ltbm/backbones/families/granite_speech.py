"""Granite Speech (``GraniteSpeechForConditionalGeneration``) with compressed audio tokens.

Stacked log-mel pairs (50 Hz) → conformer encoder (50 Hz) → the projector: a Q-Former maps
each window of 15 encoder frames to 3 learned queries, then a linear layer (10 Hz). N per
clip is the processor's ``input_features_mask`` (the last, partial window counts whole).

Where compression sits: on the Q-Former outputs, before the linear. Compressing encoder
frames would give the LLM 3 × ceil(K' / 15) tokens, never K; merging before or after the
affine linear gives the same rows. No attention scorer: the queries come from
cross-attention. Released checkpoints carry a LoRA adapter that the model's own ``generate``
turns on only for ``input_features``; ltbm generates from ``inputs_embeds``, so it turns the
adapter on itself, and refuses a model whose config promises one that is not loaded.
See docs/design-notes.md ("Granite Speech").
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch

from ltbm.backbones.hf.adapter import AudioAdapter, EncodedAudio
from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.core.syncs import host_list, host_tensor


def granite_token_count(samples: Sequence[int], window: int = 15, downsample: int = 5) -> list[int]:
    """N per clip from its 16 kHz sample count: the feature extractor's own
    ``GraniteSpeechFeatureExtractor._get_num_audio_features``, called with the settings it
    reads (its constructor needs torchaudio; the count does not)."""
    from transformers.models.granite_speech.feature_extraction_granite_speech import (
        GraniteSpeechFeatureExtractor as Extractor,
    )

    settings = SimpleNamespace(
        melspec_kwargs={"hop_length": 160},
        projector_window_size=window,
        projector_downsample_rate=downsample,
    )
    return list(Extractor._get_num_audio_features(settings, list(samples)))


def check_lora(model: torch.nn.Module) -> None:
    """Refuse a model whose config promises a LoRA adapter for audio that is not loaded: the
    base LLM would run instead of the speech-tuned one, with no error."""
    if getattr(model.config, "has_lora_adapter", False) and not model._hf_peft_config_loaded:
        raise ValueError(
            "this Granite Speech checkpoint has a LoRA adapter for audio (config."
            "has_lora_adapter) but none is loaded, so the base LLM would answer: pip install "
            "peft and load it again; to run without the adapter on purpose, load with "
            "model_kwargs={'has_lora_adapter': False}"
        )


class GraniteSpeechAdapter(AudioAdapter):
    """The encoder and Q-Former run by the model's own ``get_audio_features``; the Q-Former
    outputs are taken as they enter the projector's linear layer."""

    model_type = "granite_speech"
    mask_key = "input_features_mask"
    frame_rate = 10.0
    attention_scorer = False
    tower_name = "encoder"
    projector_name = "projector"

    def __init__(self, model: torch.nn.Module) -> None:
        check_lora(model)
        super().__init__(model)
        self.projector = self.projector.linear

    def encode(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
        attention: bool,
    ) -> EncodedAudio:
        weight = self.tower.input_linear.weight
        seen: list[torch.Tensor] = []
        hook = self.projector.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            self.inner.get_audio_features(features.to(weight.device, weight.dtype))
        finally:
            hook.remove()
        counts = self.window_tokens(frame_mask)  # on the host, where the processor left it
        if max(counts, default=0) > seen[0].shape[1]:
            raise ValueError(
                f"input_features_mask marks {counts} tokens but the features give "
                f"{seen[0].shape[1]}; pass the processor's features and mask together"
            )
        return EncodedAudio(seen[0][:, : max(counts, default=0)], host_tensor(counts))

    def window_tokens(self, frame_mask: torch.Tensor) -> list[int]:
        return host_list(frame_mask.sum(-1).long())  # the mask is per token already

    def llm_generate(self, **kwargs: Any) -> Any:
        """Audio is in the prompt: turn the LoRA adapter on, as the model's own ``generate``
        does when given ``input_features``, and skip that override, which would turn it off
        for ``inputs_embeds``."""
        from transformers import GenerationMixin

        if self.model._hf_peft_config_loaded:
            self.model.enable_adapters()
        return GenerationMixin.generate(self.model, **kwargs)


class GraniteSpeechPipeline(HFPipeline):
    """Granite Speech with a bound compression method. The processor sets no length limit;
    the bound is the LLM's context at 10 tokens per second."""

    name = "granite-speech"
    adapter_class = GraniteSpeechAdapter

    @classmethod
    def check_environment(cls) -> None:
        from transformers.utils import is_torchaudio_available

        if not is_torchaudio_available():
            raise ImportError(
                "Granite Speech's feature extractor needs torchaudio: pip install torchaudio "
                "(the build matching your torch); model_config('granite_speech', ...) in "
                "ltbm.backbones.synthetic builds a tiny model without it"
            )

    def max_seconds(self) -> float:
        context = int(self.model.config.text_config.max_position_embeddings)
        return context / self.adapter.frame_rate

    def _apply_template(self, messages: Any) -> str:
        """Granite's chat template takes string contents with ``<|audio|>`` in the text (the
        model card's form): typed items are written out as one string."""
        return super()._apply_template([self._as_string(m) for m in messages])

    def _as_string(self, message: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(message.get("content"), list):
            return message
        audio, parts = self.audio_token, message["content"]
        text = [audio if c.get("type") == "audio" else str(c.get("text", "")) for c in parts]
        return {**message, "content": "".join(text)}
