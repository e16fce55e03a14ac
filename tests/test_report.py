"""`ltbm report`'s statistics on small synthetic sweeps written in the harness's layout
(``TASK/BACKBONE/CELL/items.jsonl`` and ``metrics.json``), whose answers are known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltbm.cli import app
from ltbm.metrics.wer import word_error_rate
from ltbm.report.build import write_report
from ltbm.report.stats import StatsOptions, report_stats
from ltbm.run.evaluate import Cell
from ltbm.run.records import RecordWriter, write_json_atomic

pytest.importorskip("jiwer")

REFERENCES = {
    "a": "the cat sat on the mat",
    "b": "a quick brown fox jumps over the lazy dog",
    "c": "she sells sea shells by the sea shore",
    "d": "one two three four five six seven eight nine ten",
}
FAST = StatsOptions(resamples=500)


def write_cell(
    root: Path,
    cell: Cell,
    records: list[dict],
    task: str = "speech",
    kind: str = "asr",
    backbone: str = "whisper-ct2",
    frame_rate: int = 50,
) -> Path:
    """One finished run as the harness writes it."""
    run_dir = root / task / backbone / cell.name
    with RecordWriter(run_dir / "items.jsonl") as writer:
        for record in records:
            writer.write(record)
    scored = [r for r in records if "error" not in r]
    metrics = {}
    if kind == "asr" and scored:
        refs = [r["references"][0] for r in scored]
        metrics = word_error_rate(refs, [r["prediction"] for r in scored]).as_dict()
    payload = {
        "task": task,
        "task_kind": kind,
        "backbone": backbone,
        "cell": cell.as_dict(),
        "cell_name": cell.name,
        "items": len(records),
        "completed": len(records),
        "scored": len(scored),
        "metrics": metrics,
        "backbone_details": {"frame_rate_hz": frame_rate},
        "settings": {},
    }
    write_json_atomic(run_dir / "metrics.json", payload)
    return run_dir


def asr_records(hypotheses: dict[str, str], failed: tuple[str, ...] = ()) -> list[dict]:
    records = []
    for item_id, reference in REFERENCES.items():
        if item_id in failed:
            records.append({"id": item_id, "error": "AudioError: unreadable", "meta": {}})
        else:
            records.append(
                {
                    "id": item_id,
                    "prediction": hypotheses.get(item_id, reference),
                    "references": [reference],
                    "meta": {},
                }
            )
    return records


def by_label(stats: dict, label: str, keep: float) -> dict:
    return next(c for c in stats["cells"] if c["label"] == label and c["keep_ratio"] == keep)


def difference(stats: dict, a: str, b: str, keep: float) -> dict:
    return next(
        d for d in stats["differences"] if (d["a"], d["b"], d["keep_ratio"]) == (a, b, keep)
    )


ONE_ERROR = {  # one edit per item: substitution, substitution, deletion, deletion
    "a": "the cat sat on the hat",
    "b": "a quick brown fox jumps over a lazy dog",
    "c": "she sells sea shells by the sea",
    "d": "one two three four five six seven eight nine",
}
BROKEN = {  # three early stops (3, 5, 5 words deleted) and a loop (3 inserted words)
    "a": "the cat sat",
    "b": "a quick brown fox",
    "c": "she sells sea",
    "d": "one two three four five six seven eight nine ten ten ten ten",
}
WORDS = 6 + 9 + 8 + 10


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """keep 0.5: ltbm = global (identical outputs), pool worse on every item;
    keep 0.25: ltbm w=1 better than global on every item, ltbm w=2 = global, pool
    identical to global but item d failed."""
    root = tmp_path / "runs"
    write_cell(root, Cell("none", 1.0), asr_records({}))
    write_cell(root, Cell("ltbm", 0.5, window=1), asr_records(ONE_ERROR))
    write_cell(root, Cell("global", 0.5), asr_records(ONE_ERROR))
    write_cell(root, Cell("pool", 0.5), asr_records(BROKEN))
    write_cell(root, Cell("ltbm", 0.25, window=1), asr_records(ONE_ERROR))
    write_cell(root, Cell("ltbm", 0.25, window=2), asr_records(BROKEN))
    write_cell(root, Cell("global", 0.25), asr_records(BROKEN))
    write_cell(root, Cell("pool", 0.25), asr_records(BROKEN, failed=("d",)))
    return root


def test_identical_cells_differ_by_exactly_zero_and_tie_on_every_item(sweep):
    stats = report_stats([sweep], FAST)
    row = difference(stats, "ltbm w=1", "global", 0.5)
    assert row["difference"]["estimate"] == row["difference"]["low"] == 0.0
    assert row["difference"]["high"] == 0.0 and row["difference"]["items"] == 4
    assert (row["wins"], row["ties"], row["losses"]) == (0, 4, 0)
    assert not row["excludes_zero"] and row["better"] is None
    same = difference(stats, "ltbm w=2", "global", 0.25)  # every ltbm window is compared
    assert (same["difference"]["low"], same["difference"]["high"], same["ties"]) == (0, 0, 4)


def test_a_method_better_on_every_item_wins_everywhere_and_excludes_zero(sweep):
    stats = report_stats([sweep], FAST)
    row = difference(stats, "ltbm w=1", "global", 0.25)
    assert row["difference"]["estimate"] == pytest.approx(4 / WORDS - 16 / WORDS)
    assert row["difference"]["high"] < 0 and row["excludes_zero"]
    assert (row["wins"], row["ties"], row["losses"]) == (4, 0, 0)
    assert row["better"] == "ltbm w=1" and row["lower_is_better"]
    pool = difference(stats, "ltbm w=1", "pool", 0.5)
    assert pool["excludes_zero"] and pool["wins"] == 4


def test_cell_wer_is_the_corpus_ratio_of_sums_with_its_failure_modes(sweep):
    stats = report_stats([sweep], FAST)
    cell = by_label(stats, "global", 0.25)
    harness = json.loads((sweep / "speech/whisper-ct2/global-r0.25/metrics.json").read_text())
    assert cell["interval"]["estimate"] == pytest.approx(16 / WORDS) == harness["metrics"]["wer"]
    per_item_mean = (3 / 6 + 5 / 9 + 5 / 8 + 3 / 10) / 4
    assert cell["interval"]["estimate"] != pytest.approx(per_item_mean)
    assert cell["interval"]["low"] <= 16 / WORDS <= cell["interval"]["high"]
    breakdown = cell["wer_breakdown"]
    assert (breakdown["deletions"], breakdown["insertions"], breakdown["substitutions"]) == (
        13,
        3,
        0,
    )
    assert breakdown["share_deletions"] == pytest.approx(13 / 16)
    assert (breakdown["early_stops"], breakdown["loops"], breakdown["empty"]) == (3, 1, 0)
    assert breakdown["loop_examples"] == ["speech/d"]
    perfect = by_label(stats, "none", 1.0)["interval"]
    assert perfect["estimate"] == perfect["low"] == perfect["high"] == 0.0


def test_failed_items_are_left_out_and_differences_say_what_was_unpaired(sweep):
    stats = report_stats([sweep], FAST)
    pool = by_label(stats, "pool", 0.25)
    assert (pool["items"], pool["failed"], pool["failed_examples"]) == (3, 1, ["speech/d"])
    row = difference(stats, "ltbm w=1", "pool", 0.25)
    assert row["difference"]["items"] == 3
    assert (row["only_in_a"], row["only_in_b"], row["unpaired_examples"]) == (1, 0, ["speech/d"])
    assert row["difference"]["estimate"] == pytest.approx(3 / 23 - 13 / 23)


def test_pairs_choose_the_comparisons_and_none_meets_every_keep_ratio(sweep):
    options = StatsOptions(resamples=200, pairs=(("ltbm", "ltbm"), ("global", "none")))
    stats = report_stats([sweep], options)
    pairs = sorted((d["a"], d["b"], d["keep_ratio"]) for d in stats["differences"])
    assert pairs == [
        ("global", "none", 0.25),
        ("global", "none", 0.5),
        ("ltbm w=1", "ltbm w=2", 0.25),
    ]


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def test_cli_report_prints_the_intervals_and_writes_json_and_csv(sweep):
    result = invoke(["report", str(sweep), "--resamples", "1000", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "## Statistics" in result.output
    assert "1000 resamples, seed 3" in result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if line.startswith("| 0.25 | ltbm w=1 − global |"))
    assert "| 4 / 0 / 0 | 4 |" in row and "] *" in row  # all wins, interval excludes 0
    tied = next(line for line in lines if line.startswith("| 0.5 | ltbm w=1 − global |"))
    assert "| +0.0000 | [+0.0000, +0.0000] | 0 / 4 / 0 | 4 |" in tied
    assert "| 0.25 | ltbm w=1 − pool | " in result.output and "(1 unpaired)" in result.output
    cell = next(line for line in lines if line.startswith("| 0.25 | global |"))
    assert f"| {16 / WORDS:.4f} |" in cell and "| 0% / 81% / 19% | 3 | 1 |" in cell
    saved = json.loads((sweep / "report-stats.json").read_text())
    again = report_stats([sweep], StatsOptions(resamples=1000, seed=3))
    assert json.loads(json.dumps(again, default=str)) == saved
    cells_csv = (sweep / "report-cells.csv").read_text().splitlines()
    assert len(cells_csv) == 1 + 8 and cells_csv[0].startswith("task,kind,backbone,frame_rate_hz")
    assert len((sweep / "report-differences.csv").read_text().splitlines()) == 1 + 6
    assert len((sweep / "report-items.csv").read_text().splitlines()) == 1 + 8 * 4 - 1
    assert (sweep / "report.md").read_text().count("## Statistics") == 1
    assert len(json.loads((sweep / "report.json").read_text())) == 8  # the tables stay
    assert (sweep / "speech_whisper-ct2_50hz_wer_intervals.png").stat().st_size > 10_000


def test_cli_report_names_a_damaged_metrics_file(sweep):
    damaged = sweep / "speech/whisper-ct2/pool-r0.5/metrics.json"
    damaged.write_text('{"task": ')
    result = invoke(["report", str(sweep)])
    assert result.exit_code == 2 and "pool-r0.5/metrics.json is not valid JSON" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pairs", "ltbm"], "write pairs as A-B"),
        (["--resamples", "0"], "resamples must lie between 1 and"),
        (["--level", "95"], "level must lie strictly between 0 and 1"),
        (["SECOND"], "pass --out"),
        (["MISSING"], "no runs folder"),
    ],
)
def test_cli_report_refuses_bad_options_in_one_line(sweep, tmp_path, args, message):
    (tmp_path / "SECOND").mkdir()
    args = [str(tmp_path / a) if a in ("SECOND", "MISSING") else a for a in args]
    if args[0].endswith("MISSING"):
        result = invoke(["report", args[0]])
    else:
        result = invoke(["report", str(sweep), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_two_folders_of_one_task_pool_into_one_item_set(tmp_path):
    """The locality study's two speech folders, run as the same task name in two places."""
    small, large = tmp_path / "speech27", tmp_path / "librispeech300"
    for root, hypotheses in ((small, ONE_ERROR), (large, BROKEN)):
        write_cell(root, Cell("ltbm", 0.25, window=1), asr_records(hypotheses))
        write_cell(root, Cell("global", 0.25), asr_records(BROKEN))
    apart = report_stats([small, large], FAST)
    assert {c["condition"]["task"] for c in apart["cells"]} == {
        "speech@speech27",
        "speech@librispeech300",
    }
    assert len(apart["differences"]) == 2
    pooled = report_stats([small, large], StatsOptions(resamples=500, pool_tasks=True))
    assert {c["condition"]["task"] for c in pooled["cells"]} == {
        "speech@librispeech300+speech@speech27"
    }
    ltbm = by_label(pooled, "ltbm w=1", 0.25)
    assert ltbm["items"] == 8 and ltbm["interval"]["estimate"] == pytest.approx(20 / (2 * WORDS))
    row = difference(pooled, "ltbm w=1", "global", 0.25)
    assert row["difference"]["items"] == 8 and (row["wins"], row["ties"]) == (4, 4)
    result = invoke(["report", str(small), str(large), "--pool-tasks", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "### speech@librispeech300+speech@speech27 — whisper-ct2 @ 50 Hz" in result.output


def test_pooling_joins_distinct_tasks_of_one_folder_and_keeps_frame_rates_apart(tmp_path):
    root = tmp_path / "runs"
    for task in ("speech:speech", "speech:librispeech"):
        write_cell(root, Cell("ltbm", 0.25, window=1), asr_records(ONE_ERROR), task=task)
        write_cell(root, Cell("global", 0.25), asr_records(BROKEN), task=task)
    write_cell(root / "rate25", Cell("global", 0.25), asr_records(ONE_ERROR), frame_rate=25)
    stats = report_stats([root], StatsOptions(resamples=200, pool_tasks=True))
    conditions = {(c["condition"]["task"], c["condition"]["frame_rate_hz"]) for c in stats["cells"]}
    assert conditions == {("speech:librispeech+speech:speech", 50), ("speech", 25)}
    (row,) = stats["differences"]  # the 25 Hz global is never paired with 50 Hz ltbm
    assert row["difference"]["items"] == 8 and row["condition"]["frame_rate_hz"] == 50


def mmau_records(verdicts: dict[str, tuple[bool, bool]], failed: tuple[str, ...] = ()) -> list:
    groups = {
        "q1": ("sound", "easy", "Sound Event Detection"),
        "q2": ("sound", "hard", "Sound Event Detection"),
        "q3": ("music", "easy", "Genre Identification"),
        "q4": ("speech", "medium", "Speaker Counting"),
    }
    records = []
    for item_id, (task, difficulty, sub) in groups.items():
        meta = {"task": task, "difficulty": difficulty, "sub-category": sub}
        if item_id in failed:
            records.append({"id": item_id, "error": "RuntimeError: out of memory", "meta": meta})
            continue
        correct, lenient = verdicts[item_id]
        records.append(
            {
                "id": item_id,
                "prediction": "...",
                "references": ["answer"],
                "correct": correct,
                "correct_lenient": lenient,
                "task": task,
                "difficulty": difficulty,
                "meta": meta,
            }
        )
    return records


def test_mmau_reports_official_accuracy_per_task_difficulty_and_sub_category(tmp_path):
    root = tmp_path / "runs"
    verdicts = {"q1": (True, True), "q2": (False, True), "q3": (True, True), "q4": (False, False)}
    kind = {"task": "mmau", "kind": "mcq", "backbone": "qwen2-audio", "frame_rate": 25}
    write_cell(root, Cell("ltbm", 0.25, window=1), mmau_records(verdicts), **kind)
    write_cell(root, Cell("global", 0.25), mmau_records(verdicts, failed=("q3",)), **kind)
    old = [{k: v for k, v in r.items() if k != "correct"} for r in mmau_records(verdicts)]
    write_cell(root, Cell("pool", 0.25), old, **kind)
    stats = report_stats([root], FAST)
    ltbm = by_label(stats, "ltbm w=1", 0.25)
    assert ltbm["interval"]["estimate"] == 0.5 and ltbm["mmau"]["accuracy_lenient"] == 0.75
    groups = ltbm["mmau"]["groups"]
    assert {k: v["accuracy"] for k, v in groups["task"].items()} == {
        "music": 1.0,
        "sound": 0.5,
        "speech": 0.0,
    }
    assert groups["difficulty"]["easy"]["correct"] == 2
    assert groups["sub_category"]["Sound Event Detection"]["total"] == 2  # from meta
    failed = by_label(stats, "global", 0.25)  # a failed item counts as wrong, as in the headline
    assert (failed["items"], failed["failed"], failed["interval"]["estimate"]) == (4, 1, 0.25)
    row = difference(stats, "ltbm w=1", "global", 0.25)
    assert (row["wins"], row["ties"], row["losses"]) == (1, 3, 0)
    assert "per-item verdict" in by_label(stats, "pool", 0.25)["unavailable"]
    assert "per-item verdict" in difference(stats, "ltbm w=1", "pool", 0.25)["unavailable"]
    paths = write_report(root, options=FAST)
    text = paths["stats_markdown"].read_text()
    assert "| keep | cell | sound | music | speech | all |" in text
    assert "| 0.25 | ltbm w=1 | 50.0 | 100.0 | 0.0 | 50.0 |" in text
    assert "By sub-category" in text and "| Sound Event Detection | 2 | 50.0 | 50.0 |" in text
    assert "Intervals not available:\n- pool (keep 0.25)" in text
    assert "group,name,accuracy" in paths["mmau_csv"].read_text()


def test_caption_intervals_need_per_item_scores(tmp_path):
    root = tmp_path / "runs"
    kind = {"task": "clotho", "kind": "caption", "backbone": "qwen2-audio"}
    scored = [
        {"id": str(i), "prediction": "x", "scores": {"cider_d": v}}
        for i, v in enumerate([0.2, 0.4, 0.9])
    ]
    write_cell(root, Cell("ltbm", 0.25, window=1), scored, **kind)
    write_cell(root, Cell("global", 0.25), [{"id": "0", "prediction": "x"}], **kind)
    stats = report_stats([root], FAST)
    assert by_label(stats, "ltbm w=1", 0.25)["interval"]["estimate"] == pytest.approx(0.5)
    assert "no per-item cider_d" in by_label(stats, "global", 0.25)["unavailable"]


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_caption_intervals_from_stored_captions_match_the_corpus_cider(tmp_path):
    pytest.importorskip("pycocoevalcap")
    from ltbm.metrics.captions import score_captions
    from ltbm.tasks.base import Item

    references = {
        "0": ["a dog barks twice", "a dog is barking loudly"],
        "1": ["rain falls on a roof", "heavy rain on a metal roof"],
        "2": ["a man speaks over music", "a man talks while music plays"],
    }
    good = {"0": "a dog barks", "1": "rain falls on a metal roof", "2": "a man speaks"}
    poor = {"0": "a cat", "1": "wind blows", "2": "music plays"}
    root = tmp_path / "runs"
    kind = {"task": "clotho", "kind": "caption", "backbone": "qwen2-audio"}
    for cell, captions in ((Cell("ltbm", 0.25, window=1), good), (Cell("global", 0.25), poor)):
        records = [
            {"id": i, "prediction": captions[i], "references": refs}
            for i, refs in references.items()
        ]
        write_cell(root, cell, records, **kind)
    stats = report_stats([root], FAST)
    items = [Item(i, Path(), references=refs) for i, refs in references.items()]
    corpus = score_captions(good, items, ["cider_d"]).metrics["cider_d"]
    ltbm = by_label(stats, "ltbm w=1", 0.25)["interval"]
    assert ltbm["estimate"] == pytest.approx(corpus) and ltbm["low"] <= corpus <= ltbm["high"]
    row = difference(stats, "ltbm w=1", "global", 0.25)
    assert row["wins"] == 3 and row["excludes_zero"] and not row["lower_is_better"]
