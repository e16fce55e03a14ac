"""ltbm: training-free compression of the audio tokens of audio-language models.

Local Temporal Bipartite Merging and the baselines it is compared with, behind one API.
"""

from ltbm.budget import kept_tokens
from ltbm.compress import compress
from ltbm.methods import (
    LTBM,
    METHODS,
    Compressed,
    GlobalMerge,
    Method,
    Pool,
    Prune,
    Random,
    Uniform,
    get_method,
    register,
)
from ltbm.plan import Plan

__version__ = "0.1.0"

__all__ = [
    "LTBM",
    "METHODS",
    "Compressed",
    "GlobalMerge",
    "Method",
    "Plan",
    "Pool",
    "Prune",
    "Random",
    "Uniform",
    "compress",
    "get_method",
    "kept_tokens",
    "register",
]
