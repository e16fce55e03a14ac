"""The statistics of ``ltbm report``: each cell's metric with its bootstrap interval, the
paired difference between methods at the same keep ratio with its interval and per-item
win/tie/loss, WER's failure modes, and MMAU's accuracy per task, difficulty, category and
sub-category. Numbers only; :mod:`ltbm.report.build` writes them out.

Which cells are compared: for each pair of methods (A, B) asked for (default ltbm − global
and ltbm − pool), every cell of A against every cell of B at the same keep ratio under the
same condition (task, backbone, frame rate), so each ltbm window meets each baseline. When
A and B are the same method (``ltbm-ltbm``), its cells are compared among themselves once.
B may be ``none`` (the uncompressed run, keep 1), compared with A at every keep ratio.
A difference is always over the items scored in both cells; how many were scored in only
one of them is reported beside it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltbm.report.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Interval,
    bootstrap_ratios,
    difference_interval,
    percentile_interval,
    ratio_interval,
    win_tie_loss,
)
from ltbm.report.items import MMAU_GROUPS, CellItems, Condition, ItemScore, load_cells
from ltbm.run.evaluate import NO_COMPRESSION
from ltbm.run.options import check_seed

DEFAULT_PAIRS = (("ltbm", "global"), ("ltbm", "pool"))
EXAMPLES = 5
"""Item keys listed as examples (failed items, early stops, loops, unpaired items)."""


MAX_RESAMPLES = 1_000_000
"""More resamples than this move a percentile by less than its own rounding, while the draw
matrix (items × resamples) would fill the memory of the machine."""


@dataclass(frozen=True)
class StatsOptions:
    """How the intervals are computed and which methods are compared."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    level: float = DEFAULT_LEVEL
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    pool_tasks: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.resamples <= MAX_RESAMPLES:
            raise ValueError(
                f"resamples must lie between 1 and {MAX_RESAMPLES:,} (the draws take items × "
                f"resamples numbers of memory), got {self.resamples}"
            )
        check_seed("seed", self.seed)
        if not 0 < self.level < 1:
            raise ValueError(f"level must lie strictly between 0 and 1, got {self.level}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "resamples": self.resamples,
            "seed": self.seed,
            "level": self.level,
            "interval": "percentile",
            "pairs": [list(pair) for pair in self.pairs],
            "pool_tasks": self.pool_tasks,
        }


def parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``"ltbm-global,ltbm-pool"`` → ``(("ltbm", "global"), ("ltbm", "pool"))``."""
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        names = part.split("-")
        if len(names) != 2 or not all(names):
            raise ValueError(
                f"cannot read the pair {part!r}: write pairs as A-B, comma-separated "
                "(e.g. ltbm-global,ltbm-pool)"
            )
        pairs.append((names[0], names[1]))
    return tuple(pairs)


def check_pairs(pairs: Sequence[tuple[str, str]], cells: list[CellItems]) -> None:
    """Refuse a pair naming a method that is neither registered nor run in the reported
    cells (a typo such as ``ltbm-globl``): it would match no cell, and its differences
    would be missing from the report without a word."""
    from ltbm.methods.registry import METHODS

    known = {cell.method for cell in cells} | set(METHODS) | {NO_COMPRESSION}
    unknown = sorted({name for pair in pairs for name in pair} - known)
    if unknown:
        ran = sorted({cell.method for cell in cells}, key=str)
        raise ValueError(
            f"--pairs names unknown method(s) {', '.join(unknown)}; the reported cells ran "
            f"{', '.join(ran) or 'nothing'} (write pairs as A-B, e.g. ltbm-global)"
        )


def report_stats(runs_dirs: Sequence[Path], options: StatsOptions | None = None) -> dict:
    """Everything the statistics part of the report holds, as plain JSON-ready data."""
    options = options or StatsOptions()
    return summarize(load_cells(runs_dirs, options.pool_tasks), options)


def summarize(cells: list[CellItems], options: StatsOptions) -> dict[str, Any]:
    """The intervals, breakdowns and differences of loaded cells."""
    check_pairs(options.pairs, cells)
    return {
        "options": options.as_dict(),
        "cells": [cell_stats(cell, options) for cell in cells],
        "differences": differences(cells, options),
    }


def cell_stats(cell: CellItems, options: StatsOptions) -> dict[str, Any]:
    """One cell's metric and interval (over its scored items), and its breakdowns."""
    row: dict[str, Any] = {
        **_identity(cell),
        "tasks": cell.tasks,
        "run_dirs": [str(path) for path in cell.run_dirs],
        "items": len(cell.scores),
        "failed": len(cell.failed),
        "failed_examples": cell.failed[:EXAMPLES],
        "interval": None,
        "unavailable": cell.unavailable,
    }
    if not cell.scores:
        row["unavailable"] = cell.unavailable or "no item was scored"
        return row
    scores = list(cell.scores.values())
    row["interval"] = _interval(
        [s.numerator for s in scores], [s.denominator for s in scores], options
    ).as_dict()
    if cell.condition.kind == "asr":
        row["wer_breakdown"] = wer_breakdown(cell)
    if cell.condition.kind == "mcq":
        row["mmau"] = mmau_breakdown(cell, options)
    return row


