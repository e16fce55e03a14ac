"""The speech task: the built-in set, a manifest folder, the LibriSpeech layout, and the
errors a user meets with a wrong folder."""

from __future__ import annotations

from pathlib import Path

import pytest

soundfile = pytest.importorskip("soundfile")

from ltbm.tasks import get_task  # noqa: E402
from ltbm.tasks.base import DatasetError, Task  # noqa: E402
from ltbm.tasks.speech import SpeechTask, builtin_speech_dir  # noqa: E402

SHARED_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "audio" / "speech"


def _write_clip(path: Path, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = builtin_clip_samples()[: int(seconds * 16_000)]
    soundfile.write(path, samples, 16_000, format="FLAC")


def builtin_clip_samples():
    samples, _ = soundfile.read(builtin_speech_dir() / "speech_000.flac", dtype="float32")
    return samples


# ---------------------------------------------------------------- built-in set
def test_builtin_set_has_forty_clips_of_three_to_fifteen_seconds():
    task = SpeechTask.builtin()
    assert isinstance(task, Task) and task.kind == "asr" and task.name == "speech-builtin"
    items = task.items()
    assert len(items) >= 40
    assert task.coverage().listed == task.coverage().found == len(items)
    for item in items:
        info = soundfile.info(str(item.audio))
        assert info.samplerate == 16_000 and info.channels == 1 and info.format == "FLAC"
        assert 3.0 <= info.duration <= 15.0, item.id
        assert len(item.references) == 1 and len(item.references[0].split()) >= 5
    assert len({item.id for item in items}) == len(items)


def test_builtin_set_is_small_and_speaks_numbers_in_words():
    folder = builtin_speech_dir()
    size = sum(p.stat().st_size for p in folder.glob("*.flac"))
    assert size < 6_000_000
    text = " ".join(item.references[0] for item in SpeechTask.builtin().items())
    assert not any(c.isdigit() for c in text)


def test_get_task_builds_the_speech_task():
    assert len(get_task("speech").items()) == len(SpeechTask().items())


# -------------------------------------------------------------- manifest folder
@pytest.mark.skipif(not SHARED_SPEECH.is_dir(), reason="../shared/audio/speech not present")
def test_shared_manifest_folder_prefers_normalized_transcripts():
    task = SpeechTask(SHARED_SPEECH)
    items = task.items()
    assert len(items) == 27
    assert task.coverage().found == 27 and task.coverage().missing == []
    first = items[0]
    assert first.id == "2412-153948-0000" and first.audio.name == "2412-153948-0000.flac"
    assert first.references[0].startswith("if the reader will excuse me")


def test_manifest_falls_back_to_transcript_and_reports_missing_audio(tmp_path):
    _write_clip(tmp_path / "a.flac")
    (tmp_path / "manifest.tsv").write_text(
        "file\ttranscript\ttranscript_normalized\na.flac\tHello, World!\t\nb.wav\tGone.\tgone\n"
    )
    task = SpeechTask(tmp_path)
    assert [item.references for item in task.items()] == [["Hello, World!"]]
    coverage = task.coverage()
    assert (coverage.listed, coverage.found, coverage.missing) == (2, 1, ["b"])


def test_manifest_missing_a_column_names_it(tmp_path):
    (tmp_path / "manifest.tsv").write_text("file\ttext\na.flac\thello\n")
    with pytest.raises(DatasetError, match="lacks the column.*transcript"):
        SpeechTask(tmp_path)


def test_empty_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.tsv").write_text("file\ttranscript\n")
    with pytest.raises(DatasetError, match="lists no clips"):
        SpeechTask(tmp_path)


def test_duplicate_ids_are_refused(tmp_path):
    (tmp_path / "manifest.tsv").write_text("file\ttranscript\na.flac\tx\na.wav\ty\n")
    with pytest.raises(DatasetError, match="appears twice"):
        SpeechTask(tmp_path)


# ---------------------------------------------------------------- LibriSpeech
def _librispeech(root: Path) -> Path:
    chapter = root / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0001 GO DO YOU HEAR\n84-121123-0000 BUT IN LESS THAN FIVE MINUTES\n"
        "84-121123-0002 MISSING AUDIO HERE\n"
    )
    _write_clip(chapter / "84-121123-0000.flac")
    _write_clip(chapter / "84-121123-0001.flac")
    other = root / "dev-clean" / "174" / "50561"
    other.mkdir(parents=True)
    (other / "174-50561.trans.txt").write_text("174-50561-0000 FORGOTTEN TOO THE NAME\n")
    _write_clip(other / "174-50561-0000.flac")
    return root


