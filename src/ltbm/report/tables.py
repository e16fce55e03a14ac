"""The report's statistics as text: markdown tables to read, JSON and CSV to reuse.

Markdown prints, per condition (task, backbone, frame rate), each cell's metric with its
interval (WER with its edit shares and failure-mode counts; MMAU with the lenient figure
beside the official one, then per task, difficulty and sub-category), then the paired
differences. JSON holds everything (:func:`ltbm.report.stats.summarize`'s output); the CSVs
are flat views of it, plus one row per item and cell for digging into single clips.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ltbm.report.items import CellItems

_PAPER_ORDER = ("sound", "music", "speech", "easy", "medium", "hard")


def stats_markdown(stats: dict[str, Any]) -> str:
    """Every condition's cell table, MMAU breakdowns and difference table."""
    options = stats["options"]
    blocks = [
        "## Statistics\n\n"
        f"Paired bootstrap over items: {options['level']:.0%} percentile intervals, "
        f"{options['resamples']} resamples, seed {options['seed']}. WER is recomputed as a "
        "ratio of sums on every resample. A − B is over the items scored in both cells; "
        "better / tie / worse counts items where A beats, equals or trails B."
    ]
    differences = by_condition(stats["differences"])
    for key, cells in by_condition(stats["cells"]).items():
        blocks.append(_condition_block(cells, differences.get(key, []), options["level"]))
    return "\n\n".join(blocks) + "\n"


