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
from ltbm.core.inputs import check_seed, check_window, clip_lengths
from ltbm.core.plan import Plan
from ltbm.methods.adaptive import DEFAULT_THRESHOLD, adaptive_diverse_plan, check_threshold
from ltbm.methods.matching import bipartite_merge_plan
from ltbm.methods.pooling import pool_plan
from ltbm.methods.pruning import SCORERS, prune_plan
from ltbm.methods.sampling import random_plan, uniform_plan
from ltbm.methods.segments import DEFAULT_SEGMENTS, check_segments, segment_topk_plan
from ltbm.methods.weighting import WEIGHTINGS, attention_weights, check_weighting, reweighted


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
    attention_parameter: ClassVar[str] = ""
    """The text parameter (listed in ``choices``) whose value ``"attention"`` makes the
    method read the encoder's attention; "" for a method that never does. A method that
    always does may set ``needs_attention = True`` instead."""
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    """The values a text parameter takes, listed in the method table."""
    source: ClassVar[str] = ""
    """Where the method comes from: the method table's last column (markdown).

    The first paragraph of a method class's docstring is its "what it does" in the method
    table (``ltbm methods`` and the README's, :func:`method_table`), with inline code in
    single backticks."""

    def __init__(self, keep_ratio: float = 0.25) -> None:
        self.keep_ratio = check_keep_ratio(keep_ratio)

    @property
    def needs_attention(self) -> bool:
        """Whether a call needs the encoder's attention (queries and keys, or scores)."""
        parameter = self.attention_parameter
        return bool(parameter) and getattr(self, parameter) == "attention"

    @property
    def without_attention(self) -> str:
        """The setting of :attr:`attention_parameter` that needs no attention (named in
        refusals), e.g. ``"scorer='norm'"``."""
        parameter = self.attention_parameter
        if not parameter:
            return ""
        other = next(value for value in self.choices[parameter] if value != "attention")
        return f"{parameter}={other!r}"

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


def check_scorer(scorer: str) -> str:
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
    return scorer


class MergeMethod(Method):
    """Bipartite merging (ltbm, global) with the weighting of the frames in a merged token:
    ``"size"`` (their plain mean, the paper's) or ``"attention"`` (weighted by the attention
    each frame receives in the encoder's last layer). Which frames merge does not depend on
    it. ``weighting`` is written into the parameters only when it is not ``"size"``, so
    results made before it existed keep their identity."""

    attention_parameter = "weighting"
    choices = {"weighting": WEIGHTINGS}
    window: int | None = None

    def __init__(self, keep_ratio: float = 0.25, weighting: str = "size") -> None:
        super().__init__(keep_ratio)
        self.weighting = check_weighting(weighting)

    def plan(self, tokens, lengths=None, queries=None, keys=None, scores=None, **_) -> Plan:
        if self.weighting == "size":
            return bipartite_merge_plan(tokens, lengths, self.keep_ratio, self.window)
        clip = clip_lengths(tokens, lengths, check_finite=False)  # lengths read at most once
        plan = bipartite_merge_plan(tokens, list(clip.host), self.keep_ratio, self.window)
        weights = attention_weights(tokens, clip.on_device, queries, keys, self.name, scores)
        return reweighted(plan, weights)

    def params(self) -> dict[str, Any]:
        window = {} if self.window is None else {"window": self.window}
        weighting = {} if self.weighting == "size" else {"weighting": self.weighting}
        return {**super().params(), **window, **weighting}


class LTBM(MergeMethod):
    """Rounds of bipartite matching: even positions (A) find their most similar odd position
    (B) among the `window` nearest B tokens on either side (positions ±1, ±3, …,
    ±(2·window − 1); every integer is a distinct band); the best `min(n − K, ⌈n/2⌉)` pairs
    merge (size-weighted mean); repeat until K remain. Banded scores only: O(N · window · D).
    At window 1 every kept token is one unbroken run of neighbouring tokens.
    `weighting="attention"`: the same merges, but each merged token is the mean of its frames
    weighted by the attention each receives in the encoder's last layer.

    Local Temporal Bipartite Merging: merge the most similar neighbours among the ``window``
    nearest B tokens on either side (positions ±1, ±3, …, ±(2·window − 1) of the current
    sequence), round after round, until K tokens remain. ``weighting``: a merged token is the
    plain mean of its frames ("size") or their mean weighted by encoder attention."""

    name = "ltbm"
    source = "the paper (Luo et al., arXiv 2605.25179); attention weighting as SA-MAP's merge"

    def __init__(
        self, keep_ratio: float = 0.25, window: int = DEFAULT_WINDOW, weighting: str = "size"
    ) -> None:
        super().__init__(keep_ratio, weighting)
        if window is None:
            raise ValueError("ltbm needs an integer window; use method='global' for no window")
        self.window = check_window(window)


