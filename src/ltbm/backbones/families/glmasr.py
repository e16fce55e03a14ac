"""GLM-ASR (``GlmAsrForConditionalGeneration``) with compressed audio tokens.

The processor cuts a clip into 30 s windows (up to ``max_audio_len``, 655 s: 21 whole
windows), the encoder (rotary positions, no padding mask: it attends over the whole padded
window) makes 1500 frames per window at 50 Hz, and the model stacks 4 consecutive frames
into one vector (``reshape`` to ``intermediate_size``) before its projector: 375 tokens per
window at 12.5 Hz, of which ``((L - 1) // 2 + 1 - 4) // 4 + 1`` are valid for L valid mel
frames. One ``<|pad|>`` run per clip, as long as its windows' valid tokens.

Where compression sits: after the frame stacking, on the stacked vectors the projector
takes, so a slot is the mean of whole 80 ms stacks and the projector sees vectors of the
shape it was trained on; merging across windows as for Audio Flamingo 3. The attention
scorer is not offered: attention is per 20 ms frame over the padded window, and pooling it
onto stacks of four is a choice this adapter does not make for the user (prune uses
``scorer='norm'``).
"""

from __future__ import annotations

import torch

from ltbm.backbones.families.audioflamingo3 import AudioFlamingo3Adapter, AudioFlamingo3Pipeline
from ltbm.core.syncs import host_list

STACK = 4
"""Encoder frames per token: the model's ``merge_factor``."""


def glmasr_token_count(mel_frames: torch.Tensor) -> torch.Tensor:
    """Valid tokens of a window from its valid mel frames: conv2 (stride 2), then stacks of
    four (the model's and processor's rule)."""
    frames = (mel_frames - 1) // 2 + 1
    return ((frames - STACK) // STACK + 1).clamp(min=0)


class GlmAsrAdapter(AudioFlamingo3Adapter):
    """AF3's window bookkeeping; tokens are stacks of four encoder frames."""

    model_type = "glmasr"
    frame_rate = 12.5
    attention_scorer = False

    def window_tokens(self, frame_mask: torch.Tensor) -> list[int]:
        return host_list(glmasr_token_count(frame_mask.sum(-1).long()))

    def full_window_tokens(self) -> int:
        return int(self.tower.config.max_position_embeddings) // STACK

    def _run_tower(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(features, return_dict=True).last_hidden_state
        width = int(self.model.config.audio_config.intermediate_size)
        return hidden.reshape(features.shape[0], -1, width)


class GlmAsrPipeline(AudioFlamingo3Pipeline):
    """GLM-ASR with a bound compression method; clips up to 630 s (21 windows)."""

    name = "glmasr"
    adapter_class = GlmAsrAdapter
