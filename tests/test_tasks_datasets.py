"""Dataset readers: tiny copies in each official layout, the real metadata in full, and the
errors a user meets with a wrong path or file."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import types
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

import ltbm.tasks as tasks
from ltbm.io.audio import load_audio
from ltbm.tasks import (
    AudioCapsTask,
    ClothoTask,
    DatasetError,
    MMAUTask,
    Task,
    get_task,
    register_task,
    task_from_config,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
AUDIOCAPS_CSV = SHARED / "audiocaps" / "test.csv"
MMAU_JSON = SHARED / "mmau" / "mmau-test-mini.json"
needs_audiocaps = pytest.mark.skipif(not AUDIOCAPS_CSV.is_file(), reason=f"{AUDIOCAPS_CSV} absent")
needs_mmau = pytest.mark.skipif(not MMAU_JSON.is_file(), reason=f"{MMAU_JSON} absent")


def write_audio(path: Path, seconds: float = 0.2, rate: int = 16_000) -> Path:
    """A short sine tone: real audio that the project's loader must read back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(str(path), 0.1 * np.sin(2 * np.pi * 440 * t), rate)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- Clotho -----------------------------------------------------------------------------

CLOTHO_HEADER = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]


def clotho_rows(names: list[str]) -> list[list[str]]:
    return [[name] + [f"{name} caption {i}" for i in range(1, 6)] for name in names]


def make_clotho(root: Path, listed: list[str], present: list[str], bom: bool = False) -> Path:
    write_csv(root / "clotho_captions_evaluation.csv", CLOTHO_HEADER, clotho_rows(listed), bom)
    for name in present:
        write_audio(root / "evaluation" / name)
    return root


def test_clotho_official_layout_reads_items_and_audio(tmp_path: Path) -> None:
    names = ["Santa Motor.wav", "birds_in_rain.wav", "kettle.wav"]
    root = make_clotho(tmp_path, names, names)
    task = ClothoTask(root=root)
    assert isinstance(task, Task)
    assert (task.name, task.kind) == ("clotho", "caption")
    items = task.items()
    assert [item.id for item in items] == names
    assert all(len(item.references) == 5 for item in items)
    assert items[0].references[0] == "Santa Motor.wav caption 1"
    assert load_audio(items[0].audio).size == 3200  # 0.2 s at 16 kHz, read back
    assert task.coverage().as_dict() == {"listed": 3, "found": 3, "missing_examples": []}


def test_clotho_partial_copy_converted_audio_bom_and_nfd_names(tmp_path: Path) -> None:
    cafe = "Café ambience.wav"
    names = ["a.wav", "b.wav", cafe, "gone.wav"]
    make_clotho(tmp_path, names, ["a.wav"], bom=True)
    write_audio(tmp_path / "evaluation" / "b.flac")  # converted copy, same stem
    write_audio(tmp_path / "evaluation" / unicodedata.normalize("NFD", cafe))  # as macOS writes
    task = ClothoTask(csv=tmp_path / "clotho_captions_evaluation.csv")
    assert [item.id for item in task.items()] == ["a.wav", "b.wav", cafe]
    assert task.items()[1].audio.suffix == ".flac"
    coverage = task.coverage()
    assert (coverage.listed, coverage.found, coverage.missing) == (4, 3, ["gone.wav"])
    assert len(task.all_items()) == 4


def test_clotho_aac_datasets_layout_and_config(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "clotho_csv_files" / "clotho_captions_evaluation.csv",
        CLOTHO_HEADER,
        clotho_rows(["x.wav"]),
    )
    write_audio(tmp_path / "clotho_audio_files" / "evaluation" / "x.wav")
    task = ClothoTask.from_config({"root": str(tmp_path)})
    assert [item.id for item in task.items()] == ["x.wav"]


