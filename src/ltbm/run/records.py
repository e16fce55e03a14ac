"""Result files of a run: one JSON line per item, appended as each finishes.

A run killed at any point loses at most the line being written: lines are flushed and
fsynced one by one, and a torn last line (no newline) is ignored when the run resumes.
Each process of a sharded run appends to its own file, so no two writers share one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ITEMS_PATTERN = "items*.jsonl"


def shard_file(run_dir: Path, rank: int, world_size: int) -> Path:
    """Where a process writes its items: ``items.jsonl`` alone, ``items.rank{r}.jsonl``
    when sharded."""
    return run_dir / ("items.jsonl" if world_size == 1 else f"items.rank{rank}.jsonl")


def read_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every complete record of a run, from all its shard files, keyed by item id. If an
    id appears twice (a run resumed with a different shard count), it counts once: the
    record from the first file in name order."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob(ITEMS_PATTERN)):
        for record in _read_lines(path):
            records.setdefault(record["id"], record)
    return records


def _read_lines(path: Path) -> Iterable[dict[str, Any]]:
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                return  # torn write from a killed run: the item will be redone
            try:
                yield json.loads(raw)
            except json.JSONDecodeError:
                continue


class RecordWriter:
    """Appends records durably, one line at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(path)
        self._handle = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line so appended records start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
    os.replace(temporary, path)
