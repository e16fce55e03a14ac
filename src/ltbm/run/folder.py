"""What a cell folder holds and how a run claims it: its identity file, its result files,
its writer lock, and which items a resumed run still has to do.

A folder is bound to one identity (:mod:`ltbm.run.identity`); one process writes each
(cell, rank) at a time; an item is done when its latest record succeeded (or failed, when
failures are kept) on the audio file as it is now. Each rank of a launch leaves a done
marker naming the launch's world size, and the cell is finalized once every rank of that
size has one and the records cover every selected item.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
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
    differences,
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


@contextmanager
def cell_lock(run_dir: Path, rank: int, world_size: int = 1) -> Iterator[None]:
    """One writer per cell: a single-process run holds the cell's lock (``writer.lock``)
    alone; the ranks of a sharded launch share it, each holding its own rank's lock too
    (:func:`writer_lock`). So a run without a launcher and a rank of a launch never write
    one cell at once (the run's ``--fresh`` would delete the rank's files, and both would
    write the same items), while the ranks of one launch work side by side."""
    with shared_lock(run_dir / "writer.lock", exclusive=world_size == 1):
        with writer_lock(run_dir / f"writer.rank{rank}.lock"):
            yield


@contextmanager
def shared_lock(path: Path, exclusive: bool) -> Iterator[None]:
    """``path`` held shared (by any number of holders) or exclusive (by one), refused at
    once when the other kind is held. An ``flock`` of the operating system, released when
    its holder dies; where there is none (Windows), only exclusive holders are locked out
    of each other."""
    if importlib.util.find_spec("fcntl") is None:  # no flock: exclusive file locks only
        if exclusive:
            with writer_lock(path):
                yield
        else:
            yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultWriteError(path, error) from None
    with held_file_lock(path, wait=False, shared=not exclusive) as acquired:
        if not acquired:
            raise RunConflict(
                f"another ltbm run is writing {path.parent} (lock {path.name} is held by "
                f"{'a run or the ranks of a launch' if exclusive else 'a run without a launcher'}"
                "); wait for it to finish, or pass another --out"
            )
        yield


def done_marker(run_dir: Path, rank: int) -> Path:
    return run_dir / f"done.rank{rank}"


def mark_done(
    run_dir: Path, rank: int, world_size: int, selection: dict[str, Any] | None = None
) -> None:
    """Say that ``rank`` of a ``world_size``-process launch has written all its items of
    ``selection`` (which items the launch evaluates, see ``selection_of``)."""
    marker = {
        "rank": rank,
        "world_size": world_size,
        "selection": selection,
        "finished_at": time.time(),
    }
    write_text(done_marker(run_dir, rank), json.dumps(marker))


def launch_finished(
    run_dir: Path, world_size: int, items: list[Item], selection: dict[str, Any] | None = None
) -> bool:
    """Whether the cell can be finalized: every rank of a ``world_size``-process launch has
    a done marker written under that same world size and the same selection, and the
    records hold every selected item. A marker left by a launch of another size or
    selection (or by an older ltbm, which wrote neither) never counts; one left by an
    earlier launch of the same size and selection may, but then the records must still
    cover the selection, so metrics are never written with items missing."""
    for rank in range(world_size):
        marker = _marker(run_dir, rank)
        if marker.get("world_size") != world_size or marker.get("selection") != selection:
            return False
    records = read_records(run_dir)
    return all(item.id in records for item in items)


def other_selections(
    run_dir: Path, rank: int, world_size: int, selection: dict[str, Any] | None
) -> list[tuple[int, Any, float]]:
    """The other ranks of a ``world_size``-process launch that finished this cell under
    another selection (another ``--limit``, ``--subset``, seed or dataset listing) and are
    not running now, as (rank, its selection, when it finished). Each rank waits for the
    others' markers of its own selection, so with such a rank in the launch none of them
    would write the metrics. A marker older than the metrics file belongs to a finished
    earlier launch, and a rank whose writer lock is held is running and will replace its
    marker: neither is listed."""
    metrics = run_dir / "metrics.json"
    written = metrics.stat().st_mtime if metrics.exists() else float("-inf")
    found = []
    for other in range(world_size):
        marker = _marker(run_dir, other)
        theirs = marker.get("selection")
        if other == rank or marker.get("world_size") != world_size or theirs == selection:
            continue
        if done_marker(run_dir, other).stat().st_mtime <= written or _running(run_dir, other):
            continue
        finished = marker.get("finished_at")
        found.append((other, theirs, finished if isinstance(finished, (int, float)) else 0.0))
    return found


def selection_conflict(
    run_dir: Path, others: list[tuple[int, Any, float]], selection: dict[str, Any] | None
) -> str:
    """The message for :func:`other_selections`' first rank: what differs and the way out."""
    other, theirs, _ = others[0]
    found = differences(theirs, selection, labels=(f"for rank {other}", "for this rank"))
    return (
        f"rank {other} finished {run_dir} under another selection than this rank "
        f"({'; '.join(found[:3])}), so no rank of this launch can write its metrics. Launch "
        "every rank with the same --limit, --subset, --seed and dataset (finished items are "
        "kept)"
    )


