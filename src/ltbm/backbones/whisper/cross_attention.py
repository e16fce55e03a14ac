"""The decoder's cross-attention over compressed encoder rows, for transformers' Whisper.

transformers' ``WhisperDecoder`` calls every layer's ``encoder_attn`` with
``attention_mask=None``: it never masks encoder states. Clips compressed to K rows (plus the
uncompressed last second of their window) have different lengths, so a batch of them is
zero-padded and each clip's padding rows must be masked: :class:`CrossAttentionMask` does it
with a forward pre-hook (public torch API) on each cross-attention. Shared by the
``whisper-hf`` pipeline and the ``ltbm.compressed`` drop-in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ltbm.backbones.hf.hooks import ModulePreHooks


class CrossAttentionMask(ModulePreHooks):
    """An additive mask over the encoder rows of every decoder cross-attention, for batches
    whose clips have different numbers of rows (K + tail each, zero-padded to the longest).

    transformers' ``WhisperDecoder`` calls each layer's ``encoder_attn`` with
    ``attention_mask=None``; a forward pre-hook on each of them passes the mask instead. The
    mask follows the query batch (beam search repeats each clip's rows ``num_beams`` times,
    consecutively) and applies only to encoder states of the width it was made for. With all
    clips of one length, no mask is set and the decoder runs exactly as without ltbm."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__([layer.encoder_attn for layer in whisper_decoder(model).layers])
        self.mask: torch.Tensor | None = None

    def clear(self) -> None:
        self.mask = None

    def set(self, lengths: Sequence[int], width: int, like: torch.Tensor) -> None:
        """Mask rows ``≥ lengths[c]`` of clip ``c``; no mask when every clip fills ``width``."""
        if all(length == width for length in lengths):  # host integers: no device wait
            self.mask = None
            return
        lengths_t = torch.as_tensor(list(lengths), device=like.device)
        keep = torch.arange(width, device=like.device)[None, :] < lengths_t[:, None]
        mask = torch.zeros(keep.shape, dtype=like.dtype, device=like.device)
        self.mask = mask.masked_fill(~keep, torch.finfo(like.dtype).min)[:, None, None, :]

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        mask = self.mask
        states = kwargs.get("key_value_states")
        if mask is None or states is None or states.shape[1] != mask.shape[-1]:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        rows = hidden.shape[0]
        if rows % mask.shape[0]:
            raise RuntimeError(
                f"the decoder runs {rows} sequences for {mask.shape[0]} clips of compressed "
                "audio; ltbm can expand the mask only by whole beams"
            )
        if rows != mask.shape[0]:
            mask = mask.repeat_interleave(rows // mask.shape[0], dim=0)
        return args, {**kwargs, "attention_mask": mask.to(hidden.dtype)}


def whisper_decoder(model: nn.Module) -> nn.Module:
    return _whisper_model(model).decoder


def whisper_encoder(model: nn.Module) -> nn.Module:
    return _whisper_model(model).encoder


def _whisper_model(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    if getattr(getattr(model, "config", None), "model_type", None) != "whisper" or inner is None:
        raise TypeError(
            f"expected transformers' WhisperForConditionalGeneration, got {type(model).__name__}"
        )
    return inner


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``[n_c, D]`` rows into ``[C, max n_c, D]``, zero-padded at the end."""
    width = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros((len(rows), width, rows[0].shape[1]))
    for index, row in enumerate(rows):
        out[index, : row.shape[0]] = row
    return out
