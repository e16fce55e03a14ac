"""Randomly initialised audio LLMs of every family ltbm adapts, built from the real
transformers classes with no download: for the efficiency benchmark (compute does not depend
on the weights) and for offline tests (``save_model(model_type, folder)``).

``full`` builds the published architectures (Qwen2-Audio-7B: Whisper-large-v3-style encoder
and a 32-layer, 4096-wide Qwen LLM with 32 KV heads; Audio Flamingo 3: the same encoder and a
Qwen2.5-7B LLM with 4 KV heads). ``tiny`` keeps every shape rule (128 mel bins, 3000 frames,
750 tokens per 30 s window) with a few small layers, so the same code runs on a laptop CPU.
The tokenizer is a small word-level one holding every special token the processors need;
token ids stay below the architecture's vocabulary, so embedding and output layers keep
their real sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ltbm.backbones.synthetic.families import FAMILIES, MODEL_TYPES
from ltbm.backbones.synthetic.parts import FULL_TEXT, tiny_tokenizer

VLLM_TEXT_HEADS = {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
"""The tiny LLM's attention heads for checkpoints vLLM serves: vLLM's CPU attention takes
head sizes 32, 64, 80, ... but not the 16 of :data:`TINY_TEXT` (same width, fewer heads)."""

VLLM_MODEL_TYPES = ("qwen2_audio", "audioflamingo3")
"""Families whose tiny checkpoints can be written for vLLM (those ltbm.vllm serves)."""


def model_config(model_type: str, size: str, tokenizer):
    """The transformers config of a synthetic model (``size``: "full" or "tiny"; "full" only
    for the families the efficiency benchmark measures)."""
    if (
        model_type not in FAMILIES
        or size not in ("full", "tiny")
        or (size == "full" and model_type not in FULL_TEXT)
    ):
        raise ValueError(
            f"synthetic models exist for {', '.join(MODEL_TYPES)} (tiny) and "
            f"{', '.join(FULL_TEXT)} (full); got {model_type!r}, {size!r}"
        )
    return FAMILIES[model_type].config(size, tokenizer)


def processor_for(model_type: str, tokenizer):
    return FAMILIES[model_type].processor(tokenizer)


def build_model(
    model_type: str,
    size: str = "tiny",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    text_heads: dict[str, int] | None = None,
):
    """(model, processor) with random weights, initialised directly on ``device``;
    ``text_heads`` overrides the LLM's attention-head settings (e.g. for vLLM)."""
    import transformers

    tokenizer = tiny_tokenizer()
    config = model_config(model_type, size, tokenizer)
    for key, value in (text_heads or {}).items():
        setattr(config.get_text_config(), key, value)
    model_class = getattr(transformers, FAMILIES[model_type].model_class)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config).eval()
    finally:
        torch.set_default_dtype(previous)
    processor = processor_for(model_type, tokenizer)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.do_sample = False
    # The released checkpoints set a repetition penalty; parity must hold with it too.
    model.generation_config.repetition_penalty = 1.3
    return model, processor


def save_model(
    model_type: str, path: Path, size: str = "tiny", seed: int = 0, vllm: bool = False
) -> Path:
    """Write a synthetic checkpoint (model + processor) that ``ltbm.load`` reads back.

    ``vllm=True`` writes one that vLLM loads too (Qwen2-Audio and Audio Flamingo 3 only):
    LLM attention heads of size 32 (:data:`VLLM_TEXT_HEADS`) and the weight names of the
    published checkpoints (:func:`published_weight_names`)."""
    if vllm and model_type not in VLLM_MODEL_TYPES:
        raise ValueError(
            f"vllm=True writes {', '.join(VLLM_MODEL_TYPES)} checkpoints (the families "
            f"ltbm.vllm serves), not {model_type!r}; drop vllm=True"
        )
    text_heads = VLLM_TEXT_HEADS if vllm else None
    model, processor = build_model(model_type, size, seed=seed, text_heads=text_heads)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if FAMILIES[model_type].extra_files is not None:
        FAMILIES[model_type].extra_files(path)
    if vllm:
        published_weight_names(Path(path))
    return path


def published_weight_names(folder: Path) -> None:
    """Rename the LLM's weights in ``folder``'s safetensors files to the published
    checkpoints' ``language_model.model.*``: transformers from 5.19 writes
    ``language_model.model.model.*``, which vLLM 0.32 refuses, while transformers reads both.
    (A sharded checkpoint's index is not rewritten: tiny checkpoints are one file.)"""
    from safetensors.torch import load_file, save_file

    prefix, published = "language_model.model.model.", "language_model.model."
    for file in sorted(folder.glob("*.safetensors")):
        weights = load_file(file)
        renamed = {
            (published + key[len(prefix) :] if key.startswith(prefix) else key): value
            for key, value in weights.items()
        }
        save_file(renamed, file, metadata={"format": "pt"})
