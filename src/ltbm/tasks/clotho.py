"""Clotho v2.1 evaluation split: five reference captions per clip.

Files, as the official release (Zenodo) unpacks them::

    clotho_captions_evaluation.csv        columns: file_name, caption_1 .. caption_5
    evaluation/<file_name>                the 1045 evaluation clips (44.1 kHz wav)

With ``root=...`` the reader looks for the CSV in ``root`` or ``root/clotho_csv_files`` and
for the audio in ``root/evaluation``, ``root/clotho_audio_files/evaluation``,
``root/audio/evaluation`` or ``root/audio`` (the first that exists); ``csv=...`` and
``audio_dir=...`` override either. A clip converted to another format (``.flac``, ``.ogg``,
``.mp3``) under the same stem is accepted. Clips absent from the folder are reported by
:meth:`ClothoTask.coverage` and left out of :meth:`ClothoTask.items`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ltbm.tasks._files import (
    AudioIndex,
    ListedTask,
    PathLike,
    locate_audio_dir,
    locate_listing,
    read_csv_rows,
    reject_unknown_keys,
)
from ltbm.tasks.base import DatasetError, Item, TaskKind

CSV_FOLDERS = ["clotho_csv_files"]
AUDIO_FOLDERS = ["evaluation", "clotho_audio_files/evaluation", "audio/evaluation", "audio"]
CSV_NAME = "clotho_captions_evaluation.csv"
CAPTION_COLUMNS = tuple(f"caption_{i}" for i in range(1, 6))
COLUMNS = ("file_name", *CAPTION_COLUMNS)
CONFIG_KEYS = ("root", "csv", "audio_dir", "allow_outside_root")
"""``allow_outside_root`` is accepted for every task; this reader looks clips up by name
in its audio folder, so no listed name can lead outside it."""
_FIX = (
    f"Download {CSV_NAME} and the evaluation audio (clotho_audio_evalution.7z, spelt so) "
    "from the Clotho v2.1 release (zenodo.org/record/4783391) and pass root=<folder holding "
    "both, audio unpacked>, or csv=... and audio_dir=..."
)


class ClothoTask(ListedTask):
    """The Clotho v2.1 evaluation split as captioning items (five references each)."""

    name = "clotho"
    kind: TaskKind = "caption"

    def __init__(
        self,
        csv: PathLike | None = None,
        audio_dir: PathLike | None = None,
        *,
        root: PathLike | None = None,
    ) -> None:
        self.csv_path = locate_listing(
            csv, root, CSV_NAME, CSV_FOLDERS, "Clotho captions CSV", _FIX
        )
        self._audio_dir = locate_audio_dir(audio_dir, root, self.csv_path, AUDIO_FOLDERS)
        rows = read_csv_rows(self.csv_path, COLUMNS, "Clotho captions CSV")
        index = AudioIndex(self._audio_dir)
        self._listed, self._found = [], []
        seen: set[str] = set()
        for line, row in enumerate(rows, start=2):
            item, found = _row_item(row, line, self.csv_path, self._audio_dir, index)
            if item.id in seen:
                raise DatasetError(
                    f"{self.csv_path} line {line}: file_name {item.id!r} is listed twice; "
                    "use the official CSV, unmodified"
                )
            seen.add(item.id)
            self._listed.append(item)
            self._found.append(found)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClothoTask:
        """Build from a config dict with keys ``root``, ``csv``, ``audio_dir``."""
        reject_unknown_keys(config, CONFIG_KEYS, cls.name)
        return cls(
            csv=config.get("csv"), audio_dir=config.get("audio_dir"), root=config.get("root")
        )


def _row_item(
    row: dict[str, str], line: int, csv: Path, audio_dir: Path, index: AudioIndex
) -> tuple[Item, bool]:
    """One CSV row as an Item, and whether its audio is on disk."""
    file_name = row["file_name"]
    if not file_name:
        raise DatasetError(f"{csv} line {line}: empty file_name; use the official CSV")
    references = [row[column] for column in CAPTION_COLUMNS if row[column]]
    if not references:
        raise DatasetError(f"{csv} line {line} ({file_name}): all five captions are empty")
    audio = index.by_name(file_name) or index.by_stem([Path(file_name).stem])
    item = Item(
        id=file_name,
        audio=audio or audio_dir / file_name,
        references=references,
        meta={"file_name": file_name},
    )
    return item, audio is not None
