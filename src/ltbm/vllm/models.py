"""ltbm's compressed variants of vLLM's Qwen2-Audio and Audio Flamingo 3 classes.

Each variant subclasses vLLM's own model and multimodal processor and changes two things:

- the processor writes K = ``kept_tokens(N, keep_ratio)`` placeholders per clip instead of N
  (vLLM's count of N is kept and checked against ltbm's), and passes K to the model with the
  clip's features (``ltbm_tokens``);
- the model's multimodal-embedding hook runs encoder → method → projector through ltbm's
  own adapter for the family (the one its transformers path uses), returning exactly K
  embeddings per clip, and refuses to return anything else.

The encoder and projector are vLLM's modules, with vLLM's weights; the method's settings
come from the served config (:func:`ltbm.vllm.settings.method_from_config`). Clips given as
``audio_embeds`` pass through uncompressed, as in stock vLLM. Importing this module imports
vLLM; vLLM imports it lazily, through the names :mod:`ltbm.vllm.plugin` registers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from vllm.model_executor.models.audioflamingo3 import (
    AudioFlamingo3DummyInputsBuilder,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3MultiModalProcessor,
    AudioFlamingo3ProcessingInfo,
)
from vllm.model_executor.models.qwen2_audio import (
    Qwen2AudioDummyInputsBuilder,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioMultiModalProcessor,
    Qwen2AudioProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails

from ltbm.backbones.families.audioflamingo3 import AudioFlamingo3Adapter
from ltbm.backbones.families.qwen2_audio import Qwen2AudioAdapter
from ltbm.backbones.hf.adapter import AudioAdapter, encoder_token_count
from ltbm.core.budget import kept_tokens
from ltbm.vllm.settings import method_from_config

KEPT_FIELD = "ltbm_tokens"
"""The processor's K per clip, handed to the model with the clip's features."""


# ---------------------------------------------------------------------------- processor
def clip_token_counts(feature_mask: torch.Tensor, windows: Sequence[int]) -> list[int]:
    """N per clip: the encoder tokens of each clip's consecutive 30 s windows (ltbm's rule)."""
    per_window = encoder_token_count(feature_mask.sum(-1).long()).tolist()
    counts, start = [], 0
    for count in windows:
        counts.append(int(sum(per_window[start : start + count])))
        start += count
    return counts


class CompressedProcessorMixin:
    """Writes K placeholders per clip in place of the stock processor's N."""

    def _ltbm_keep_ratio(self) -> float:
        return method_from_config(self.info.get_hf_config()).keep_ratio

    def _postprocess_hf_mm_data(self, mm_inputs, hf_processor_mm_kwargs, processed):
        processed = super()._postprocess_hf_mm_data(mm_inputs, hf_processor_mm_kwargs, processed)
        mask = processed.get("feature_attention_mask")
        if mask is not None:  # features, not audio_embeds (those pass through)
            windows = processed.get("chunk_counts")
            windows = [1] * mask.shape[0] if windows is None else windows.tolist()
            ratio = self._ltbm_keep_ratio()
            counts = clip_token_counts(mask, windows)
            processed[KEPT_FIELD] = torch.tensor([kept_tokens(n, ratio) for n in counts])
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if KEPT_FIELD in hf_inputs:
            fields[KEPT_FIELD] = MultiModalFieldConfig.batched("audio", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        data = out_mm_kwargs.get_data()
        if KEPT_FIELD not in data:
            return updates
        kept = [int(k) for k in data[KEPT_FIELD]]
        ratio = self._ltbm_keep_ratio()
        return [
            PromptReplacement(u.modality, u.target, _resized(u.replacement, kept, ratio))
            for u in updates
        ]


def _resized(stock: Callable[[int], Any], kept: list[int], ratio: float) -> Callable[[int], Any]:
    """The stock replacement (N copies of the audio token), cut to K copies; N is checked
    against the K that travels to the model, so processor and model count alike."""

    def replacement(item: int):
        details = stock(item)
        tokens = details.full if isinstance(details, PromptUpdateDetails) else list(details)
        if len(set(tokens)) != 1 or kept_tokens(len(tokens), ratio) != kept[item]:
            raise RuntimeError(
                f"vLLM wrote {len(tokens)} audio placeholders for clip {item} where ltbm "
                f"counted K = {kept[item]} kept of its tokens: this vLLM version counts "
                "audio tokens differently from ltbm; please report it"
            )
        resized = tokens[:1] * kept[item]
        if isinstance(details, PromptUpdateDetails):
            return PromptUpdateDetails.select_token_id(resized, embed_token_id=tokens[0])
        return resized

    return replacement


class LtbmQwen2AudioProcessor(CompressedProcessorMixin, Qwen2AudioMultiModalProcessor):
    """Qwen2-Audio's processor with K placeholders per clip."""


class LtbmQwen2AudioProcessingInfo(Qwen2AudioProcessingInfo):
    def get_mm_max_tokens_per_item(self, seq_len, mm_counts=None):
        """At most K of a full 30 s window's tokens per clip (sizes the encoder cache)."""
        stock = super().get_mm_max_tokens_per_item(seq_len, mm_counts)
        ratio = method_from_config(self.get_hf_config()).keep_ratio
        return {modality: kept_tokens(n, ratio) for modality, n in stock.items()}


class LtbmAudioFlamingo3Processor(CompressedProcessorMixin, AudioFlamingo3MultiModalProcessor):
    """Audio Flamingo 3's processor with K placeholders per clip (K over all its windows)."""


# -------------------------------------------------------------------------------- model
class VllmQwen2AudioAdapter(Qwen2AudioAdapter):
    """ltbm's Qwen2-Audio adapter over vLLM's model: the tower is transformers' own encoder
    class in both, so the encoder runs exactly as on ltbm's transformers path."""


class VllmAudioFlamingo3Adapter(AudioFlamingo3Adapter):
    """ltbm's AF3 adapter over vLLM's model: windows joined per clip in time order and
    compressed across window boundaries as on the transformers path; the tower is run by
    vLLM's own encoder call (vLLM has its own AF3 encoder class)."""

    def _run_tower(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        return self.model._encode_audio_features(features, frame_mask)


class CompressedModelMixin:
    """Returns K embeddings per clip from the multimodal-embedding hook."""

    ltbm_adapter_class: type[AudioAdapter]

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.ltbm_method = method_from_config(self.config)
        self.ltbm_adapter = self.ltbm_adapter_class(self)
        self.ltbm_adapter.check_method(self.ltbm_method)

    def get_input_embeddings(self) -> nn.Module:
        """The LLM's token embedding (ltbm's Qwen2-Audio adapter reads its dtype)."""
        return self.language_model.model.embed_tokens

    def embed_multimodal(self, **kwargs: object):
        expected = kwargs.pop(KEPT_FIELD, None)
        embeddings = super().embed_multimodal(**kwargs)
        if kwargs.get("input_features") is None:
            return embeddings  # audio_embeds: uncompressed, as in stock vLLM
        got = [int(e.shape[0]) for e in embeddings]
        want = None if expected is None else [int(k) for k in expected]
        if got != want:
            raise RuntimeError(
                f"ltbm's model made {got} audio embeddings per clip but the processor wrote "
                f"{want} placeholders: processor and model were not set up by the same ltbm "
                "settings; serve through ltbm serve or ltbm.vllm.llm(...)"
            )
        return embeddings

    def _process_audio_input(self, audio_input):
        if audio_input["type"] == "audio_embeds":
            return super()._process_audio_input(audio_input)
        features, mask, windows = self._ltbm_features(audio_input)
        audio = self.ltbm_adapter.audio_embeddings(self.ltbm_method, features, mask, windows)
        return torch.split(audio.rows, audio.kept_tokens)

    def _ltbm_features(self, audio_input) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Feature windows, their frame masks and the windows of each clip."""
        raise NotImplementedError


@MULTIMODAL_REGISTRY.register_processor(
    LtbmQwen2AudioProcessor,
    info=LtbmQwen2AudioProcessingInfo,
    dummy_inputs=Qwen2AudioDummyInputsBuilder,
)
class LtbmQwen2AudioForConditionalGeneration(
    CompressedModelMixin, Qwen2AudioForConditionalGeneration
):
    """vLLM's Qwen2-Audio with ltbm's compression between encoder and projector."""

    ltbm_adapter_class = VllmQwen2AudioAdapter

    def _ltbm_features(self, audio_input):
        features = audio_input["input_features"]
        if isinstance(features, list):
            features = torch.stack(features)
        mask = audio_input["feature_attention_mask"]
        return features, mask, [1] * features.shape[0]


@MULTIMODAL_REGISTRY.register_processor(
    LtbmAudioFlamingo3Processor,
    info=AudioFlamingo3ProcessingInfo,
    dummy_inputs=AudioFlamingo3DummyInputsBuilder,
)
class LtbmAudioFlamingo3ForConditionalGeneration(
    CompressedModelMixin, AudioFlamingo3ForConditionalGeneration
):
    """vLLM's Audio Flamingo 3 with ltbm's compression over each clip's windows."""

    ltbm_adapter_class = VllmAudioFlamingo3Adapter

    def _ltbm_features(self, audio_input):
        features, mask, windows = self._normalize_audio_feature_inputs(audio_input)
        return features, mask, [int(w) for w in windows]


COMPRESSED_MODELS: Mapping[str, type[nn.Module]] = {
    "qwen2_audio": LtbmQwen2AudioForConditionalGeneration,
    "audioflamingo3": LtbmAudioFlamingo3ForConditionalGeneration,
}
