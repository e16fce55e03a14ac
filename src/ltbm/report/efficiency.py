"""The report's efficiency columns (prefill time, time to first token, memory), joined from
``ltbm bench`` files, with their provenance in the row.

A bench file measures one backbone under one identity (device, dtype, checkpoint, attention
kernel, protocol, versions; see :func:`ltbm.run.bench.bench_identity`) at one or more audio
lengths. Figures of one backbone measured under two conditions would make its rows compare
an H100 with a CPU, or 30 s with 600 s of audio, without a word; so all figures joined for
one backbone must share one condition, or the report is refused, naming the two files and
the setting that differs, and ``--bench`` chooses. Each row then names the file, device,
batch size and audio length its figures come from.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltbm.run.evaluate import LATER_PARAMETERS
from ltbm.run.identity import differences

EFFICIENCY_FIELDS = ("prefill_ms", "ttft_ms", "peak_memory_mib", "kv_cache_mib")
PROVENANCE_FIELDS = ("bench_file", "bench_device", "bench_batch", "bench_seconds")
"""Where a row's efficiency figures come from: the bench file (relative to the report's
folder), the device it measured on, and the batch size and audio length of the cell."""

CELL_KEYS = ("method", "keep_ratio", "batch_size", "audio_seconds")
CHOOSE = "choose the bench file(s) with `ltbm report RUNS --bench PATH`"


@dataclass(frozen=True)
class Measurement:
    """One measured cell of a bench file, with the file's measuring conditions."""

    file: str
    identity: dict[str, Any]
    cell: dict[str, Any]
    parameters: int | None = None
    """The measured model's size (None in files of an older ltbm: then it joins no row)."""

    @property
    def backbone(self) -> str:
        return self.identity.get("backbone")

    @property
    def key(self) -> tuple:
        """What a report row must share with the cell: backbone, model size (a tiny random
        architecture and a 7B checkpoint are one backbone name) and the cell's settings."""
        return (self.backbone, self.parameters, *cell_settings(self.cell))

    @property
    def conditions(self) -> dict[str, Any]:
        """Everything the figures depend on besides the cell and its batch size."""
        return {**self.identity, "audio_seconds": self.cell["audio_seconds"]}


def cell_settings(cell: dict[str, Any]) -> tuple:
    """Method, keep ratio, every parameter a report row or bench cell may name, and whether
    attention is size-aware (its bias changes the prefill a bench times; ``ltbm bench``
    measures without it, so a size-aware run takes no figures)."""
    names = ("window", "scorer", *LATER_PARAMETERS)
    sized = bool(cell.get("size_aware"))
    return (cell["method"], cell["keep_ratio"], *(cell.get(k) for k in names), sized)


def row_key(row: dict[str, Any]) -> tuple:
    """A row's side of :attr:`Measurement.key`. A run whose size is unknown (its metrics
    file was written by an older ltbm) matches nothing: figures of an unknown size are
    left out rather than attached to a model of another size."""
    size = row.get("parameters")
    return (row["backbone"], size if size is not None else "unknown", *cell_settings(row))


def join_efficiency(
    rows: list[dict[str, Any]],
    runs_dirs: Sequence[Path],
    report_dir: Path,
    bench: Sequence[Path] | None = None,
) -> None:
    """Add the efficiency figures and their provenance to ``rows``, from the ``bench``
    files given, or else from every ``bench*.json`` under ``runs_dirs``."""
    chosen = bool(bench)
    paths = list(bench) if bench else _found(runs_dirs)
    wanted = {row_key(row) for row in rows}
    measurements = []
    for path in paths:
        matching = [m for m in read_bench(path, report_dir) if m.key in wanted]
        if chosen and not matching:
            raise ValueError(
                f"--bench {path} measures no cell of the reported runs (backbone, model "
                "size in parameters, method, keep ratio and the method's parameters must "
                "match a run); pass a bench file of this report's model and cells (a tiny "
                "--random-weights architecture describes no full-size run). A file or run "
                "made by an older ltbm records no size: run the same bench or eval command "
            )
        measurements += matching
    _check_one_condition(measurements)
    offers: dict[tuple, list[Measurement]] = defaultdict(list)
    for measurement in measurements:
        offers[measurement.key].append(measurement)
    for row in rows:
        if row_key(row) in offers:
            row.update(_figures(_pick(offers[row_key(row)])))


