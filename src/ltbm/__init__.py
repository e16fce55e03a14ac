"""ltbm: training-free compression of the audio tokens of audio-language models.

Local Temporal Bipartite Merging and the baselines it is compared with, behind one API.
"""

from ltbm.core.budget import kept_tokens
from ltbm.core.plan import Plan
from ltbm.methods import (
    LTBM,
    METHODS,
    AdaptiveDiverse,
    Compressed,
    GlobalMerge,
    Method,
    Pool,
    Prune,
    Random,
    SegmentTopK,
    Uniform,
    get_method,
    register,
)
from ltbm.methods.compress import compress

__version__ = "0.2.1"

_LAZY = {
    "load": "ltbm.backbones.hf.loading",
    "pipeline": "ltbm.backbones.hf.loading",
    "compressed": "ltbm.backbones.hf.dropin",
}
"""Hugging Face entry points, imported on first use so `import ltbm` needs no transformers."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ltbm' has no attribute {name!r}")


__all__ = [
    "LTBM",
    "METHODS",
    "AdaptiveDiverse",
    "Compressed",
    "GlobalMerge",
    "Method",
    "Plan",
    "Pool",
    "Prune",
    "Random",
    "SegmentTopK",
    "Uniform",
    "compress",
    "compressed",
    "get_method",
    "kept_tokens",
    "load",
    "pipeline",
    "register",
]
