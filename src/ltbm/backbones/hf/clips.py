"""Clips and prompts as users pass them: paired one to one, audio read and resampled."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbm.io.audio import SAMPLE_RATE, AudioError, load_audio

AudioSource = str | Path | np.ndarray | torch.Tensor | tuple[np.ndarray, int]
"""A clip: a file path (any rate, read and resampled), mono samples at 16 kHz, or a
``(samples, sample_rate)`` pair at any rate (resampled)."""

ChatMessages = list[dict[str, Any]]
Prompt = str | ChatMessages | None
"""A plain string (wrapped in the chat template unless it already holds the audio
placeholder), chat messages with one ``{"type": "audio"}`` item, or None (audio only)."""


def pair(
    audios: AudioSource | Sequence[AudioSource], prompts: Prompt | Sequence[Prompt]
) -> tuple[list[AudioSource], list[Prompt]]:
    """One prompt per clip: a single prompt (or None) applies to every clip. A 1-D array
    is one clip; a 2-D array is a batch of equal-length clips, one per row (pass
    multi-channel audio inside a list)."""
    clips = [audios] if is_single_clip(audios) else list(audios)
    if not clips:
        raise ValueError("no audio given: pass one clip or a list of clips")
    if prompts is None or isinstance(prompts, str) or is_chat(prompts):
        return clips, [prompts] * len(clips)
    prompt_list = list(prompts)
    if len(prompt_list) != len(clips):
        raise ValueError(
            f"got {_count(len(clips), 'audio clip')} but {_count(len(prompt_list), 'prompt')}"
            "; pass one prompt per clip, or a single prompt (a string) for every clip"
        )
    return clips, prompt_list


def read_clip(index: int, clip: AudioSource) -> np.ndarray:
    """16 kHz mono float32 samples of one clip; errors name the clip."""
    rate = SAMPLE_RATE
    if is_rated_clip(clip):
        clip, rate = clip
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu().float().numpy()
    try:
        if isinstance(clip, (str, Path)):
            return load_audio(clip)
        return load_audio(clip, sample_rate=int(rate))
    except AudioError as error:
        raise AudioError(f"clip {index}: {error}") from None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def is_rated_clip(clip: Any) -> bool:
    """A ``(samples, sample_rate)`` pair."""
    return (
        isinstance(clip, tuple)
        and len(clip) == 2
        and isinstance(clip[0], (np.ndarray, torch.Tensor))
        and isinstance(clip[1], (int, np.integer))
    )


def is_single_clip(audios: Any) -> bool:
    if isinstance(audios, (str, Path)) or is_rated_clip(audios):
        return True
    if isinstance(audios, (np.ndarray, torch.Tensor)):
        return audios.ndim == 1
    return False


def is_chat(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)