def test_clotho_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="clotho_captions_evaluation.csv not found.*Clotho v2.1"):
        ClothoTask(root=tmp_path)
    with pytest.raises(DatasetError, match="needs root=... or csv="):
        ClothoTask()
    bad = write_csv(tmp_path / "bad.csv", ["file_name", "caption1", "caption2"], [["a", "b", "c"]])
    with pytest.raises(DatasetError, match=r"lacks the column\(s\) caption_1.*its header is"):
        ClothoTask(csv=bad, audio_dir=tmp_path)
    with pytest.raises(DatasetError, match="unknown config key.*csv_path.*allowed keys"):
        ClothoTask.from_config({"csv_path": "x"})


def test_clotho_without_audio_reports_coverage_but_items_fail(tmp_path: Path) -> None:
    make_clotho(tmp_path, ["a.wav", "b.wav"], [])
    (tmp_path / "evaluation").mkdir()
    task = ClothoTask(root=tmp_path)
    assert task.coverage().found == 0
    with pytest.raises(DatasetError) as error:
        task.items()
    message = str(error.value)
    assert str(tmp_path / "evaluation") in message
    assert "none of the 2 listed clips" in message and "a.wav" in message


# --- AudioCaps --------------------------------------------------------------------------

AUDIOCAPS_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


def audiocaps_rows(clips: dict[str, str]) -> list[list[str]]:
    """Five caption rows per clip, interleaved across clips as in the official file."""
    rows = []
    for k in range(5):
        for n, (youtube_id, start) in enumerate(clips.items()):
            rows.append([str(1000 + 10 * n + k), youtube_id, start, f"{youtube_id} caption {k}"])
    return rows


@pytest.mark.parametrize(
    "file_name",
    [
        "-abc_DEF12.wav",  # plain YouTube id (ids may start with '-')
        "Y-abc_DEF12.flac",  # AudioSet style
        "-abc_DEF12_30.flac",  # aac-datasets
        "Y-abc_DEF12_30.000_40.000.wav",  # AudioSet segment
        "-abc_DEF12_30.000_40.000.ogg",
        "1002.wav",  # audiocaps-download: named by one of the clip's audiocap_ids
    ],
)
def test_audiocaps_accepts_common_file_names(tmp_path: Path, file_name: str) -> None:
    write_csv(tmp_path / "test.csv", AUDIOCAPS_HEADER, audiocaps_rows({"-abc_DEF12": "30"}))
    write_audio(tmp_path / "test" / file_name)
    task = AudioCapsTask(root=tmp_path)
    (item,) = task.items()
    assert item.id == "-abc_DEF12"
    assert item.audio.name == file_name
    assert item.references == [f"-abc_DEF12 caption {k}" for k in range(5)]
    assert item.meta["start_time"] == "30"
    assert load_audio(item.audio).size > 0


def test_audiocaps_partial_copy_returns_found_clips_in_csv_order(tmp_path: Path) -> None:
    clips = {"aaaaaaaaaaa": "0", "bbbbbbbbbbb": "20", "ccccccccccc": "30"}
    csv_path = write_csv(tmp_path / "meta" / "test.csv", AUDIOCAPS_HEADER, audiocaps_rows(clips))
    write_audio(tmp_path / "audio" / "ccccccccccc.wav")
    write_audio(tmp_path / "audio" / "aaaaaaaaaaa.wav")
    task = get_task("audiocaps", csv=csv_path, audio_dir=tmp_path / "audio", root=None)
    assert [item.id for item in task.items()] == ["aaaaaaaaaaa", "ccccccccccc"]
    assert task.coverage().as_dict() == {
        "listed": 3,
        "found": 2,
        "missing_examples": ["bbbbbbbbbbb"],
    }


def test_audiocaps_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="test.csv not found.*cdjkim/audiocaps"):
        AudioCapsTask(root=tmp_path)
    bad = write_csv(tmp_path / "bad.csv", ["youtube_id", "caption"], [["x", "y"]])
    with pytest.raises(DatasetError, match=r"lacks the column\(s\) audiocap_id, start_time"):
        AudioCapsTask(csv=bad)
    clash = write_csv(
        tmp_path / "clash.csv", AUDIOCAPS_HEADER, [["1", "v", "0", "a"], ["2", "v", "10", "b"]]
    )
    with pytest.raises(DatasetError, match="start_time 0 and 10"):
        AudioCapsTask(csv=clash)


