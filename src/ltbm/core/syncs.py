"""Count the points where the host waits for the device (synchronisations), on any machine.

On a GPU, work is queued and runs later; the host waits only where it needs a result: a
value read back (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, a copy to the host),
or an operation whose output size depends on the data, which reads a count back before it
can allocate (``nonzero``, boolean-mask indexing, ``masked_select``, ``bincount``,
``unique``, ``repeat_interleave`` without ``output_size``). Each such wait drains the
device's queue and costs a round trip. The same calls happen on CPU tensors, where they cost
nothing, so counting them on CPU (with the accelerator path forced,
:mod:`ltbm.core.device_path`) says how many a GPU would pay.

:class:`SyncCounter` counts them with two torch modes: a ``TorchFunctionMode`` sees the
tensor methods that hand values to Python (:data:`HOST_READS`; ``tolist`` reaches no
operator on CPU), a ``TorchDispatchMode`` sees the operators that read device values
internally (:data:`SYNCING_OPS`, and indexing with a boolean mask). An operator that runs
inside a counted method is not counted again. Only reads of device tensors count: on a GPU,
those not on the CPU; with the accelerator path forced, every tensor (tensors that a GPU
machine keeps on the host, such as a processor's outputs, then count too: an upper bound).
Host-side bookkeeping in the kernels uses Python integers, not CPU tensors, so that the
count on CPU is the count on a GPU.

Copies to the host count where they are written ``.cpu()``: on the forced path every tensor
is on the CPU, so ``.to(device)`` cannot tell a copy to the host from a move to the tokens'
own device; the kernels write ``.cpu()`` where they mean the host.

Not counted: host-to-device copies. A blocking copy of pageable host memory to a GPU also
waits for the device's queue; the kernels send host-built tensors with
``non_blocking=True``, which does not wait, but a CPU counter cannot see the difference.
"""

from __future__ import annotations

import sys
from collections import Counter
from types import TracebackType

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ltbm.core.device_path import uses_accelerator_path

HOST_READS = {
    "item": "item",
    "tolist": "tolist",
    "__bool__": "bool",
    "__int__": "int",
    "__float__": "float",
    "__index__": "index",
    "__complex__": "complex",
    "numpy": "numpy",
    "cpu": "to host",
}
"""Tensor methods that hand device values to the host, by the name they are counted under."""

_host_side = [0]
"""Depth of :func:`host_values` calls in progress: their reads are of host memory."""


def host_values(tensor: torch.Tensor) -> list:
    """``tensor.tolist()`` for a tensor that lives on the host by construction (built from
    Python values, or a processor's output), which no device needs to finish first: not
    counted, even with the accelerator path forced. Refuses a tensor that is not on the CPU."""
    if tensor.device.type != "cpu":
        raise ValueError(f"host_values reads host tensors; this one is on {tensor.device}")
    _host_side[0] += 1
    try:
        return tensor.tolist()
    finally:
        _host_side[0] -= 1


def host_tensor(values: torch.Tensor | list[int]) -> torch.Tensor:
    """A long CPU tensor of ``values`` (a tensor is copied to the host, which waits for the
    device where it lives there) marked as one that stays on the host on every machine, so
    that :func:`is_host_tensor` says so even with the accelerator path forced (where every
    CPU tensor otherwise stands for device memory)."""
    if isinstance(values, torch.Tensor):
        tensor = values.long().cpu()
        tensor = tensor.clone() if tensor is values else tensor
    else:
        tensor = torch.tensor(values, dtype=torch.long)
    tensor._ltbm_on_host = True
    return tensor


def is_host_tensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is host memory on every machine: made by :func:`host_tensor`."""
    return tensor.device.type == "cpu" and getattr(tensor, "_ltbm_on_host", False)


def host_list(tensor: torch.Tensor) -> list:
    """The values of a tensor the adapters hand around (a processor's mask, lengths from
    :func:`host_tensor`): read without counting where it is on the CPU, which for these
    is the host on every machine; read back (and counted) where it is on a device."""
    return host_values(tensor) if tensor.device.type == "cpu" else tensor.tolist()


aten = torch.ops.aten
SYNCING_OPS = {
    aten._local_scalar_dense.default: "item",
    aten.is_nonzero.default: "bool",
    aten.equal.default: "equal",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.bincount.default: "bincount",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique",
}
"""Operators whose result the host needs before it can go on (a value, or a size)."""

INDEXING_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
"""Indexing operators: they wait for the device when an index is a boolean mask (its
number of True entries decides the output's size)."""


def _on_device(args: tuple) -> bool:
    """Whether the first tensor among ``args`` is device memory: not on the CPU, or any
    tensor while the accelerator path is forced (then every read counts, those of tensors
    that stay on the host on a GPU machine too: an upper bound)."""
    if _host_side[0]:
        return False
    tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
    return tensor is not None and uses_accelerator_path(tensor)


def _boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
        for index in indices or ()
    )


def _repeat_interleave_without_size(func, args: tuple, kwargs: dict) -> bool:
    if func is not aten.repeat_interleave.Tensor:
        return False
    return kwargs.get("output_size") is None


class SyncCounter:
    """``with SyncCounter() as syncs: ...`` counts the host's waits for the device inside the
    block: ``syncs.total``, ``syncs.by_kind`` (a Counter by kind), ``syncs.by_step`` (by the
    ``step`` label in force when each happened, for a caller that names the steps of a
    pipeline) and, with ``sites=True``, ``syncs.by_site`` (the innermost ltbm source line of
    each, to find them)."""

    def __init__(self, sites: bool = False) -> None:
        self.by_kind: Counter[str] = Counter()
        self.by_step: Counter[str] = Counter()
        self.by_site: Counter[str] = Counter()
        self.step = "all"
        self.sites = sites
        self._reading = 0
        self._modes: tuple[_FunctionMode, _DispatchMode] | None = None

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def record(self, kind: str) -> None:
        self.by_kind[kind] += 1
        self.by_step[self.step] += 1
        if self.sites:
            self.by_site[_caller_site()] += 1

    def __enter__(self) -> SyncCounter:
        self._modes = (_FunctionMode(self), _DispatchMode(self))
        self._modes[1].__enter__()
        self._modes[0].__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        function_mode, dispatch_mode = self._modes
        function_mode.__exit__(kind, error, traceback)
        dispatch_mode.__exit__(kind, error, traceback)


class _FunctionMode(TorchFunctionMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None)
        kind = HOST_READS.get(name) if name else None
        if kind is None or self.counter._reading or not _on_device(args):
            return func(*args, **kwargs)
        self.counter.record(kind)
        self.counter._reading += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.counter._reading -= 1


class _DispatchMode(TorchDispatchMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.counter._reading and _on_device(args):
            kind = SYNCING_OPS.get(func)
            if kind is None and func in INDEXING_OPS and _boolean_index(args):
                kind = "boolean index"
            if kind is None and _repeat_interleave_without_size(func, args, kwargs):
                kind = "repeat_interleave"
            if kind is not None:
                self.counter.record(kind)
        return func(*args, **kwargs)


def _caller_site() -> str:
    """``module:line (function)`` of the innermost frame in ltbm outside this module."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("ltbm") and module != __name__:
            return f"{module}:{frame.f_lineno} ({frame.f_code.co_name})"
        if fallback is None and module not in (__name__,) and not module.startswith("torch"):
            fallback = f"{module}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return fallback or "?"
