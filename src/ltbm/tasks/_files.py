"""File helpers shared by the dataset readers: path checks with errors that say how to fix
them, CSV reading with a column check, and a one-pass index of an audio folder.

Indexing a folder once (rather than testing each candidate name with ``exists``) keeps
readers fast on a 1000-clip listing and lets them accept several naming schemes.
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ltbm.tasks.base import Coverage, DatasetError, Item

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")
"""Extensions the readers accept, in order of preference when one clip has several
(libsndfile reads all four; mp3 needs libsndfile >= 1.1)."""

PathLike = str | os.PathLike[str]


def as_path(value: PathLike) -> Path:
    """A user-supplied path with ``~`` expanded."""
    return Path(value).expanduser()


def nfc(name: str) -> str:
    """Unicode NFC form: macOS writes decomposed (NFD) names, CSVs hold composed ones."""
    return unicodedata.normalize("NFC", name)


OUTSIDE_FIX = (
    "move the audio inside the dataset folder, or pass --allow-outside-root "
    "(allow_outside_root=True) if the listing is meant to point elsewhere"
)


def path_inside(root: Path, name: str, where: str, allow_outside: bool = False) -> Path:
    """``root / name``, refused when ``name`` leaves ``root`` (an absolute path, or ``..``
    past it) unless ``allow_outside``. The check is on the path as written, not on where
    symbolic links lead, so a dataset folder built from links still reads."""
    candidate = root / name
    if allow_outside:
        return candidate
    base = os.path.abspath(root)
    if os.path.commonpath([base, os.path.abspath(candidate)]) != base:
        raise DatasetError(
            f"{where}: {name!r} points outside the dataset folder {root}; {OUTSIDE_FIX}"
        )
    return candidate


def require_file(path: Path, what: str, fix: str) -> Path:
    """Return ``path`` if it is a file, else raise a DatasetError naming ``what`` and the fix."""
    if path.is_file():
        return path
    if path.is_dir():
        raise DatasetError(f"{what}: expected a file, got the folder {path}. {fix}")
    raise DatasetError(f"{what} not found: {path}. {fix}")


def first_existing(candidates: Iterable[Path], *, want_dir: bool) -> Path | None:
    """The first candidate that exists as a folder (``want_dir``) or as a file."""
    for candidate in candidates:
        if candidate.is_dir() if want_dir else candidate.is_file():
            return candidate
    return None


def locate_listing(
    given: PathLike | None,
    root: PathLike | None,
    name: str,
    subfolders: Sequence[str],
    what: str,
    fix: str,
) -> Path:
    """The dataset's listing file: ``given`` itself, or ``name`` in ``root`` or one of its
    usual ``subfolders``; a DatasetError lists every place looked at."""
    if given is not None:
        return require_file(as_path(given), what, fix)
    if root is None:
        raise DatasetError(f"{what.split()[0]} needs root=... or csv=... . {fix}")
    base = as_path(root)
    candidates = [base / name] + [base / folder / name for folder in subfolders]
    found = first_existing(candidates, want_dir=False)
    if found is None:
        raise DatasetError(
            f"{name} not found in {base} (looked at {', '.join(str(c) for c in candidates)}). {fix}"
        )
    return found


def locate_audio_dir(
    given: PathLike | None, root: PathLike | None, listing: Path, subfolders: Sequence[str]
) -> Path:
    """The audio folder: ``given``, else the first usual subfolder of ``root`` (or of the
    listing's folder) that exists, else the first of them (reported as missing later)."""
    if given is not None:
        return as_path(given)
    base = as_path(root) if root is not None else listing.parent
    candidates = [base / folder for folder in subfolders]
    return first_existing(candidates, want_dir=True) or candidates[0]


def read_csv_rows(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV as dicts, after checking that the header holds ``required`` columns.

    ``utf-8-sig`` reads both plain UTF-8 and files saved with a byte-order mark (Excel),
    whose first column name would otherwise start with an invisible character.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in header]
            if missing:
                raise DatasetError(
                    f"{what} {path} lacks the column(s) {', '.join(missing)}; its header is "
                    f"{header or '(empty)'}. Expected columns: {', '.join(required)}. "
                    "Use the file from the official release, unmodified."
                )
            reader.fieldnames = header
            # Extra fields beyond the header land under the key None: drop them.
            return [
                {key: (value or "").strip() for key, value in row.items() if key is not None}
                for row in reader
            ]
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{what} {path} is not UTF-8 text ({error}); re-save it as UTF-8"
        ) from None
    except csv.Error as error:
        raise unreadable_table(path, reader.line_num + 1, error) from None