def _pick(offers: list[Measurement]) -> Measurement:
    """The smallest batch (batch 1 is what one request costs); among figures measured
    twice under the same conditions (a rerun), the newer run by the time stamp each cell
    records; then the first file name, so the pick never depends on the order the files
    were found in."""
    batch = min(m.cell["batch_size"] for m in offers)
    offers = [m for m in offers if m.cell["batch_size"] == batch]
    newest = max(str(m.cell.get("run", "")) for m in offers)
    return min((m for m in offers if str(m.cell.get("run", "")) == newest), key=lambda m: m.file)


def _found(runs_dirs: Sequence[Path]) -> list[Path]:
    """Bench files under the runs folders, each once (a folder may lie inside another)."""
    unique = {path.resolve(): path for folder in runs_dirs for path in folder.rglob("bench*.json")}
    return [unique[key] for key in sorted(unique)]


def read_bench(path: Path, report_dir: Path) -> list[Measurement]:
    """The measured (not out-of-memory) cells of one bench file."""
    if not path.is_file():
        raise FileNotFoundError(f"no bench file at {path}; check the --bench path")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {_way_out(path)}") from None
    problem = _bench_problem(payload)
    if problem:
        raise ValueError(f"{path} is not a bench file of this ltbm ({problem}); {_way_out(path)}")
    name = os.path.relpath(path.resolve(), report_dir.resolve())
    size = payload.get("parameters")
    size = size if isinstance(size, int) and not isinstance(size, bool) else None
    return [
        Measurement(name, payload["identity"], cell, size)
        for cell in payload["cells"]
        if "error" not in cell
    ]


def _way_out(path: Path) -> str:
    return (
        f"measure again with `ltbm bench --fresh --out {path}`, move it out of the runs "
        f"folder, or {CHOOSE}"
    )


def _bench_problem(payload: Any) -> str | None:
    """What keeps a parsed file from being joined (None when nothing does)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("cells"), list):
        return "not a JSON object whose 'cells' are a list"
    identity = payload.get("identity")
    if not isinstance(identity, dict) or not isinstance(identity.get("backbone"), str):
        return "no 'identity' naming its backbone and device: an older ltbm wrote it"
    for cell in payload["cells"]:
        if not isinstance(cell, dict) or any(k not in cell for k in CELL_KEYS):
            return f"a cell lacks one of {', '.join(CELL_KEYS)}"
    return None


def _check_one_condition(measurements: list[Measurement]) -> None:
    """Refuse figures of one backbone measured under two conditions."""
    first: dict[str, Measurement] = {}
    for measurement in measurements:
        seen = first.setdefault(measurement.backbone, measurement)
        found = differences(
            seen.conditions, measurement.conditions, labels=("in the first", "in the second")
        )
        if found:
            files = (
                f"{seen.file} holds {measurement.backbone} figures"
                if seen.file == measurement.file
                else f"{seen.file} and {measurement.file} hold {measurement.backbone} figures"
            )
            raise ValueError(
                f"{files} measured under other conditions ({'; '.join(found[:4])}), so one "
                f"report cannot show both; {CHOOSE} (a file of one audio length: "
                "`ltbm bench --seconds S`)"
            )


def _figures(measurement: Measurement) -> dict[str, Any]:
    cell = measurement.cell
    figures = {field: cell[field] for field in EFFICIENCY_FIELDS if field in cell}
    provenance = (
        measurement.file,
        measurement.identity.get("device_name") or measurement.identity.get("device"),
        cell["batch_size"],
        cell["audio_seconds"],
    )
    return {**figures, **dict(zip(PROVENANCE_FIELDS, provenance, strict=True))}
