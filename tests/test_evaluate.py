"""The evaluation harness end to end through the CLI: tiny datasets in the official layouts,
a tiny random Qwen2-Audio loaded from disk, resume after a kill, shards, sweep and report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from tiny_models import tiny_bench_args
from typer.testing import CliRunner

from ltbm.backbones.synthetic import save_model
from ltbm.cli import app

pytestmark = pytest.mark.slow
CAPTIONS = ["a dog barks", "rain falls on a roof", "music plays", "a man speaks", "birds sing"]


def tone(path: Path, seconds: float, frequency: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(int(frequency))
    signal_ = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.shape)
    soundfile.write(str(path), signal_.astype(np.float32), 16000)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_model("qwen2_audio", tmp_path_factory.mktemp("model") / "tiny-qwen2-audio")


@pytest.fixture(scope="module")
def clotho(tmp_path_factory) -> Path:
    """Clotho v2.1 evaluation layout: six clips, one of them a corrupt file."""
    root = tmp_path_factory.mktemp("clotho")
    names = [f"clip_{i}.wav" for i in range(6)]
    with (root / "clotho_captions_evaluation.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for index, name in enumerate(names):
            writer.writerow([name] + CAPTIONS[index % 5 :] + CAPTIONS[: index % 5])
    for index, name in enumerate(names[:-1]):
        tone(root / "evaluation" / name, 2 + index, 200 + 100 * index)
    (root / "evaluation" / names[-1]).write_bytes(b"not a wav file")
    return root


@pytest.fixture(scope="module")
def mmau(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mmau")
    records = []
    for index in range(4):
        audio_id = f"./test-mini-audios/{index}.wav"
        tone(root / audio_id, 3, 300 + 50 * index)
        choices = ["dog", "cat", "bird", "car"][: 2 + index % 3]
        records.append(
            {
                "id": f"q{index}",
                "audio_id": audio_id,
                "question": "Which animal?",
                "choices": choices,
                "answer": choices[0],
                "task": "sound",
                "difficulty": "easy",
            }
        )
    (root / "mmau-test-mini.json").write_text(json.dumps(records))
    return root


def eval_args(model: Path, task: str, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--backbone",
        "hf",
        "--model",
        str(model),
        "--task",
        task,
        "--root",
        str(root),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--batch-size",
        "2",
        *extra,
    ]


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def records_of(run_dir: Path) -> list[dict]:
    lines = []
    for path in sorted(run_dir.glob("items*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def test_clotho_eval_records_every_item_and_the_bad_clip(tiny_model, clotho, tmp_path):
    invoke(
        eval_args(
            tiny_model,
            "clotho",
            clotho,
            tmp_path,
            "--method",
            "ltbm",
            "--keep-ratio",
            "0.25",
            "--window",
            "2",
        )
    )
    run_dir = tmp_path / "clotho" / "qwen2-audio" / "ltbm-r0.25-w2"
    metrics = metrics_of(run_dir)
    assert metrics["items"] == 6 and metrics["completed"] == 6 and metrics["scored"] == 5
    assert metrics["failed"][0]["id"] == "clip_5.wav"
    assert "cannot read" in metrics["failed"][0]["error"]
    core = {"bleu_1", "bleu_4", "meteor", "rouge_l", "cider_d"}
    assert core <= set(metrics["metrics"]) and core <= set(metrics["computed"])
    assert "spice" in metrics["skipped"]
    assert metrics["prompt_template"] == "Generate the caption in English:"
    assert metrics["method_params"] == {"method": "ltbm", "keep_ratio": 0.25, "window": 2}
    assert metrics["versions"]["torch"]
    for record in records_of(run_dir):
        if "error" not in record:
            assert record["kept_tokens"] == -(-record["audio_tokens"] // 4)


def test_mmau_eval_scores_every_item(tiny_model, mmau, tmp_path):
    invoke(eval_args(tiny_model, "mmau", mmau, tmp_path, "--method", "pool", "--keep-ratio", "0.5"))
    run_dir = tmp_path / "mmau" / "qwen2-audio" / "pool-r0.5"
    metrics = metrics_of(run_dir)["metrics"]
    # The harness's accuracy is the official rule applied to what the model wrote.
    from ltbm.metrics.mcq import score_item
    from ltbm.tasks import get_task

    items = {item.id: item for item in get_task("mmau", root=mmau).items()}
    verdicts = [score_item(r["prediction"], items[r["id"]]) for r in records_of(run_dir)]
    assert metrics["items"] == len(verdicts) == 4
    assert metrics["correct"] == sum(bool(v["correct"]) for v in verdicts)
    assert metrics["by_task"]["sound"]["total"] == 4


def run_module(args: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "ltbm.cli", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def test_killed_run_resumes_with_every_item_once(tiny_model, clotho, tmp_path):
    args = ["--method", "global", "--keep-ratio", "0.5", "--batch-size", "1"]
    invoke(eval_args(tiny_model, "clotho", clotho, tmp_path / "whole", *args))
    whole = tmp_path / "whole" / "clotho" / "qwen2-audio" / "global-r0.5"

    killed_root = tmp_path / "killed"
    run_dir = killed_root / "clotho" / "qwen2-audio" / "global-r0.5"
    process = run_module(eval_args(tiny_model, "clotho", clotho, killed_root, *args))
    items_file = run_dir / "items.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if items_file.exists() and items_file.read_text().count("\n") >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run_dir / "metrics.json").exists()
    done_before = items_file.read_text().count("\n")
    assert 2 <= done_before < 6

    invoke(eval_args(tiny_model, "clotho", clotho, killed_root, *args))
    records = records_of(run_dir)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in records_of(whole))
    assert len(records) == 6
    resumed, reference = metrics_of(run_dir), metrics_of(whole)
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["completed"] == reference["completed"] == 6


def test_two_process_shards_equal_one_process(tiny_model, mmau, tmp_path):
    args = ["--method", "ltbm", "--keep-ratio", "0.25"]
    invoke(eval_args(tiny_model, "mmau", mmau, tmp_path / "single", *args))
    sharded_root = tmp_path / "sharded"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ltbm.cli",
        *eval_args(tiny_model, "mmau", mmau, sharded_root, *args),
    ]
    completed = subprocess.run(launcher, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    cell = Path("mmau") / "qwen2-audio" / "ltbm-r0.25-w1"
    shard_files = sorted(p.name for p in (sharded_root / cell).glob("items*.jsonl"))
    assert shard_files == ["items.rank0.jsonl", "items.rank1.jsonl"]
    single, sharded = metrics_of(tmp_path / "single" / cell), metrics_of(sharded_root / cell)
    assert sharded["metrics"] == single["metrics"]
    assert sharded["completed"] == single["completed"] == 4
    by_id = {r["id"]: r["prediction"] for r in records_of(tmp_path / "single" / cell)}
    assert {r["id"]: r["prediction"] for r in records_of(sharded_root / cell)} == by_id


def test_sweep_reuses_finished_cells_and_reports(tiny_model, mmau, tmp_path):
    args = [
        "sweep",
        "--backbone",
        "hf",
        "--model",
        str(tiny_model),
        "--task",
        "mmau",
        "--root",
        str(mmau),
        "--out",
        str(tmp_path),
        "--max-new-tokens",
        "4",
        "--methods",
        "none,pool,global,ltbm",
        "--keep-ratios",
        "0.5,0.25",
        "--windows",
        "2",
        "--scorer",
        "norm",
    ]
    invoke(args)
    cells = tmp_path / "mmau" / "qwen2-audio"
    names = sorted(p.name for p in cells.iterdir() if p.is_dir())
    assert names == [
        "global-r0.25",
        "global-r0.5",
        "ltbm-r0.25-w2",
        "ltbm-r0.5-w2",
        "none",
        "pool-r0.25",
        "pool-r0.5",
    ]
    stamp = (cells / "pool-r0.5" / "metrics.json").stat().st_mtime_ns
    # The same grid and dataset path from a config file: every cell is reused.
    config = tmp_path / "grid.toml"
    config.write_text(
        'methods = ["none", "pool", "global", "ltbm"]\nkeep_ratios = [0.5, 0.25]\n'
        f'windows = [2]\nscorer = "norm"\nroot = "{mmau}"\nmax_new_tokens = 4\n'
    )
    invoke(
        [
            "sweep",
            "--backbone",
            "hf",
            "--model",
            str(tiny_model),
            "--task",
            "mmau",
            "--out",
            str(tmp_path),
            "--config",
            str(config),
        ]
    )
    assert (cells / "pool-r0.5" / "metrics.json").stat().st_mtime_ns == stamp
    # Efficiency figures from `ltbm bench` in the same folder join the table by cell.
    args = tiny_bench_args(cells / "bench.json", methods="pool,ltbm", keep_ratios="1,0.5")
    bench = CliRunner().invoke(app, [*args, "--window", "2"])
    assert bench.exit_code == 0, bench.output
    invoke(["report", str(cells)])
    measured = {
        (c["method"], c["keep_ratio"]): c["prefill_ms"]
        for c in json.loads((cells / "bench.json").read_text())["cells"]
    }
    joined = {
        (r["method"], r["keep_ratio"], r["window"]): r.get("prefill_ms")
        for r in json.loads((cells / "report.json").read_text())
    }
    assert joined[("none", 1.0, None)] == measured[("none", 1.0)]
    assert joined[("pool", 0.5, None)] == measured[("pool", 0.5)]
    assert joined[("ltbm", 0.5, 2)] == measured[("ltbm", 0.5)]
    assert joined[("global", 0.5, None)] is None and joined[("pool", 0.25, None)] is None
    report = (cells / "report.md").read_text()
    assert "| method | keep_ratio" in report and "ltbm" in report
    assert "prefill_ms" in report.splitlines()[2]
    rows = json.loads((cells / "report.json").read_text())
    assert len(rows) == 7
    assert (cells / "mmau_qwen2-audio_accuracy.png").exists()


def test_whisper_embedded_default_through_the_cli(tmp_path):
    """The proxy benchmark's path: built-in speech set, real Whisper tiny.en, WER."""
    from ltbm.metrics.wer import word_error_rate

    for method in ("none", "ltbm"):
        invoke(
            [
                "eval",
                "--backbone",
                "whisper-ct2",
                "--task",
                "speech",
                "--method",
                method,
                "--keep-ratio",
                "0.5",
                "--limit",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
    cells = tmp_path / "speech" / "whisper-ct2"
    for cell in ("none", "ltbm-r0.5-w1"):
        metrics = metrics_of(cells / cell)
        records = records_of(cells / cell)
        assert metrics["items"] == 3 and metrics["scored"] == 3
        assert metrics["prompt_template"] == ""
        recomputed = word_error_rate(
            [r["references"][0] for r in records], [r["prediction"] for r in records]
        )
        assert metrics["metrics"]["wer"] == pytest.approx(recomputed.wer)
        assert metrics["metrics"]["wer"] < 0.5, "tiny.en transcribes the built-in set"
    compressed = records_of(cells / "ltbm-r0.5-w1")
    assert all(r["kept_tokens"] == -(-r["audio_tokens"] // 2) for r in compressed)


def test_a_method_the_backbone_cannot_feed_is_refused_before_any_item(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--backbone",
            "whisper-ct2",
            "--task",
            "speech",
            "--method",
            "prune",
            "--scorer",
            "attention",
            "--limit",
            "2",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "--scorer norm" in result.output
    assert not list(tmp_path.rglob("items*.jsonl"))


def test_the_command_line_ends_bad_input_with_a_message_not_a_traceback(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ltbm.cli",
            "eval",
            "--task",
            "clotho",
            "--root",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2
    assert "clotho_captions_evaluation.csv not found" in completed.stdout
    assert "Traceback" not in completed.stdout + completed.stderr