def wer_breakdown(cell: CellItems) -> dict[str, Any]:
    """Edit totals, each edit type's share of all edits, and the failure-mode counts."""
    details = {key: score.detail for key, score in cell.scores.items()}
    totals = {
        name: sum(d[name] for d in details.values())
        for name in ("substitutions", "deletions", "insertions", "reference_words")
    }
    edits = totals["substitutions"] + totals["deletions"] + totals["insertions"]
    shares = {
        f"share_{name}": (totals[name] / edits if edits else 0.0)
        for name in ("substitutions", "deletions", "insertions")
    }
    flagged = {
        flag: sorted(key for key, d in details.items() if d[flag])
        for flag in ("early_stop", "loop", "empty")
    }
    return {
        **totals,
        **shares,
        "early_stops": len(flagged["early_stop"]),
        "loops": len(flagged["loop"]),
        "empty": len(flagged["empty"]),
        "early_stop_examples": flagged["early_stop"][:EXAMPLES],
        "loop_examples": flagged["loop"][:EXAMPLES],
    }


def mmau_breakdown(cell: CellItems, options: StatsOptions) -> dict[str, Any]:
    """Official-rule accuracy per group with intervals, and the lenient figure beside it.

    All groups come from one bootstrap of the cell's items: a group's accuracy on a
    resample is its correct items over its items drawn (a ratio of sums, the group's size
    varying from resample to resample), so one pass serves every group."""
    scores = list(cell.scores.values())
    correct = np.array([s.numerator for s in scores])
    names = [(f, n) for f in MMAU_GROUPS for n in sorted(_group_names(scores, f))]
    masks = [np.array([s.detail.get(f) == n for s in scores], dtype=float) for f, n in names]
    groups: dict[str, dict[str, Any]] = {field: {} for field in MMAU_GROUPS}
    if names:
        samples = bootstrap_ratios(
            [(correct * mask, mask) for mask in masks], options.resamples, options.seed
        )
        for column, ((field, name), mask) in enumerate(zip(names, masks, strict=True)):
            low, high = percentile_interval(samples[:, column], options.level)
            groups[field][name] = {
                "accuracy": float((correct * mask).sum() / mask.sum()),
                "correct": int((correct * mask).sum()),
                "total": int(mask.sum()),
                "low": low,
                "high": high,
            }
    lenient = [s.detail.get("correct_lenient") for s in scores]
    return {
        "accuracy_lenient": (
            None if None in lenient else sum(bool(v) for v in lenient) / len(lenient)
        ),
        "groups": groups,
    }


