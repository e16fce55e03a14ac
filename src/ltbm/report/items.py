"""Per-item scores of finished runs: what every interval and win/tie/loss count is built on.

A cell's per-item scores come from its records (``items*.jsonl``), scored here at report
time wherever the records hold what is needed, so runs made before a field existed get
the same breakdown:

- **asr**: each item's word edits from its stored hypothesis and reference
  (:func:`ltbm.metrics.wer.item_errors`); numerator = edits, denominator = reference words,
  so the cell's figure is corpus WER. A failed item is left out, as in ``metrics.json``.
- **mcq** (MMAU): the record's ``correct`` (the official rule); a failed item counts as
  wrong, as in the headline. Records without ``correct`` (written before per-item verdicts)
  give no intervals, and the report says so.
- **caption**: CIDEr-D per item, from the record's ``scores`` (metric → per-item value)
  where present, otherwise computed from the stored captions with pycocoevalcap (needs
  Java; without it the report says the intervals are not available). The corpus CIDEr-D
  is the mean of the per-item values, so the bootstrap resamples that mean with the IDF of
  the evaluated references held fixed. A failed item is left out (and counted).

Items are keyed ``task/id``, so several tasks can be pooled into one item set (the locality
study's two speech folders) without two ids colliding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltbm.run.identity import differences, read_identity
from ltbm.run.records import read_records

PRIMARY_METRIC = {"caption": "cider_d", "mcq": "accuracy", "asr": "wer"}
LOWER_IS_BETTER = {"wer"}
MMAU_GROUPS = ("task", "difficulty", "category", "sub_category")
METHOD_ORDER = (
    "none",
    "uniform",
    "random",
    "pool",
    "prune",
    "segment_topk",
    "adaptive_diverse",
    "global",
    "ltbm",
)


@dataclass(frozen=True)
class Condition:
    """What two cells must share to be compared: the items' task (or the pooled tasks),
    the task kind, the backbone and its frame rate."""

    task: str
    kind: str
    backbone: str
    frame_rate_hz: float | None = None

    def title(self) -> str:
        rate = f" @ {self.frame_rate_hz:g} Hz" if self.frame_rate_hz else ""
        return f"{self.task} — {self.backbone}{rate}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "kind": self.kind,
            "backbone": self.backbone,
            "frame_rate_hz": self.frame_rate_hz,
        }


@dataclass(frozen=True)
class ItemScore:
    """One item's contribution to the cell's ratio of sums, and what else it says."""

    numerator: float
    denominator: float = 1.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        """The item's own score (its WER, correctness, caption score)."""
        return self.numerator / self.denominator if self.denominator else self.numerator


@dataclass
class CellItems:
    """One cell (method × keep ratio × parameters) under one condition, item by item."""

    condition: Condition
    cell: dict[str, Any]
    run_dirs: list[Path]
    tasks: list[str]
    scores: dict[str, ItemScore] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    unavailable: str | None = None
    """Why the cell has no per-item scores (then ``scores`` is empty)."""

    @property
    def metric(self) -> str:
        return PRIMARY_METRIC[self.condition.kind]

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    @property
    def method(self) -> str:
        return self.cell["method"]

    @property
    def keep_ratio(self) -> float:
        return self.cell["keep_ratio"]

    @property
    def label(self) -> str:
        """The method and its parameters besides the keep ratio (:func:`cell_label`):
        ``ltbm w=1``, ``prune norm``, ``ltbm w=1 size-aware``."""
        return cell_label(self.cell)

    def identity(self) -> tuple:
        """The cell's settings, hashable, for matching one cell across tasks."""
        return tuple(sorted((k, json.dumps(v)) for k, v in self.cell.items()))


LABELS = {"window": "w=", "seed": "s=", "segments": "S=", "threshold": "t="}
"""How a parameter is written in a cell's label; scorer and weighting are words."""


