"""What decides a Hugging Face pipeline's outputs, for a run's identity: the checkpoint, its
weights' fingerprint, dtype, device type, attention kernel, generation config and loaded
adapters. Apart from the pipeline so that the pipeline can state its own identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ltbm.backbones.hf.adapter import module_device_dtype
from ltbm.io.hashing import file_sha256, fingerprint


def hf_identity(pipeline: Any) -> dict[str, Any]:
    """What decides a Hugging Face pipeline's outputs: the checkpoint (hub id or folder),
    its revision where the hub gave one, else a fingerprint of the folder's weight files
    (names, sizes and the SHA-256 of the small JSON files; hashing gigabytes of weights at
    every run would cost minutes), dtype, device type, attention kernel and the generation
    config."""
    model = pipeline.model
    config = model.config
    name = getattr(config, "_name_or_path", None) or None
    device, dtype = module_device_dtype(model)
    generation = getattr(model, "generation_config", None)
    generation_config = generation.to_diff_dict() if generation is not None else {}
    generation_config.pop("transformers_version", None)
    identity = {
        "backbone": pipeline.name,
        "model": name,
        "model_type": config.model_type,
        "revision": getattr(config, "_commit_hash", None),
        "weights": _folder_fingerprint(name),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device).split(":")[0],
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "generation_config": fingerprint(generation_config),
        "max_audio_seconds": pipeline.max_seconds(),
    }
    if getattr(pipeline, "size_aware", False):  # only then: other identities stay as they were
        identity["size_aware"] = True
    adapters = loaded_adapters(model)
    if adapters:  # only then: the identity of a model without adapters stays as it was
        identity["lora_adapters"] = adapters
    return identity


def loaded_adapters(model: torch.nn.Module) -> dict[str, str]:
    """Fingerprint of the settings of every peft adapter loaded into ``model``, by name.

    Part of a run's identity: the same checkpoint answers differently with its LoRA adapter
    loaded or not (Granite Speech's ``has_lora_adapter=False``, Phi-4's ``speech-lora``), and
    nothing else in the identity tells the two apart. Sets in peft's settings (target
    modules) are sorted, so the fingerprint does not depend on hash order."""
    if not getattr(model, "_hf_peft_config_loaded", False):
        return {}
    return {
        name: fingerprint(_sorted_sets(config.to_dict()))
        for name, config in sorted(model.peft_config.items())
    }


def _sorted_sets(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_sets(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sorted_sets(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    return value


def _folder_fingerprint(name: str | None) -> dict[str, Any] | None:
    """Weight files of a local checkpoint folder and its subfolders (a shipped LoRA such as
    Phi-4's ``speech-lora/`` lives in one): sizes, and hashes of the JSON files, by path
    relative to the folder (top-level files keep their plain names)."""
    if not name or not Path(name).is_dir():
        return None
    root = Path(name)
    found: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = path.relative_to(root).as_posix()
        if path.suffix == ".json":
            found[key] = file_sha256(path)
        elif path.suffix in (".safetensors", ".bin", ".pt"):
            found[key] = path.stat().st_size
    return found
