"""ltbm's MMAU figures equal what the MMAU authors' own ``evaluation.py`` prints.

Both versions of the official script (``shared/datasets/mmau/official/``, never copied into
the project) run as subprocesses on the submission file that ltbm's own harness writes, for
a varied mix of model outputs over the real test-mini questions: the choice's text, letters
("(B)", "B.", "Answer: B"), labels with text, full sentences, empty outputs, outputs naming
two choices, wrong choices, partial answers, failed items; 2-, 4-, 5- and 8-choice items.
The headline (overall, per task, per difficulty, per sub-category) must equal theirs
exactly, and every item's verdict must equal their ``string_match``.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from shared_paths import MMAU_JSON, MMAU_OFFICIAL

from ltbm.run.scoring import SUBMISSION_FILE, record_fields, score_records
from ltbm.tasks.base import Item
from ltbm.tasks.mmau import MMAUTask

SCRIPTS = {
    "7468292": MMAU_OFFICIAL / "evaluation_7468292.py",
    "6097b91": MMAU_OFFICIAL / "evaluation_6097b91.py",
}
_absent = [str(p) for p in (MMAU_JSON, *SCRIPTS.values()) if not p.is_file()]
if importlib.util.find_spec("tqdm") is None:
    _absent.append("the tqdm package, which the official scripts import")
needs_official = pytest.mark.skipif(
    bool(_absent), reason=f"absent, needed by the official MMAU scorer tests: {_absent}"
)
pytestmark = needs_official

Style = Callable[[str, str, str, str], str]
"""(answer, a wrong choice, the answer's letter, the wrong choice's letter) -> output."""
STYLES: list[Style] = [
    lambda ans, wrong, letter, wl: ans,
    lambda ans, wrong, letter, wl: f"({letter})",
    lambda ans, wrong, letter, wl: f"{letter}.",
    lambda ans, wrong, letter, wl: f"Answer: {letter}",
    lambda ans, wrong, letter, wl: letter,
    lambda ans, wrong, letter, wl: f"({letter}) {ans}",
    lambda ans, wrong, letter, wl: f"The answer is {ans}.",
    lambda ans, wrong, letter, wl: f"Based on the audio, it is {ans.lower()}, I think.",
    lambda ans, wrong, letter, wl: "",
    lambda ans, wrong, letter, wl: "  \n ",
    lambda ans, wrong, letter, wl: f"{ans} or {wrong}",
    lambda ans, wrong, letter, wl: wrong,
    lambda ans, wrong, letter, wl: f"({wl}) {wrong}",
    lambda ans, wrong, letter, wl: f"The correct answer is {wrong}.",
    lambda ans, wrong, letter, wl: ans.upper() + "!",
    lambda ans, wrong, letter, wl: ans.split()[0] if ans.split() else ans,
    lambda ans, wrong, letter, wl: "I cannot tell from the audio.",
    lambda ans, wrong, letter, wl: f"{ans}\n\nExplanation: the recording suggests so.",
    lambda ans, wrong, letter, wl: f"{ans} — naïve café",
    lambda ans, wrong, letter, wl: f"Both {ans} and {wrong} are possible.",
]


def varied_records(items: list[Item], seed: int) -> list[dict[str, Any]]:
    """One harness record per item with an output in a random style; about 3% of the items
    fail (no record prediction), as a clip that cannot be read does."""
    rng = random.Random(seed)
    records = []
    for item in items:
        if rng.random() < 0.03:
            records.append({"id": item.id, "error": "AudioError: cannot read"})
            continue
        choices = item.choices or []
        answer = item.references[0]
        index = choices.index(answer)
        other = rng.choice([i for i in range(len(choices)) if i != index])
        style = rng.choice(STYLES)
        output = style(answer, choices[other], chr(65 + index), chr(65 + other))
        records.append({"id": item.id, "prediction": output})
    return records


def run_official(version: str, submission: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS[version]), "--input", str(submission)],
        capture_output=True,
        text=True,
        cwd=submission.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def parse_7468292(output: str) -> dict[str, dict[str, tuple[str, int]]]:
    """{section: {group: (percent as printed, samples)}} from the newest script's output."""
    sections = {
        "Task-wise": "by_task",
        "Difficulty-wise": "by_difficulty",
        "Sub-category-wise": "by_sub_category",
    }
    parsed: dict[str, dict[str, tuple[str, int]]] = {name: {} for name in sections.values()}
    current = None
    for line in output.splitlines():
        header = next((v for k, v in sections.items() if line.startswith(k)), None)
        if header:
            current = header
            continue
        total = re.fullmatch(r"Total Accuracy: ([\d.]+)% over (\d+) samples", line)
        if total:
            parsed["overall"] = {"all": (total[1], int(total[2]))}
            current = None
            continue
        group = re.fullmatch(r"(.+) : ([\d.]+)% over (\d+) samples", line)
        if group and current:
            parsed[current][group[1]] = (group[2], int(group[3]))
    return parsed


