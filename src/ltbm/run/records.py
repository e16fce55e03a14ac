"""Result files of a run: one JSON line per item, appended as each finishes.

A run killed at any point loses at most the line being written: lines are flushed and
fsynced one by one, and a torn last line (no newline) is ignored when the run resumes.
Each process of a sharded run appends to its own file, so no two writers share one.

An item may have several lines: a failed attempt and a later retry, or a record made before
its audio file was replaced. The latest (by its ``finished_at`` time) counts, and a run
that finishes rewrites its file with one line per item (:func:`compact`). A complete
line that is not a record (edited by hand, or a disk fault) stops the run with its file and
line number, never silently skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ITEMS_PATTERN = "items*.jsonl"


class ResultWriteError(OSError):
    """A result file could not be written (disk full, permissions): names the file, and the
    run stays resumable."""

    def __init__(self, path: Path, error: OSError) -> None:
        reason = error.strerror or str(error)
        super().__init__(
            error.errno,
            f"cannot write {path}: {reason}. Free disk space or fix the folder's permissions, "
            "then run the same command again: finished items are kept",
        )
        self.path = path

    def __str__(self) -> str:
        return self.strerror


class DamagedRecords(ValueError):
    """A line in a result file that cannot be read as a record."""


def shard_file(run_dir: Path, rank: int, world_size: int) -> Path:
    """Where a process writes its items: ``items.jsonl`` alone, ``items.rank{r}.jsonl``
    when sharded."""
    return run_dir / ("items.jsonl" if world_size == 1 else f"items.rank{rank}.jsonl")


def read_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every complete record of a run, from all its shard files, keyed by item id. An id
    with several lines counts once: the latest by ``finished_at`` (ties, and records
    without the field: the later file in name order, then the later line)."""
    paths = sorted(run_dir.glob(ITEMS_PATTERN))
    return _latest(record for path in paths for record in _read_lines(path))


def _latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each id's latest record by ``finished_at`` (a tie goes to the later one), in the order
    the kept records finished."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        current = latest.get(record["id"])
        if current is None or _finished(record) >= _finished(current):
            latest.pop(record["id"], None)  # re-inserted last: finishing order is kept
            latest[record["id"]] = record
    return latest


def compact(path: Path) -> None:
    """Rewrite a record file with one line per item (its latest record), once a run has
    finished with it, so that readers counting lines never see a retried item twice. The
    rewrite goes through a temporary file and a rename: a failure leaves the file as it was."""
    if not path.exists():
        return
    records = list(_read_lines(path))
    latest = _latest(records)
    if len(records) == len(latest):
        return
    temporary = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in latest.values())
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ResultWriteError(path, error) from None


def _finished(record: dict[str, Any]) -> float:
    value = record.get("finished_at")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _read_lines(path: Path) -> Iterable[dict[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return  # torn write from a killed run: the item will be redone
            if not raw.strip():
                continue
            yield _parse(raw, path, number)


def _parse(raw: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problem = f"not valid JSON ({error.__class__.__name__}: {error})"
    else:
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            problem = "not a JSON object with a text 'id'"
        else:
            problem = _field_problem(record)
            if problem is None:
                return record
    raise DamagedRecords(
        f"{path}, line {number}: {problem}. Delete that line (its item runs again when the "
        "run resumes), or start the cell over with --fresh"
    )


RECORD_FIELDS = {
    "prediction": (str, type(None)),
    "error": (str,),
    "finished_at": (int, float),
    "references": (list,),
}
"""Fields a reader relies on, with the types they must have where a record holds them."""


def _field_problem(record: dict[str, Any]) -> str | None:
    """Why a record cannot be read (a field of the wrong type, or neither the prediction of
    a finished item nor the error of a failed one), or None."""
    if "error" not in record and "prediction" not in record:
        return "it holds neither a 'prediction' (a finished item) nor an 'error' (a failed one)"
    for key, kinds in RECORD_FIELDS.items():
        value = record.get(key)
        if key in record and (isinstance(value, bool) or not isinstance(value, kinds)):
            return f"its {key!r} is {type(value).__name__}, not {kinds[0].__name__}"
    if not all(isinstance(reference, str) for reference in record.get("references", [])):
        return "its 'references' are not all text"
    return None


class RecordWriter:
    """Appends records durably, one line at a time. A failed write cuts the file back to
    its last complete line and raises :class:`ResultWriteError`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_tail(path)
            self._handle = path.open("a", encoding="utf-8")
            self._size = self._handle.tell()
        except OSError as error:
            raise ResultWriteError(path, error) from None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as error:
            self._cut_back()
            raise ResultWriteError(self.path, error) from None
        self._size = self._handle.tell()

    def _cut_back(self) -> None:
        """Drop a partly written line so the file ends on a complete record."""
        try:
            self._handle.close()
        except OSError:
            pass  # the buffered rest of the line could not be flushed either
        try:
            os.truncate(self.path, self._size)
        except OSError:
            pass  # a torn tail is cut when the run resumes

    def close(self) -> None:
        if not self._handle.closed:
            try:
                self._handle.close()
            except OSError as error:
                raise ResultWriteError(self.path, error) from None

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
    """Write JSON through a temporary file and a rename, so readers never see half a file;
    on a write error the temporary file is removed and the old file is left as it was."""
    temporary = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise ResultWriteError(path, error) from None
