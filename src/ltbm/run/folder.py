"""What a cell folder holds and how a run claims it: its identity file, its result files,
its writer lock, and which items a resumed run still has to do.

A folder is bound to one identity (:mod:`ltbm.run.identity`); one process writes each
(cell, rank) at a time; an item is done when its latest record succeeded (or failed, when
failures are kept) on the audio file as it is now. Each rank of a launch leaves a done
marker naming the launch's world size, and the cell is finalized once every rank of that
size has one and the records cover every selected item.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ltbm.run.identity import (
    IDENTITY_FILE,
    RunConflict,
    check_identity,
    fingerprint,
    identity_payload,
    read_identity,
)
from ltbm.run.records import ITEMS_PATTERN, ResultWriteError, read_records, write_json_atomic
from ltbm.tasks.base import Item


def check_cell(run_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse, before any work, a cell folder whose results were made under another
    identity (read-only: a sweep checks every cell before running the first)."""
    check_identity(run_dir, identity, has_results=has_results(run_dir))


def has_results(run_dir: Path) -> bool:
    return any(run_dir.glob(ITEMS_PATTERN)) or (run_dir / "metrics.json").exists()


RESULT_PATTERNS = (ITEMS_PATTERN, "done.rank*", "metrics.json", IDENTITY_FILE, "submission.json")


def clear_results(run_dir: Path) -> None:
    """What ``--fresh`` removes: the cell's own result files (anything else in the folder
    is left alone)."""
    for pattern in RESULT_PATTERNS:
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)
    for path in run_dir.glob("*.tmp*"):
        path.unlink(missing_ok=True)


def cell_lock(run_dir: Path, rank: int):
    """One writer per (cell, rank): see :func:`writer_lock`."""
    return writer_lock(run_dir / f"writer.rank{rank}.lock")


def done_marker(run_dir: Path, rank: int) -> Path:
    return run_dir / f"done.rank{rank}"


def mark_done(run_dir: Path, rank: int, world_size: int) -> None:
    """Say that ``rank`` of a ``world_size``-process launch has written all its items."""
    marker = {"rank": rank, "world_size": world_size, "finished_at": time.time()}
    write_text(done_marker(run_dir, rank), json.dumps(marker))


def launch_finished(run_dir: Path, world_size: int, items: list[Item]) -> bool:
    """Whether the cell can be finalized: every rank of a ``world_size``-process launch has
    a done marker written under that same world size, and the records hold every selected
    item. A marker left by a launch of another size (or by an older ltbm, which wrote only a
    time) never counts; one left by an earlier launch of the same size may, but then the
    records must still cover the selection, so metrics are never written with items missing."""
    if any(_marker_world_size(run_dir, rank) != world_size for rank in range(world_size)):
        return False
    records = read_records(run_dir)
    return all(item.id in records for item in items)


def metrics_are_current(run_dir: Path) -> bool:
    """Whether ``metrics.json`` was written after every done marker in the folder, i.e. by
    the launch that just ran (or the cell was complete before it). A shard that finishes
    before the last one finds the metrics of an earlier launch, if any: older than its own
    marker, so not what this launch will report."""
    metrics = run_dir / "metrics.json"
    if not metrics.exists():
        return False
    written = metrics.stat().st_mtime
    return all(path.stat().st_mtime <= written for path in run_dir.glob("done.rank*"))


def _marker_world_size(run_dir: Path, rank: int) -> int | None:
    try:
        marker = json.loads(done_marker(run_dir, rank).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no marker, or a damaged one: that rank has not finished
    return marker.get("world_size") if isinstance(marker, dict) else None


@contextmanager
def finish_lock(run_dir: Path) -> Iterator[None]:
    """Held by a rank while it marks itself done and, if it is the last, finalizes: ranks
    finishing together take turns, so exactly one of them sees every marker. It waits rather
    than refuses (the holder is only scoring), and the OS frees it if the holder dies."""
    from filelock import FileLock

    with FileLock(str(run_dir / "finish.lock")):
        yield


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` as a lock while writing; a second process is refused at once, not
    queued. The operating system releases the lock when its holder dies (even by kill -9),
    so a killed run never leaves its folder locked."""
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultWriteError(path.parent, error) from None
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunConflict(
            f"another ltbm run is writing {path.parent} (lock {path.name} is held); wait for "
            "it to finish, or pass another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def pending(
    items: list[Item], records: dict[str, dict[str, Any]], retry_failed: bool
) -> list[Item]:
    """The items to run: those without a record, those whose audio file changed since its
    record was made, and (``retry_failed``) those whose last attempt failed."""
    todo = []
    for item in items:
        record = records.get(item.id)
        if (
            record is None
            or (retry_failed and "error" in record)
            or record.get("audio_sha256") != audio_digest(item.audio)
        ):
            todo.append(item)
    return todo


_DIGESTS: dict[tuple[str, int, int], str | None] = {}


def audio_digest(path: Path) -> str | None:
    """A hash of an audio file's bytes (None if it cannot be read), recorded with each
    item, so a clip replaced in place is run again rather than reported from the old one.
    Cached per process by path, size and modification time."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        try:
            _DIGESTS[key] = hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
        except OSError:
            return None
    return _DIGESTS[key]


def store_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    stored = read_identity(run_dir)
    if stored is None or stored.get("fingerprint") != fingerprint(identity):
        write_json_atomic(run_dir / IDENTITY_FILE, identity_payload(identity))


def is_complete(
    run_dir: Path, identity: dict[str, Any], selection: dict[str, Any], retry_failed: bool
) -> bool:
    """Whether the metrics file already covers this identity and selection, with nothing
    left to retry: then the cell is reused as it is."""

    path = run_dir / "metrics.json"
    if not path.exists():
        return False
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # damaged: recomputed from the records
    if not isinstance(metrics, dict):
        return False  # not a metrics file (a list, a number): recomputed too
    return (
        metrics.get("fingerprint") == fingerprint(identity)
        and metrics.get("selection") == selection
        and metrics.get("completed") == metrics.get("items")
        and not (retry_failed and metrics.get("failed"))
    )


def write_text(path: Path, text: str) -> None:
    """A small marker file, with a write failure reported as a :class:`ResultWriteError`."""
    try:
        path.write_text(text)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise ResultWriteError(path, error) from None
