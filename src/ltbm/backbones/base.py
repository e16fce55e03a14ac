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

    ``audios`` are mono float32 arrays at 16 kHz (see :func:`ltbm.io.audio.load_audio`);
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


VOLATILE_DESCRIPTION_KEYS = frozenset(
    {"torch", "transformers", "ctranslate2", "python", "intra_threads", "model_path", "method"}
)
"""Parts of ``describe()`` that change speed or bookkeeping, not outputs (and the bound
method, which a run's identity records from its cell)."""


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    """Every backbone setting that decides its outputs, for a run's identity.

    A backbone says so itself through ``identity()``; Hugging Face pipelines get theirs from
    :func:`ltbm.backbones.hf.identity.hf_identity`; anything else falls back to ``describe()``
    without the keys in :data:`VOLATILE_DESCRIPTION_KEYS`. ``default_max_new_tokens`` is
    added so that a run with the default and one with the same limit spelt out agree."""
    own = getattr(backbone, "identity", None)
    if callable(own):
        identity = dict(own())
    else:
        described = backbone.describe()
        identity = {k: v for k, v in described.items() if k not in VOLATILE_DESCRIPTION_KEYS}
        identity.setdefault("backbone", backbone.name)
    return identity


def check_method_argument(method: Any) -> Method | None:
    """``method`` as a backbone takes it: an ltbm :class:`~ltbm.methods.Method` or None (a
    name or anything else is refused in one line, before any work)."""
    if method is not None and not isinstance(method, Method):
        raise TypeError(
            f"method must be an ltbm Method or None, got {type(method).__name__}; build "
            "one with ltbm.get_method(name, keep_ratio=..., ...)"
        )
    return method


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a yes/no setting (``size_aware``): True or False, nothing truthy."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def default_max_new_tokens(backbone: Backbone) -> int | None:
    """The ``max_new_tokens`` a backbone uses when none is given (its ``generate`` default)."""
    import inspect

    parameter = inspect.signature(backbone.generate).parameters.get("max_new_tokens")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default
