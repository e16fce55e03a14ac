"""Turn a run's records into metrics, by task kind. Every result says which metrics were
computed and which were skipped, and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltbm.tasks.base import Item, Task


def score_records(
    task: Task, items: list[Item], records: list[dict[str, Any]], run_dir: Path
) -> dict[str, Any]:
    """Metrics over the successful ``records`` (in item order) of the selected ``items``."""
    predictions = {r["id"]: r["prediction"] for r in records}
    if task.kind == "mcq" and not getattr(task, "has_answers", True):
        path = task.write_submission(predictions, run_dir / "submission.json", allow_missing=True)
        reason = f"no answers in this split: predictions written to {path} for the maintainers"
        return {"metrics": {}, "computed": [], "skipped": {"accuracy": reason}}
    if not records:
        return {"metrics": {}, "computed": [], "skipped": {"all": "no item succeeded"}}
    if task.kind == "asr":
        from ltbm.metrics.wer import word_error_rate

        result = word_error_rate([r["references"][0] for r in records], list(predictions.values()))
        return {"metrics": result.as_dict(), "computed": ["wer"], "skipped": {}}
    if task.kind == "caption":
        from ltbm.metrics.captions import score_captions

        scored = [item for item in items if item.id in predictions]
        return score_captions(predictions, scored).as_dict()
    if task.kind == "mcq":
        from ltbm.metrics.mcq import score_mcq

        # Every selected item counts: one that failed or gave no answer is wrong, never guessed.
        return {
            "metrics": score_mcq(predictions, items).as_dict(),
            "computed": ["accuracy"],
            "skipped": {},
        }
    raise ValueError(f"no scoring for task kind {task.kind!r}")
