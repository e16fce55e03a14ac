"""Builds the one compiled loop (``ltbm.core._native``); everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler), the package installs
without it and torch operations compute the same values, more slowly.
"""

from setuptools import Extension, setup

NATIVE = Extension(
    "ltbm.core._native",
    sources=["src/ltbm/core/_native.c"],
    # No contraction of a multiply and an add into one rounding, no fast-math: the loop
    # must round exactly as torch's kernels do.
    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-Wno-psabi"],
    optional=True,
)

setup(ext_modules=[NATIVE])