def cell_label(cell: dict[str, Any]) -> str:
    """The method and its parameters besides the keep ratio, in name order (weighting, then
    size-aware, last): ``ltbm w=1``, ``prune norm``, ``segment_topk attention S=10``,
    ``adaptive_diverse t=0.9 attention-weighted``, ``ltbm w=1 attention-weighted``,
    ``ltbm w=1 size-aware``."""
    parts = [cell["method"]]
    for name, value in sorted(cell.items(), key=lambda item: (item[0] == "weighting", item[0])):
        if name in ("method", "keep_ratio", "size_aware") or value is None:
            continue
        if name == "weighting":
            parts.append(f"{value}-weighted")
        elif name in LABELS:
            parts.append(f"{LABELS[name]}{value}")
        else:
            parts.append(str(value))
    if cell.get("size_aware"):
        parts.append("size-aware")
    return " ".join(parts)


def finished_runs(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every run folder under ``runs_dir`` that has a ``metrics.json``, with its content."""
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"no runs folder at {runs_dir}; run `ltbm eval` or `ltbm sweep`")
    runs = [(path.parent, _read_metrics(path)) for path in sorted(runs_dir.rglob("metrics.json"))]
    if not runs:
        raise FileNotFoundError(f"no metrics.json under {runs_dir}: no run has finished yet")
    return runs


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}): rerun that cell or move its folder away"
        ) from None
    problem = _metrics_problem(metrics)
    if problem:
        raise ValueError(
            f"{path} is not a metrics file written by ltbm ({problem}): rerun that cell "
            "(the same command finishes it again) or move its folder away"
        )
    return metrics


METRICS_FIELDS = {"task": str, "task_kind": str, "backbone": str, "cell": dict, "metrics": dict}


def _metrics_problem(metrics: Any) -> str | None:
    """What keeps a parsed metrics file from being reported (None when nothing does)."""
    if not isinstance(metrics, dict):
        return f"a JSON {type(metrics).__name__}, not an object"
    for key, kind in METRICS_FIELDS.items():
        if not isinstance(metrics.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if metrics["task_kind"] not in PRIMARY_METRIC:
        return f"unknown task_kind {metrics['task_kind']!r}"
    cell = metrics["cell"]
    ratio = cell.get("keep_ratio")
    if not isinstance(cell.get("method"), str) or isinstance(ratio, bool):
        return "its cell has no method"
    if not isinstance(ratio, (int, float)):
        return "its cell has no numeric keep_ratio"
    scored = metrics.get("scored")
    if isinstance(scored, bool) or not isinstance(scored, int):
        return "'scored' is missing or not a whole number"
    return None


def load_cells(runs_dirs: Sequence[Path], pool_tasks: bool = False) -> list[CellItems]:
    """Per-item scores of every finished run under ``runs_dirs``. ``pool_tasks`` merges the
    same cell of every task of one kind, backbone and frame rate into one item set, whose
    task is named by joining the pooled tasks with ``+`` (a cell present for fewer tasks
    lands in its own, smaller set, so no comparison mixes item sets)."""
    runs = [(folder, *run) for folder in runs_dirs for run in finished_runs(folder)]
    clashes = tasks_in_several((folder, metrics["task"]) for folder, _, metrics in runs)
    cells: dict[tuple, CellItems] = {}
    settings: dict[Condition, tuple[Path, dict[str, Any] | None]] = {}
    for folder, run_dir, metrics in runs:
        task = metrics["task"]
        one = _cell_items(run_dir, metrics, task_label(task, folder, clashes))
        condition = _with_task(one.condition, "") if pool_tasks else one.condition
        shared = _shared_settings(run_dir)
        _check_same_settings(settings, one.condition, run_dir, shared)
        if pool_tasks:
            pooled = None if shared is None else _without_data(shared)
            _check_same_settings(settings, condition, run_dir, pooled)
        key = (condition, one.identity())
        target = cells.setdefault(key, CellItems(condition, one.cell, [], []))
        _merge(target, one)
    if pool_tasks:
        for cell in cells.values():
            cell.condition = _with_task(cell.condition, "+".join(sorted(cell.tasks)))
    return sorted(cells.values(), key=_cell_order)


CELL_PARTS = ("cell", "method_params")
"""The parts of a run's identity that belong to its cell: everything else must be the same
for two cells to be compared item by item."""


def _shared_settings(run_dir: Path) -> dict[str, Any] | None:
    """The run's identity without its cell (data, backbone and its settings, prompt,
    generation limit, ltbm version), or None for a folder made before identities were
    stored."""
    stored = read_identity(run_dir)
    if stored is None:
        return None
    identity = stored.get("identity")
    identity = identity if isinstance(identity, dict) else {}
    return {key: value for key, value in identity.items() if key not in CELL_PARTS}


def _without_data(shared: dict[str, Any]) -> dict[str, Any]:
    """What pooled tasks must share: all but their data and task name."""
    rest = {key: value for key, value in shared.items() if key != "dataset"}
    if isinstance(rest.get("settings"), dict):
        rest["settings"] = {k: v for k, v in rest["settings"].items() if k != "task"}
    return rest


def _check_same_settings(
    seen: dict[Condition, tuple[Path, dict[str, Any] | None]],
    condition: Condition,
    run_dir: Path,
    shared: dict[str, Any] | None,
) -> None:
    """Refuse to compare cells run under other settings (another prompt, token limit,
    dataset listing, checkpoint or ltbm version): their paired differences would mix the
    method's effect with the settings' and look like the method's alone. A cell without
    ``identity.json`` (made by an older ltbm) has unknown settings, so it is compared only
    with other such cells, never beside current ones."""
    first_dir, first = seen.setdefault(condition, (run_dir, shared))
    if (first is None) != (shared is None):
        old, new = (first_dir, run_dir) if first is None else (run_dir, first_dir)
        raise ValueError(
            f"{old} has no identity.json (an older ltbm made it), so its settings cannot be "
            f"checked against those of {new}, and their items cannot be compared; rerun that "
            "cell with --fresh (its settings are then recorded), or report it from a "
            "separate folder"
        )
    if shared is None:
        return
    found = differences(first, shared, labels=("in the first", "in the second"))
    if found:
        raise ValueError(
            f"{first_dir} and {run_dir} were run under other settings ({'; '.join(found[:4])}), "
            "so their items cannot be compared; report them from separate folders, or rerun "
            "one with the other's settings"
        )


def _with_task(condition: Condition, task: str) -> Condition:
    return Condition(task, condition.kind, condition.backbone, condition.frame_rate_hz)


def tasks_in_several(found: Iterable[tuple[Path, str]]) -> set[str]:
    """Task names found in more than one of the given folders (pairs of folder and task):
    two data sets that were run under one task name, told apart by :func:`task_label`."""
    seen: dict[str, set[Path]] = {}
    for folder, task in found:
        seen.setdefault(task, set()).add(folder.resolve())
    return {task for task, where in seen.items() if len(where) > 1}


def task_label(task: str, folder: Path, clashes: set[str]) -> str:
    """``task``, or ``task@folder`` when the task name is in several reported folders (the
    tables and the statistics label such rows alike)."""
    return f"{task}@{folder.name}" if task in clashes else task


def _merge(target: CellItems, one: CellItems) -> None:
    if one.tasks[0] in target.tasks:
        raise ValueError(
            f"two runs of cell {one.label} (keep {one.keep_ratio:g}) for task {one.tasks[0]}: "
            f"{target.run_dirs[0]} and {one.run_dirs[0]}; report them from separate folders"
        )
    target.tasks.extend(one.tasks)
    target.run_dirs.extend(one.run_dirs)
    target.failed.extend(one.failed)
    target.scores.update(one.scores)
    if one.unavailable and not target.unavailable:
        target.unavailable = one.unavailable


def _cell_items(run_dir: Path, metrics: dict[str, Any], task: str) -> CellItems:
    details = metrics.get("backbone_details") or {}
    rate = details.get("frame_rate_hz", (metrics.get("settings") or {}).get("frame_rate_hz"))
    condition = Condition(task, metrics["task_kind"], metrics["backbone"], rate)
    cell = CellItems(condition, dict(metrics["cell"]), [run_dir], [task])
    records, problem = covered_records(run_dir, metrics)
    if problem:
        cell.unavailable = problem
        return cell
    cell.failed = [f"{task}/{item_id}" for item_id, record in records if "error" in record]
    scores = _score_records(condition.kind, records)
    if isinstance(scores, str):
        cell.unavailable = scores
    else:
        cell.scores = {f"{task}/{item_id}": score for item_id, score in scores.items()}
    return cell


def covered_records(
    run_dir: Path, metrics: dict[str, Any]
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """The records of the items ``metrics.json`` covers, by id (or why they are unknown).

    A cell's folder may hold more records than its metrics file covers: a later run with a
    smaller ``--limit`` or another ``--subset`` rewrites the metrics for its own items and
    keeps the other records for reuse, and a record may be left of an item no longer in the
    dataset. The statistics must describe the items the table's row does. A metrics file
    from an older ltbm names no items: its records are used when they are as many as it
    completed, and otherwise the cell has no statistics, with the way out."""
    records = read_records(run_dir)
    covered = metrics.get("item_ids")
    if isinstance(covered, list):
        return sorted((i, records[i]) for i in set(covered) if i in records), None
    completed = metrics.get("completed")
    if isinstance(completed, int) and completed != len(records):
        return [], (
            f"its records hold {len(records)} items but its metrics.json, written by an older "
            f"ltbm, covers {completed} without naming them; run the cell's command again "
            "(it rewrites metrics.json from the records, running nothing)"
        )
    return sorted(records.items()), None


def _score_records(kind: str, records: list[tuple[str, dict]]) -> dict[str, ItemScore] | str:
    """Each record's score by id, or why the cell has none."""
    if kind == "caption":
        return _caption_scores(records)
    score = {"asr": _asr_score, "mcq": _mcq_score}[kind]
    scores = {}
    for item_id, record in records:
        result = score(record)
        if isinstance(result, str):
            return result
        if result is not None:
            scores[item_id] = result
    return scores


