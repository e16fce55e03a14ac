"""Serve compressed audio LLMs with vLLM: ltbm as a vLLM plugin.

``ltbm.vllm.llm("Qwen/Qwen2-Audio-7B-Instruct", method="ltbm", keep_ratio=0.25)`` returns a
``vllm.LLM`` whose prompts hold K = ``kept_tokens(N, keep_ratio)`` audio tokens per clip;
``ltbm serve MODEL --method ltbm --keep-ratio 0.25 [vllm serve options]`` starts vLLM's
OpenAI-compatible server the same way. How it works: :mod:`ltbm.vllm.models`; what is
served and how it is configured: :mod:`ltbm.vllm.settings`. Importing this package checks
the installed vLLM release (:data:`SUPPORTED_VLLM`) and refuses others.
"""

from __future__ import annotations

from typing import Any

from ltbm.vllm.settings import (
    CONFIG_KEY,
    FAMILIES,
    NOT_SERVED,
    SUPPORTED_VLLM,
    check_vllm_version,
    hf_overrides,
    merge_overrides,
    model_type_of,
    vllm_version,
)

check_vllm_version(vllm_version())


def llm(
    model: str,
    method: str = "ltbm",
    keep_ratio: float = 0.25,
    *,
    window: int | None = None,
    scorer: str | None = None,
    method_seed: int | None = None,
    segments: int | None = None,
    threshold: float | None = None,
    weighting: str | None = None,
    **vllm_kwargs: Any,
):
    """A ``vllm.LLM`` serving ``model`` with its audio compressed by ``method``.

    ``window``, ``scorer``, ``segments``, ``threshold``, ``weighting`` and ``method_seed``
    (random's ``seed``; vLLM's own ``seed`` is a vLLM argument) are the method's parameters
    (``ltbm methods`` lists them), each method's default when omitted; ``vllm_kwargs`` go to
    ``vllm.LLM`` unchanged (``hf_overrides`` of your own are merged, a clash is refused).
    Settings and model family are checked before the engine starts."""
    params = {
        "window": window,
        "scorer": scorer,
        "seed": method_seed,
        "segments": segments,
        "threshold": threshold,
        "weighting": weighting,
    }
    ours = hf_overrides(model_type_of(model), method, keep_ratio, **params)
    overrides = merge_overrides(vllm_kwargs.pop("hf_overrides", None), ours)
    from vllm import LLM

    return LLM(model=model, hf_overrides=overrides, **vllm_kwargs)


__all__ = [
    "CONFIG_KEY",
    "FAMILIES",
    "NOT_SERVED",
    "SUPPORTED_VLLM",
    "check_vllm_version",
    "hf_overrides",
    "llm",
    "model_type_of",
]