def test_librispeech_layout(tmp_path):
    task = SpeechTask(_librispeech(tmp_path))
    items = task.items()
    assert [item.id for item in items] == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert items[1].references == ["BUT IN LESS THAN FIVE MINUTES"]
    assert items[1].audio.name == "84-121123-0000.flac" and items[1].audio.is_file()
    coverage = task.coverage()
    assert (coverage.listed, coverage.found, coverage.missing) == (4, 3, ["84-121123-0002"])


def test_librispeech_bad_line_is_refused(tmp_path):
    chapter = tmp_path / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("1-2-0000\n")
    with pytest.raises(DatasetError, match="expected 'ID TEXT'"):
        SpeechTask(tmp_path)


# --------------------------------------------------------------------- errors
def test_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(DatasetError, match="speech folder not found.*manifest.tsv"):
        SpeechTask(tmp_path / "nowhere")


def test_folder_without_transcripts_says_what_it_expected(tmp_path):
    _write_clip(tmp_path / "a.flac")
    with pytest.raises(DatasetError, match="no transcripts.*manifest.tsv.*trans.txt"):
        SpeechTask(tmp_path)


def test_a_file_instead_of_a_folder(tmp_path):
    path = tmp_path / "manifest.tsv"
    path.write_text("file\ttranscript\n")
    with pytest.raises(DatasetError, match="got a file"):
        SpeechTask(path)


def test_from_config_refuses_unknown_keys(tmp_path):
    with pytest.raises(DatasetError, match="csv"):
        get_task("speech", csv=tmp_path / "x.csv")
    task = get_task("speech", root=_librispeech(tmp_path))
    assert task.name == f"speech:{tmp_path.name}"


@pytest.mark.parametrize("name", ["../elsewhere/x.flac", "/etc/passwd", "sub/../../x.flac"])
def test_manifest_paths_must_stay_inside_the_folder(tmp_path, name):
    root = tmp_path / "set"
    _write_clip(root / "a.flac")
    (root / "manifest.tsv").write_text(f"file\ttranscript\na.flac\tone\n{name}\ttwo\n")
    with pytest.raises(DatasetError, match="line 3: .* points outside the dataset folder"):
        SpeechTask(root)
    task = get_task("speech", root=root, allow_outside_root=True)
    assert [item.id for item in task.all_items()] == ["a", Path(name).stem]


def test_librispeech_ids_must_stay_inside_the_folder(tmp_path):
    chapter = tmp_path / "1" / "2"
    chapter.mkdir(parents=True)
    (chapter / "1-2.trans.txt").write_text("../../../x HELLO THERE\n")
    with pytest.raises(DatasetError, match="1-2.trans.txt, line 1: .* outside the dataset"):
        SpeechTask(tmp_path)


def test_an_empty_transcript_is_refused_with_its_line(tmp_path):
    _write_clip(tmp_path / "a.flac")
    (tmp_path / "manifest.tsv").write_text("file\ttranscript\na.flac\t  \n")
    with pytest.raises(DatasetError, match="line 2: a.flac has an empty transcript"):
        SpeechTask(tmp_path)


def test_the_speech_identity_hashes_its_manifest(tmp_path):
    from ltbm.tasks.base import dataset_identity

    _write_clip(tmp_path / "a.flac")
    (tmp_path / "manifest.tsv").write_text("file\ttranscript\na.flac\tone\n")
    first = dataset_identity(SpeechTask(tmp_path))
    assert first["name"] == f"speech:{tmp_path.name}" and first["listed_items"] == 1
    (tmp_path / "manifest.tsv").write_text("file\ttranscript\na.flac\twon\n")
    assert dataset_identity(SpeechTask(tmp_path))["items_sha256"] != first["items_sha256"]
    assert dataset_identity(SpeechTask())["name"] == "speech-builtin"