def _asr_score(record: dict[str, Any]) -> ItemScore | None:
    from ltbm.metrics.wer import item_errors

    if "error" in record:
        return None  # left out of the corpus WER, as in metrics.json
    reference = (record.get("references") or [""])[0]
    errors = item_errors(reference, record.get("prediction") or "")
    return ItemScore(errors.errors, errors.reference_words, errors.as_dict())


def _mcq_score(record: dict[str, Any]) -> ItemScore | str:
    groups = {name: _mmau_field(record, name) for name in MMAU_GROUPS}
    if "error" in record:
        return ItemScore(0.0, 1.0, {**groups, "correct_lenient": False})
    if "correct" not in record:
        return "the records hold no per-item verdict (`correct`): rerun or rescore the cell"
    lenient = record.get("correct_lenient")
    detail = {**groups, "correct_lenient": None if lenient is None else bool(lenient)}
    return ItemScore(float(bool(record["correct"])), 1.0, detail)


def _mmau_field(record: dict[str, Any], name: str) -> str | None:
    """A grouping field from the record, or from its ``meta`` (MMAU writes
    ``sub-category`` with a hyphen), as text."""
    meta = record.get("meta") or {}
    for source, key in ((record, name), (meta, name), (meta, name.replace("_", "-"))):
        value = source.get(key)
        if isinstance(value, list):  # test-mini writes a few categories as ["Reasoning"]
            value = ", ".join(str(v) for v in value) or None
        if value is not None:
            return str(value)
    return None


