"""The report's statistics as pictures: per condition, each cell's metric against the keep
ratio with its interval, and each paired difference with its interval beside a zero line,
so a reader sees at a glance which differences the data can tell from noise."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ltbm.report.tables import by_condition

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<")
LINESTYLES = ("-", "--", "-.", ":")
COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
"""matplotlib's tab10. Ten colours, nine markers and four line styles: no two of the first
ninety series look alike, and lines that coincide still show each other's marks."""


def series_style(index: int) -> dict[str, str]:
    """The colour, marker and line style of the ``index``-th series of a panel."""
    return {
        "color": COLOURS[index % len(COLOURS)],
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
    }


def nudges(count: int, ratios: list[float]) -> list[float]:
    """Sideways offsets, in keep-ratio units, for ``count`` series drawn at ``ratios``: spread
    over a fifth of the narrowest gap between two ratios, so points at one ratio stay apart
    and never drift toward the next one."""
    distinct = sorted(set(ratios))
    gaps = [b - a for a, b in zip(distinct[:-1], distinct[1:], strict=True)]
    spread = (min(gaps) if gaps else 0.1) / 5
    step = spread / max(count - 1, 1)
    return [(index - (count - 1) / 2) * step for index in range(count)]


def keep_ratio_axis(axis) -> None:
    """The keep-ratio axis of every ltbm plot: less kept to the right (stronger compression
    further along), so all panels read the same way."""
    axis.set_xlabel("keep ratio (stronger compression →)")
    if not axis.xaxis_inverted():
        axis.invert_xaxis()


LEGEND_ROW_INCHES = 0.15
"""Height of one legend row at font size 7, for growing the figure under its legends."""


def legend_columns(labels: list[str]) -> int:
    """Columns that fit labels of this length under a 5.5-inch panel at font size 7 (a
    paired difference's label such as ``adaptive_diverse t=0.9 attention-weighted − ltbm w=1
    size-aware`` needs the whole width)."""
    longest = max((len(label) for label in labels), default=0)
    return 3 if longest <= 20 else 2 if longest <= 36 else 1


def legend_below(axis) -> int:
    """A legend under the panel, outside the data, for the series drawn with a label (none
    when nothing was drawn, so no entry stands for missing data); returns its rows."""
    handles, labels = axis.get_legend_handles_labels()
    if not handles:
        return 0
    columns = min(legend_columns(labels), len(handles))
    axis.legend(
        handles,
        labels,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=columns,
        frameon=False,
    )
    return -(-len(handles) // columns)


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
        figure, (cells_axis, differences_axis) = plt.subplots(
            1, 2, figsize=(11, 5), layout="constrained"
        )
        rows = max(
            _plot_cells(cells_axis, cells),
            _plot_differences(differences_axis, differences.get(key, [])),
        )
        figure.set_size_inches(11, 5 + LEGEND_ROW_INCHES * rows)  # the legends, not the data
        rate = f" @ {condition['frame_rate_hz']:g} Hz" if condition["frame_rate_hz"] else ""
        level = f"{stats['options']['level']:.0%}"
        figure.suptitle(f"{condition['task']} — {condition['backbone']}{rate} ({level} intervals)")
        hz = f"_{condition['frame_rate_hz']:g}hz" if condition["frame_rate_hz"] else ""
        name = f"{condition['task']}_{condition['backbone']}{hz}_{cells[0]['metric']}_intervals"
        path = out_dir / (_safe(name) + ".png")
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths[f"intervals:{condition['task']}:{condition['backbone']}{rate}"] = path
    return paths


def _plot_cells(axis, cells: list[dict[str, Any]]) -> int:
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
    axis.set_ylabel(metric + (" (lower is better)" if cells[0]["lower_is_better"] else ""))
    keep_ratio_axis(axis)
    axis.set_title(f"{metric} vs keep ratio")
    return legend_below(axis)


def _plot_differences(axis, rows: list[dict[str, Any]]) -> int:
    series: dict[str, list[tuple[float, dict]]] = defaultdict(list)
    for row in rows:
        if row["difference"]:
            series[f"{row['a']} − {row['b']}"].append((row["keep_ratio"], row["difference"]))
    axis.axhline(0.0, color="black", linewidth=0.8)
    _errorbars(axis, series)
    if rows:
        better = "below 0: A better" if rows[0]["lower_is_better"] else "above 0: A better"
        axis.set_ylabel(f"A − B ({better})")
    if not series:
        axis.text(0.5, 0.5, "no paired differences", ha="center", transform=axis.transAxes)
    keep_ratio_axis(axis)
    axis.set_title("paired differences")
    return legend_below(axis)


def _errorbars(axis, series: dict[str, list[tuple[float, dict]]]) -> None:
    """One line with interval bars per series, each in its own colour, marker and line
    style and nudged sideways, so bars and lines at the same keep ratio do not hide each
    other."""
    shifts = nudges(len(series), [ratio for points in series.values() for ratio, _ in points])
    for index, (label, points) in enumerate(sorted(series.items())):
        points.sort(key=lambda point: point[0])
        estimates = [i["estimate"] for _, i in points]
        below = [i["estimate"] - i["low"] for _, i in points]
        above = [i["high"] - i["estimate"] for _, i in points]
        ratios = [ratio + shifts[index] for ratio, _ in points]
        axis.errorbar(
            ratios,
            estimates,
            yerr=[below, above],
            capsize=3,
            label=label,
            markersize=5,
            **series_style(index),
        )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in name)