def by_condition(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Cells or differences grouped by their condition (as sorted JSON, a hashable key)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[json.dumps(row["condition"], sort_keys=True)].append(row)
    return grouped


def _condition_block(
    cells: list[dict[str, Any]], differences: list[dict[str, Any]], level: float
) -> str:
    first = cells[0]
    condition, metric = first["condition"], first["metric"]
    rate = f" @ {condition['frame_rate_hz']:g} Hz" if condition["frame_rate_hz"] else ""
    order = " (lower is better)" if first["lower_is_better"] else ""
    parts = [f"### {condition['task']} — {condition['backbone']}{rate}: {metric}{order}"]
    if condition["kind"] == "mcq":
        parts.append(
            "Accuracy by MMAU's official rule on the raw output (the headline); the lenient "
            "parse (letters mapped to choices) beside it is not the headline. A failed item "
            "counts as wrong."
        )
    parts.append(_cell_table(cells, condition["kind"], f"{level:.0%} CI"))
    missing = [
        f"- {c['label']} (keep {c['keep_ratio']:g}): {c['unavailable']}"
        for c in cells
        if c["interval"] is None
    ]
    if missing:
        parts.append("Intervals not available:\n" + "\n".join(missing))
    if condition["kind"] == "mcq":
        parts.extend(_mmau_tables(cells))
    if differences:
        parts.append(_difference_table(differences, f"{level:.0%} CI"))
    return "\n\n".join(parts)


def _cell_table(cells: list[dict[str, Any]], kind: str, ci: str) -> str:
    metric = cells[0]["metric"]
    header = ["keep", "cell", _metric_name(metric), ci, "items", "failed"]
    if kind == "asr":
        header += ["S / D / I share", "early stops", "loops"]
    if kind == "mcq":
        header += ["lenient parse (%)"]
    lines = _header(header)
    for cell in cells:
        interval = cell["interval"] or {}
        row = [
            f"{cell['keep_ratio']:g}",
            cell["label"],
            _number(interval.get("estimate"), metric),
            _range(interval, metric),
            str(cell["items"]),
            str(cell["failed"]),
        ]
        if kind == "asr":
            row += _wer_columns(cell.get("wer_breakdown"))
        if kind == "mcq":
            row.append(_number((cell.get("mmau") or {}).get("accuracy_lenient"), "accuracy"))
        lines.append(_line(row))
    return "\n".join(lines)


def _wer_columns(breakdown: dict[str, Any] | None) -> list[str]:
    if not breakdown:
        return ["", "", ""]
    shares = " / ".join(
        f"{breakdown[f'share_{name}']:.0%}" for name in ("substitutions", "deletions", "insertions")
    )
    return [shares, str(breakdown["early_stops"]), str(breakdown["loops"])]


def _mmau_tables(cells: list[dict[str, Any]]) -> list[str]:
    """Accuracy (official rule, %) per task and per difficulty (rows: cells), and per
    sub-category (rows: sub-categories, columns: cells), like the paper's tables."""
    scored = [c for c in cells if c.get("mmau")]
    tables = []
    for field, title in (("task", "By task"), ("difficulty", "By difficulty")):
        names = _paper_order({g for c in scored for g in c["mmau"]["groups"][field]})
        if not names:
            continue
        lines = [f"{title} (accuracy %, official rule):", ""]
        lines += _header(["keep", "cell", *names, "all"])
        for cell in scored:
            groups = cell["mmau"]["groups"][field]
            values = [_number(groups.get(n, {}).get("accuracy"), "accuracy") for n in names]
            overall = _number(cell["interval"]["estimate"], "accuracy")
            lines.append(_line([f"{cell['keep_ratio']:g}", cell["label"], *values, overall]))
        tables.append("\n".join(lines))
    subs = sorted({g for c in scored for g in c["mmau"]["groups"]["sub_category"]})
    if subs:
        labels = [f"{c['label']} @ {c['keep_ratio']:g}" for c in scored]
        lines = ["By sub-category (accuracy %, official rule):", ""]
        lines += _header(["sub-category", "items", *labels])
        for name in subs:
            groups = [c["mmau"]["groups"]["sub_category"].get(name, {}) for c in scored]
            total = max(g.get("total", 0) for g in groups)
            values = [_number(g.get("accuracy"), "accuracy") for g in groups]
            lines.append(_line([name, str(total), *values]))
        tables.append("\n".join(lines))
    return tables


def _paper_order(names: set[str]) -> list[str]:
    """MMAU's own column order (sound, music, speech; easy, medium, hard), others after."""
    known = [n for n in _PAPER_ORDER if n in names]
    return known + sorted(names - set(known))


def _difference_table(rows: list[dict[str, Any]], ci: str) -> str:
    note = "negative favours A" if rows[0]["lower_is_better"] else "positive favours A"
    lines = [f"Differences A − B ({note}; `*`: the interval excludes 0):", ""]
    lines += _header(["keep", "A − B", "difference", ci, "A better / tie / worse", "items"])
    lines += [_difference_line(row) for row in rows]
    return "\n".join(lines)


def _difference_line(row: dict[str, Any]) -> str:
    metric, interval = row["metric"], row["difference"] or {}
    counts = "n/a" if not interval else f"{row['wins']} / {row['ties']} / {row['losses']}"
    items = str(interval.get("items", 0))
    if row["only_in_a"] + row["only_in_b"]:
        items += f" ({row['only_in_a'] + row['only_in_b']} unpaired)"
    star = " *" if row.get("excludes_zero") else ""
    return _line(
        [
            f"{row['keep_ratio']:g}",
            f"{row['a']} − {row['b']}",
            _number(interval.get("estimate"), metric, signed=True),
            _range(interval, metric, signed=True) + star,
            counts,
            items,
        ]
    )


def _metric_name(metric: str) -> str:
    return "accuracy (%)" if metric == "accuracy" else metric


def _number(value: float | None, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if metric == "accuracy":
        return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _range(interval: dict[str, Any], metric: str, signed: bool = False) -> str:
    if not interval:
        return "n/a"
    low = _number(interval["low"], metric, signed)
    high = _number(interval["high"], metric, signed)
    return f"[{low}, {high}]"


def _header(names: list[str]) -> list[str]:
    return [_line(names), "|" + "---|" * len(names)]


def _line(values: list[str]) -> str:
    return "| " + " | ".join(values) + " |"


def item_rows(cells: list[CellItems]) -> list[dict[str, Any]]:
    """One row per item and cell: its score and, for WER and MMAU, its breakdown."""
    rows = []
    for cell in cells:
        for key, score in cell.scores.items():
            rows.append(
                {
                    **cell.condition.as_dict(),
                    "cell": cell.label,
                    "keep_ratio": cell.keep_ratio,
                    "item": key,
                    "value": score.value,
                    "numerator": score.numerator,
                    "denominator": score.denominator,
                    **score.detail,
                }
            )
    return rows


def write_stats(
    stats: dict[str, Any], items: list[dict[str, Any]], markdown: str, out_dir: Path
) -> dict[str, Path]:
    """Write the statistics' markdown, JSON and CSV files; returns their paths."""
    paths = {
        "stats_markdown": out_dir / "report-stats.md",
        "stats_json": out_dir / "report-stats.json",
        "cells_csv": out_dir / "report-cells.csv",
        "differences_csv": out_dir / "report-differences.csv",
        "items_csv": out_dir / "report-items.csv",
    }
    paths["stats_markdown"].write_text(markdown)
    paths["stats_json"].write_text(json.dumps(stats, indent=2, default=str))
    _csv(paths["cells_csv"], [_flat_cell(c) for c in stats["cells"]])
    _csv(paths["differences_csv"], [_flat_difference(d) for d in stats["differences"]])
    _csv(paths["items_csv"], items)
    groups = [g for c in stats["cells"] for g in _mmau_rows(c)]
    if groups:
        paths["mmau_csv"] = out_dir / "report-mmau.csv"
        _csv(paths["mmau_csv"], groups)
    return paths


def _flat_cell(cell: dict[str, Any]) -> dict[str, Any]:
    interval = cell["interval"] or {}
    row = {
        **dict(cell["condition"]),
        "method": cell["method"],
        "keep_ratio": cell["keep_ratio"],
        "cell": cell["label"],
        "metric": cell["metric"],
        **{k: interval.get(k) for k in ("estimate", "low", "high", "level", "resamples")},
        "items": cell["items"],
        "failed": cell["failed"],
        "unavailable": cell["unavailable"],
    }
    breakdown = cell.get("wer_breakdown") or {}
    row.update({k: v for k, v in breakdown.items() if not k.endswith("_examples")})
    if cell.get("mmau"):
        row["accuracy_lenient"] = cell["mmau"]["accuracy_lenient"]
    return row


def _flat_difference(row: dict[str, Any]) -> dict[str, Any]:
    interval = row["difference"] or {}
    return {
        **dict(row["condition"]),
        "keep_ratio": row["keep_ratio"],
        "metric": row["metric"],
        "a": row["a"],
        "b": row["b"],
        **{k: interval.get(k) for k in ("estimate", "low", "high", "level", "resamples", "items")},
        "excludes_zero": row.get("excludes_zero"),
        "better": row.get("better"),
        **{k: row.get(k) for k in ("wins", "ties", "losses", "only_in_a", "only_in_b")},
        "unavailable": row["unavailable"],
    }


def _mmau_rows(cell: dict[str, Any]) -> list[dict[str, Any]]:
    if not cell.get("mmau"):
        return []
    rows = []
    for field, groups in cell["mmau"]["groups"].items():
        for name, values in groups.items():
            rows.append(
                {
                    **dict(cell["condition"]),
                    "cell": cell["label"],
                    "keep_ratio": cell["keep_ratio"],
                    "group": field,
                    "name": name,
                    **values,
                }
            )
    return rows


def _csv(path: Path, rows: list[dict[str, Any]]) -> None:
    header = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
