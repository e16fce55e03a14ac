"""Per-item records survive kills: torn lines are dropped, shards are merged, ids once."""

from __future__ import annotations

import json

from ltbm.run.evaluate import Cell, Shard
from ltbm.run.records import RecordWriter, read_records, shard_file, write_json_atomic
from ltbm.tasks.base import Item


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path):
    path = shard_file(tmp_path, 0, 1)
    with RecordWriter(path) as writer:
        writer.write({"id": "a", "prediction": "x"})
        writer.write({"id": "b", "prediction": "y"})
    with path.open("a") as handle:
        handle.write('{"id": "c", "predic')  # killed mid-write
    assert list(read_records(tmp_path)) == ["a", "b"]
    with RecordWriter(path) as writer:
        writer.write({"id": "c", "prediction": "z"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]


def test_shards_merge_and_each_id_counts_once(tmp_path):
    with RecordWriter(shard_file(tmp_path, 0, 2)) as writer:
        writer.write({"id": "a", "prediction": "first"})
    with RecordWriter(shard_file(tmp_path, 1, 2)) as writer:
        writer.write({"id": "b", "prediction": "other"})
    with RecordWriter(shard_file(tmp_path, 0, 1)) as writer:
        writer.write({"id": "a", "prediction": "duplicate from a later single run"})
    records = read_records(tmp_path)
    assert sorted(records) == ["a", "b"]
    assert records["a"]["prediction"] in {"first", "duplicate from a later single run"}


def test_shards_split_items_without_overlap():
    items = [Item(id=str(i), audio=None) for i in range(7)]
    parts = [Shard(rank, 3).take(items) for rank in range(3)]
    ids = [item.id for part in parts for item in part]
    assert sorted(ids, key=int) == [str(i) for i in range(7)]
    assert len(set(ids)) == 7


def test_shard_reads_launcher_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Shard.from_environment() == Shard(1, 2)


def test_atomic_json_leaves_no_temporary(tmp_path):
    write_json_atomic(tmp_path / "metrics.json", {"x": 1})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_cell_names_and_baseline():
    assert Cell("ltbm", 0.25, window=3).name == "ltbm-r0.25-w3"
    assert Cell("prune", 0.5, scorer="norm").name == "prune-r0.5-norm"
    assert Cell("none", 1.0).name == "none"
    assert Cell("none", 1.0).build() is None
    assert Cell("global", 0.15).build().params() == {"method": "global", "keep_ratio": 0.15}


def test_sweep_config_sets_the_random_seed(tmp_path):
    from ltbm.run.sweep import load_grid

    config = tmp_path / "grid.toml"
    config.write_text('methods = ["random"]\nkeep_ratios = [0.5]\nseed = 7\n')
    grid, rest = load_grid(config)
    assert [cell.name for cell in grid.cells()] == ["random-r0.5-s7"]
    assert rest == {}


def test_the_latest_attempt_of_an_item_counts(tmp_path):
    """A failure followed by a successful retry, and a success made stale by a later run
    (its audio was replaced): the record with the latest finish time counts, in any file."""
    with RecordWriter(shard_file(tmp_path, 0, 1)) as writer:
        writer.write({"id": "a", "error": "AudioError: unreadable", "finished_at": 1.0})
        writer.write({"id": "b", "prediction": "new", "finished_at": 5.0})
        writer.write({"id": "a", "prediction": "retried", "finished_at": 2.0})
    with RecordWriter(shard_file(tmp_path, 0, 2)) as writer:
        writer.write({"id": "b", "prediction": "old", "finished_at": 3.0})
    records = read_records(tmp_path)
    assert records["a"]["prediction"] == "retried"
    assert records["b"]["prediction"] == "new"


def test_a_damaged_line_names_its_file_and_line(tmp_path):
    import pytest

    from ltbm.run.records import DamagedRecords

    path = shard_file(tmp_path, 0, 1)
    path.write_text('{"id": "a", "prediction": "x"}\n[1, 2]\n{"id": "c"}\n')
    with pytest.raises(DamagedRecords, match=r"items.jsonl, line 2: not a JSON object"):
        read_records(tmp_path)
    path.write_text('{"id": "a", "prediction": "x"}\n{"id": \n')
    with pytest.raises(DamagedRecords, match="line 2: not valid JSON.*--fresh"):
        read_records(tmp_path)


def test_a_failed_write_leaves_complete_lines_and_no_temporary(tmp_path, monkeypatch):
    import errno

    import pytest

    import ltbm.run.records as records
    from ltbm.run.records import ResultWriteError

    path = shard_file(tmp_path, 0, 1)
    writer = RecordWriter(path)
    writer.write({"id": "a", "prediction": "kept"})

    def full(_descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(ResultWriteError, match=r"cannot write .*items.jsonl: No space left"):
        writer.write({"id": "b", "prediction": "lost"})
    assert list(read_records(tmp_path)) == ["a"]
    assert path.read_text().count("\n") == 1

    def refuse(*_args, **_kwargs):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(records.os, "replace", refuse)
    with pytest.raises(ResultWriteError, match="metrics.json: Permission denied"):
        write_json_atomic(tmp_path / "metrics.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl"]


def test_a_grid_runs_each_distinct_cell_once_and_checks_its_values():
    import pytest

    from ltbm.run.sweep import Grid

    grid = Grid(methods=("pool", "ltbm"), keep_ratios=(0.5, 0.50), windows=(1, 1))
    assert [cell.name for cell in grid.cells()] == ["pool-r0.5", "ltbm-r0.5-w1"]
    with pytest.raises(ValueError, match="keep_ratios must be a list"):
        Grid(keep_ratios=0.5)
    with pytest.raises(ValueError, match="windows must be a whole number"):
        Grid(windows=(1.5,))


def test_the_shipped_sweep_configs_are_valid():
    from pathlib import Path

    from ltbm.run.sweep import load_grid

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert len(configs) >= 3
    for path in configs:
        grid, rest = load_grid(path)
        assert grid.cells()
    assert load_grid(configs[0].parent / "speech-proxy-25hz.toml")[1]["frame_rate"] == 25


def test_compact_keeps_the_latest_record_of_each_item(tmp_path):
    from ltbm.run.records import compact

    path = shard_file(tmp_path, 0, 1)
    with RecordWriter(path) as writer:
        writer.write({"id": "a", "error": "AudioError: unreadable", "finished_at": 1.0})
        writer.write({"id": "b", "prediction": "kept", "finished_at": 2.0})
        writer.write({"id": "a", "prediction": "retried", "finished_at": 3.0})
    before = read_records(tmp_path)
    compact(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["id"], r.get("prediction")) for r in lines] == [("b", "kept"), ("a", "retried")]
    assert read_records(tmp_path) == before
    stamp = path.stat().st_mtime_ns
    compact(path)  # nothing to drop: the file is left alone
    assert path.stat().st_mtime_ns == stamp


def test_only_markers_of_this_world_size_and_full_records_finish_a_launch(tmp_path):
    """A marker left by a launch of another size, or by an older ltbm (a bare time), never
    counts; and all markers are not enough while an item has no record."""
    from ltbm.run.folder import done_marker, launch_finished, mark_done

    items = [Item(id=name, audio=None) for name in "ab"]
    with RecordWriter(shard_file(tmp_path, 0, 2)) as writer:
        writer.write({"id": "a", "prediction": "x"})
    mark_done(tmp_path, 0, 2)
    mark_done(tmp_path, 1, 4)  # rank 1 of an earlier 4-shard launch
    assert not launch_finished(tmp_path, 2, items)
    done_marker(tmp_path, 1).write_text("1764262345.5")  # an older ltbm's marker
    assert not launch_finished(tmp_path, 2, items)
    mark_done(tmp_path, 1, 2)
    assert not launch_finished(tmp_path, 2, items), "item b has no record"
    with RecordWriter(shard_file(tmp_path, 1, 2)) as writer:
        writer.write({"id": "b", "prediction": "y"})
    assert launch_finished(tmp_path, 2, items)
    assert not launch_finished(tmp_path, 3, items)


def test_metrics_are_current_only_when_written_after_every_done_marker(tmp_path):
    """A shard that finishes before the last one must not show an earlier launch's metrics
    as this launch's results: they are current only if newer than every done marker."""
    import os

    from ltbm.run.folder import done_marker, metrics_are_current

    metrics = tmp_path / "metrics.json"
    assert not metrics_are_current(tmp_path)  # none yet
    metrics.write_text("{}")
    os.utime(metrics, (1000, 1000))
    assert metrics_are_current(tmp_path)  # no markers: a single, finished run
    done_marker(tmp_path, 0).write_text("{}")
    os.utime(done_marker(tmp_path, 0), (900, 900))
    assert metrics_are_current(tmp_path)  # written after the launch finished
    done_marker(tmp_path, 1).write_text("{}")
    os.utime(done_marker(tmp_path, 1), (2000, 2000))
    assert not metrics_are_current(tmp_path)  # a shard of a newer launch finished since
