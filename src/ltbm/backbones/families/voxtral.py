"""Voxtral (``VoxtralForConditionalGeneration``) with compressed audio tokens.

The processor (through mistral-common) pads each clip to a multiple of 30 s and writes
``[BEGIN_AUDIO]`` and one ``[AUDIO]`` run per clip, 375 per 30 s window; the Whisper-style
encoder makes 1500 frames per window at 50 Hz with no padding mask, and the model stacks 4
consecutive frames into one vector (``reshape`` to ``intermediate_size``) before its
projector: 12.5 Hz. Every frame of every window reaches the LLM, the padded tail of the last
window included, so N = 375 × windows: Voxtral was trained to see that padding.

Where compression sits: after the frame stacking, on the vectors the projector takes (as for
GLM-ASR); merging may cross windows, since a clip's windows are one stream. No attention
scorer (frames, not stacks, attend). Drop-in: the placeholders are written inside
mistral-common's tokenizer, so ``ltbm.compressed`` resizes the runs of N placeholder ids in
the tokenized output of the processor's ``apply_chat_template`` and
``apply_transcription_request``; the pre-hook recovers each clip's windows from its K
(``group_windows``: N = 375 × windows, and a batch whose K could split the windows two ways
is refused).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ltbm.backbones.families.glmasr import STACK, GlmAsrAdapter
from ltbm.backbones.hf.clips import Prompt, is_chat
from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.io.audio import SAMPLE_RATE

MAX_SECONDS = 1800.0
WINDOW_SECONDS = 30.0


class VoxtralAdapter(GlmAsrAdapter):
    """GLM-ASR's stacking; every window is whole (no valid-length mask)."""

    model_type = "voxtral"
    mask_key = "input_features_mask"  # all ones: the processor gives none (see frame_mask)
    tokenizing_methods = ("apply_chat_template", "apply_transcription_request")
    """The processor's public methods whose tokenized outputs ``ltbm.compressed`` resizes."""

    def frame_mask(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Every mel frame of every window is used: a mask of ones gives N per window."""
        if mask is not None:
            return mask
        return torch.ones(features.shape[0], features.shape[-1], device=features.device)

    def window_tokens(self, frame_mask: torch.Tensor) -> list[int]:
        return [self.full_window_tokens()] * frame_mask.shape[0]

    def full_window_tokens(self) -> int:
        return int(self.tower.config.max_source_positions) // STACK


class VoxtralPipeline(HFPipeline):
    """Voxtral with a bound compression method; clips up to 30 minutes.

    Prompts are plain text (or chat messages with one ``{"type": "audio"}`` item), turned
    into a user turn with the audio first by the processor's ``apply_chat_template``."""

    name = "voxtral"
    adapter_class = VoxtralAdapter

    def max_seconds(self) -> float:
        return MAX_SECONDS

    def windows(self, samples: Sequence[np.ndarray]) -> list[int]:
        size = int(WINDOW_SECONDS * SAMPLE_RATE)
        return [max(1, math.ceil(len(s) / size)) for s in samples]

    def _process(self, prompts: list[Prompt], samples: list[np.ndarray]) -> Any:
        conversations = [
            conversation(index, prompt, clip)
            for index, (prompt, clip) in enumerate(zip(prompts, samples, strict=True))
        ]
        inputs = self.processor.apply_chat_template(
            conversations, tokenize=True, return_dict=True, return_tensors="pt"
        )
        inputs["input_features_mask"] = self.adapter.frame_mask(inputs["input_features"], None)
        return inputs


def conversation(index: int, prompt: Prompt, samples: np.ndarray) -> list[dict[str, Any]]:
    """One user turn: the clip (as base64 WAV, the form the processor reads) and the text."""
    audio = {"type": "audio", "base64": wav_base64(samples)}
    if prompt is None or isinstance(prompt, str):
        text = [{"type": "text", "text": prompt}] if prompt else []
        return [{"role": "user", "content": [audio, *text]}]
    if not is_chat(prompt):
        raise TypeError(f"prompt {index} must be a string, chat messages or None")
    messages, found = [], 0
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            items = [audio if item.get("type") == "audio" else item for item in content]
            found += sum(item.get("type") == "audio" for item in content)
            message = {**message, "content": items}
        messages.append(message)
    if found != 1:
        raise ValueError(
            f"prompt {index} holds {found} audio items; put exactly one {{'type': 'audio'}} "
            "item in the content of a user message"
        )
    return messages


def wav_base64(samples: np.ndarray) -> str:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode()
