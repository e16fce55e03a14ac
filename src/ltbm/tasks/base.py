"""What every evaluation task gives the harness: items with audio and references, a kind
that selects the prompt and the metrics, and a coverage report for partial copies."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from ltbm.io.hashing import file_sha256

TaskKind = Literal["caption", "mcq", "asr"]


class DatasetError(ValueError):
    """A dataset that cannot be read as given; the message says what is missing and how to fix."""


@dataclass
class Item:
    """One evaluation item.

    ``audio`` is a file path; ``references`` holds the reference captions (caption), the
    reference transcript (asr, one entry) or the correct answer text (mcq, one entry);
    ``question`` and ``choices`` are set for mcq items; ``meta`` carries task-specific fields
    written into the result line (e.g. MMAU's task and difficulty).
    """

    id: str
    audio: Path
    references: list[str] = field(default_factory=list)
    question: str | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Coverage:
    """How much of the dataset's listing was found on disk."""

    listed: int
    found: int
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"listed": self.listed, "found": self.found, "missing_examples": self.missing[:10]}


@runtime_checkable
class Task(Protocol):
    name: str
    kind: TaskKind

    def items(self) -> list[Item]:
        """The items whose audio is present, in a fixed order."""
        ...

    def coverage(self) -> Coverage: ...


def items_sha256(items: list[Item]) -> str:
    """A hash of what the harness reads from each item besides its audio: id, references,
    question, choices and meta, in order. Audio paths are left out: the audio folder is part
    of the dataset's identity, and a clip found later under another extension is the same
    item."""
    rows = [[i.id, i.references, i.question, i.choices, i.meta] for i in items]
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_identity(task: Task) -> dict[str, Any]:
    """Everything about a task's data that decides a run's outputs: its name and kind, the
    resolved listing file(s) with a hash of their content, the resolved audio folder, and a
    hash of every listed item (present or not, so downloading more clips keeps the identity).

    Tasks tell where their data lives through ``sources()``: ``{"listing": [paths],
    "audio_dir": path, ...}``; other keys are recorded as given."""
    sources = dict(task.sources()) if hasattr(task, "sources") else {}
    listing = [Path(p) for p in sources.pop("listing", [])]
    listed = task.all_items() if hasattr(task, "all_items") else task.items()
    identity: dict[str, Any] = {
        "name": task.name,
        "kind": task.kind,
        "reader": f"{type(task).__module__}.{type(task).__qualname__}",
        "listing": [{"path": _resolved(p), "sha256": file_sha256(p)} for p in listing],
        "listed_items": len(listed),
        "items_sha256": items_sha256(listed),
    }
    for key, value in sources.items():
        identity[key] = _resolved(value) if isinstance(value, (Path, str)) else value
    return identity


def _resolved(path: str | os.PathLike[str]) -> str:
    return str(Path(path).expanduser().resolve())
