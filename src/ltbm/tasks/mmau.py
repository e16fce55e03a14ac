"""MMAU: multiple-choice questions on sound, music and speech.

Files, as the MMAU repository (Sakshi113/MMAU) and its audio archives lay them out::

    mmau-test-mini.json        1000 items with answers
    test-mini-audios/<id>.wav  their audio (the JSON's audio_id: ./test-mini-audios/<id>.wav)
    mmau-test.json             9000 items without answers (scored by the MMAU maintainers)
    test-audios/<id>.wav

Each JSON item has ``id, audio_id, question, choices, answer`` (absent in the test set),
``task`` (sound/music/speech), ``difficulty`` (easy/medium/hard) and a few descriptive
fields. ``audio_id`` is resolved against ``audio_root`` (default: the JSON's folder); if the
root already is the audio folder, the file name alone is tried too.

:meth:`MMAUTask.write_submission` writes the file MMAU's ``evaluation.py`` reads: the input
items with the model's raw output under both keys the official script has used,
``model_output`` (its newest version) and ``model_prediction`` (the one before). The harness
writes it for every MMAU run: for test-mini, running the authors' script on it prints the
same figures as ltbm's ``metrics.json``; for the answerless test set it is what the
maintainers score.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ltbm.tasks._files import (
    ListedTask,
    PathLike,
    as_path,
    path_inside,
    reject_unknown_keys,
    require_file,
)
from ltbm.tasks.base import DatasetError, Item, TaskKind

CONFIG_KEYS = ("json", "root", "audio_dir", "allow_outside_root")
OUTPUT_KEYS = ("model_output", "model_prediction")
"""The fields MMAU's evaluation.py reads each prediction from: ``model_output`` since its
January 2025 version (commit 7468292), ``model_prediction`` before (commit 6097b91)."""
META_KEYS = ("audio_id", "task", "difficulty", "category", "sub-category", "dataset", "split")
_FIX = (
    "Use mmau-test-mini.json or mmau-test.json from the MMAU repository "
    "(github.com/Sakshi113/MMAU), unmodified"
)


class MMAUTask(ListedTask):
    """MMAU test-mini (with answers) or test (without) as multiple-choice items.

    ``Item.references`` is ``[answer]`` when the JSON has answers, else empty; ``meta``
    carries task, difficulty, category, sub-category, dataset and split.
    """

    name = "mmau"
    kind: TaskKind = "mcq"
    naming_hint = (
        " (audio_id relative to the audio root: pass audio_dir=<folder holding test-mini-audios/>)"
    )

    def __init__(
        self,
        json_path: PathLike | None = None,
        audio_root: PathLike | None = None,
        *,
        root: PathLike | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        self.json_path = _locate_json(json_path, root)
        self.allow_outside_root = allow_outside_root
        self._audio_dir = as_path(audio_root) if audio_root is not None else self.json_path.parent
        self._records = _load_records(self.json_path)
        _check_answers(self._records, self.json_path)
        self._listed, self._found = [], []
        for record in self._records:
            audio, found = self._resolve_audio(str(record["audio_id"]))
            self._listed.append(_record_item(record, audio))
            self._found.append(found)

    @property
    def has_answers(self) -> bool:
        """True for test-mini (scored here), False for the test set (scored by submission)."""
        return all(item.references for item in self._listed)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MMAUTask:
        """Build from a config dict with keys ``json``, ``root`` (folder of the JSON) and
        ``audio_dir`` (the folder that ``audio_id`` paths are relative to)."""
        reject_unknown_keys(config, CONFIG_KEYS, cls.name)
        return cls(
            json_path=config.get("json"),
            audio_root=config.get("audio_dir"),
            root=config.get("root"),
            allow_outside_root=bool(config.get("allow_outside_root", False)),
        )

    def write_submission(
        self,
        predictions: Mapping[str, str],
        path: PathLike,
        *,
        ids: Collection[str] | None = None,
        allow_missing: bool = False,
    ) -> Path:
        """Write the official submission: the input items (all, or those in ``ids``), in
        input order, each with the raw prediction under every key of :data:`OUTPUT_KEYS`.

        MMAU's evaluator scores every item in the file, so a prediction missing for one is an
        error unless ``allow_missing``, which writes an empty prediction (scored wrong by the
        official rule, as ltbm scores it) instead. Predictions for ids not in the JSON are an
        error: they mean the wrong file or a mixed-up run. The file is ASCII-only JSON
        (non-ASCII characters escaped), because the official script opens it with the
        platform's default encoding.
        """
        known = {str(record["id"]) for record in self._records}
        unknown = [key for key in predictions if key not in known]
        if unknown:
            raise DatasetError(
                f"{len(unknown)} prediction(s) have ids not in {self.json_path} "
                f"(e.g. {unknown[:3]}); pass the predictions of a run on this file"
            )
        wanted = known if ids is None else set(ids)
        records = [record for record in self._records if str(record["id"]) in wanted]
        missing = [str(r["id"]) for r in records if str(r["id"]) not in predictions]
        if missing and not allow_missing:
            raise DatasetError(
                f"predictions are missing for {len(missing)} of {len(records)} items "
                f"(e.g. {missing[:3]}); the MMAU evaluator needs one per question. Finish the "
                "run (the audio may be incomplete: see coverage()), or pass allow_missing=True "
                "to write empty predictions, which count as wrong"
            )
        out = []
        for record in records:
            output = str(predictions.get(str(record["id"])) or "")
            out.append({**record, **dict.fromkeys(OUTPUT_KEYS, output)})
        target = as_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(out, indent=4, ensure_ascii=True) + "\n", encoding="utf-8")
        return target

    def listing_file(self) -> Path:
        return self.json_path

    def _expected_name(self, item: Item) -> str:
        return str(item.meta.get("audio_id", item.audio.name))

    def _resolve_audio(self, audio_id: str) -> tuple[Path, bool]:
        """The item's audio path and whether it exists: ``audio_id`` under the audio root,
        else its file name directly in the root (a root pointing at the audio folder)."""
        relative = Path(audio_id)
        where = f"{self.json_path}: audio_id"
        primary = path_inside(self._audio_dir, audio_id, where, self.allow_outside_root)
        if primary.is_file():
            return primary, True
        flat = self._audio_dir / relative.name
        if flat.is_file():
            return flat, True
        return primary, False


def _locate_json(json_path: PathLike | None, root: PathLike | None) -> Path:
    if json_path is not None:
        return require_file(as_path(json_path), "MMAU JSON", _FIX)
    if root is None:
        raise DatasetError(
            f"MMAU needs json=... (or root=<folder with mmau-test-mini.json>). {_FIX}"
        )
    path = as_path(root) / "mmau-test-mini.json"
    return require_file(path, "MMAU JSON", f"Pass json=... for another file. {_FIX}")


def _load_records(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON ({error}). {_FIX}") from None
    if not isinstance(data, list):
        raise DatasetError(
            f"{path} must hold a JSON list of questions, got {type(data).__name__}. {_FIX}"
        )
    seen: set[str] = set()
    for position, record in enumerate(data):
        _check_record(record, position, path)
        if str(record["id"]) in seen:
            raise DatasetError(f"{path}: item id {record['id']} appears twice. {_FIX}")
        seen.add(str(record["id"]))
    return data


def _check_record(record: Any, position: int, path: Path) -> None:
    """Fail on an item the harness cannot ask: it names the item and what is missing."""
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: entry {position} is not a JSON object. {_FIX}")
    label = f"item {record['id']}" if record.get("id") else f"entry {position} (no id)"
    for key in ("id", "audio_id"):
        if not record.get(key):
            raise DatasetError(f"{path}: {label} has no {key!r}. {_FIX}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{path}: {label} has no 'question' (empty or missing). {_FIX}")
    choices = record.get("choices")
    if not isinstance(choices, list) or not choices:
        raise DatasetError(f"{path}: {label} has no 'choices' (a non-empty list is needed). {_FIX}")
    if not all(isinstance(choice, str) for choice in choices):
        raise DatasetError(f"{path}: {label} has a choice that is not text: {choices!r}. {_FIX}")
    answer = record.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise DatasetError(f"{path}: {label} has a non-text 'answer': {answer!r}. {_FIX}")
    if answer and answer.strip() not in (choice.strip() for choice in choices):
        raise DatasetError(
            f"{path}: {label}'s answer {answer!r} is not one of its choices {choices!r}, so "
            f"every output would be scored wrong. {_FIX}"
        )


def _check_answers(records: list[dict[str, Any]], path: Path) -> None:
    """All items have an answer (test-mini, scored here) or none has (test, scored by
    submission): a mix would silently switch the whole set to submission mode."""
    answered = [bool(str(r.get("answer") or "").strip()) for r in records]
    if any(answered) and not all(answered):
        missing = [str(r["id"]) for r, has in zip(records, answered, strict=True) if not has]
        raise DatasetError(
            f"{path}: {len(missing)} item(s) have no answer (e.g. {missing[:3]}) while the "
            f"others have one; fill them in or remove them. {_FIX}"
        )


def _record_item(record: dict[str, Any], audio: Path) -> Item:
    answer = record.get("answer")
    return Item(
        id=str(record["id"]),
        audio=audio,
        references=[answer] if answer else [],
        question=record["question"],
        choices=list(record["choices"]),
        meta={key: record[key] for key in META_KEYS if key in record},
    )
