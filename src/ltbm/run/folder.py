"""What a cell folder holds and how a run claims it: its identity file, its result files,
its writer lock, and which items a resumed run still has to do.

A folder is bound to one identity (:mod:`ltbm.run.identity`); one process writes each
(cell, rank) at a time; an item is done when its latest record succeeded (or failed, when
failures are kept) on the audio file as it is now.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from ltbm.run.records import ITEMS_PATTERN, ResultWriteError, write_json_atomic
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
