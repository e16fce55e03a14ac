"""`ltbm report`'s plots: every legend entry has data, every keep-ratio axis runs the same
way (less kept to the right), and series that coincide stay distinguishable."""

from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ltbm.report.build import _plot_lines, _plot_pairs  # noqa: E402
from ltbm.report.items import cell_label  # noqa: E402
from ltbm.report.plots import _plot_cells, _plot_differences, nudges, series_style  # noqa: E402


def row(method: str, keep: float, wer: float, window: int | None = None) -> dict:
    cell = {"method": method, "keep_ratio": keep, "window": window, "scorer": None}
    return {**cell, "wer": wer, "label": cell_label(cell)}


@pytest.fixture()
def axis():
    figure, axis = plt.subplots()
    yield axis
    plt.close(figure)


def legend_texts(axis) -> list[str]:
    legend = axis.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_pair_panel_without_ltbm_or_global_has_no_legend(axis):
    _plot_pairs(axis, [row("none", 1.0, 0.1), row("pool", 0.5, 0.2)], "wer")
    assert legend_texts(axis) == [] and not axis.patches


def test_pair_panel_shows_only_methods_with_cells_in_the_lines_direction(axis):
    group = [row("global", q, 0.1 + q) for q in (0.25, 0.5, 0.1)]
    _plot_pairs(axis, group, "wer")
    assert legend_texts(axis) == ["global"]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0.5", "0.25", "0.1"]


def test_pair_panel_compares_the_plain_cells_only(axis):
    """A size-aware or attention-weighted cell is another variant, not another window: it
    must not stand in for ltbm's best window or for global."""
    aware = {**row("global", 0.5, 0.05), "size_aware": True}
    weighted = {**row("ltbm", 0.5, 0.01, window=1), "weighting": "attention"}
    group = [aware, row("global", 0.5, 0.3), weighted, row("ltbm", 0.5, 0.2, window=2)]
    _plot_pairs(axis, group, "wer")
    assert legend_texts(axis) == ["ltbm (best window)", "global"]
    assert sorted(bar.get_height() for bar in axis.patches) == [0.2, 0.3]


def test_lines_coinciding_are_told_apart_and_the_axis_is_reversed(axis):
    group = [row("none", 1.0, 0.05)]
    for keep in (0.5, 0.25):
        group += [row("global", keep, 0.2), row("ltbm", keep, 0.2, window=1)]
    _plot_lines(axis, group, "wer")
    assert axis.xaxis_inverted()
    assert legend_texts(axis) == ["uncompressed", "global", "ltbm (w=1)"]
    first, second = axis.get_lines()[1:]
    assert (first.get_marker(), first.get_linestyle()) != (
        second.get_marker(),
        second.get_linestyle(),
    )
    assert list(first.get_xdata()) != list(second.get_xdata())  # nudged apart
    assert first.get_color() != second.get_color()


def interval(estimate: float) -> dict:
    return {"estimate": estimate, "low": estimate - 0.01, "high": estimate + 0.01}


def test_interval_panels_read_the_same_way_and_label_only_data():
    figure, (cells_axis, differences_axis) = plt.subplots(1, 2)
    cells = [
        {"label": label, "keep_ratio": keep, "interval": interval(0.2), "metric": "wer"}
        | {"lower_is_better": True}
        for label in ("global", "ltbm w=1")
        for keep in (0.5, 0.25)
    ]
    cells.append(
        {"label": "pool", "keep_ratio": 0.5, "interval": None, "metric": "wer"}
        | {"lower_is_better": True}
    )
    _plot_cells(cells_axis, cells)
    _plot_differences(differences_axis, [])
    assert cells_axis.xaxis_inverted() and differences_axis.xaxis_inverted()
    assert legend_texts(cells_axis) == ["global", "ltbm w=1"]  # pool has no interval
    assert legend_texts(differences_axis) == []
    plt.close(figure)


def test_nudges_stay_within_a_fifth_of_the_narrowest_gap():
    shifts = nudges(4, [0.5, 0.25, 0.15, 0.15])
    assert shifts == pytest.approx([-0.01, -0.01 / 3, 0.01 / 3, 0.01])
    assert nudges(1, [0.5]) == [0.0]


def test_the_first_ninety_series_styles_are_distinct():
    styles = {tuple(series_style(i).values()) for i in range(90)}
    assert len(styles) == 90


def test_bench_plot_reads_the_keep_ratio_the_same_way(tmp_path, monkeypatch):
    from ltbm.run.bench import plot_bench

    monkeypatch.setattr(plt, "close", lambda figure: None)  # keep the figure for a look
    rows = [
        {"method": method, "keep_ratio": keep, "batch_size": 1, "audio_seconds": 30.0}
        | {"prefill_ms": 10 * keep, "ideal_prefill_ms": 9 * keep, "kv_cache_mib": keep}
        for method, keep in (("none", 1.0), ("ltbm", 0.5), ("ltbm", 0.25))
    ]
    plot_bench(rows, tmp_path / "bench.png")
    figure = plt.gcf()
    assert (tmp_path / "bench.png").is_file()
    assert all(axis.xaxis_inverted() for axis in figure.axes)
    monkeypatch.undo()
    plt.close(figure)


def test_many_long_legend_entries_fit_in_the_figure(tmp_path, monkeypatch):
    """A study of eight cells and seventeen paired differences (labels such as
    ``adaptive_diverse t=0.9 attention-weighted − ltbm w=1 size-aware``): both legends lie
    inside the saved figure and the panels keep their size."""
    from ltbm.report.plots import plot_statistics

    condition = {"task": "speech", "kind": "asr", "backbone": "whisper-hf", "frame_rate_hz": 50}
    labels = ["none", "pool", "global", "global size-aware", "ltbm w=1", "ltbm w=1 size-aware"]
    labels += ["segment_topk attention S=10", "adaptive_diverse t=0.9 attention-weighted"]
    common = {"condition": condition, "metric": "wer", "lower_is_better": True}
    cells = [
        common
        | {"label": label, "keep_ratio": 1.0 if label == "none" else 0.15}
        | {"interval": interval(0.1 * index)}
        for index, label in enumerate(labels)
    ]
    differences = [
        common | {"a": a, "b": b, "keep_ratio": 0.15, "difference": interval(0.01 * index)}
        for index, (a, b) in enumerate((a, b) for a in labels[1:] for b in labels[1:4] if a != b)
    ][:17]
    stats = {"options": {"level": 0.95}, "cells": cells, "differences": differences}
    monkeypatch.setattr(plt, "close", lambda figure: None)  # keep the figure for a look
    [path] = plot_statistics(stats, tmp_path).values()
    figure = plt.gcf()
    monkeypatch.undo()
    renderer = figure.canvas.get_renderer()
    inside = figure.bbox
    for axis in figure.axes:
        legend = axis.get_legend().get_window_extent(renderer)
        assert inside.x0 - 1 <= legend.x0 and legend.x1 <= inside.x1 + 1
        assert inside.y0 - 1 <= legend.y0 and legend.y1 <= inside.y1 + 1
        assert axis.get_position().height > 0.25  # the data keeps a quarter of the figure
    assert path.is_file()
    plt.close(figure)
