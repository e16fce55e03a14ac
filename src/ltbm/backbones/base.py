"""What every backbone gives the rest of ltbm: audio and a prompt in, text out, with the
audio tokens compressed by any registered method on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ltbm.methods import Method


@dataclass
class Generation:
    """One clip's result: the text, and how many audio tokens the encoder made (``audio_tokens``,
    N) and the language model received (``kept_tokens``, K)."""

    text: str
    audio_tokens: int
    kept_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backbone(Protocol):
    """A model that turns (audio, prompt) into text.

    ``audios`` are mono float32 arrays at 16 kHz (see :func:`ltbm.audio.load_audio`);
    ``prompts`` has one entry per clip (None where the backbone needs no prompt, as for
    Whisper); ``method`` None means no compression.
    """

    name: str

    def generate(
        self,
        audios: list[np.ndarray],
        prompts: list[str | None] | None = None,
        method: Method | None = None,
        max_new_tokens: int = 128,
    ) -> list[Generation]: ...

    def describe(self) -> dict[str, Any]:
        """Model id, dtype, device and versions, written into every result."""
        ...
