"""Turn a run's records into metrics, by task kind. Every result says which metrics were
computed and which were skipped, and why.

Captions and multiple choice are scored over every selected item whose audio is present
(the task's ``items()`` after ``--subset``/``--limit``), not only the items that
succeeded: a clip that failed counts as an empty caption, an MCQ item that failed as an
empty answer (wrong), and the metrics say how many there were. Leaving failures out would
score a run with failures higher than the same run without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltbm.tasks.base import Item, Task

SUBMISSION_FILE = "submission.json"
"""MMAU runs write the official scorer's input here (see ``MMAUTask.write_submission``)."""


def record_fields(item: Item, prediction: str | None) -> dict[str, Any]:
    """What an item record carries besides the prediction, so that per-item statistics
    (bootstrap intervals, per-category tables) need only the records.

    Multiple-choice items: ``task``, ``difficulty``, ``category``, ``sub_category``,
    ``answer``, ``choices`` and, when the answer is known, ``correct`` (MMAU's official rule
    on the raw output, the headline) and ``correct_lenient`` (after the lenient parse).
    ``prediction`` None (the item failed) is scored as an empty output. Other kinds: none.
    """
    if not item.choices:
        return {}
    meta = item.meta
    fields: dict[str, Any] = {
        "task": meta.get("task"),
        "difficulty": meta.get("difficulty"),
        "category": meta.get("category"),
        "sub_category": meta.get("sub-category"),
        "answer": item.references[0] if item.references else None,
        "choices": list(item.choices),
    }
    if item.references and item.references[0].strip():
        from ltbm.metrics.mcq import score_item

        verdict = score_item(prediction or "", item)
        fields["correct"] = verdict["correct"]
        fields["correct_lenient"] = verdict["correct_lenient"]
    return fields


def score_records(
    task: Task, items: list[Item], records: list[dict[str, Any]], run_dir: Path
) -> dict[str, Any]:
    """Metrics over the selected ``items`` from the successful ``records`` (in item order);
    the items without a successful record count as failed (see the module docstring)."""
    predictions = {r["id"]: r["prediction"] for r in records}
    failed = [item.id for item in items if item.id not in predictions]
    if task.kind == "mcq" and hasattr(task, "write_submission"):
        _write_submission(task, predictions, items, run_dir)
    if task.kind == "mcq" and not getattr(task, "has_answers", True):
        reason = (
            f"no answers in this split: predictions written to {run_dir / SUBMISSION_FILE} "
            "for the maintainers"
        )
        return {"metrics": {}, "computed": [], "skipped": {"accuracy": reason}}
    if not records:
        return {"metrics": {}, "computed": [], "skipped": {"all": "no item succeeded"}}
    if task.kind == "asr":
        from ltbm.metrics.wer import word_error_rate

        result = word_error_rate([r["references"][0] for r in records], list(predictions.values()))
        return {"metrics": result.as_dict(), "computed": ["wer"], "skipped": {}}
    if task.kind == "caption":
        from ltbm.metrics.captions import score_captions

        summary = score_captions(predictions, items, failed_ids=failed).as_dict()
        summary["metrics"].update(items=summary["items"], failed_as_empty=len(failed))
        return summary
    if task.kind == "mcq":
        from ltbm.metrics.mcq import score_mcq

        # Every selected item counts: one that failed or gave no answer is wrong, never guessed.
        summary = score_mcq(predictions, items).as_dict()
        summary["submission"] = SUBMISSION_FILE
        return {"metrics": summary, "computed": ["accuracy", "lenient_accuracy"], "skipped": {}}
    raise ValueError(f"no scoring for task kind {task.kind!r}")


def _write_submission(
    task: Any, predictions: dict[str, str], items: list[Item], run_dir: Path
) -> None:
    """The evaluated items with their raw outputs (failed ones empty), in the file MMAU's own
    ``evaluation.py`` reads: running it there prints this run's headline figures. An
    answerless split (the test set) gets every question, as its maintainers require."""
    ids = [item.id for item in items] if getattr(task, "has_answers", True) else None
    task.write_submission(predictions, run_dir / SUBMISSION_FILE, ids=ids, allow_missing=True)
