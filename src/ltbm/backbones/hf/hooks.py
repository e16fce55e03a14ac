"""Forward pre-hooks on a set of modules, attached while a ``with`` block runs.

The cross-attention mask of Whisper (:mod:`ltbm.backbones.whisper.cross_attention`) and the
size-aware key bias (:mod:`ltbm.backbones.hf.size_aware`) both pass an extra mask to
attention modules whose callers give them none (public torch API:
``register_forward_pre_hook(..., with_kwargs=True)``); this is their common lifetime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class ModulePreHooks:
    """``_pre_hook`` on every module of ``modules`` from :meth:`attach` (or entering the
    block) to :meth:`detach` (or leaving it), which also calls :meth:`clear`."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self):
        if not self._handles:
            self._handles = [
                m.register_forward_pre_hook(self._pre_hook, with_kwargs=True) for m in self.modules
            ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def clear(self) -> None:
        """Forget what was set for the hooks to pass on."""

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        raise NotImplementedError
