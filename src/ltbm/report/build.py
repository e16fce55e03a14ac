"""Tables and plots from a folder of runs, shaped like the paper's: rows method × keep ratio,
columns the task's metrics and what compression buys (tokens kept, prefill, memory); then
the statistics from the runs' items (:mod:`ltbm.report.stats`): every cell's interval and
the paired differences between methods, written by :mod:`ltbm.report.tables` and
:mod:`ltbm.report.plots`."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltbm.report.efficiency import EFFICIENCY_FIELDS, PROVENANCE_FIELDS, join_efficiency
from ltbm.report.items import (
    LOWER_IS_BETTER,
    PRIMARY_METRIC,
    cell_label,
    finished_runs,
    load_cells,
    method_rank,
    task_label,
    tasks_in_several,
)
from ltbm.report.plots import (
    COLOURS,
    keep_ratio_axis,
    legend_below,
    nudges,
    plot_statistics,
    series_style,
)
from ltbm.report.stats import StatsOptions, summarize
from ltbm.report.tables import item_rows, stats_markdown, write_stats
from ltbm.run.evaluate import LATER_PARAMETERS


def collect_runs(runs_dir: Path, clashes: set[str] = frozenset()) -> list[dict[str, Any]]:
    """One row per finished run (``metrics.json``) under ``runs_dir``, without efficiency
    figures (:func:`ltbm.report.efficiency.join_efficiency` adds them). A task named in
    ``clashes`` (found in several reported folders: two data sets of one task) is labelled
    ``task@folder``, as in the statistics."""
    rows = []
    for _, metrics in finished_runs(runs_dir):
        cell = metrics["cell"]
        row = {
            "task": task_label(metrics["task"], runs_dir, clashes),
            "kind": metrics["task_kind"],
            "backbone": metrics["backbone"],
            "method": cell["method"],
            "keep_ratio": cell["keep_ratio"],
            "window": cell.get("window"),
            "scorer": cell.get("scorer"),
            **({"size_aware": True} if cell.get("size_aware") else {}),
            **{k: cell[k] for k in LATER_PARAMETERS if cell.get(k) is not None},
            "label": cell_label({k: v for k, v in cell.items() if k != "size_aware"}),
            "items": metrics["scored"],
            "failed": metrics.get("failed_count", len(metrics.get("failed", []))),
            "kept_tokens": metrics.get("mean_kept_tokens"),
            "audio_tokens": metrics.get("mean_audio_tokens"),
            "parameters": (metrics.get("backbone_details") or {}).get("parameters"),
        }
        row.update(_numeric(metrics.get("metrics", {})))
        rows.append(row)
    return sorted(rows, key=_row_order)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """Top-level numbers, plus per-group accuracies (MMAU's per task and per difficulty)
    as ``accuracy[sound]`` and so on."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "items"}
    for groups in metrics.values():
        if isinstance(groups, dict):
            for group, value in groups.items():
                if isinstance(value, dict) and "accuracy" in value:
                    flat[f"accuracy[{group}]"] = value["accuracy"]
    return flat


def _row_order(row: dict[str, Any]):
    rank = method_rank(row["method"])
    return (
        row["task"],
        row["backbone"],
        -row["keep_ratio"],
        rank,
        row["window"] or 0,
        bool(row.get("size_aware")),
    )


def columns(rows: list[dict[str, Any]]) -> list[str]:
    later = [k for k in LATER_PARAMETERS if any(k in r for r in rows)]
    fixed = [
        "task",
        "backbone",
        "parameters",
        "method",
        "keep_ratio",
        "window",
        "scorer",
        *(["size_aware"] if any(r.get("size_aware") for r in rows) else []),
        *later,
        "items",
        "failed",
        "audio_tokens",
        "kept_tokens",
    ]
    joined = EFFICIENCY_FIELDS + PROVENANCE_FIELDS
    extra = sorted({k for r in rows for k in r} - set(fixed) - {"kind", "label"} - set(joined))
    efficiency = [f for f in joined if any(f in r for r in rows)]
    return fixed + extra + efficiency


def write_report(
    runs_dirs: Path | Sequence[Path],
    out_dir: Path | None = None,
    options: StatsOptions | None = None,
    bench: Sequence[Path] | None = None,
) -> dict[str, Path]:
    """Write the tables (``report.md``, ``report.csv``, ``report.json``), the plots, and
    the statistics (``report-stats.md``, ``report-stats.json``, ``report-cells.csv``,
    ``report-differences.csv``, ``report-items.csv``, ``report-mmau.csv`` for MMAU, and a
    ``*_intervals.png`` figure per condition);
    ``report.md`` ends with the statistics too. Efficiency columns come from the ``bench``
    files given, or else from every ``bench*.json`` under the runs folders. Returns the
    paths written."""
    folders = [runs_dirs] if isinstance(runs_dirs, Path) else list(runs_dirs)
    if out_dir is None and len(folders) != 1:
        raise ValueError("several runs folders are reported together: pass --out for the report")
    out_dir = out_dir or folders[0]
    clashes = tasks_in_several(
        (folder, metrics["task"]) for folder in folders for _, metrics in finished_runs(folder)
    )
    rows = [row for folder in folders for row in collect_runs(folder, clashes)]
    join_efficiency(rows, folders, out_dir, bench)
    cells = load_cells(folders, (options or StatsOptions()).pool_tasks)
    stats = summarize(cells, options or StatsOptions())
    out_dir.mkdir(parents=True, exist_ok=True)
    header = columns(rows)
    paths = {
        "csv": out_dir / "report.csv",
        "markdown": out_dir / "report.md",
        "json": out_dir / "report.json",
    }
    paths["json"].write_text(json.dumps(rows, indent=2))
    _write_csv(paths["csv"], rows, header)
    statistics = stats_markdown(stats)
    paths["markdown"].write_text(markdown_table(rows, header) + "\n" + statistics)
    paths.update(write_stats(stats, item_rows(cells), statistics, out_dir))
    paths.update(plot_runs(rows, out_dir))
    paths.update(plot_statistics(stats, out_dir))
    return paths


def _write_csv(path: Path, rows: list[dict[str, Any]], header: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: list[dict[str, Any]], header: list[str]) -> str:
    blocks = []
    for (task, backbone), group in _groups(rows, ("task", "backbone")).items():
        used = [h for h in header if any(r.get(h) is not None for r in group)]
        used = [h for h in used if h not in ("task", "backbone")]
        lines = [
            f"### {task} — {backbone}",
            "",
            "| " + " | ".join(used) + " |",
            "|" + "---|" * len(used),
        ]
        for row in group:
            lines.append("| " + " | ".join(_cell(row.get(h)) for h in used) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _groups(rows, keys) -> dict[tuple, list[dict[str, Any]]]:
    grouped: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[tuple(row[k] for k in keys)].append(row)
    return grouped


def _series_label(row: dict[str, Any]) -> str:
    """``ltbm (w=1)``, ``prune (norm)``, ``segment_topk (attention S=10)``, ``ltbm (w=1)
    size-aware``: the method, then its parameters (:func:`ltbm.report.items.cell_label`)
    in brackets."""
    method, _, params = row["label"].partition(" ")
    label = f"{method} ({params})" if params else method
    return label + (" size-aware" if row.get("size_aware") else "")


def plot_runs(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Per task and backbone: the primary metric against keep ratio, one line per method
    (the uncompressed run as a dashed level), and LTBM beside Global at each ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for (task, backbone), group in _groups(rows, ("task", "backbone")).items():
        metric = PRIMARY_METRIC.get(group[0]["kind"])
        if metric is None or not any(metric in r for r in group):
            continue
        figure, (lines_axis, pair_axis) = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
        _plot_lines(lines_axis, group, metric)
        _plot_pairs(pair_axis, group, metric)
        figure.suptitle(f"{task} — {backbone}")
        path = out_dir / f"{task}_{backbone}_{metric}.png".replace("/", "_")
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths[f"plot:{task}:{backbone}"] = path
    return paths


def _plot_lines(axis, group, metric) -> None:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in group:
        if metric in row:
            series[_series_label(row)].append((row["keep_ratio"], row[metric]))
    baseline = series.pop("none", None)
    if baseline:
        axis.axhline(baseline[0][1], linestyle="--", color="grey", label="uncompressed")
    shifts = nudges(len(series), [ratio for points in series.values() for ratio, _ in points])
    for index, (label, points) in enumerate(sorted(series.items())):
        points.sort()
        ratios = [ratio + shifts[index] for ratio, _ in points]
        axis.plot(ratios, [value for _, value in points], label=label, **series_style(index))
    axis.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    keep_ratio_axis(axis)
    legend_below(axis)
    axis.set_title(f"{metric} vs keep ratio")


def _plot_pairs(axis, group, metric) -> None:
    """LTBM (best window per ratio) next to Global Merge at each keep ratio, the ratios in
    the lines panel's direction; a method without cells gets no bars and no legend entry.
    Both as the paper runs them (size weighting, plain attention): a size-aware or
    attention-weighted cell would credit its variant's effect to locality (the lines panel
    shows the variants)."""
    pick = min if metric in LOWER_IS_BETTER else max
    group = [r for r in group if not r.get("size_aware") and r.get("weighting") is None]
    ratios = sorted({r["keep_ratio"] for r in group if r["method"] in ("ltbm", "global")})
    ratios.reverse()  # as the lines panel: less kept to the right

    def values(method: str, choose) -> list[float]:
        heights = []
        for q in ratios:
            found = [
                r[metric]
                for r in group
                if r["method"] == method and r["keep_ratio"] == q and metric in r
            ]
            heights.append(choose(found) if found else math.nan)
        return heights

    bars = {
        "ltbm (best window)": values("ltbm", pick),
        "global": values("global", lambda v: v[0]),
    }
    bars = {k: v for k, v in bars.items() if any(not math.isnan(x) for x in v)}
    axis.set_title("locality: ltbm vs global")
    if not bars:
        axis.text(0.5, 0.5, "no ltbm or global cells", ha="center", transform=axis.transAxes)
        axis.set_xticks([])
        return
    width = 0.8 / len(bars)
    for index, (label, heights) in enumerate(bars.items()):
        offset = (index - (len(bars) - 1) / 2) * width
        positions = [p + offset for p in range(len(ratios))]
        axis.bar(positions, heights, width=width, label=label, color=COLOURS[index])
    axis.set_xticks(list(range(len(ratios))), [f"{q:g}" for q in ratios])
    axis.set_xlabel("keep ratio (stronger compression →)")
    axis.set_ylabel(metric)
    legend_below(axis)