def test_audiocaps_no_audio_names_folder_and_expected_names(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "test.csv", AUDIOCAPS_HEADER, audiocaps_rows({"vid": "5"}))
    task = AudioCapsTask(csv=csv_path, audio_dir=tmp_path / "nowhere")
    assert task.coverage().found == 0  # reporting never fails
    with pytest.raises(DatasetError) as error:
        task.items()
    message = str(error.value)
    assert f"the audio folder {tmp_path / 'nowhere'} does not exist" in message
    assert "vid.wav" in message and "Y<youtube_id>" in message and "audio_dir=" in message


@needs_audiocaps
def test_real_audiocaps_test_csv_in_full_with_partial_audio(tmp_path: Path) -> None:
    with AUDIOCAPS_CSV.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    some = [rows[0]["youtube_id"], rows[1]["youtube_id"], rows[7]["youtube_id"]]
    write_audio(tmp_path / f"{some[0]}.wav")
    write_audio(tmp_path / f"Y{some[1]}.flac")
    write_audio(tmp_path / f"{some[2]}_{rows[7]['start_time']}.flac")
    task = AudioCapsTask(csv=AUDIOCAPS_CSV, audio_dir=tmp_path)
    listed = task.all_items()
    assert len(rows) == 4875
    assert len(listed) == 975
    assert all(len(item.references) == 5 for item in listed)
    assert len({item.id for item in listed}) == 975
    coverage = task.coverage()
    assert (coverage.listed, coverage.found, len(coverage.missing)) == (975, 3, 972)
    assert sorted(item.id for item in task.items()) == sorted(some)


# --- MMAU -------------------------------------------------------------------------------


def mmau_record(n: int, **changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": f"id-{n}",
        "audio_id": f"./test-mini-audios/id-{n}.wav",
        "question": f"Question {n}?",
        "choices": ["Man", "Woman", "Child", "Robot"],
        "answer": "Woman",
        "dataset": "AudioSet",
        "task": ["sound", "music", "speech"][n % 3],
        "split": "test-mini",
        "category": "Reasoning",
        "sub-category": "Acoustic Source Inference",
        "difficulty": ["easy", "medium", "hard"][n % 3],
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not None}


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_mmau_official_layout(tmp_path: Path) -> None:
    records = [mmau_record(n) for n in range(4)]
    json_path = write_json(tmp_path / "mmau-test-mini.json", records)
    for n in (0, 2, 3):
        write_audio(tmp_path / "test-mini-audios" / f"id-{n}.wav")
    task = MMAUTask(json_path)
    assert isinstance(task, Task)
    assert (task.name, task.kind, task.has_answers) == ("mmau", "mcq", True)
    items = task.items()
    assert [item.id for item in items] == ["id-0", "id-2", "id-3"]
    first = items[0]
    assert first.references == ["Woman"]
    assert first.question == "Question 0?"
    assert first.choices == ["Man", "Woman", "Child", "Robot"]
    assert first.meta["task"] == "sound" and first.meta["difficulty"] == "easy"
    assert load_audio(first.audio).size > 0
    assert task.coverage().missing == ["id-1"]


def test_mmau_audio_root_may_be_the_audio_folder_itself(tmp_path: Path) -> None:
    json_path = write_json(tmp_path / "meta" / "mmau-test-mini.json", [mmau_record(0)])
    write_audio(tmp_path / "wavs" / "id-0.wav")
    task = get_task("mmau", json=json_path, audio_dir=tmp_path / "wavs")
    assert task.items()[0].audio == tmp_path / "wavs" / "id-0.wav"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"choices": None}, "item id-1 has no 'choices'"),
        ({"choices": []}, "item id-1 has no 'choices'"),
        ({"question": None}, "item id-1 has no 'question'"),
        ({"question": "  "}, "item id-1 has no 'question'"),
        ({"audio_id": None}, "item id-1 has no 'audio_id'"),
        ({"id": None}, "entry 1 \\(no id\\) has no 'id'"),
        ({"choices": ["a", 3]}, "item id-1 has a choice that is not text"),
    ],
)
def test_mmau_bad_item_names_the_item(tmp_path: Path, change: dict, message: str) -> None:
    json_path = write_json(tmp_path / "m.json", [mmau_record(0), mmau_record(1, **change)])
    with pytest.raises(DatasetError, match=message):
        MMAUTask(json_path)


