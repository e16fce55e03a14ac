"""The report's statistics as pictures: per condition, each cell's metric against the keep
ratio with its interval, and each paired difference with its interval beside a zero line,
so a reader sees at a glance which differences the data can tell from noise."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ltbm.report.tables import by_condition


def plot_statistics(stats: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """One figure per condition; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    differences = by_condition(stats["differences"])
    paths = {}
    for key, cells in by_condition(stats["cells"]).items():
        if not any(c["interval"] for c in cells):
            continue
        condition = json.loads(key)
        figure, (cells_axis, differences_axis) = plt.subplots(1, 2, figsize=(11, 4))
        _plot_cells(cells_axis, cells)
        _plot_differences(differences_axis, differences.get(key, []))
        rate = f" @ {condition['frame_rate_hz']:g} Hz" if condition["frame_rate_hz"] else ""
        level = f"{stats['options']['level']:.0%}"
        figure.suptitle(f"{condition['task']} — {condition['backbone']}{rate} ({level} intervals)")
        figure.tight_layout()
        hz = f"_{condition['frame_rate_hz']:g}hz" if condition["frame_rate_hz"] else ""
        name = f"{condition['task']}_{condition['backbone']}{hz}_{cells[0]['metric']}_intervals"
        path = out_dir / (_safe(name) + ".png")
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths[f"intervals:{condition['task']}:{condition['backbone']}{rate}"] = path
    return paths


def _plot_cells(axis, cells: list[dict[str, Any]]) -> None:
    series: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for cell in cells:
        if cell["interval"]:
            series[cell["label"]].append((cell["keep_ratio"], cell["interval"]))
    baseline = series.pop("none", None)
    if baseline:
        interval = baseline[0][1]
        axis.axhline(interval["estimate"], linestyle="--", color="grey", label="uncompressed")
        axis.axhspan(interval["low"], interval["high"], color="grey", alpha=0.15)
    _errorbars(axis, series)
    metric = cells[0]["metric"]
    axis.set_xlabel("keep ratio")
    axis.set_ylabel(metric + (" (lower is better)" if cells[0]["lower_is_better"] else ""))
    axis.invert_xaxis()
    axis.legend(fontsize=8)
    axis.set_title(f"{metric} vs keep ratio")


def _plot_differences(axis, rows: list[dict[str, Any]]) -> None:
    series: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for row in rows:
        if row["difference"]:
            series[f"{row['a']} − {row['b']}"].append((row["keep_ratio"], row["difference"]))
    axis.axhline(0.0, color="black", linewidth=0.8)
    _errorbars(axis, series)
    axis.set_xlabel("keep ratio")
    if rows:
        better = "below 0: A better" if rows[0]["lower_is_better"] else "above 0: A better"
        axis.set_ylabel(f"A − B ({better})")
    if series:
        axis.invert_xaxis()
        axis.legend(fontsize=8)
    axis.set_title("paired differences")


def _errorbars(axis, series: dict[str, list[tuple[float, dict]]]) -> None:
    """One line with interval bars per series, each nudged sideways so that bars at the
    same keep ratio do not hide each other."""
    step = 0.004
    for index, (label, points) in enumerate(sorted(series.items())):
        points.sort(key=lambda point: point[0])
        shift = (index - (len(series) - 1) / 2) * step
        estimates = [i["estimate"] for _, i in points]
        below = [i["estimate"] - i["low"] for _, i in points]
        above = [i["high"] - i["estimate"] for _, i in points]
        ratios = [ratio + shift for ratio, _ in points]
        axis.errorbar(ratios, estimates, yerr=[below, above], marker="o", capsize=3, label=label)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in name)