class GlobalMerge(MergeMethod):
    """The same kernel with no window (every A×B pair): the controlled test of locality.
    `weighting` as in `ltbm`.

    The LTBM procedure with no window: any A token may merge with any B token."""

    name = "global"
    source = "the paper (ToMe's bipartite matching in rounds)"


class Pool(Method):
    """Average pooling into K fixed groups of ⌈N/K⌉ or ⌊N/K⌋ consecutive tokens."""

    name = "pool"
    source = "baseline"

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return pool_plan(tokens, lengths, self.keep_ratio)


class Prune(Method):
    """Keep the K highest-scoring tokens in temporal order. `attention`: mean attention each
    token receives in the encoder's last layer (queries and keys captured by a hook; the
    model stays on SDPA/FlashAttention). `norm`: feature L2 norm."""

    name = "prune"
    attention_parameter = "scorer"
    choices = {"scorer": SCORERS}
    source = "baseline"

    def __init__(self, keep_ratio: float = 0.25, scorer: str = "attention") -> None:
        super().__init__(keep_ratio)
        self.scorer = check_scorer(scorer)

    def plan(self, tokens, lengths=None, queries=None, keys=None, scores=None, **_) -> Plan:
        return prune_plan(tokens, lengths, self.keep_ratio, self.scorer, queries, keys, scores)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "scorer": self.scorer}


class SegmentTopK(Method):
    """Cut each clip into S equal stretches of time (segment s: positions ⌊s·n/S⌋ …
    ⌊(s+1)·n/S⌋ − 1; some are empty when n < S) and keep the highest-scoring tokens of each
    (ties: the earlier token). Segment s is owed K·L_s/n tokens: floors first, the rest one
    each to the largest remainders; tied remainders at the cut share them evenly spread
    (`uniform`'s stride). Exactly K per clip; `segments=1` is `prune`. Scorers as `prune`'s.

    Segment-wise top-K (Gibier et al., arXiv 2511.14293, ICASSP 2026): cut each clip into
    ``segments`` equal stretches of time and keep the highest-scoring tokens of each, the K
    tokens shared among segments by largest remainder; ``scorer`` as in prune."""

    name = "segment_topk"
    attention_parameter = "scorer"
    choices = {"scorer": SCORERS}
    source = (
        "Gibier et al., *Segmentwise Pruning in Audio-Language Models*, arXiv 2511.14293 "
        "(ICASSP 2026), who keep ⌊K/S⌋ per segment"
    )

    def __init__(
        self,
        keep_ratio: float = 0.25,
        segments: int = DEFAULT_SEGMENTS,
        scorer: str = "attention",
    ) -> None:
        super().__init__(keep_ratio)
        self.segments = check_segments(segments)
        self.scorer = check_scorer(scorer)

    def plan(self, tokens, lengths=None, queries=None, keys=None, scores=None, **_) -> Plan:
        return segment_topk_plan(
            tokens, lengths, self.keep_ratio, self.segments, self.scorer, queries, keys, scores
        )

    def params(self) -> dict[str, Any]:
        return {**super().params(), "segments": self.segments, "scorer": self.scorer}


