"""LoRA adapters that a checkpoint ships in a subfolder and transformers applies with peft.

Phi-4-multimodal serves speech through such an adapter (``speech-lora/``): without it the
model is its base LLM. ltbm never runs that base model in the adapter's place: ``ltbm.load``
applies the adapter the way transformers documents it, and a model whose checkpoint ships
one is refused while no adapter is active.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


def ships_lora(source: str | None, subfolder: str, strict: bool = False) -> bool:
    """Whether the checkpoint (folder or hub id) holds ``subfolder/adapter_config.json``.

    When neither the hub cache nor the hub can answer for a hub id, ``strict`` (ltbm.load,
    which picks the weights) refuses; otherwise (a model the caller built) it counts as none."""
    if not source:
        return False
    folder = Path(source).expanduser()
    if folder.is_dir():
        return (folder / subfolder / "adapter_config.json").is_file()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        hf_hub_download(source, "adapter_config.json", subfolder=subfolder)
    except RemoteEntryNotFoundError:
        return False
    except (OSError, ValueError) as error:  # offline and not cached, or not a hub id
        if strict:
            raise ValueError(
                f"cannot tell whether {source} ships a LoRA adapter ({subfolder}/): "
                f"{type(error).__name__}; connect to the hub or pass a local copy"
            ) from None
        return False
    return True


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
    if not ships_lora(source, subfolder, strict=True):
        return
    if not peft_usable():
        raise ValueError(
            f"{source} ships a LoRA adapter ({subfolder}/) that transformers applies with peft; "
            f"pip install 'peft>={min_peft()}' (ltbm will not run the base LLM in its place)"
        )
    model.load_adapter(source, adapter_name=name, adapter_kwargs={"subfolder": subfolder})
    model.set_adapter(name)


def require_active(model: nn.Module, subfolder: str, name: str) -> None:
    """Refuse a model whose checkpoint ships the adapter while no adapter is active. The
    active check comes first: it is an attribute read, while ``ships_lora`` may ask the hub,
    which every pipeline over a model from ``ltbm.load`` (adapter active) would otherwise do."""
    source = getattr(model.config, "_name_or_path", None)
    if not lora_active(model) and ships_lora(source, subfolder):
        raise ValueError(
            f"{source} ships a LoRA adapter ({subfolder}/) that is not active, so the model "
            "would answer as its base LLM; load it with ltbm.load (needs peft), or call "
            f"model.load_adapter(path, adapter_name='{name}', adapter_kwargs={{'subfolder': "
            f"'{subfolder}'}}) and model.set_adapter('{name}') first"
        )
