"""Qwen3-Omni's thinker (``Qwen3OmniMoeThinkerForConditionalGeneration``) with compressed
audio tokens.

The audio encoder downsamples the valid mel frames 8× with three stride-2 convolutions per
100-frame chunk (13 tokens per full chunk: 12.5 Hz), attends within windows, applies
``ln_post`` and then ``proj1 → act → proj2`` (the projector, inside the tower). The LLM
(a mixture of experts) uses time-aligned multimodal rotary positions, one per audio token.

Where compression sits: on the tokens entering ``proj1`` (after ``ln_post``), taken with a
forward pre-hook while the model's own ``get_audio_features`` runs; the three projector steps
then map the K kept tokens. Positions as for Qwen2.5-Omni: each slot at its centroid frame's
position, text after the audio where it is without compression.
"""

from __future__ import annotations

import torch

from ltbm.backbones.families.qwen2_5_omni import Qwen25OmniAdapter, Qwen25OmniPipeline
from ltbm.core.syncs import host_list


def qwen3_token_count(mel_frames: torch.Tensor, chunk: int = 100) -> torch.Tensor:
    """Tokens from valid mel frames: 13 per full chunk of ``chunk`` frames, and three
    stride-2 convolutions on the rest (the processor's and the model's rule)."""
    rest = (mel_frames % chunk - 1) // 2 + 1
    return ((rest - 1) // 2 + 1 - 1) // 2 + 1 + (mel_frames // chunk) * 13


class Qwen3OmniAdapter(Qwen25OmniAdapter):
    """The thinker's audio path; the projector is ``proj1 → act → proj2``."""

    model_type = "qwen3_omni_moe_thinker"
    frame_rate = 12.5
    projector_layer = "proj1"

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.tower.proj1.weight
        hidden = self.tower.act(self.tower.proj1(tokens.to(weight.device, weight.dtype)))
        return self.tower.proj2(hidden)

    def window_tokens(self, frame_mask: torch.Tensor) -> list[int]:
        chunk = 2 * int(self.tower.config.n_window)
        return host_list(qwen3_token_count(frame_mask.sum(-1).long(), chunk))


class Qwen3OmniPipeline(Qwen25OmniPipeline):
    """Qwen3-Omni's thinker with a bound compression method; clips up to 30 s (the
    processor's feature extractor window)."""

    name = "qwen3-omni"
    adapter_class = Qwen3OmniAdapter