class AdaptiveDiverse(Method):
    """(1) Scan each clip in time: a token joins the current run when its cosine similarity
    to the run's mean (size- or attention-weighted) is ≥ `threshold`, else starts a new run.
    (2) Fewer runs than K: undo the K − R weakest joins (lowest similarity; ties: the
    earlier), all runs kept. (3) Otherwise keep K runs by greedy max-min diversity on the
    cosine similarity of their means: the heaviest run first, then each time the run least
    similar to those chosen (ties: the earlier). Runs in temporal order; dropped runs feed
    nothing. O(N·D) sequential scan, O(K·R·D) choice (quadratic in clip length, like
    `global`).

    Merge runs of neighbours whose cosine similarity to their run's mean is at least
    ``threshold``, then keep K runs by greedy max-min diversity, in temporal order (in the
    spirit of SA-MAP, 2026); ``weighting``: the runs' means by "attention" or "size"."""

    name = "adaptive_diverse"
    attention_parameter = "weighting"
    choices = {"weighting": WEIGHTINGS}
    source = (
        "in the spirit of SA-MAP (*Similarity-Attention Boosted Token Compression via "
        "Merging-and-Pruning*, 2026): adjacent merge, then diversity-driven pruning"
    )

    def __init__(
        self,
        keep_ratio: float = 0.25,
        threshold: float = DEFAULT_THRESHOLD,
        weighting: str = "attention",
    ) -> None:
        super().__init__(keep_ratio)
        self.threshold = check_threshold(threshold)
        self.weighting = check_weighting(weighting)

    def plan(self, tokens, lengths=None, queries=None, keys=None, scores=None, **_) -> Plan:
        return adaptive_diverse_plan(
            tokens, lengths, self.keep_ratio, self.threshold, self.weighting, queries, keys, scores
        )

    def params(self) -> dict[str, Any]:
        return {**super().params(), "threshold": self.threshold, "weighting": self.weighting}


class Uniform(Method):
    """Every (N/K)-th token: a content-blind floor."""

    name = "uniform"
    source = "floor"

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return uniform_plan(tokens, lengths, self.keep_ratio)


class Random(Method):
    """K tokens drawn at random (seeded per clip): a content-blind floor."""

    name = "random"
    source = "floor"

    def __init__(self, keep_ratio: float = 0.25, seed: int = 0) -> None:
        super().__init__(keep_ratio)
        self.seed = check_seed(seed)

    def plan(self, tokens, lengths=None, **signals) -> Plan:
        return random_plan(tokens, lengths, self.keep_ratio, self.seed)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "seed": self.seed}


METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (LTBM, GlobalMerge, Pool, Prune, SegmentTopK, AdaptiveDiverse, Uniform, Random)
}


def method_parameters(name: str) -> list[str]:
    """Names of the parameters a method accepts besides keep_ratio."""
    signature = inspect.signature(method_class(name).__init__)
    return [p for p in signature.parameters if p not in ("self", "keep_ratio")]


def method_defaults(name: str) -> dict[str, Any]:
    """Every parameter of a method with its default, keep_ratio first (``ltbm methods``)."""
    signature = inspect.signature(method_class(name).__init__)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name != "self" and p.default is not inspect.Parameter.empty
    }


def method_summary(name: str) -> str:
    """What a method does, in one paragraph: the first paragraph of its class docstring,
    on one line (inline code in `backticks`)."""
    first = (method_class(name).__doc__ or "").strip().split("\n\n")[0]
    return " ".join(first.split())


def parameter_summary(name: str) -> str:
    """A method's parameters with their values and defaults, as the method table lists
    them: ``"`keep_ratio` (default 0.25), `scorer` (`attention` or `norm`; default
    `attention`)"``."""
    cls = method_class(name)
    parts = []
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        notes = []
        if parameter.name in cls.choices:
            values = [f"`{value}`" for value in cls.choices[parameter.name]]
            notes.append(
                " or ".join([", ".join(values[:-1]), values[-1]] if values[:-1] else values)
            )
        default = parameter.default
        if default is not parameter.empty:
            notes.append(
                f"default `{default}`" if isinstance(default, str) else f"default {default}"
            )
        parts.append(f"`{parameter.name}`" + (f" ({'; '.join(notes)})" if notes else ""))
    return ", ".join(parts)


def method_table() -> list[tuple[str, str, str, str]]:
    """(method, parameters, what it does, source) for every registered method, in registry
    order: the one source of ``ltbm methods`` and of the README's method table."""
    return [
        (f"`{name}`", parameter_summary(name), method_summary(name), METHODS[name].source)
        for name in METHODS
    ]


METHOD_TABLE_HEADER = ("method", "parameters", "what it does", "source")


def method_table_markdown() -> str:
    """:func:`method_table` as the markdown table the README holds."""
    lines = ["| " + " | ".join(METHOD_TABLE_HEADER) + " |", "|---" * 4 + "|"]
    lines += [f"| {' | '.join(row)} |" for row in method_table()]
    return "\n".join(lines)


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
            f"it accepts {', '.join(map(repr, ['keep_ratio', *accepted]))}"
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
