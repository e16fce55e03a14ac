"""What every evaluation task gives the harness: items with audio and references, a kind
that selects the prompt and the metrics, and a coverage report for partial copies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

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
