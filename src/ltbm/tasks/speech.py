"""Speech recognition sets: the built-in espeak-ng set, a manifest folder, or LibriSpeech.

ASR is ltbm's proxy benchmark: with Whisper the transcript says exactly what survived
compression, and word error rate needs no judge model. Three layouts are read:

- a folder with ``manifest.tsv`` (tab-separated, columns ``file`` and ``transcript``;
  ``transcript_normalized`` is preferred where present and non-empty), as in
  ``../shared/audio/speech/`` and the built-in set;
- the LibriSpeech layout: ``<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` with lines
  ``ID TEXT`` and audio ``ID.flac`` beside it (any depth under the folder);
- the built-in set shipped in the package (``SpeechTask.builtin()``, the default).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ltbm.tasks._files import no_audio_error, path_inside, unreadable_table
from ltbm.tasks.base import Coverage, DatasetError, Item, TaskKind

MANIFEST = "manifest.tsv"
LIBRISPEECH_GLOB = "*.trans.txt"


def builtin_speech_dir() -> Path:
    """Folder of the built-in speech set inside the installed package."""
    return Path(str(resources.files("ltbm") / "data" / "speech"))


@dataclass(frozen=True)
class _Listed:
    """One transcript entry, whether or not its audio was found."""

    id: str
    audio: Path
    transcript: str


class SpeechTask:
    """An ASR task over a folder of speech clips with reference transcripts.

    ``SpeechTask(root)`` reads a manifest folder or a LibriSpeech-layout folder (detected
    from the files present); ``SpeechTask()`` or ``SpeechTask.builtin()`` reads the
    built-in set. Items come in manifest order (LibriSpeech: sorted by utterance id);
    ``items()`` holds the ones whose audio exists, ``coverage()`` says how many are missing.
    Listed files must lie inside ``root`` unless ``allow_outside_root``.
    """

    kind: TaskKind = "asr"

    def __init__(
        self,
        root: str | Path | None = None,
        name: str | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        self.root = Path(root) if root is not None else builtin_speech_dir()
        self.name = name or ("speech-builtin" if root is None else f"speech:{self.root.name}")
        self._listed = read_listing(self.root, allow_outside_root)

    @classmethod
    def builtin(cls) -> SpeechTask:
        """The espeak-ng set shipped with ltbm (50 English clips, 3–12 s)."""
        return cls(None)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SpeechTask:
        """Build from a path config (see :mod:`ltbm.tasks`): ``root`` (or ``audio_dir``)
        names the folder; neither means the built-in set."""
        unknown = sorted(set(config) - {"root", "audio_dir", "name", "allow_outside_root"})
        if unknown:
            raise DatasetError(
                "the speech task takes a folder (root=...) and nothing else (got "
                f"{', '.join(key + '=...' for key in unknown)}); the folder holds {MANIFEST} or "
                "LibriSpeech *.trans.txt files"
            )
        root = config.get("root") or config.get("audio_dir")
        return cls(
            Path(root).expanduser() if root else None,
            name=config.get("name"),
            allow_outside_root=bool(config.get("allow_outside_root", False)),
        )

    def all_items(self) -> list[Item]:
        """Every listed clip, whether or not its audio is present."""
        return [
            Item(id=entry.id, audio=entry.audio, references=[entry.transcript])
            for entry in self._listed
        ]

    def items(self) -> list[Item]:
        """The listed clips whose audio is present; none present is an error (a run over
        no items would report an empty result as if it had succeeded)."""
        present = [item for item in self.all_items() if item.audio.is_file()]
        if not present:
            listed = [entry.audio for entry in self._listed]
            raise no_audio_error("speech", self.root, len(listed), [path.name for path in listed])
        return present

    def sources(self) -> dict[str, Any]:
        """Where the data lives, for :func:`ltbm.tasks.base.dataset_identity`."""
        return {"listing": listing_files(self.root), "audio_dir": self.root}

    def coverage(self) -> Coverage:
        missing = [entry.id for entry in self._listed if not entry.audio.is_file()]
        return Coverage(
            listed=len(self._listed), found=len(self._listed) - len(missing), missing=missing
        )


def listing_files(root: Path) -> list[Path]:
    """The manifest, or the LibriSpeech transcript files, that list ``root``'s clips."""
    if (root / MANIFEST).is_file():
        return [root / MANIFEST]
    return sorted(root.rglob(LIBRISPEECH_GLOB))