def unreadable_table(path: Path, line: int, error: csv.Error) -> DatasetError:
    """A CSV or TSV record the csv module cannot parse, named with its file and the line it
    starts on (the reader's count of lines before it, plus one). The
    usual one is a field over the module's limit (131,072 characters): no caption or
    transcript is that long, so it is an unclosed quote, which runs on to the end of the
    file, or a file that is not the listing."""
    cause = ""
    if "field larger than field limit" in str(error):
        cause = (
            " (an unclosed quote runs on to the end of the file; no caption or transcript is "
            "that long)"
        )
    return DatasetError(
        f"{path}, line {line}: cannot be read as a table: {error}{cause}. Fix that line, or "
        "use the file from the official release, unmodified"
    )


def reject_unknown_keys(config: Mapping[str, Any], allowed: Sequence[str], task: str) -> None:
    """Fail on a misspelt config key instead of silently ignoring it."""
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise DatasetError(
            f"unknown config key(s) for {task}: {', '.join(unknown)}; "
            f"allowed keys are {', '.join(allowed)}"
        )


class AudioIndex:
    """The audio files of one folder (not recursive), looked up by name or by stem.

    A stem with several files (``x.wav`` and ``x.flac``) resolves to the first extension in
    :data:`AUDIO_EXTENSIONS`. Names are compared in NFC form.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.exists = folder.is_dir()
        self._by_name: dict[str, Path] = {}
        self._by_stem: dict[str, Path] = {}
        if not self.exists:
            return
        rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
        best: dict[str, int] = {}
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.is_file():
                    continue
                path = Path(entry.path)
                self._by_name[nfc(entry.name)] = path
                ext = path.suffix.lower()
                if ext in rank:
                    stem = nfc(path.stem)
                    if stem not in best or rank[ext] < best[stem]:
                        best[stem] = rank[ext]
                        self._by_stem[stem] = path

    def __len__(self) -> int:
        return len(self._by_stem)

    def by_name(self, name: str) -> Path | None:
        """The file called exactly ``name`` (any extension)."""
        return self._by_name.get(nfc(name))

    def by_stem(self, stems: Iterable[str]) -> Path | None:
        """The audio file for the first stem in ``stems`` that is present."""
        for stem in stems:
            found = self._by_stem.get(nfc(stem))
            if found is not None:
                return found
        return None


def no_audio_error(
    task: str, folder: Path, listed: int, expected: Sequence[str], hint: str = ""
) -> DatasetError:
    """The error for a listing none of whose audio is on disk: it names the folder, whether it
    exists, and the file names the reader looked for, so a wrong path is obvious."""
    examples = ", ".join(expected[:3])
    where = (
        f"the audio folder {folder} does not exist"
        if not folder.is_dir()
        else f"none of the {listed} listed clips is in {folder}"
    )
    return DatasetError(
        f"{task}: {where}. Expected audio files named like {examples}{hint}. "
        "Pass the folder that holds the audio files (audio_dir=...), "
        "or a root folder in the layout described in the reader's docstring."
    )


class ListedTask:
    """Shared behaviour of readers whose metadata lists clips that may or may not be on disk.

    Subclasses fill ``_listed`` (every listed item, its ``audio`` set to the found file or to
    the expected path) and ``_found`` (the same items' presence), and set ``_audio_dir``.
    A partial copy is normal (YouTube-sourced sets lose clips), so only a copy with no audio
    at all is an error, and only when items are asked for.
    """

    name: str
    naming_hint: str = ""
    """Appended to the expected file names in the no-audio error (other accepted names)."""
    _listed: list[Item]
    _found: list[bool]
    _audio_dir: Path

    def listing_file(self) -> Path:
        """The metadata file the items come from (hashed into a run's identity)."""
        return self.csv_path  # type: ignore[attr-defined]

    def sources(self) -> dict[str, Any]:
        """Where the data lives, for :func:`ltbm.tasks.base.dataset_identity`."""
        return {"listing": [self.listing_file()], "audio_dir": self._audio_dir}

    def all_items(self) -> list[Item]:
        """Every listed item, whether or not its audio is present (metadata checks, reports)."""
        return list(self._listed)

    def items(self) -> list[Item]:
        """The items whose audio is present, in listing order."""
        if not self._listed:
            raise DatasetError(
                f"{self.name}: {self.listing_file()} lists no items; use the file from the "
                "official release, unmodified"
            )
        present = [item for item, found in zip(self._listed, self._found, strict=True) if found]
        if not present:
            expected = [self._expected_name(item) for item in self._listed]
            raise no_audio_error(
                self.name, self._audio_dir, len(self._listed), expected, self.naming_hint
            )
        return present

    def _expected_name(self, item: Item) -> str:
        """How the error for an empty audio folder names the file it looked for."""
        return item.audio.name

    def coverage(self) -> Coverage:
        pairs = zip(self._listed, self._found, strict=True)
        missing = [item.id for item, found in pairs if not found]
        return Coverage(
            listed=len(self._listed), found=len(self._listed) - len(missing), missing=missing
        )