def _caption_scores(records: list[tuple[str, dict]]) -> dict[str, ItemScore] | str:
    """The primary caption metric per item: from the records' ``scores`` when every one has
    it, otherwise computed here with pycocoevalcap over the cell's captioned items (CIDEr-D's
    IDF from their references, as for the corpus figure). Failed items are left out."""
    metric = PRIMARY_METRIC["caption"]
    done = [(item_id, record) for item_id, record in records if "error" not in record]
    stored = {i: (r.get("scores") or {}).get(metric) for i, r in done}
    if None not in stored.values():
        return {i: ItemScore(float(value)) for i, value in stored.items()}
    from ltbm.metrics.captions import CaptionMetricsError, score_captions
    from ltbm.tasks.base import Item

    items = [Item(i, Path(), references=list(r.get("references") or [])) for i, r in done]
    try:
        result = score_captions({i: r.get("prediction") or "" for i, r in done}, items, [metric])
    except CaptionMetricsError as error:
        return f"the records hold no per-item {metric} and it cannot be computed here: {error}"
    return {i: ItemScore(result.per_item[i][metric]) for i, _ in done}


def method_rank(method: str) -> int:
    """Where a method goes in tables: the uncompressed run first, LTBM last."""
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _cell_order(cell: CellItems) -> tuple:
    rank = method_rank(cell.method)
    return (cell.condition.title(), -cell.keep_ratio, rank, cell.label)