def read_listing(root: Path, allow_outside_root: bool = False) -> list[_Listed]:
    """Every transcript entry under ``root``, from its manifest or LibriSpeech files."""
    if not root.exists():
        raise DatasetError(
            f"speech folder not found: {root}. Pass a folder holding {MANIFEST} (columns "
            "file, transcript) or a LibriSpeech-layout folder (*/*/*.trans.txt), or leave "
            "it out for the built-in set"
        )
    if not root.is_dir():
        raise DatasetError(f"expected a folder of speech clips, got a file: {root}")
    if (root / MANIFEST).is_file():
        return read_manifest(root / MANIFEST, allow_outside_root)
    transcripts = listing_files(root)
    if transcripts:
        return read_librispeech(transcripts, allow_outside_root)
    raise DatasetError(
        f"no transcripts in {root}: expected {MANIFEST} (tab-separated, columns file and "
        f"transcript) or LibriSpeech {LIBRISPEECH_GLOB} files (lines 'ID TEXT' beside "
        "ID.flac)"
    )


def read_manifest(path: Path, allow_outside_root: bool = False) -> list[_Listed]:
    """Entries of a tab-separated manifest with ``file`` and ``transcript`` columns; an empty
    transcript is refused (a word error rate needs a reference)."""
    text = io.StringIO(read_utf8(path), newline="")
    reader = csv.DictReader(text, delimiter="\t", quoting=csv.QUOTE_NONE)
    columns = reader.fieldnames or []
    missing = [c for c in ("file", "transcript") if c not in columns]
    if missing:
        raise DatasetError(
            f"{path} lacks the column(s) {', '.join(missing)}; a speech manifest is "
            f"tab-separated with a header holding at least 'file' and 'transcript' "
            f"(found: {', '.join(columns) or 'no header'})"
        )
    try:
        rows = list(reader)
    except csv.Error as error:
        raise unreadable_table(path, reader.line_num + 1, error) from None
    if not rows:
        raise DatasetError(f"{path} lists no clips: add one line per clip under the header")
    entries = []
    for line, row in enumerate(rows, start=2):
        name = (row.get("file") or "").strip()
        text = (row.get("transcript_normalized") or "").strip() or (
            row.get("transcript") or ""
        ).strip()
        if not name:
            raise DatasetError(f"{path}, line {line}: the 'file' column is empty")
        if not text:
            raise DatasetError(
                f"{path}, line {line}: {name} has an empty transcript; a word error rate "
                "needs a reference. Fill it in, or remove the line"
            )
        audio = path_inside(path.parent, name, f"{path}, line {line}", allow_outside_root)
        entries.append(_Listed(Path(name).stem, audio, text))
    _check_unique(entries, path)
    return entries


def read_librispeech(transcripts: list[Path], allow_outside_root: bool = False) -> list[_Listed]:
    """Entries of LibriSpeech ``*.trans.txt`` files: ``ID TEXT`` per line, audio ``ID.flac``."""
    entries = []
    for path in transcripts:
        for number, line in enumerate(read_utf8(path).splitlines(), start=1):
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            if not text:
                raise DatasetError(
                    f"{path}, line {number}: expected 'ID TEXT' (utterance id, a space, the "
                    f"transcript), got {line.strip()!r}"
                )
            where = f"{path}, line {number}"
            audio = path_inside(path.parent, f"{utterance}.flac", where, allow_outside_root)
            entries.append(_Listed(utterance, audio, text.strip()))
    entries.sort(key=lambda entry: entry.id)
    if not entries:
        raise DatasetError(f"the transcript files under {transcripts[0].parent} are empty")
    _check_unique(entries, transcripts[0])
    return entries


def read_utf8(path: Path) -> str:
    """A listing file's text; bytes that are not UTF-8 name the file and the fix."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 text ({error}); re-save it as UTF-8") from None


def _check_unique(entries: list[_Listed], source: Path) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise DatasetError(
                f"{source}: clip id {entry.id!r} appears twice; ids come from file names "
                "(without extension) and must be unique"
            )
        seen.add(entry.id)