def parse_6097b91(output: str) -> dict[str, dict[str, tuple[float, int | None]]]:
    """{section: {group: (percent, samples or None)}} from the older script's output, which
    prints full-precision floats (per difficulty without the sample count)."""
    blocks = output.split("*" * 30)
    tasks = re.findall(r"^(\w+) : (\S+) over (\d+) samples$", blocks[1], re.MULTILINE)
    difficulties = re.findall(r"^(\w+) : (\S+)$", blocks[2], re.MULTILINE)
    total = re.search(r"Total acc: (\S+) over (\d+) samples", output)
    assert total, output
    return {
        "by_task": {name: (float(p), int(n)) for name, p, n in tasks},
        "by_difficulty": {name: (float(p), None) for name, p in difficulties},
        "overall": {"all": (float(total[1]), int(total[2]))},
    }


def ltbm_groups(metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    groups = {name: metrics[name] for name in ("by_task", "by_difficulty", "by_sub_category")}
    return {**groups, "overall": {"all": metrics["overall"]}}


def percent(group: dict[str, Any]) -> float:
    """The official scripts' arithmetic on ltbm's counts."""
    return (group["correct"] / group["total"]) * 100 if group["total"] > 0 else 0


def assert_equal_to_official(metrics: dict[str, Any], submission: Path) -> None:
    ours = ltbm_groups(metrics)
    newest = parse_7468292(run_official("7468292", submission))
    for section, groups in newest.items():
        shown = {k: v for k, v in groups.items() if v[1] > 0}  # it lists empty tasks too
        assert shown == {
            key: (f"{percent(group):.2f}", group["total"]) for key, group in ours[section].items()
        }, section
    older = parse_6097b91(run_official("6097b91", submission))
    for section, groups in older.items():
        for key, (value, samples) in groups.items():
            group = ours[section].get(key, {"correct": 0, "total": 0})
            assert value == percent(group), (section, key)
            assert samples in (None, group["total"]), (section, key)
    for section in ours:  # the fraction ltbm stores is the same ratio
        for group in ours[section].values():
            assert group["accuracy"] == group["correct"] / group["total"]


def load_string_match(version: str) -> Callable[[str, str, list[str]], bool]:
    """The official ``string_match`` itself, imported from the script (not copied)."""
    spec = importlib.util.spec_from_file_location(f"mmau_official_{version}", SCRIPTS[version])
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.string_match


@pytest.fixture(scope="module")
def task() -> MMAUTask:
    return MMAUTask(MMAU_JSON)  # audio absent: scoring needs only the questions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_headline_equals_both_official_scripts(task: MMAUTask, tmp_path: Path, seed: int):
    items = task.all_items()
    assert {len(item.choices or []) for item in items} == {2, 4, 5, 8}
    records = varied_records(items, seed)
    succeeded = [r for r in records if "error" not in r]
    scores = score_records(task, items, succeeded, tmp_path)
    metrics = scores["metrics"]
    assert metrics["items"] == 1000 and metrics["missing"] == len(records) - len(succeeded) > 0
    assert_equal_to_official(metrics, tmp_path / SUBMISSION_FILE)
    # The mix really exercises the difference between the rules.
    assert 0.2 < metrics["accuracy"] < metrics["lenient_accuracy"] < 0.9


def test_a_selection_without_a_difficulty_level_crashes_only_the_older_script(
    task: MMAUTask, tmp_path: Path
):
    """What the README warns about: the first 10 items (``--limit 10``) are all "medium";
    the newer script (7468292) prints ltbm's numbers, the older one (6097b91) divides by the
    empty "easy" group and stops with a traceback."""
    items = task.all_items()[:10]
    assert {item.meta["difficulty"] for item in items} == {"medium"}
    records = varied_records(items, seed=4)
    succeeded = [r for r in records if "error" not in r]
    metrics = score_records(task, items, succeeded, tmp_path)["metrics"]
    submission = tmp_path / SUBMISSION_FILE
    newest = parse_7468292(run_official("7468292", submission))
    assert newest["overall"] == {
        "all": (f"{percent(metrics['overall']):.2f}", metrics["overall"]["total"])
    }
    older = subprocess.run(
        [sys.executable, str(SCRIPTS["6097b91"]), "--input", str(submission)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert older.returncode != 0 and "ZeroDivisionError" in older.stderr


def test_every_item_verdict_equals_official_string_match(task: MMAUTask, tmp_path: Path):
    items = task.all_items()
    by_id = {item.id: item for item in items}
    matchers = [load_string_match(version) for version in SCRIPTS]
    checked = 0
    for seed in range(10):
        for record in varied_records(items, seed):
            item = by_id[record["id"]]
            output = record.get("prediction")
            fields = record_fields(item, output)
            for string_match in matchers:
                official = string_match(item.references[0], output or "", item.choices)
                assert fields["correct"] is official, (item.id, output)
            checked += 1
    assert checked == 10_000


def test_submission_has_both_keys_and_is_ascii(task: MMAUTask, tmp_path: Path):
    items = task.all_items()[:40]
    outputs = {item.id: f"{item.references[0]} — naïve" for item in items[1:]}
    path = task.write_submission(
        outputs, tmp_path / "s.json", ids=[i.id for i in items], allow_missing=True
    )
    raw = path.read_bytes()
    assert raw.isascii()
    written = json.loads(raw)
    assert [entry["id"] for entry in written] == [item.id for item in items]
    assert written[0]["model_output"] == written[0]["model_prediction"] == ""
    assert written[1]["model_output"] == written[1]["model_prediction"] == outputs[items[1].id]
    original = json.loads(MMAU_JSON.read_text(encoding="utf-8"))[1]
    assert {k: v for k, v in written[1].items() if not k.startswith("model_")} == original


def tone(path: Path, seconds: float = 1.0, frequency: float = 440.0) -> None:
    import numpy as np
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Qwen2-Audio, and audio for every tenth real test-mini question."""
    from ltbm.backbones.synthetic import save_model

    root = tmp_path_factory.mktemp("mmau-cli")
    model = save_model("qwen2_audio", root / "tiny-qwen2-audio")
    for n, item in enumerate(MMAUTask(MMAU_JSON).all_items()[::10]):
        tone(root / "audio" / str(item.meta["audio_id"]), 1.0, 200 + 10 * n)
    return model, root / "audio"


def eval_cli(model: Path, audio: Path, out: Path, *extra: str):
    from typer.testing import CliRunner

    from ltbm.cli import app

    args = ["eval", "--backbone", "hf", "--model", str(model), "--task", "mmau"]
    args += ["--json", str(MMAU_JSON), "--audio-dir", str(audio), "--out", str(out)]
    args += ["--method", "pool", "--keep-ratio", "0.5", "--max-new-tokens", "4", *extra]
    return CliRunner().invoke(app, args)


@pytest.mark.slow
def test_cli_subset_run_matches_both_official_scripts(cli_setup, tmp_path: Path):
    from ltbm.tasks.subset import stratified_subset

    model, audio = cli_setup
    expected = stratified_subset(MMAUTask(MMAU_JSON, audio).items(), 12, seed=5)
    assert {item.meta["difficulty"] for item in expected} == {"easy", "medium", "hard"}
    broken = expected[0]
    clip = audio / str(broken.meta["audio_id"])
    saved = clip.read_bytes()
    clip.write_bytes(b"not a wav file")
    try:
        result = eval_cli(model, audio, tmp_path, "--subset", "12", "--seed", "5")
    finally:
        clip.write_bytes(saved)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "--subset 12: a sample stratified by task and difficulty, seed 5" in result.output
    run_dir = tmp_path / "mmau" / "qwen2-audio" / "pool-r0.5"
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert (payload["settings"]["subset"], payload["settings"]["subset_seed"]) == (12, 5)
    metrics = payload["metrics"]
    assert (metrics["items"], metrics["missing"]) == (12, 1)
    assert_equal_to_official(metrics, run_dir / SUBMISSION_FILE)
    lines = (run_dir / "items.jsonl").read_text().splitlines()
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert sorted(records) == sorted(item.id for item in expected)
    for item in expected:
        record = records[item.id]
        for key in ("task", "difficulty", "category", "sub_category", "answer", "choices"):
            assert key in record
        assert record["sub_category"] == item.meta["sub-category"]
        assert {"correct", "correct_lenient"} <= set(record)
        if item.id == broken.id:
            assert "error" in record and record["correct"] is False
        else:
            assert record["correct"] is record_fields(item, record["prediction"])["correct"]
            assert "(A)" not in record["prompt"] and item.choices[0] in record["prompt"]
    assert sum(r["correct"] for r in records.values()) == metrics["correct"]


@pytest.mark.slow
def test_cli_limit_says_it_takes_the_first_items(cli_setup, tmp_path: Path):
    model, audio = cli_setup
    result = eval_cli(model, audio, tmp_path, "--limit", "1")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "--limit 1: the first items in the dataset's order, not a sample" in result.output
    both = eval_cli(model, audio, tmp_path, "--limit", "1", "--subset", "2")
    assert both.exit_code == 2 and "exclude each other" in both.output
    stray = eval_cli(model, audio, tmp_path, "--seed", "3")
    assert stray.exit_code == 2 and "--seed seeds --subset" in stray.output


@pytest.mark.slow
def test_sweep_subset_is_reused_only_for_the_same_sample(cli_setup, tmp_path: Path):
    from typer.testing import CliRunner

    from ltbm.cli import app

    model, audio = cli_setup
    base = ["sweep", "--backbone", "hf", "--model", str(model), "--task", "mmau"]
    base += ["--json", str(MMAU_JSON), "--audio-dir", str(audio), "--out", str(tmp_path)]
    base += ["--methods", "none", "--max-new-tokens", "2", "--subset", "6"]
    metrics_path = tmp_path / "mmau" / "qwen2-audio" / "none" / "metrics.json"
    seeds = []
    for seed in ("1", "1", "2"):
        result = CliRunner().invoke(app, [*base, "--seed", seed])
        assert result.exit_code == 0, result.output + repr(result.exception)
        settings = json.loads(metrics_path.read_text())["settings"]
        seeds.append((settings["subset"], settings["subset_seed"]))
    assert seeds == [(6, 1), (6, 1), (6, 2)]
