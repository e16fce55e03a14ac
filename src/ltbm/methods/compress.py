"""The public one-call entry point."""

from __future__ import annotations

from typing import Any

import torch

from ltbm.methods.registry import Compressed, get_method


def compress(
    tokens: torch.Tensor,
    lengths: torch.Tensor | None = None,
    method: str = "ltbm",
    keep_ratio: float = 0.25,
    **params: Any,
) -> Compressed:
    """Compress encoder tokens ``[B, N, D]`` (valid ``lengths`` per clip, default all N) to
    K = kept_tokens(length, keep_ratio) tokens per clip with the named method.

    ``params`` are the method's own (``window`` for ltbm, ``scorer`` for prune, ``seed`` for
    random); prune's attention scorer also takes ``queries``/``keys``, or ``scores``.
    Returns compressed tokens, their lengths and the plan.
    """
    signal_names = ("queries", "keys", "scores")
    signals = {k: params.pop(k) for k in signal_names if k in params}
    return get_method(method, keep_ratio=keep_ratio, **params)(tokens, lengths, **signals)
