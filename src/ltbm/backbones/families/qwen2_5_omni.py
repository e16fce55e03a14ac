"""Qwen2.5-Omni's thinker (``Qwen2_5OmniThinkerForConditionalGeneration``) with compressed
audio tokens.

The audio encoder runs on the valid mel frames only, attends within 2 s chunks, then
average-pools frame pairs, applies ``ln_post`` and its own output ``proj`` (the projector
sits inside the tower): one token per 40 ms (25 Hz), ``N = ((L - 1) // 2 + 1 - 2) // 2 + 1``
for L mel frames. The LLM uses time-aligned multimodal rotary positions: an audio token's
position is its time in 40 ms steps from the start of the audio run.

Where compression sits: on the tokens entering ``proj`` (after pooling and ``ln_post``),
taken with a forward pre-hook on ``proj`` while the model's own ``get_audio_features`` runs;
``proj`` then maps the K kept tokens. Positions: every slot takes the model's own position
of its centroid frame (the mean source frame, rounded to the 40 ms grid), and text after the
audio keeps the position it has without compression, so the time axis the model was trained
on is unchanged. Only the thinker generates text; the talker (speech output) is not used.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ltbm.backbones.hf.adapter import (
    AudioAdapter,
    AudioEmbeddings,
    EncodedAudio,
    pad_clips,
)
from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.backbones.hf.placeholders import placeholder_runs, resize_placeholder_runs
from ltbm.core.syncs import host_tensor

MAX_SECONDS = 30.0


class Qwen25OmniAdapter(AudioAdapter):
    """The thinker's audio path, with the kept tokens placed at their time."""

    model_type = "qwen2_5_omni_thinker"
    mask_key = "feature_attention_mask"
    frame_rate = 25.0
    attention_scorer = False  # attention is per 2 s chunk of the flattened clips
    projector_name = "audio_tower"
    projector_layer = "proj"
    """The tower's first layer after its last norm: where the kept tokens enter."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.projector = getattr(self.tower, self.projector_layer)

    def encode(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
        attention: bool,
    ) -> EncodedAudio:
        device = self.projector.weight.device
        counts = self.window_tokens(frame_mask)  # on the host, where the processor left it
        frame_mask = frame_mask.to(device)
        seen: list[torch.Tensor] = []
        hook = self.projector.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            self.inner.get_audio_features(features.to(device), frame_mask)
        finally:
            hook.remove()
        return EncodedAudio(pad_clips(list(seen[0].split(counts))), host_tensor(counts))

    def llm_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio: AudioEmbeddings
    ) -> dict[str, torch.Tensor]:
        return {"position_ids": self.positions(input_ids, attention_mask, audio)}

    def positions(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio: AudioEmbeddings
    ) -> torch.Tensor:
        """``[4, B, T]`` position ids for the prompt with K placeholders per clip: row 0 the
        text positions ``generate`` makes, rows 1-3 the model's multimodal positions of the
        uncompressed prompt, each slot at its centroid frame's."""
        full_ids, full_mask = resize_placeholder_runs(
            input_ids.cpu(), attention_mask.cpu(), self.audio_token_id, audio.audio_tokens, 0
        )
        full_ids, full_mask = full_ids.to(input_ids.device), full_mask.to(input_ids.device)
        mel = torch.tensor(audio.frame_lengths, device=input_ids.device)
        full, _ = self.inner.get_rope_index(full_ids, None, None, full_mask, False, mel)
        centroids = slot_frames(audio)
        out = torch.ones((3, *input_ids.shape), dtype=full.dtype, device=full.device)
        clip = 0
        for row in range(input_ids.shape[0]):
            ids = full_ids[row][full_mask[row].bool()].tolist()
            table = full[:, row][:, full_mask[row].bool()]
            keep: list[int] = []
            position = 0
            for start, length in placeholder_runs(ids, self.audio_token_id):
                keep += list(range(position, start)) + [start + f for f in centroids[clip]]
                position = start + length
                clip += 1
            keep += list(range(position, len(ids)))
            out[:, row, input_ids.shape[1] - len(keep) :] = table[:, keep]
        text = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return torch.cat([text[None].to(out), out])


def slot_frames(audio: AudioEmbeddings) -> list[list[int]]:
    """Each clip's kept slots as frames: the rounded centroid (mean source frame) of every
    slot, or every frame without compression."""
    if audio.compressed is None:
        return [list(range(n)) for n in audio.audio_tokens]
    centroids = audio.compressed.plan.centroids.round().long().tolist()
    return [row[:k] for row, k in zip(centroids, audio.kept_tokens, strict=True)]


class Qwen25OmniPipeline(HFPipeline):
    """Qwen2.5-Omni's thinker with a bound compression method; clips up to 30 s (the
    processor's feature extractor window)."""

    name = "qwen2.5-omni"
    adapter_class = Qwen25OmniAdapter

    def max_seconds(self) -> float:
        return self.feature_window_seconds(MAX_SECONDS)

    def fallback_prompt(self, text: str) -> str:
        return f"<|audio_bos|>{self.audio_token}<|audio_eos|>{text}"
