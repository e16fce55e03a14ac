"""The report's efficiency columns: joined from `ltbm bench` files with their provenance,
refused when two measuring conditions would meet in one backbone's rows, chosen with
``--bench``. The bench file is written by the real `ltbm bench` on a tiny architecture; its
variants (another device, a rerun, another audio length) are that file with the one
setting changed, as a GPU or a second run would have written it."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from test_report import asr_records, write_cell
from tiny_models import tiny_bench_args
from typer.testing import CliRunner

from ltbm.cli import app
from ltbm.report.build import write_report
from ltbm.report.stats import StatsOptions
from ltbm.run.evaluate import Cell
from ltbm.run.records import write_json_atomic

FAST = StatsOptions(resamples=200)
H100 = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "dtype": "bfloat16"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory, single_thread) -> dict:
    """A real bench of ltbm and prune at batch 1 and 2 (ratio 1 measures `none`)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = tiny_bench_args(out, "qwen2-audio", "ltbm,prune", "1,0.25", "1,2", "3")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.fixture()
def runs(tmp_path: Path, measured: dict) -> Path:
    """Finished qwen2-audio runs of the benched architecture's size: `none` and ltbm w=1
    were benched, pool was not."""
    root = tmp_path / "runs"
    for cell in (Cell("none", 1.0), Cell("ltbm", 0.25, window=1), Cell("pool", 0.25)):
        write_cell(root, cell, asr_records({}), backbone="qwen2-audio")
    return sized(root, measured["parameters"])


def sized(root: Path, parameters: int | None) -> Path:
    """The runs under ``root`` as a model of ``parameters`` parameters wrote them (the
    harness records the size in each metrics file's ``backbone_details``)."""
    for path in root.rglob("metrics.json"):
        metrics = json.loads(path.read_text())
        metrics["backbone_details"]["parameters"] = parameters
        write_json_atomic(path, metrics)
    return root


def place(payload: dict, path: Path, **changes) -> Path:
    """``payload`` written to ``path`` with identity settings changed, as a bench with
    those settings writes them (top level and identity alike)."""
    changed = copy.deepcopy(payload)
    changed.update({k: v for k, v in changes.items() if k in changed})
    changed["identity"].update(changes)
    write_json_atomic(path, changed)
    return path


def bench_cell(payload: dict, method: str, batch: int) -> dict:
    return next(c for c in payload["cells"] if c["method"] == method and c["batch_size"] == batch)


def report_rows(folder: Path) -> dict[str, dict]:
    rows = json.loads((folder / "report.json").read_text())
    return {row["method"]: row for row in rows}


def report(*args: str):
    result = CliRunner().invoke(app, ["report", *args, "--resamples", "200"])
    return result, " ".join(result.output.split())


def test_one_bench_file_joins_with_its_provenance(runs, measured):
    place(measured, runs / "bench.json")
    write_report(runs, options=FAST)
    rows = report_rows(runs)
    for method in ("none", "ltbm"):
        batch_1 = bench_cell(measured, method, 1)
        assert batch_1["prefill_ms"] != bench_cell(measured, method, 2)["prefill_ms"]
        row = rows[method]
        for field in ("prefill_ms", "ttft_ms", "peak_memory_mib", "kv_cache_mib"):
            assert row[field] == batch_1[field], field
        assert (row["bench_file"], row["bench_device"], row["bench_batch"]) == (
            "bench.json",
            "cpu",
            1,
        )
        assert row["bench_seconds"] == 3.0
    assert not {"prefill_ms", "bench_file"} & set(rows["pool"])
    with (runs / "report.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header[-5:] == [
        "kv_cache_mib",
        "bench_file",
        "bench_device",
        "bench_batch",
        "bench_seconds",
    ]
    assert "| bench.json | cpu | 1 | 3 |" in (runs / "report.md").read_text()


def test_a_size_aware_run_takes_no_figures_measured_without_it(runs, measured):
    """ltbm bench times plain attention; the size-aware bias changes the prefill, so the
    plain cell's figures must not fill the size-aware row beside it."""
    aware = Cell("ltbm", 0.25, window=1, size_aware=True)
    write_cell(runs, aware, asr_records({}), backbone="qwen2-audio")
    sized(runs, measured["parameters"])
    place(measured, runs / "bench.json")
    write_report(runs, options=FAST)
    rows = json.loads((runs / "report.json").read_text())
    [plain] = [r for r in rows if r["method"] == "ltbm" and not r.get("size_aware")]
    [sized_row] = [r for r in rows if r.get("size_aware")]
    assert plain["bench_file"] == "bench.json"
    assert not {"prefill_ms", "bench_file"} & set(sized_row)


def test_without_bench_files_the_report_has_no_efficiency_columns(runs):
    write_report(runs, options=FAST)
    with (runs / "report.csv").open() as handle:
        header = next(csv.reader(handle))
    assert not {"prefill_ms", "kv_cache_mib", "bench_file", "bench_device"} & set(header)


