"""Size-aware attention: every query gives a compressed token the attention of the frames it
stands for.

A slot that merged s source frames is one key where the uncompressed model had s similar
keys; softmax gives it the mass of one. Adding log(s) to the logit every query gives that key
multiplies its unnormalised weight exp(q·k) by exactly s, so the merged token draws the
attention mass of the frames it replaces (proportional attention, ToMe §3.2; DyMU's "virtual
unmerging" makes the same correction by expanding keys back). Sizes come from the method's
:class:`~ltbm.core.plan.Plan`; pruned and sampled slots hold one frame each, so their bias is
0 and nothing changes.

Mechanism: a forward pre-hook (public torch API) on each attention module that receives the
compressed tokens as keys (the language model's self-attention for the ALMs, the decoder's
cross-attention for Whisper). The hook adds the bias to the 4D ``attention_mask`` the module
is about to use, so transformers' own masks (causal, padding, sliding window) stay as built:

* a float (additive) mask, as eager attention gets: bias added to it;
* a boolean mask, as SDPA gets with padding: turned into 0 / dtype-min, bias added;
* no mask (SDPA's ``is_causal`` fast path): the causal pattern SDPA would have applied
  (upper-left aligned, as its ``is_causal``), or none for one query or cross-attention.

The bias is per key and covers the prompt's positions; keys added while decoding (the new
tokens) get 0, so every decoding step keeps the prompt's bias. Only ``eager`` and ``sdpa``
take an additive mask; FlashAttention and flex attention are refused. When every size is
1 no hook runs at all, so the outputs are those of the unchanged model, bit for bit.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from ltbm.backbones.hf.hooks import ModulePreHooks
from ltbm.methods.registry import Compressed

BIASABLE = ("eager", "sdpa")
"""Attention implementations whose kernels take an additive float mask."""


def slot_log_sizes(compressed: Compressed | None) -> torch.Tensor | None:
    """``[sum K]`` float32 log(size) of every kept slot, clips in order (the order of the
    projected rows); None when there is no plan or every size is 1, where the bias is 0
    and is skipped entirely."""
    if compressed is None:
        return None
    plan = compressed.plan
    sizes = plan.sizes[plan.slot_mask]
    if bool((sizes == 1).all()):
        return None
    return sizes.float().log()


def clip_log_sizes(compressed: Compressed | None) -> list[torch.Tensor] | None:
    """Each clip's ``[K_c]`` float32 log(size) of its slots, in slot order; None when there
    is no plan or every size is 1 (for a consumer that takes clips apart, as Whisper's
    decoder batches do)."""
    flat = slot_log_sizes(compressed)
    if flat is None:
        return None
    return list(flat.split(compressed.plan.kept.tolist()))


def key_bias(input_ids: torch.Tensor, token_id: int, log_sizes: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` float32: each audio placeholder position of ``input_ids`` gets its slot's
    log(size), in order (the rows are scattered into the placeholders in the same order);
    every other position (text, padding) gets 0."""
    placeholders = input_ids == token_id
    count = int(placeholders.sum())
    if count != log_sizes.numel():
        raise ValueError(
            f"the prompts hold {count} audio placeholders but the plan has {log_sizes.numel()} "
            "slots: size-aware attention needs one size per audio token"
        )
    bias = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    bias[placeholders] = log_sizes.to(bias.device, torch.float32)
    return bias


