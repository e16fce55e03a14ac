"""Phi-4-multimodal (``Phi4MultimodalForCausalLM``) with compressed audio tokens.

80-bin log-mel frames every 10 ms → a conformer whose first layer (``NemoConvSubsampling``)
reduces time 8× → one token per 80 ms (12.5 Hz), ``N = ceil(L / 8)`` for L valid frames →
``up_proj_for_speech → GELU → down_proj_for_speech`` → the processor's run of N audio tokens.

Where compression sits: on the conformer's output, before ``up_proj``: the encoder's own time
reduction is fixed inside its first convolution, and the projector maps tokens one by one, so
K kept tokens give exactly K rows. No attention scorer: the conformer's attention carries a
relative bias and a streaming chunk mask, not plain scores over tokens.

The released checkpoint serves speech through a LoRA on the LLM (``speech-lora/``): see
:mod:`ltbm.backbones.hf.shipped_lora`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ltbm.backbones.hf.adapter import AudioAdapter, EncodedAudio, module_device_dtype, owner_of
from ltbm.backbones.hf.clips import Prompt
from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.backbones.hf.shipped_lora import apply_lora, require_active
from ltbm.core.syncs import host_list, host_tensor
from ltbm.io.audio import AudioError

MAX_SECONDS = 1800.0
"""ltbm's cap (22 500 tokens); the encoder itself takes any length in 40 s blocks."""
LORA = "speech-lora"
"""The subfolder of the released checkpoint that holds its speech LoRA."""
BLOCK = 500
"""Encoder tokens per block: ``max_seq_len`` of ``Phi4MultimodalAudioModel.forward``."""


class Phi4MultimodalAdapter(AudioAdapter):
    """The model's audio embedding, split at the projector (speech mode: no image)."""

    model_type = "phi4_multimodal"
    features_key = "audio_input_features"
    mask_key = "audio_attention_mask"
    frame_rate = 12.5
    attention_scorer = False

    def __init__(self, model: nn.Module) -> None:
        # Here, not in the pipeline: ltbm.compressed builds the adapter too.
        require_active(model, LORA, "speech")
        self.model = model
        self.inner = owner_of(model, "embed_tokens_extend").embed_tokens_extend.audio_embed
        self.tower = self.inner.encoder
        self.projector = self.inner.up_proj_for_speech
        self.audio_token_id = int(model.config.audio_config.audio_token_id)

    def frame_mask(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The feature extractor gives no mask for a single clip (nothing is padded)."""
        if mask is None:
            return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return mask

    def window_tokens(self, frame_mask: torch.Tensor) -> list[int]:
        """``ceil(L / 8)``: the subsampling's and ``_compute_audio_embed_size``'s rule."""
        rate = int(self.tower.config.time_reduction)
        return host_list((frame_mask.sum(-1).long() + rate - 1) // rate)

    def encode(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
        attention: bool,
    ) -> EncodedAudio:
        device, dtype = module_device_dtype(self.projector)
        rate = int(self.tower.config.time_reduction)
        if features.shape[0] > 1 and -(-features.shape[1] // rate) > BLOCK:
            raise ValueError(
                f"Phi-4-multimodal's encoder (transformers' unfold_tensor) fails on a batch of "
                f"clips when one lasts over {BLOCK * rate / 100:g} s; pass batch_size=1"
            )
        # As the model's own call: no mask for one clip (the processor gives none).
        mask = None if features.shape[0] == 1 else frame_mask.to(device).bool()
        hidden = self.tower(features.to(device, dtype), mask)
        counts = self.window_tokens(frame_mask)  # on the host, where the processor left it
        return EncodedAudio(hidden[:, : max(counts, default=0)], host_tensor(counts))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        device, dtype = module_device_dtype(self.projector)
        hidden = nn.functional.gelu(self.projector(tokens.to(device, dtype)))
        return self.inner.down_proj_for_speech(hidden)


class Phi4MultimodalPipeline(HFPipeline):
    """Phi-4-multimodal with a bound compression method; clips up to 30 minutes."""

    name = "phi4-multimodal"
    adapter_class = Phi4MultimodalAdapter

    @classmethod
    def finish_loading(cls, model: nn.Module, source: str) -> None:
        apply_lora(model, source, LORA, "speech")

    @classmethod
    def load_processor(cls, source: str) -> Any:
        """The model's own processor; without torchvision (its image processor needs it) the
        same class with a stand-in image processor, from the checkpoint's other parts."""
        import transformers
        from transformers.image_processing_utils import BaseImageProcessor
        from transformers.utils import is_torchvision_available

        if is_torchvision_available():
            return super().load_processor(source)
        processor_class = transformers.Phi4MultimodalProcessor
        config, kwargs = processor_class.get_processor_dict(source)
        parts = [
            BaseImageProcessor(),
            transformers.AutoFeatureExtractor.from_pretrained(source),
            transformers.AutoTokenizer.from_pretrained(source),
        ]
        return processor_class.from_args_and_dict(parts, config, **kwargs)

    def max_seconds(self) -> float:
        return MAX_SECONDS

    def _process(self, prompts: list[Prompt], samples: list[np.ndarray]) -> Any:
        window = int(self.processor.audio_processor.win_length)
        for index, clip in enumerate(samples):
            if len(clip) < window:  # the feature extractor would fail inside torch
                raise AudioError(
                    f"clip {index} is too short ({len(clip)} samples): Phi-4-multimodal's "
                    f"feature extractor needs at least {window} ({window / 16:g} ms)"
                )
        inputs = super()._process(prompts, samples)
        key = self.adapter.mask_key
        inputs[key] = self.adapter.frame_mask(inputs["audio_input_features"], inputs.get(key))
        return inputs