def test_two_devices_are_refused_naming_both_files_and_the_setting(runs, measured):
    place(measured, runs / "bench.json")
    place(measured, runs / "gpu" / "bench-h100.json", **H100)
    result, output = report(str(runs))
    assert result.exit_code == 2, output
    assert "bench.json and gpu/bench-h100.json hold qwen2-audio figures" in output
    assert 'device_name: "cpu" in the first, "NVIDIA H100 80GB HBM3" in the second' in output
    assert "--bench PATH" in output and "Traceback" not in output
    assert not (runs / "report.json").exists()


def test_bench_chooses_the_file_and_nothing_else_is_searched(runs, measured):
    place(measured, runs / "bench.json")
    chosen = place(measured, runs / "gpu" / "bench-h100.json", **H100)
    result, output = report(str(runs), "--bench", str(chosen))
    assert result.exit_code == 0, output
    row = report_rows(runs)["ltbm"]
    assert (row["bench_file"], row["bench_device"]) == ("gpu/bench-h100.json", H100["device_name"])


def test_a_bench_file_outside_the_runs_is_named_relative_to_the_report(runs, measured, tmp_path):
    chosen = place(measured, tmp_path / "elsewhere" / "h100.json", **H100)
    write_report(runs, tmp_path / "out", FAST, bench=[chosen])
    assert report_rows(tmp_path / "out")["none"]["bench_file"] == "../elsewhere/h100.json"


def test_a_rerun_under_the_same_conditions_gives_the_newer_figures(runs, measured):
    newer = copy.deepcopy(measured)
    for cell in newer["cells"]:
        cell["run"] = "2999-01-01T00:00:00"
        cell["prefill_ms"] *= 2
    place(measured, runs / "bench-0.json")  # found first, measured earlier
    place(newer, runs / "bench.json")
    write_report(runs, options=FAST)
    row = report_rows(runs)["ltbm"]
    assert row["bench_file"] == "bench.json"
    assert row["prefill_ms"] == bench_cell(newer, "ltbm", 1)["prefill_ms"]


def test_two_audio_lengths_for_one_backbone_are_refused(runs, measured):
    longer = copy.deepcopy(measured)
    longer["cells"] += [{**cell, "audio_seconds": 600.0} for cell in measured["cells"]]
    place(longer, runs / "bench.json")
    result, output = report(str(runs))
    assert result.exit_code == 2, output
    assert "bench.json holds qwen2-audio figures measured under other conditions" in output
    assert "audio_seconds: 3.0 in the first, 600.0 in the second" in output
    assert "ltbm bench --seconds S" in output


def test_a_bench_of_another_backbone_does_not_join(runs, measured):
    place(measured, runs / "bench.json", backbone="audioflamingo3")
    write_report(runs, options=FAST)
    assert "bench_file" not in report_rows(runs)["ltbm"]


def test_figures_of_another_model_size_do_not_join(runs, measured):
    """A tiny random architecture's figures never describe the runs of the full-size model
    (one backbone name, one cell), nor runs whose size an older ltbm did not record."""
    place(measured, runs / "bench.json")
    full_size = measured["parameters"] * 1000
    sized(runs, full_size)
    write_report(runs, options=FAST)
    rows = report_rows(runs)
    assert rows["ltbm"]["parameters"] == full_size and "bench_file" not in rows["ltbm"]
    result, output = report(str(runs), "--bench", str(runs / "bench.json"))
    assert result.exit_code == 2 and "model size in parameters" in output, output
    sized(runs, None)
    write_report(runs, options=FAST)
    assert "bench_file" not in report_rows(runs)["ltbm"]
    place({**measured, "parameters": full_size}, runs / "bench.json")
    sized(runs, full_size)
    write_report(runs, options=FAST)
    assert report_rows(runs)["ltbm"]["bench_file"] == "bench.json"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not valid JSON"),
        ('{"cells": []}', "no 'identity' naming its backbone and device: an older ltbm"),
        ('{"cells": 3}', "not a JSON object whose 'cells' are a list"),
    ],
)
def test_a_damaged_bench_file_is_named_with_the_way_out(runs, content, message):
    (runs / "bench.json").write_text(content)
    result, output = report(str(runs))
    assert result.exit_code == 2, output
    assert "bench.json is not" in output and message in output and "--bench" in output


def test_bench_refuses_a_missing_file_or_one_of_no_reported_cell(runs, measured, tmp_path):
    result, output = report(str(runs), "--bench", str(tmp_path / "none.json"))
    assert result.exit_code == 2 and "no bench file at" in output, output
    other = place(measured, tmp_path / "af3.json", backbone="audioflamingo3")
    result, output = report(str(runs), "--bench", str(other))
    assert result.exit_code == 2 and "measures no cell of the reported runs" in output, output


def test_two_runs_folders_share_one_condition(runs, measured, tmp_path):
    """The join spans every folder of one report, so two folders cannot each bring a device."""
    other = tmp_path / "other"
    write_cell(other, Cell("global", 0.25), asr_records({}), backbone="qwen2-audio")
    place(measured, runs / "bench.json")
    place({**measured, "cells": []}, other / "bench.json", **H100)  # matches no row: ignored
    result, output = report(str(runs), str(other), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, output
    place(measured, other / "bench.json", **H100)
    result, output = report(str(runs), str(other), "--out", str(tmp_path / "out2"))
    assert result.exit_code == 2 and "../other/bench.json and ../runs/bench.json" in output, output
