"""LoRA adapters that a checkpoint ships in a subfolder and transformers applies with peft.

Phi-4-multimodal serves speech through such an adapter (``speech-lora/``): without it the
model is its base LLM. ltbm never runs that base model in the adapter's place: ``ltbm.load``
applies the adapter the way transformers documents it, and a model whose checkpoint ships
one is refused while no adapter is active.
"""

from __future__ import annotations

from torch import nn


def ships_lora(source: str | None, subfolder: str) -> bool:
    """Whether the checkpoint (hub id or folder) holds ``subfolder/adapter_config.json``."""
    from transformers.utils import cached_file

    try:
        found = source and cached_file(
            source,
            "adapter_config.json",
            subfolder=subfolder,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return False
    return bool(found)


def min_peft() -> str:
    """The peft version transformers' ``load_adapter`` requires."""
    from transformers.integrations.peft import MIN_PEFT_VERSION

    return MIN_PEFT_VERSION


def peft_usable() -> bool:
    from transformers.utils.import_utils import is_peft_greater_or_equal

    return is_peft_greater_or_equal(min_peft())


def lora_active(model: nn.Module) -> bool:
    """Whether a peft adapter is loaded into the model and active."""
    return getattr(model, "_hf_peft_config_loaded", False) and bool(model.active_adapters())


def apply_lora(model: nn.Module, source: str, subfolder: str, name: str) -> None:
    """``load_adapter`` + ``set_adapter``, when the checkpoint ships the adapter."""
    if not ships_lora(source, subfolder):
        return
    if not peft_usable():
        raise ValueError(
            f"{source} ships a LoRA adapter ({subfolder}/) that transformers applies with peft; "
            f"pip install 'peft>={min_peft()}' (ltbm will not run the base LLM in its place)"
        )
    model.load_adapter(source, adapter_name=name, adapter_kwargs={"subfolder": subfolder})
    model.set_adapter(name)


def require_active(model: nn.Module, subfolder: str, name: str) -> None:
    """Refuse a model whose checkpoint ships the adapter while no adapter is active."""
    source = getattr(model.config, "_name_or_path", None)
    if ships_lora(source, subfolder) and not lora_active(model):
        raise ValueError(
            f"{source} ships a LoRA adapter ({subfolder}/) that is not active, so the model "
            "would answer as its base LLM; load it with ltbm.load (needs peft), or call "
            f"model.load_adapter(path, adapter_name='{name}', adapter_kwargs={{'subfolder': "
            f"'{subfolder}'}}) and model.set_adapter('{name}') first"
        )
