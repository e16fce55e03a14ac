"""Compression methods: pure tensor functions that return a Plan, and objects that bind them."""

from ltbm.methods.registry import (
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

__all__ = [
    "LTBM",
    "METHODS",
    "AdaptiveDiverse",
    "Compressed",
    "GlobalMerge",
    "Method",
    "Pool",
    "Prune",
    "Random",
    "SegmentTopK",
    "Uniform",
    "get_method",
    "register",
]