def language_model_attention(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every layer of the model's language model (its
    ``get_decoder()``), where the audio tokens are keys."""
    return _decoder_layer_modules(model, "self_attn", "language model's self-attention")


def cross_attention(model: nn.Module) -> list[nn.Module]:
    """The cross-attention module of every decoder layer of an encoder-decoder model
    (``get_decoder().layers[i].encoder_attn``, as in transformers' Whisper), whose keys
    are the encoder states."""
    return _decoder_layer_modules(model, "encoder_attn", "decoder's cross-attention")


def _decoder_layer_modules(model: nn.Module, attribute: str, what: str) -> list[nn.Module]:
    """``get_decoder().layers[i].<attribute>`` of every layer, or a TypeError naming ``what``
    could not be found."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    modules = [getattr(layer, attribute, None) for layer in layers or ()]
    if not modules or any(not isinstance(m, nn.Module) for m in modules):
        raise TypeError(
            f"{type(model).__name__}: ltbm cannot find its {what} layers "
            f"(get_decoder().layers[i].{attribute}), so it cannot use size-aware attention"
        )
    return modules


def encoder_key_bias(log_sizes: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """``[C, width]`` float32 bias over the encoder rows a decoder attends to: row c holds
    clip c's slot log-sizes first, then 0 for the rows after them (Whisper's uncompressed
    tail: size 1; padding: masked anyway)."""
    bias = torch.zeros((len(log_sizes), width), dtype=torch.float32)
    for row, sizes in enumerate(log_sizes):
        if sizes.numel() > width:
            raise ValueError(f"clip {row} has {sizes.numel()} slots but the rows are {width} wide")
        bias[row, : sizes.numel()] = sizes.to(torch.float32).cpu()
    return bias


def cross_attention_bias(
    model: nn.Module, bias: torch.Tensor | None
) -> AbstractContextManager[KeyBias | None]:
    """Context manager: the decoder's cross-attention adds ``bias`` (``[C, width]``, from
    :func:`encoder_key_bias`) to its logits at every decoding step; nothing when ``bias``
    is None. Enter it after any hook that sets the cross-attention mask itself (a padding
    mask), so the bias is added to that mask rather than replaced by it."""
    if bias is None:
        return nullcontext()
    return biased_keys(cross_attention(model), bias, cross=True)


def check_biasable(modules: Sequence[nn.Module]) -> None:
    """Refuse, in one line, attention whose kernel cannot take an additive bias."""
    for module in modules:
        implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if implementation not in BIASABLE:
            raise ValueError(
                f"size-aware attention adds log(size) to the attention logits, which "
                f"attn_implementation {implementation!r} cannot take; load the model with "
                "attn_implementation='sdpa' or 'eager' (model_kwargs={'attn_implementation': "
                "'sdpa'} in ltbm.load)"
            )


def biased_mask(
    mask: torch.Tensor | None,
    bias: torch.Tensor,
    queries: int,
    causal: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The additive 4D mask ``mask`` + ``bias`` (``bias`` ``[B, kv]``, one value per key).

    ``mask`` is what the attention module was given: additive float (eager), boolean (SDPA,
    True = attend) or None (SDPA's ``is_causal`` path for several queries, nothing for one
    query or cross-attention). Masked-out entries stay at the dtype's minimum."""
    lowest = torch.finfo(dtype if mask is None or mask.dtype == torch.bool else mask.dtype).min
    if mask is not None and mask.dtype != torch.bool:
        return mask + bias[:, None, None, :].to(mask.dtype)
    bias = bias[:, None, None, :].to(dtype)
    if mask is None:
        if queries == 1 or not causal:
            return bias
        keys = bias.shape[-1]
        mask = torch.ones(queries, keys, dtype=torch.bool, device=bias.device).tril()
    return torch.where(mask.to(bias.device), bias, torch.tensor(lowest, dtype=dtype))


class KeyBias(ModulePreHooks):
    """Forward pre-hooks on attention modules that add ``bias`` (``[B, T]``, one value per
    key position) to their attention mask while it is set; ``bias`` None: no change at all.

    ``cross=False`` (self-attention of a causal language model): positions are the prompt's,
    keys past ``T`` (generated tokens) get 0, and the key range comes from the mask or the
    cache (``Cache.get_mask_sizes``, the sizes transformers builds its masks with).
    ``cross=True`` (a decoder's cross-attention): the keys are the encoder states passed as
    ``key_value_states``, ``T`` of them, the same at every step.
    """

    def __init__(self, modules: Sequence[nn.Module], cross: bool = False) -> None:
        check_biasable(modules)
        super().__init__(modules)
        self.cross = cross
        self.bias: torch.Tensor | None = None
        self._names = {id(m): positional_names(m.forward) for m in self.modules}

    def clear(self) -> None:
        self.bias = None

    def _pre_hook(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        if self.bias is None:
            return None
        check_biasable([module])
        names = self._names[id(module)]
        bound = dict(zip(names, args, strict=False)) | kwargs
        hidden = bound["hidden_states"]
        mask = bound.get("attention_mask")
        bias = self._key_range(module, bound, hidden.shape[1], mask)
        bias = _per_row(bias.to(hidden.device), hidden.shape[0])
        causal = not self.cross and getattr(module, "is_causal", True)
        new_mask = biased_mask(mask, bias, hidden.shape[1], causal, hidden.dtype)
        if "attention_mask" in names[: len(args)]:
            args = tuple(
                new_mask if name == "attention_mask" else value
                for name, value in zip(names, args, strict=False)
            )
        else:
            kwargs = {**kwargs, "attention_mask": new_mask}
        return args, kwargs

    def _key_range(
        self, module: nn.Module, bound: dict[str, Any], queries: int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The bias of the keys this call attends to: ``[B, kv]``."""
        bias = self.bias
        if self.cross:
            keys, offset = bound["key_value_states"].shape[1], 0
            if keys != bias.shape[1]:
                raise RuntimeError(
                    f"the decoder attends to {keys} encoder states but the size-aware bias "
                    f"covers {bias.shape[1]}; pass the compressed encoder output it was made for"
                )
        else:
            cache = bound.get("cache", bound.get("past_key_values"))
            keys, offset = queries, 0
            if cache is not None and hasattr(cache, "get_mask_sizes"):
                keys, offset = cache.get_mask_sizes(queries, module.layer_idx)
            if mask is not None:
                keys = mask.shape[-1]
        end = offset + keys
        if end > bias.shape[1]:  # generated tokens: no bias
            bias = torch.nn.functional.pad(bias, (0, end - bias.shape[1]))
        return bias[:, offset:end]


@contextmanager
def biased_keys(
    modules: Sequence[nn.Module], bias: torch.Tensor, cross: bool = False
) -> Iterator[KeyBias]:
    """Inside the block, ``modules`` add ``bias`` to their attention logits (see
    :class:`KeyBias`); the hooks are removed on exit, whatever happens."""
    hooks = KeyBias(modules, cross).attach()
    hooks.bias = bias
    try:
        yield hooks
    finally:
        hooks.detach()


def _per_row(bias: torch.Tensor, rows: int) -> torch.Tensor:
    """``bias`` for ``rows`` query rows: beam search and ``num_return_sequences`` repeat each
    prompt in place (``repeat_interleave``), so each row's bias is repeated alike."""
    if bias.shape[0] == rows:
        return bias
    if rows % bias.shape[0]:
        raise RuntimeError(
            f"the attention runs {rows} rows but the size-aware bias was made for "
            f"{bias.shape[0]} prompts"
        )
    return bias.repeat_interleave(rows // bias.shape[0], dim=0)


def positional_names(function: Any) -> list[str]:
    """Names of ``function``'s positional parameters, so that a forward pre-hook finds an
    input (``attention_mask``, ``hidden_states``, ``input_ids``) whether it comes by position
    or by keyword."""
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
