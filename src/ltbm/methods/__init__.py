"""Compression methods: pure tensor functions that return a Plan, and objects that bind them."""

from ltbm.methods.registry import (
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

__all__ = [
    "LTBM",
    "METHODS",
    "Compressed",
    "GlobalMerge",
    "Method",
    "Pool",
    "Prune",
    "Random",
    "Uniform",
    "get_method",
    "register",
]
