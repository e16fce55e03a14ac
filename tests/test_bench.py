"""`ltbm bench` end to end on CPU with the tiny architectures."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import tiny_bench_args
from typer.testing import CliRunner

from ltbm.cli import app
from ltbm.run import bench

FIELDS = {
    "method",
    "keep_ratio",
    "batch_size",
    "audio_seconds",
    "audio_tokens",
    "kept_tokens",
    "sequence_tokens",
    "prepare_ms",
    "encoder_ms",
    "compression_ms",
    "prefill_ms",
    "ideal_prefill_ms",
    "pipeline_over_ideal",
    "ttft_ms",
    "decode_tokens_per_s",
    "peak_memory_mib",
    "kv_cache_bytes",
    "kv_cache_mib",
    "kv_bytes_per_token",
}


def run_cli(
    tmp_path, backbone: str, seconds: str = "4", batches: str = "1,2", ratios: str = "1,0.25"
) -> dict:
    out = tmp_path / "bench.json"
    args = tiny_bench_args(out, backbone, "ltbm,prune", ratios, batches, seconds)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.with_suffix(".png").exists() and out.with_suffix(".md").exists()
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["qwen2-audio", "audioflamingo3"])
def test_bench_json_is_complete_and_kv_follows_tokens(tmp_path, backbone):
    payload = run_cli(tmp_path, backbone)
    cells = payload["cells"]
    assert len(cells) == 2 * (1 + 2)  # batches × (baseline + ratio × methods)
    per_token = {c["kv_bytes_per_token"] for c in cells}
    assert len(per_token) == 1, "KV bytes are exactly proportional to the sequence length"
    for cell in cells:
        assert FIELDS <= set(cell), FIELDS - set(cell)
        for key, value in cell.items():
            assert not (isinstance(value, float) and math.isnan(value)), key
        assert cell["kept_tokens"] == cell["kept_tokens_expected"]
    for batch in (1, 2):
        base = next(c for c in cells if c["method"] == "none" and c["batch_size"] == batch)
        for cell in (c for c in cells if c["batch_size"] == batch and c["method"] != "none"):
            removed = base["kept_tokens"] - cell["kept_tokens"]
            saved = base["kv_cache_bytes"] - cell["kv_cache_bytes"]
            assert saved == removed * cell["kv_bytes_per_token"]
            assert cell["sequence_tokens"] == base["sequence_tokens"] - removed


def test_multi_window_audio_flamingo_counts_every_window(tmp_path):
    payload = run_cli(tmp_path, "audioflamingo3", seconds="45", batches="1", ratios="1")
    base = next(c for c in payload["cells"] if c["method"] == "none")
    assert base["audio_tokens"] == 750 + 375  # a full 30 s window and a 15 s one


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(monkeypatch):
    pipeline = bench.load_pipeline("qwen2-audio", None, True, "tiny", "cpu", None)
    real = bench.prefill

    def fail_for_big_batches(model, embeds, mask):
        if embeds.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
        return real(model, embeds, mask)

    monkeypatch.setattr(bench, "prefill", fail_for_big_batches)
    grid = bench.BenchGrid(
        methods=("pool",),
        keep_ratios=(1.0, 0.5),
        batch_sizes=(2, 1),
        seconds=(3.0,),
        repeats=1,
        warmup=0,
        decode_tokens=2,
    )
    rows = bench.run_bench(pipeline, grid, "Generate the caption in English:", log=lambda _: None)
    assert [r.get("error") for r in rows] == ["out of memory", "out of memory", None, None]
    assert rows[3]["prefill_vs_uncompressed"] > 0


def test_kv_bytes_of_legacy_tuples():
    layer = (torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))
    assert bench.kv_cache_bytes([layer, layer]) == 4 * 40 * 4


def test_a_rerun_keeps_cells_already_measured(tmp_path):
    """A killed bench loses nothing: the JSON is rewritten after every cell, and running the
    same bench again measures only the cells it lacks."""
    out = tmp_path / "bench.json"
    runner = CliRunner()
    assert (
        runner.invoke(app, tiny_bench_args(out, methods="pool", keep_ratios="1,0.25")).exit_code
        == 0
    )
    first = {(c["method"], c["keep_ratio"]): c for c in json.loads(out.read_text())["cells"]}
    assert (
        runner.invoke(app, tiny_bench_args(out, methods="pool", keep_ratios="1,0.5,0.25")).exit_code
        == 0
    )
    second = {(c["method"], c["keep_ratio"]): c for c in json.loads(out.read_text())["cells"]}
    assert set(second) == {("none", 1.0), ("pool", 0.5), ("pool", 0.25)}
    for key in first:
        assert second[key]["prefill_ms"] == first[key]["prefill_ms"]
        assert second[key]["run"] == first[key]["run"]
    assert "prefill_vs_uncompressed" in second[("pool", 0.5)]


def test_a_rerun_under_other_measurement_settings_is_refused(tmp_path):
    """Rows are reused only under the same identity: changing the decode length (or the
    repeats, warm-up, dtype, device) names the difference; --fresh measures again."""
    out = tmp_path / "bench.json"
    runner = CliRunner()
    first = tiny_bench_args(out, methods="pool", keep_ratios="1")
    assert runner.invoke(app, first).exit_code == 0
    identity = json.loads(out.read_text())["identity"]
    assert identity["decode_tokens"] == 2 and identity["dtype"] == "float32"
    stamp = out.stat().st_mtime_ns
    changed = [*first[:-2], "--decode-tokens", "3", "--out", str(out)]
    refused = runner.invoke(app, changed)
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())
    assert "decode_tokens: 2 in the folder, 3 now" in message and "--fresh" in message
    assert out.stat().st_mtime_ns == stamp
    assert runner.invoke(app, [*changed, "--fresh"]).exit_code == 0
    assert json.loads(out.read_text())["identity"]["decode_tokens"] == 3


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--decode-tokens", "1", "--decode-tokens must be ≥ 2"),
        ("--repeats", "0", "--repeats ≥ 1"),
        ("--batch-sizes", "0", "--batch-sizes must be whole numbers ≥ 1"),
        ("--seconds", "-3", "--seconds must lie in (0, 600]"),
        ("--dtype", "float8", "--dtype float8 is not one of"),
    ],
)
def test_bad_bench_options_end_in_one_line(tmp_path, option, value, expected):
    args = [*tiny_bench_args(tmp_path / "bench.json"), option, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and expected in " ".join(result.output.split())
    assert not (tmp_path / "bench.json").exists()