def test_mmau_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="MMAU JSON not found.*Sakshi113/MMAU"):
        MMAUTask(tmp_path / "missing.json")
    with pytest.raises(DatasetError, match="must hold a JSON list"):
        MMAUTask(write_json(tmp_path / "d.json", {"data": []}))
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(DatasetError, match="is not valid JSON"):
        MMAUTask(tmp_path / "broken.json")
    json_path = write_json(tmp_path / "mmau-test-mini.json", [mmau_record(0)])
    with pytest.raises(DatasetError, match="test-mini-audios/id-0.wav.*audio_dir="):
        MMAUTask(json_path).items()


def test_mmau_test_set_without_answers_and_submission(tmp_path: Path) -> None:
    records = [mmau_record(n, answer=None, split="test") for n in range(3)]
    task = MMAUTask(write_json(tmp_path / "mmau-test.json", records))
    assert not task.has_answers
    assert all(item.references == [] for item in task.all_items())
    out = task.write_submission({"id-2": "C", "id-0": "Man", "id-1": ""}, tmp_path / "sub.json")
    written = json.loads(out.read_text(encoding="utf-8"))
    assert [entry["id"] for entry in written] == ["id-0", "id-1", "id-2"]  # input order
    assert [entry["model_prediction"] for entry in written] == ["Man", "", "C"]
    assert [entry["model_output"] for entry in written] == ["Man", "", "C"]
    assert {k: v for k, v in written[0].items() if not k.startswith("model_")} == records[0]
    with pytest.raises(DatasetError, match="missing for 1 of 3 items.*allow_missing=True"):
        task.write_submission({"id-0": "a", "id-1": "b"}, tmp_path / "x.json")
    partial = task.write_submission({"id-0": "a"}, tmp_path / "y.json", allow_missing=True)
    assert [e["model_prediction"] for e in json.loads(partial.read_text())] == ["a", "", ""]
    with pytest.raises(DatasetError, match="ids not in"):
        task.write_submission({"id-0": "a", "other": "b"}, tmp_path / "z.json")


@needs_mmau
def test_real_mmau_test_mini_in_full_with_partial_audio(tmp_path: Path) -> None:
    records = json.loads(MMAU_JSON.read_text(encoding="utf-8"))
    for record in records[:2]:
        write_audio(tmp_path / record["audio_id"])
    task = MMAUTask(MMAU_JSON, audio_root=tmp_path)
    listed = task.all_items()
    assert len(listed) == 1000 and task.has_answers
    assert Counter(len(item.choices or []) for item in listed) == {4: 948, 2: 27, 5: 24, 8: 1}
    assert Counter(item.meta["task"] for item in listed) == {
        "sound": 333,
        "music": 334,
        "speech": 333,
    }
    assert Counter(item.meta["difficulty"] for item in listed) == {
        "easy": 224,
        "medium": 540,
        "hard": 236,
    }
    assert all(item.references[0] in (item.choices or []) for item in listed)
    coverage = task.coverage()
    assert (coverage.listed, coverage.found) == (1000, 2)
    assert [item.id for item in task.items()] == [r["id"] for r in records[:2]]


# --- registry ---------------------------------------------------------------------------


def test_registry_builds_each_task_from_paths_and_config(tmp_path: Path) -> None:
    make_clotho(tmp_path / "clotho", ["a.wav"], ["a.wav"])
    write_csv(tmp_path / "ac" / "test.csv", AUDIOCAPS_HEADER, audiocaps_rows({"v": "0"}))
    write_json(tmp_path / "mmau" / "mmau-test-mini.json", [mmau_record(0)])
    assert isinstance(get_task("clotho", root=tmp_path / "clotho"), ClothoTask)
    assert isinstance(
        task_from_config({"task": "audiocaps", "root": tmp_path / "ac"}), AudioCapsTask
    )
    assert isinstance(task_from_config({"name": "mmau", "root": tmp_path / "mmau"}), MMAUTask)
    with pytest.raises(DatasetError, match="unknown task 'nope'; available: .*audiocaps"):
        get_task("nope")
    with pytest.raises(DatasetError, match="needs a 'task' key"):
        task_from_config({"root": tmp_path})
    with pytest.raises(DatasetError, match="unknown config key.*csv"):
        get_task("mmau", csv="x.csv")


