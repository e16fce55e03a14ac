"""Music Flamingo (``MusicFlamingoForConditionalGeneration``) with compressed audio tokens.

Audio Flamingo 3's encoder, windows and placeholders (one ``<sound>`` run per clip between
``<|sound_bos|>`` and ``<|sound_eos|>``, up to 40 windows: 20 minutes), plus a rotary time
embedding (RoTE) that the model applies to the encoder tokens before its projector, from
each token's window and position (0.04 s apart).

Where compression sits: the method plans on the encoder tokens (25 Hz, the same merging
metric as AF3), and the plan is applied to the time-embedded tokens that the projector takes,
so a merged slot is the mean of its sources exactly as they would have reached the
projector, each with its own time; every rotation is the model's own ``pos_emb`` and
``apply_rotary_time_emb``. At keep 1 the plan is the identity and the model is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ltbm.backbones.families.audioflamingo3 import AudioFlamingo3Adapter, AudioFlamingo3Pipeline


class MusicFlamingoAdapter(AudioFlamingo3Adapter):
    """AF3's encoder steps; the projector input carries the model's time embedding."""

    model_type = "musicflamingo"

    def time_embedded(self, hidden: torch.Tensor, windows: Sequence[int]) -> torch.Tensor:
        from transformers.models.musicflamingo.modeling_musicflamingo import (
            apply_rotary_time_emb,
        )

        stamps = self.timestamps(windows, hidden.shape[1]).to(hidden.device)
        cos, sin = self.inner.pos_emb(stamps, seq_len=hidden.shape[1])
        return apply_rotary_time_emb(hidden, cos, sin)

    def timestamps(self, windows: Sequence[int], tokens: int) -> torch.Tensor:
        """``[rows, tokens]`` seconds from each clip's start: the model's rule (window index
        within its clip × window length + position × token step)."""
        step = float(self.model.config.audio_frame_step) * 4
        index = torch.cat([torch.arange(count) for count in windows]).float()
        offsets = torch.arange(tokens, dtype=torch.float32) * step
        return index[:, None] * tokens * step + offsets


class MusicFlamingoPipeline(AudioFlamingo3Pipeline):
    """Music Flamingo with a bound compression method; clips up to 20 minutes."""

    name = "musicflamingo"
    adapter_class = MusicFlamingoAdapter
