"""One-line loading: ``ltbm.load("Qwen/Qwen2-Audio-7B-Instruct", method="ltbm", keep_ratio=0.25)``.

The config's ``model_type`` picks the pipeline, so a hub id, a local copy or a fine-tuned
checkpoint of a supported family all load the same way. transformers is imported here,
never by ``import ltbm``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.methods import METHODS, Method, get_method
from ltbm.methods.registry import DEFAULT_WINDOW, method_parameters

BACKBONES: dict[str, tuple[str, str]] = {
    "qwen2_audio": (
        "ltbm.backbones.families.qwen2_audio:Qwen2AudioPipeline",
        "Qwen2AudioForConditionalGeneration",
    ),
    "audioflamingo3": (
        "ltbm.backbones.families.audioflamingo3:AudioFlamingo3Pipeline",
        "AudioFlamingo3ForConditionalGeneration",
    ),
    "musicflamingo": (
        "ltbm.backbones.families.musicflamingo:MusicFlamingoPipeline",
        "MusicFlamingoForConditionalGeneration",
    ),
    "glmasr": ("ltbm.backbones.families.glmasr:GlmAsrPipeline", "GlmAsrForConditionalGeneration"),
    "voxtral": (
        "ltbm.backbones.families.voxtral:VoxtralPipeline",
        "VoxtralForConditionalGeneration",
    ),
    "qwen2_5_omni_thinker": (
        "ltbm.backbones.families.qwen2_5_omni:Qwen25OmniPipeline",
        "Qwen2_5OmniThinkerForConditionalGeneration",
    ),
    "qwen3_omni_moe_thinker": (
        "ltbm.backbones.families.qwen3_omni_moe:Qwen3OmniPipeline",
        "Qwen3OmniMoeThinkerForConditionalGeneration",
    ),
    "qwen3_omni_moe": (
        "ltbm.backbones.families.qwen3_omni_moe:Qwen3OmniPipeline",
        "Qwen3OmniMoeForConditionalGeneration",
    ),
    "qwen2_5_omni": (
        "ltbm.backbones.families.qwen2_5_omni:Qwen25OmniPipeline",
        "Qwen2_5OmniForConditionalGeneration",
    ),
    "granite_speech": (
        "ltbm.backbones.families.granite_speech:GraniteSpeechPipeline",
        "GraniteSpeechForConditionalGeneration",
    ),
    "phi4_multimodal": (
        "ltbm.backbones.families.phi4_multimodal:Phi4MultimodalPipeline",
        "Phi4MultimodalForCausalLM",
    ),
    "whisper": ("ltbm.backbones.whisper.hf:WhisperHF", "WhisperForConditionalGeneration"),
}
"""config.model_type → (pipeline class, transformers model class)."""

SHIPPED_WHISPER = {"whisper-tiny.en": "tiny.en", "whisper-base": "base"}
"""``ltbm.load`` names of the Whisper models shipped as CTranslate2 files (whisper-hf)."""


def is_shipped_whisper(name: Any) -> bool:
    """Whether ``name`` is a shipped Whisper name rather than a folder of that name."""
    from pathlib import Path

    return isinstance(name, str) and name in SHIPPED_WHISPER and not Path(name).exists()


SPEAKING_MODELS = {"qwen2_5_omni", "qwen3_omni_moe"}
"""Omni checkpoints whose text comes from their ``thinker``: loaded without the talker
(``enable_audio_output=False``), and the pipeline drives the thinker."""


NOT_COMPRESSIBLE = {
    "gemma3n": (
        "Gemma 3n gives its language model a fixed block of 188 audio tokens per clip (shorter "
        "audio is padded with a learned embedding), so a compressed clip would either save "
        "nothing or hand the model a layout it never saw; use it without ltbm"
    ),
}
"""Audio families that cannot honestly take a variable token count, with the reason."""


def supported_model_types() -> list[str]:
    return list(BACKBONES)


def pipeline_class(model_type: str | None) -> type[HFPipeline]:
    """The pipeline for a ``config.model_type``, or a ValueError listing the supported ones."""
    if model_type in NOT_COMPRESSIBLE:
        raise ValueError(
            f"ltbm does not support model_type {model_type!r}: {NOT_COMPRESSIBLE[model_type]}"
        )
    if model_type not in BACKBONES:
        raise ValueError(
            f"ltbm does not support model_type {model_type!r}; supported: "
            f"{', '.join(BACKBONES)} (see the Backbones table in the README)"
        )
    module_name, class_name = BACKBONES[model_type][0].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def resolve_method(
    method: str | Method | None,
    keep_ratio: float = 0.25,
    window: int | None = DEFAULT_WINDOW,
    **params: Any,
) -> Method | None:
    """A Method from a name and parameters; ``None`` or ``"none"`` mean no compression.

    ``window`` goes only to methods that take one (ltbm): its default is dropped silently
    for the others, while a window set explicitly for them is refused."""
    if method is None or method == "none":
        if params:
            raise ValueError(f"method=None takes no parameters, got {sorted(params)}")
        return None
    if isinstance(method, Method):
        if params:
            raise ValueError("pass parameters to the Method object itself, not to load()")
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a name, a Method or None, got {type(method).__name__}")
    if method in METHODS and "window" in method_parameters(method):
        params["window"] = window
    elif window is not None and window != DEFAULT_WINDOW:
        raise ValueError(
            f"method {method!r} takes no window (only ltbm does); drop window={window!r}"
        )
    return get_method(method, keep_ratio=keep_ratio, **params)


def load(
    model_id_or_path: str,
    method: str | Method | None = "ltbm",
    keep_ratio: float = 0.25,
    window: int | None = DEFAULT_WINDOW,
    device_map: str | dict[str, Any] | None = None,
    torch_dtype: str | torch.dtype | None = None,
    *,
    model_kwargs: dict[str, Any] | None = None,
    size_aware: bool = False,
    **method_params: Any,
) -> HFPipeline:
    """Load a supported audio-language model and its processor with a method bound.

    ``model_id_or_path`` is a hub id or a local directory; ``device_map`` and ``torch_dtype``
    ("bfloat16", torch.float16, "auto", ...) go to ``from_pretrained`` (as ``dtype``), as do
    ``model_kwargs`` (e.g. ``{"attn_implementation": "sdpa"}``). ``method_params`` are the
    method's own (``scorer="attention"`` for prune, ``seed`` for random). The method is
    built first, so a bad parameter fails before gigabytes of weights are read.
    ``size_aware=True`` binds size-aware attention (each compressed token weighs as the
    frames it stands for; :mod:`ltbm.backbones.hf.size_aware`): the language model's
    attention must be eager or sdpa.

    ``"whisper-tiny.en"`` and ``"whisper-base"`` name the Whisper models ltbm ships as
    CTranslate2 files: they load into transformers' Whisper (``device_map`` is then a
    device, ``torch_dtype`` the dtype); a Whisper checkpoint in transformers' format loads
    like any other (size-aware attention then applies to the decoder's cross-attention).
    """
    import transformers

    bound = resolve_method(method, keep_ratio, window, **method_params)
    check_size_aware_kwargs(size_aware, model_kwargs)
    if is_shipped_whisper(model_id_or_path):
        if model_kwargs:
            raise ValueError(
                f"{model_id_or_path} is converted from CTranslate2 files, not read by "
                f"from_pretrained, so model_kwargs ({', '.join(sorted(model_kwargs))}) would be "
                "ignored; drop them, or load a Whisper checkpoint in transformers' format"
            )
        return pipeline_class("whisper").from_ct2(
            SHIPPED_WHISPER[model_id_or_path],
            bound,
            device=device_map or "cpu",
            dtype=torch_dtype or "float32",
            size_aware=size_aware,
        )
    check_checkpoint(model_id_or_path)
    config = transformers.AutoConfig.from_pretrained(model_id_or_path)
    model_type = getattr(config, "model_type", None)
    cls = pipeline_class(model_type)
    cls.check_environment()
    model_class = getattr(transformers, BACKBONES[model_type][1])
    kwargs = dict(model_kwargs or {})
    if torch_dtype is not None:
        kwargs["dtype"] = _dtype(torch_dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if model_type in SPEAKING_MODELS:
        kwargs.setdefault("enable_audio_output", False)
    model = _read_weights(model_class, model_id_or_path, kwargs)
    cls.finish_loading(model, model_id_or_path)
    processor = cls.load_processor(model_id_or_path)
    return cls(text_model(model), processor, bound, size_aware=size_aware)


def check_size_aware_kwargs(size_aware: Any, model_kwargs: dict[str, Any] | None) -> None:
    """Refuse, before any weights are read, a size_aware that is not a bool, or size-aware
    attention with an attention kernel named in ``model_kwargs`` that takes no bias."""
    from ltbm.backbones.base import check_flag
    from ltbm.backbones.hf.size_aware import BIASABLE

    check_flag("size_aware", size_aware)
    chosen = (model_kwargs or {}).get("attn_implementation")
    if size_aware and isinstance(chosen, str) and chosen not in BIASABLE:
        raise ValueError(
            f"size-aware attention adds log(size) to the attention logits, which "
            f"attn_implementation {chosen!r} cannot take; use 'sdpa' or 'eager'"
        )


def _read_weights(model_class: Any, model_id_or_path: str, kwargs: dict[str, Any]) -> Any:
    """``from_pretrained``, with damaged weight files (a cut download) named in one line:
    safetensors and pickle report them with their own exception types."""
    import pickle

    from safetensors import SafetensorError

    try:
        return model_class.from_pretrained(model_id_or_path, **kwargs)
    except (SafetensorError, pickle.UnpicklingError) as error:
        raise ValueError(
            f"the weights of {model_id_or_path} cannot be read ({type(error).__name__}: "
            f"{error}); the files are damaged or incomplete: download the checkpoint again"
        ) from None


def check_checkpoint(model_id_or_path: Any) -> None:
    """Refuse, in one line, a checkpoint that names a local file or a missing folder:
    transformers would report it as a malformed hub id or a JSON error."""
    from pathlib import Path

    if not isinstance(model_id_or_path, (str, Path)) or not str(model_id_or_path).strip():
        raise ValueError(f"the model must be a hub id or a local folder, got {model_id_or_path!r}")
    text = str(model_id_or_path)
    path = Path(text).expanduser()
    fix = (
        "pass a checkpoint folder holding config.json, or a hub id such as "
        "Qwen/Qwen2-Audio-7B-Instruct"
    )
    if path.is_file():
        raise ValueError(f"the model {text} is a file; {fix}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"the model folder {text} holds no config.json; {fix}")
        return
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise ValueError(f"the model folder {text} does not exist; {fix}")


def pipeline(
    model: torch.nn.Module,
    processor: Any,
    method: Method | None = None,
    *,
    size_aware: bool = False,
) -> HFPipeline:
    """A pipeline around a model and processor the caller already holds
    (``size_aware``: as in :func:`load`)."""
    model = text_model(model)
    cls = pipeline_class(getattr(model.config, "model_type", None))
    return cls(model, processor, method, size_aware=size_aware)


def text_model(model: torch.nn.Module) -> torch.nn.Module:
    """The part that generates text: an Omni model's thinker, else the model itself."""
    if getattr(model.config, "model_type", None) in SPEAKING_MODELS:
        return model.thinker
    return model


def _dtype(value: str | torch.dtype) -> str | torch.dtype:
    if isinstance(value, torch.dtype) or value == "auto":
        return value
    resolved = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown torch_dtype {value!r}; use e.g. 'bfloat16', 'float16', 'auto'")
    return resolved