def test_registry_extends_and_loads_optional_tasks_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))

    class FakeSpeech:
        name = "fake-speech"
        kind = "asr"

        def __init__(self, root: str) -> None:
            self.root = root

    module = types.ModuleType("fake_speech_module")
    module.FakeSpeech = FakeSpeech  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_speech_module", module)
    monkeypatch.setitem(tasks._OPTIONAL, "fake", ("fake_speech_module", "FakeSpeech"))
    monkeypatch.setitem(tasks._OPTIONAL, "absent", ("ltbm.tasks.no_such_module", "X"))
    task = get_task("fake", root="/data")
    assert isinstance(task, FakeSpeech) and task.root == "/data"
    with pytest.raises(DatasetError, match="task 'fake' cannot take \\['csv'\\]"):
        get_task("fake", csv="x.csv")
    with pytest.raises(DatasetError, match="task 'absent' is not part of this installation"):
        get_task("absent")
    register_task("custom", lambda config: ClothoTask(**config))
    make_clotho(tmp_path, ["a.wav"], ["a.wav"])
    assert isinstance(get_task("custom", root=tmp_path), ClothoTask)
    assert "custom" in tasks.available_tasks() and "speech" in tasks.available_tasks()


@pytest.mark.skipif(
    importlib.util.find_spec("ltbm.tasks.speech") is None, reason="no speech task module"
)
def test_registry_finds_the_speech_task_lazily() -> None:
    assert get_task("speech").kind == "asr"


@pytest.mark.parametrize("audio_id", ["../../elsewhere/x.wav", "/etc/passwd"])
def test_mmau_audio_outside_the_audio_root_is_refused_unless_allowed(
    tmp_path: Path, audio_id: str
) -> None:
    json_path = write_json(tmp_path / "mmau-test-mini.json", [mmau_record(0, audio_id=audio_id)])
    with pytest.raises(DatasetError, match="points outside the dataset folder.*allow-outside-root"):
        MMAUTask(json_path)
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        get_task("mmau", json=json_path)
    allowed = get_task("mmau", json=json_path, allow_outside_root=True)
    assert allowed.all_items()[0].audio == (tmp_path / audio_id)


def test_mmau_with_some_answers_missing_is_refused(tmp_path: Path) -> None:
    """A mix would silently turn the whole set into an unscored submission."""
    records = [mmau_record(0), mmau_record(1, answer=""), mmau_record(2, answer=None)]
    with pytest.raises(DatasetError, match="2 item\\(s\\) have no answer.*id-1"):
        MMAUTask(write_json(tmp_path / "m.json", records))


def test_dataset_identity_follows_the_listing_not_the_audio(tmp_path: Path) -> None:
    from ltbm.tasks.base import dataset_identity

    json_path = write_json(tmp_path / "mmau-test-mini.json", [mmau_record(0), mmau_record(1)])
    write_audio(tmp_path / "test-mini-audios" / "id-0.wav")
    before = dataset_identity(MMAUTask(json_path))
    assert before["listing"][0]["path"] == str(json_path.resolve())
    assert before["audio_dir"] == str(tmp_path.resolve()) and before["listed_items"] == 2
    write_audio(tmp_path / "test-mini-audios" / "id-1.wav")  # more audio downloaded
    assert dataset_identity(MMAUTask(json_path)) == before
    write_json(json_path, [mmau_record(0), mmau_record(1, answer="Man")])
    changed = dataset_identity(MMAUTask(json_path))
    assert changed["items_sha256"] != before["items_sha256"]
    assert changed["listing"][0]["sha256"] != before["listing"][0]["sha256"]