def _group_names(scores: list[ItemScore], field: str) -> set[str]:
    return {s.detail[field] for s in scores if s.detail.get(field) is not None}


def differences(cells: list[CellItems], options: StatsOptions) -> list[dict[str, Any]]:
    """Paired A − B for every asked pair of methods, keep ratio by keep ratio (highest
    first), in the order the pairs were asked for."""
    by_condition: dict[Condition, list[CellItems]] = defaultdict(list)
    for cell in cells:
        by_condition[cell.condition].append(cell)
    rows = []
    for group in by_condition.values():
        found = []
        for rank, (first, second) in enumerate(options.pairs):
            for a in (c for c in group if c.method == first):
                for b in (c for c in group if c.method == second):
                    if a is b or not _comparable(a, b):
                        continue
                    if first == second and group.index(a) > group.index(b):
                        continue  # same method: each pair of its cells once
                    found.append(((-a.keep_ratio, rank, group.index(a), group.index(b)), a, b))
        rows += [paired_difference(a, b, options) for _, a, b in sorted(found, key=_first)]
    return rows


def _first(entry: tuple) -> tuple:
    return entry[0]


def _comparable(a: CellItems, b: CellItems) -> bool:
    """Same keep ratio, or B is the uncompressed run (what compression costs A)."""
    return a.keep_ratio == b.keep_ratio or b.method == NO_COMPRESSION


def paired_difference(a: CellItems, b: CellItems, options: StatsOptions) -> dict[str, Any]:
    """A − B over the items scored in both, with the interval and win/tie/loss for A."""
    row: dict[str, Any] = {
        "condition": a.condition.as_dict(),
        "keep_ratio": a.keep_ratio,
        "metric": a.metric,
        "lower_is_better": a.lower_is_better,
        "a": a.label,
        "b": b.label,
        "a_cell": a.cell,
        "b_cell": b.cell,
    }
    only_a = sorted(a.scores.keys() - b.scores.keys())
    only_b = sorted(b.scores.keys() - a.scores.keys())
    row.update(
        only_in_a=len(only_a), only_in_b=len(only_b), unpaired_examples=(only_a + only_b)[:EXAMPLES]
    )
    common = sorted(a.scores.keys() & b.scores.keys())
    reason = a.unavailable or b.unavailable or (None if common else "no item scored in both")
    if reason:
        empty = dict.fromkeys(("excludes_zero", "better", "wins", "ties", "losses"))
        return {**row, "difference": None, **empty, "unavailable": reason}
    left, right = [a.scores[k] for k in common], [b.scores[k] for k in common]
    interval = _difference(left, right, options)
    counts = win_tie_loss(
        [s.value for s in left], [s.value for s in right], higher_is_better=not a.lower_is_better
    )
    better = None
    if interval.excludes_zero:
        a_lower = interval.estimate < 0
        better = a.label if a_lower == a.lower_is_better else b.label
    return {
        **row,
        "difference": interval.as_dict(),
        "excludes_zero": interval.excludes_zero,
        "better": better,
        **counts.as_dict(),
        "unavailable": None,
    }


def _identity(cell: CellItems) -> dict[str, Any]:
    return {
        "condition": cell.condition.as_dict(),
        "method": cell.method,
        "keep_ratio": cell.keep_ratio,
        "label": cell.label,
        "cell": cell.cell,
        "metric": cell.metric,
        "lower_is_better": cell.lower_is_better,
    }


def _interval(numerators, denominators, options: StatsOptions) -> Interval:
    return ratio_interval(numerators, denominators, options.level, options.resamples, options.seed)


def _difference(left, right, options: StatsOptions) -> Interval:
    return difference_interval(
        ([s.numerator for s in left], [s.denominator for s in left]),
        ([s.numerator for s in right], [s.denominator for s in right]),
        options.level,
        options.resamples,
        options.seed,
    )
