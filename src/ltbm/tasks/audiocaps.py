"""AudioCaps test split: 975 ten-second YouTube clips with five reference captions each.

The metadata is the official ``test.csv`` (``audiocap_id, youtube_id, start_time,
caption``), one row per caption, so five rows per clip. AudioCaps ships no audio: every
copy is downloaded from YouTube, videos disappear, and so most users hold only part of
the 975 clips. The reader therefore takes whatever is present, reports the rest through
:meth:`AudioCapsTask.coverage`, and fails only when no clip at all is found.

Accepted audio file names in ``audio_dir`` (extensions ``.wav``, ``.flac``, ``.ogg``,
``.mp3``; ``YID`` is the YouTube id, ``START`` the CSV's ``start_time``)::

    YID.wav                     plain youtube id (most download scripts)
    YYID.wav                    AudioSet style, "Y" prefix
    YID_START.wav               aac-datasets (YID_START.flac), "start" as in the CSV (20)
    YID_START.000_END.000.wav   AudioSet segment style, END = START + 10 (also with "Y")
    AUDIOCAP_ID.wav             audiocaps-download: one file per caption row; any of the
                                clip's five audiocap_ids is accepted

With ``root=...`` the CSV is looked for in ``root``, ``root/dataset`` (the cdjkim/audiocaps
repository) and ``root/csv_files_v1`` (aac-datasets), and the audio in ``root/test``,
``root/audio/test``, ``root/audio_32000Hz/test``, ``root/audio`` and ``root`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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

CSV_FOLDERS = ["dataset", "csv_files_v1"]
AUDIO_FOLDERS = ["test", "audio/test", "audio_32000Hz/test", "audio", "."]
CSV_NAME = "test.csv"
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CONFIG_KEYS = ("root", "csv", "audio_dir", "allow_outside_root")
"""``allow_outside_root`` is accepted for every task; this reader looks clips up by name
in its audio folder, so no listed name can lead outside it."""
CLIP_SECONDS = 10
_FIX = (
    "Get test.csv from the AudioCaps repository (github.com/cdjkim/audiocaps, dataset/) and "
    "pass root=<folder with test.csv and the audio> or csv=... and audio_dir=..."
)


@dataclass
class _Clip:
    youtube_id: str
    start_time: str
    audiocap_ids: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)


class AudioCapsTask(ListedTask):
    """AudioCaps test clips as captioning items; ``Item.id`` is the YouTube id."""

    name = "audiocaps"
    kind: TaskKind = "caption"
    naming_hint = (
        " (also accepted: Y<youtube_id>, <youtube_id>_<start_time>, <audiocap_id>; "
        ".wav/.flac/.ogg/.mp3)"
    )

    def __init__(
        self,
        csv: PathLike | None = None,
        audio_dir: PathLike | None = None,
        *,
        root: PathLike | None = None,
    ) -> None:
        self.csv_path = locate_listing(csv, root, CSV_NAME, CSV_FOLDERS, "AudioCaps CSV", _FIX)
        self._audio_dir = locate_audio_dir(audio_dir, root, self.csv_path, AUDIO_FOLDERS)
        clips = _group_clips(read_csv_rows(self.csv_path, COLUMNS, "AudioCaps CSV"), self.csv_path)
        index = AudioIndex(self._audio_dir)
        self._listed, self._found = [], []
        for clip in clips:
            audio = index.by_stem(
                candidate_stems(clip.youtube_id, clip.start_time, clip.audiocap_ids)
            )
            self._listed.append(
                Item(
                    id=clip.youtube_id,
                    audio=audio or self._audio_dir / f"{clip.youtube_id}.wav",
                    references=clip.captions,
                    meta={
                        "youtube_id": clip.youtube_id,
                        "start_time": clip.start_time,
                        "audiocap_ids": clip.audiocap_ids,
                    },
                )
            )
            self._found.append(audio is not None)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AudioCapsTask:
        """Build from a config dict with keys ``root``, ``csv``, ``audio_dir``."""
        reject_unknown_keys(config, CONFIG_KEYS, cls.name)
        return cls(
            csv=config.get("csv"), audio_dir=config.get("audio_dir"), root=config.get("root")
        )


def candidate_stems(youtube_id: str, start_time: str, audiocap_ids: list[str]) -> list[str]:
    """File stems under which common AudioCaps copies store one clip, most common first."""
    stems = [youtube_id, f"Y{youtube_id}"]
    starts = [start_time]
    try:
        start = float(start_time)
    except ValueError:
        start = None
    if start is not None:
        as_int = f"{start:g}"
        if as_int not in starts:
            starts.append(as_int)
    for value in starts:
        stems += [f"{youtube_id}_{value}", f"Y{youtube_id}_{value}"]
    if start is not None:
        segment = f"{start:.3f}_{start + CLIP_SECONDS:.3f}"
        stems += [f"{youtube_id}_{segment}", f"Y{youtube_id}_{segment}"]
    return stems + list(audiocap_ids)


def _group_clips(rows: list[dict[str, str]], csv: Path) -> list[_Clip]:
    """Collect the caption rows of each clip, in order of first appearance.

    Clips are keyed by YouTube id: in the test split each id has one start time. A second
    start time for the same id would make the id ambiguous, so it is an error.
    """
    clips: dict[str, _Clip] = {}
    for line, row in enumerate(rows, start=2):
        youtube_id, start = row["youtube_id"], row["start_time"]
        if not youtube_id:
            raise DatasetError(f"{csv} line {line}: empty youtube_id; use the official CSV")
        clip = clips.setdefault(youtube_id, _Clip(youtube_id, start))
        if clip.start_time != start:
            raise DatasetError(
                f"{csv} line {line}: youtube_id {youtube_id} appears with start_time "
                f"{clip.start_time} and {start}; this reader expects one clip per video, as "
                "in the official val/test CSVs"
            )
        clip.audiocap_ids.append(row["audiocap_id"])
        if row["caption"]:
            clip.captions.append(row["caption"])
    for clip in clips.values():
        if not clip.captions:
            raise DatasetError(f"{csv}: clip {clip.youtube_id} has only empty captions")
    return list(clips.values())
