"""One object per method, registered by name, all with the same call.

``get_method("ltbm", keep_ratio=0.25, window=3)`` builds the object; calling it on encoder
tokens returns :class:`Compressed`. Objects are cheap and stateless between calls, so one
can be reused for every batch (or handed to a backbone to apply inside the model).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ltbm.core.budget import check_keep_ratio
from ltbm.core.inputs import check_seed, check_window
from ltbm.core.plan import Plan
from ltbm.methods.matching import bipartite_merge_plan
from ltbm.methods.pooling import pool_plan
from ltbm.methods.pruning import SCORERS, prune_plan
from ltbm.methods.sampling import random_plan, uniform_plan


@dataclass(frozen=True)
class Compressed:
    """Result of compressing a batch: ``tokens [B, K_max, D]`` (zero past each clip's K),
    ``lengths [B]`` (K per clip) and the ``plan`` that produced them."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    plan: Plan


class Method:
    """Base class: a compression method with its parameters bound."""

    name: ClassVar[str]
    needs_attention: ClassVar[bool] = False

    def __init__(self, keep_ratio: float = 0.25) -> None:
        self.keep_ratio = check_keep_ratio(keep_ratio)

    def plan(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None, **signals) -> Plan:
        raise NotImplementedError

    def __call__(
        self, tokens: torch.Tensor, lengths: torch.Tensor | None = None, **signals
    ) -> Compressed:
        plan = self.plan(tokens, lengths, **signals)
        return Compressed(plan.apply(tokens), plan.kept.clone(), plan)

    def params(self) -> dict[str, Any]:
        """The method's parameters, as written into results."""
        return {"method": self.name, "keep_ratio": self.keep_ratio}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "method")
        return f"{type(self).__name__}({args})"


DEFAULT_WINDOW = 1
"""LTBM's window when none is given: each A token sees its two immediate B neighbours
(positions ±1 of the current sequence). This is the band behind the reference word error
rates, which were measured as "window 2" under the earlier position-distance definition,
where 1 and 2 were the same band."""


class LTBM(Method):
    """Local Temporal Bipartite Merging: merge the most similar neighbours among the ``window``
    nearest B tokens on either side (positions ±1, ±3, …, ±(2·window − 1) of the current
    sequence), round after round, until K tokens remain."""

    name = "ltbm"

    def __init__(self, keep_ratio: float = 0.25, window: int = DEFAULT_WINDOW) -> None:
        super().__init__(keep_ratio)
        if window is None:
            raise ValueError("ltbm needs an integer window; use method='global' for no window")
        self.window = check_window(window)

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return bipartite_merge_plan(tokens, lengths, self.keep_ratio, self.window)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "window": self.window}


class GlobalMerge(Method):
    """The LTBM procedure with no window: any A token may merge with any B token."""

    name = "global"

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return bipartite_merge_plan(tokens, lengths, self.keep_ratio, None)


class Pool(Method):
    """Average pooling into K fixed groups of consecutive tokens."""

    name = "pool"

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return pool_plan(tokens, lengths, self.keep_ratio)


class Prune(Method):
    """Keep the K highest-scoring tokens (``scorer``: "attention" or "norm")."""

    name = "prune"

    def __init__(self, keep_ratio: float = 0.25, scorer: str = "attention") -> None:
        super().__init__(keep_ratio)
        if scorer not in SCORERS:
            raise ValueError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
        self.scorer = scorer

    @property
    def needs_attention(self) -> bool:  # type: ignore[override]
        return self.scorer == "attention"

    def plan(self, tokens, lengths=None, queries=None, keys=None, scores=None, **_) -> Plan:
        return prune_plan(tokens, lengths, self.keep_ratio, self.scorer, queries, keys, scores)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "scorer": self.scorer}


class Uniform(Method):
    """Keep every (N/K)-th token: a content-blind floor."""

    name = "uniform"

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return uniform_plan(tokens, lengths, self.keep_ratio)


class Random(Method):
    """Keep K tokens drawn at random with a fixed ``seed``: a content-blind floor."""

    name = "random"

    def __init__(self, keep_ratio: float = 0.25, seed: int = 0) -> None:
        super().__init__(keep_ratio)
        self.seed = check_seed(seed)

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return random_plan(tokens, lengths, self.keep_ratio, self.seed)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "seed": self.seed}


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (LTBM, GlobalMerge, Pool, Prune, Uniform, Random)
}


def method_parameters(name: str) -> list[str]:
    """Names of the parameters a method accepts besides keep_ratio."""
    signature = inspect.signature(method_class(name).__init__)
    return [p for p in signature.parameters if p not in ("self", "keep_ratio")]


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def get_method(name: str, keep_ratio: float = 0.25, **params: Any) -> Method:
    """Build a method by name. Unknown parameters are refused with the accepted ones listed,
    so a typo never silently falls back to a default."""
    cls = method_class(name)
    accepted = method_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"method {name!r} takes no parameter {', '.join(map(repr, unknown))}; "
            f"it accepts: keep_ratio{''.join(', ' + p for p in accepted)}"
        )
    return cls(keep_ratio=keep_ratio, **params)


def register(cls: type[Method] | None = None, *, replace: bool = False):
    """Add a method class to the registry (usable as a decorator by extensions:
    ``@register`` or ``@register(replace=True)``). A name already registered (a built-in
    such as ``pool``, or another extension's) is refused unless ``replace=True``: replacing
    it silently would change what every later ``get_method(name)`` and run of that name
    computes, under the same name in results."""
    if cls is None:
        return lambda given: register(given, replace=replace)
    if not isinstance(getattr(cls, "name", None), str):
        raise TypeError("a method class needs a string class attribute `name`")
    current = METHODS.get(cls.name)
    if current is not None and current is not cls and not replace:
        raise ValueError(
            f"a method named {cls.name!r} is already registered ({current.__module__}."
            f"{current.__qualname__}); give yours another name, or pass replace=True to "
            "replace it on purpose"
        )
    METHODS[cls.name] = cls
    return cls
