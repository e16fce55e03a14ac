"""Turn a run's records into metrics, by task kind. Every result says which metrics were
computed and which were skipped, and why."""

from __future__ import annotations

from typing import Any

from ltbm.tasks.base import Item, Task


def score_records(task: Task, items: list[Item], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over the successful records (in item order)."""
    if not records:
        return {"metrics": {}, "computed": [], "skipped": {"all": "no item succeeded"}}
    predictions = [r["prediction"] for r in records]
    if task.kind == "asr":
        return _score_asr(predictions, records)
    if task.kind == "caption":
        return _score_captions(predictions, records)
    if task.kind == "mcq":
        return _score_mcq(task, items, predictions, records)
    raise ValueError(f"no scoring for task kind {task.kind!r}")


def _score_asr(predictions: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    from ltbm.metrics.wer import word_error_rate

    result = word_error_rate([r["references"][0] for r in records], predictions)
    return {"metrics": result.as_dict(), "computed": ["wer"], "skipped": {}}


def _score_captions(predictions: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    raise NotImplementedError("caption scoring is wired once ltbm.metrics.captions lands")


def _score_mcq(task, items, predictions, records) -> dict[str, Any]:
    raise NotImplementedError("MMAU scoring is wired once ltbm.metrics.mcq lands")
