"""Queries and keys of an encoder's last self-attention layer, for the attention scorer.

Captured with forward hooks on the layer's own projections, so the model keeps SDPA or
FlashAttention and no attention matrix is ever materialised by the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ltbm.methods import Method


class AttentionCapture:
    """Records the queries and keys that an encoder self-attention layer computes.

    Forward hooks on the layer's own ``q_proj`` and ``k_proj`` see exactly what the layer
    feeds its attention kernel (before the query scaling, which the prune scorer applies
    itself), so the model keeps SDPA or FlashAttention: no eager attention, no attention
    matrix from the model. Used only when the method asks for attention.
    """

    def __init__(self, attention: nn.Module) -> None:
        for name in ("q_proj", "k_proj"):
            if not isinstance(getattr(attention, name, None), nn.Module):
                raise RuntimeError(
                    f"the encoder's last attention layer ({type(attention).__name__}) has no "
                    f"`{name}` module, so its queries and keys cannot be captured; use "
                    "prune with scorer='norm'"
                )
        self.attention = attention
        self.num_heads = int(attention.num_heads)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> AttentionCapture:
        for name in ("q_proj", "k_proj"):
            module = getattr(self.attention, name)
            self._handles.append(module.register_forward_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, name: str):
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.outputs[name] = output.detach()

        return record

    def queries_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, heads, frames, head_dim]`` queries and keys of the last forward."""
        if set(self.outputs) != {"q_proj", "k_proj"}:
            raise RuntimeError(
                "the encoder ran but its last layer's q_proj/k_proj were not called; this "
                "transformers version computes attention differently: use scorer='norm'"
            )
        return self._heads(self.outputs["q_proj"]), self._heads(self.outputs["k_proj"])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, width = x.shape
        return x.view(batch, frames, self.num_heads, width // self.num_heads).transpose(1, 2)


def last_attention(tower: nn.Module) -> nn.Module:
    """The self-attention module of the encoder's last layer."""
    try:
        return tower.layers[-1].self_attn
    except (AttributeError, IndexError, TypeError):
        raise RuntimeError(
            f"cannot find the last self-attention layer of {type(tower).__name__} "
            "(expected `layers[-1].self_attn`); use prune with scorer='norm'"
        ) from None


def needs_attention(method: Method | None) -> bool:
    return bool(getattr(method, "needs_attention", False)) if method is not None else False
