"""The vLLM general plugin (entry point ``vllm.general_plugins``: ``ltbm``).

vLLM calls :func:`register` in every process it starts. It adds ltbm's compressed model
classes under their own architecture names, beside the stock ones, which stay as they are:
a model is served compressed only when its config names ltbm's architecture (through
``hf_overrides``, as ``ltbm serve`` and ``ltbm.vllm.llm`` set it).
"""

from __future__ import annotations

from ltbm.vllm.settings import FAMILIES


def register() -> None:
    """Register ltbm's compressed architectures with vLLM (lazily: vLLM imports the classes
    only when a model asks for one). Safe to call more than once."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for family in FAMILIES.values():
        if family.compressed not in known:
            ModelRegistry.register_model(family.compressed, family.target)