def launch_note(run_dir: Path, rank: int, world_size: int) -> str | None:
    """For a rank that finished without writing the metrics: why no rank may write them
    (another rank's marker names another selection), or None when the last rank will."""
    selection = _marker(run_dir, rank).get("selection")
    others = other_selections(run_dir, rank, world_size, selection)
    if not others:
        return None
    other = others[0][0]
    return (
        f"{selection_conflict(run_dir, others, selection)}. If rank {other}'s marker is left "
        f"from an earlier launch and this launch's rank {other} is still to come, it writes "
        "the metrics when it finishes"
    )


def _running(run_dir: Path, rank: int) -> bool:
    """Whether some process holds ``rank``'s writer lock now (it is still writing); the
    probe leaves no lock file behind."""
    with held_file_lock(run_dir / f"writer.rank{rank}.lock", wait=False) as acquired:
        return not acquired


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


def _marker(run_dir: Path, rank: int) -> dict[str, Any]:
    """A rank's done marker ({} when it has none, or a damaged one: not finished)."""
    try:
        marker = json.loads(done_marker(run_dir, rank).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


@contextmanager
def finish_lock(run_dir: Path) -> Iterator[None]:
    """Held by a rank while it marks itself done and, if it is the last, finalizes: ranks
    finishing together take turns, so exactly one of them sees every marker. It waits rather
    than refuses (the holder is only scoring), and the OS frees it if the holder dies."""
    with held_file_lock(run_dir / "finish.lock", wait=True):
        yield


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold ``path`` as a lock while writing; a second process is refused at once, not
    queued. The operating system releases the lock when its holder dies (even by kill -9),
    so a killed run never leaves its folder locked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResultWriteError(path.parent, error) from None
    with held_file_lock(path, wait=False) as acquired:
        if not acquired:
            raise RunConflict(
                f"another ltbm run is writing {path.parent} (lock {path.name} is held); wait "
                "for it to finish, or pass another --out"
            )
        yield


@contextmanager
def held_file_lock(path: Path, wait: bool, shared: bool = False) -> Iterator[bool]:
    """A lock on ``path``, exclusive or ``shared`` (``wait``: until it is free; else yields
    False at once when a holder of the other kind, or any holder of an exclusive one, has
    it), whose file its last holder removes, so finished cells keep no lock files.

    Removing a lock file is safe only with checks: a holder deletes the file only while it
    holds it alone (exclusively) and the path still names it, and whoever locks a file
    checks afterwards that the path still names that very file, starting over otherwise
    (it locked a file already unlinked). POSIX ``flock`` does this; elsewhere ``filelock``
    locks (exclusively) and its file stays."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        from filelock import FileLock, Timeout

        lock = FileLock(str(path), timeout=-1 if wait else 0)
        try:
            lock.acquire()
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
        return
    descriptor = _lock_path(path, fcntl, wait, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    if descriptor is None:
        yield False
        return
    try:
        yield True
    finally:
        _let_go(path, descriptor, fcntl)


def _lock_path(path: Path, fcntl: Any, wait: bool, mode: int) -> int | None:
    """A descriptor holding ``flock`` (``mode``) on the file ``path`` names now, or None if
    another holder keeps it from us and ``wait`` is false."""
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ResultWriteError(path, error) from None
        try:
            fcntl.flock(descriptor, mode | (0 if wait else fcntl.LOCK_NB))
        except OSError as error:
            os.close(descriptor)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise ResultWriteError(path, error) from None
        if _names(path, descriptor):
            return descriptor
        os.close(descriptor)  # its holder removed that file after we opened it: again


def _let_go(path: Path, descriptor: int, fcntl: Any) -> None:
    """Release a lock, removing its file if this holder is the last: it takes the lock
    exclusively (at once or not at all) and deletes the file while it still holds it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)  # others hold it too: the last of them removes the file
        return
    try:
        if _names(path, descriptor):
            path.unlink(missing_ok=True)
    finally:
        os.close(descriptor)


def _names(path: Path, descriptor: int) -> bool:
    """Whether ``path`` names the file open as ``descriptor``."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


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
    left to retry: then the cell is reused as it is. A metrics file without ``item_ids``
    (an older ltbm's) is rewritten from the records, so the report knows which records
    it covers."""

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
        and isinstance(metrics.get("item_ids"), list)
    )


def write_text(path: Path, text: str) -> None:
    """A small marker file, with a write failure reported as a :class:`ResultWriteError`."""
    try:
        path.write_text(text)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise ResultWriteError(path, error) from None
