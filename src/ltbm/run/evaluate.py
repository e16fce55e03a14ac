"""One evaluation run: a backbone × task × method × keep ratio (× window) cell.

Items are generated in batches and written one JSON line each as they finish; a killed run
resumes where it stopped and skips finished items; items that fail (bad audio, say) are
recorded with their error and the run goes on. Under ``accelerate launch`` or ``torchrun``
each process takes every WORLD_SIZE-th item, writes its own file, and the last process to
finish merges all of them into one metrics file.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ltbm.audio import load_audio
from ltbm.backbones.base import Backbone
from ltbm.methods import Method, get_method
from ltbm.prompts import prompt_template, render_prompt
from ltbm.run.records import RecordWriter, read_records, shard_file, write_json_atomic
from ltbm.run.scoring import record_fields, score_records
from ltbm.tasks.base import Item, Task
from ltbm.tasks.subset import stratified_subset

NO_COMPRESSION = "none"


@dataclass(frozen=True)
class Cell:
    """The compression setting of one run. ``method="none"`` is the uncompressed baseline."""

    method: str = "ltbm"
    keep_ratio: float = 0.25
    window: int | None = None
    scorer: str | None = None
    seed: int | None = None

    def build(self) -> Method | None:
        if self.method == NO_COMPRESSION:
            return None
        params: dict[str, Any] = {}
        for name in ("window", "scorer", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return get_method(self.method, keep_ratio=self.keep_ratio, **params)

    @property
    def name(self) -> str:
        """Folder name of the cell, e.g. ``ltbm-r0.25-w3`` or ``none``."""
        if self.method == NO_COMPRESSION:
            return NO_COMPRESSION
        parts = [self.method, f"r{self.keep_ratio:g}"]
        if self.window is not None:
            parts.append(f"w{self.window}")
        if self.scorer is not None:
            parts.append(self.scorer)
        if self.seed is not None:
            parts.append(f"s{self.seed}")
        return "-".join(parts)


@dataclass
class RunSettings:
    """Everything besides the cell that shapes a run's results."""

    backbone: str
    task: str
    out_root: Path
    batch_size: int = 4
    max_new_tokens: int | None = None
    """None: the backbone's own default (224 for Whisper, 128 for the HF pipelines)."""
    prompt: str | None = None
    limit: int | None = None
    """The first N items in the dataset's order (not a sample)."""
    subset: int | None = None
    """A stratified sample of N items (``ltbm.tasks.subset``), drawn with ``subset_seed``."""
    subset_seed: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def run_dir(self, cell: Cell) -> Path:
        return self.out_root / self.task / self.backbone / cell.name


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch: rank and world size from the launcher's variables
    (``accelerate launch`` and ``torchrun`` both set RANK and WORLD_SIZE)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Shard:
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
        return cls(rank, world_size)

    def take(self, items: list[Item]) -> list[Item]:
        return items[self.rank :: self.world_size]


def evaluate(
    backbone: Backbone,
    task: Task,
    cell: Cell,
    settings: RunSettings,
    shard: Shard | None = None,
    progress: bool = True,
) -> Path:
    """Run (or resume) one cell; returns its folder. The metrics file is written once every
    shard has finished."""
    shard = shard or Shard.from_environment()
    run_dir = settings.run_dir(cell)
    method = cell.build()
    check = getattr(backbone, "check_method", None)
    if check is not None:  # refuse up front rather than record every item as failed
        check(method)
    items = task.items()
    if settings.subset is not None:
        items = stratified_subset(items, settings.subset, settings.subset_seed)
    if settings.limit is not None:
        items = items[: settings.limit]
    template = prompt_template(settings.backbone, task.kind, settings.prompt)
    done = set(read_records(run_dir))
    todo = [item for item in shard.take(items) if item.id not in done]
    (run_dir / f"done.rank{shard.rank}").unlink(missing_ok=True)
    with RecordWriter(shard_file(run_dir, shard.rank, shard.world_size)) as writer:
        for batch in _batches(todo, settings.batch_size, progress, cell.name):
            for record in _run_batch(backbone, batch, method, template, settings):
                writer.write(record)
    (run_dir / f"done.rank{shard.rank}").write_text(str(time.time()))
    if all((run_dir / f"done.rank{r}").exists() for r in range(shard.world_size)):
        finalize(run_dir, backbone, task, items, cell, settings, template)
    return run_dir


def _batches(items: list[Item], size: int, progress: bool, label: str):
    from rich.progress import Progress

    chunks = [items[i : i + size] for i in range(0, len(items), max(size, 1))]
    if not progress:
        yield from chunks
        return
    with Progress(transient=True) as bar:
        job = bar.add_task(label, total=len(items))
        for chunk in chunks:
            yield chunk
            bar.advance(job, len(chunk))


def _run_batch(
    backbone: Backbone,
    batch: list[Item],
    method: Method | None,
    template: str,
    settings: RunSettings,
) -> list[dict[str, Any]]:
    """Generate for a batch; an item whose audio fails is recorded with its error, and a
    batch that fails as a whole is retried item by item so one bad clip costs one record."""
    records, audios, ready = [], [], []
    for item in batch:
        try:
            audios.append(load_audio(item.audio))
            ready.append(item)
        except Exception as error:  # noqa: BLE001 - any unreadable clip is recorded, not fatal
            records.append(_failure(item, error))
    if not ready:
        return records
    prompts = [render_prompt(template, item) for item in ready]
    start = time.perf_counter()
    try:
        limits = (
            {} if settings.max_new_tokens is None else {"max_new_tokens": settings.max_new_tokens}
        )
        generations = backbone.generate(audios, prompts, method, **limits)
    except Exception as error:  # noqa: BLE001
        if len(ready) == 1:
            return [*records, _failure(ready[0], error)]
        for item in ready:
            records.extend(_run_batch(backbone, [item], method, template, settings))
        return records
    seconds = (time.perf_counter() - start) / len(ready)
    for item, prompt, generation in zip(ready, prompts, generations, strict=True):
        records.append(
            {
                "id": item.id,
                "prediction": generation.text,
                "references": item.references,
                "prompt": prompt,
                "audio_tokens": generation.audio_tokens,
                "kept_tokens": generation.kept_tokens,
                "seconds": seconds,
                "meta": item.meta,
                **record_fields(item, generation.text),
            }
        )
    return records


def _failure(item: Item, error: Exception) -> dict[str, Any]:
    return {
        "id": item.id,
        "error": f"{type(error).__name__}: {error}",
        "meta": item.meta,
        **record_fields(item, None),
    }


def finalize(
    run_dir: Path,
    backbone: Backbone,
    task: Task,
    items: list[Item],
    cell: Cell,
    settings: RunSettings,
    template: str,
) -> dict[str, Any]:
    """Merge every shard's records and write ``metrics.json`` with the full configuration."""
    records = read_records(run_dir)
    ordered = [records[item.id] for item in items if item.id in records]
    succeeded = [r for r in ordered if "error" not in r]
    scores = score_records(task, items, succeeded, run_dir)
    payload = {
        "task": settings.task,
        "task_kind": task.kind,
        "backbone": settings.backbone,
        "cell": asdict(cell),
        "cell_name": cell.name,
        "method_params": cell.build().params() if cell.method != NO_COMPRESSION else None,
        "prompt_template": template,
        "settings": {
            "batch_size": settings.batch_size,
            "max_new_tokens": settings.max_new_tokens,
            "limit": settings.limit,
            "subset": settings.subset,
            "subset_seed": settings.subset_seed,
            **settings.details,
        },
        "items": len(items),
        "completed": len(ordered),
        "scored": len(succeeded),
        "failed": [{"id": r["id"], "error": r["error"]} for r in ordered if "error" in r],
        "coverage": task.coverage().as_dict(),
        "mean_audio_tokens": _mean(r["audio_tokens"] for r in succeeded),
        "mean_kept_tokens": _mean(r["kept_tokens"] for r in succeeded),
        "mean_seconds_per_item": _mean(r["seconds"] for r in succeeded),
        "metrics": scores["metrics"],
        "computed": scores["computed"],
        "skipped": scores["skipped"],
        "backbone_details": backbone.describe(),
        "versions": versions(),
    }
    write_json_atomic(run_dir / "metrics.json", payload)
    return payload


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def versions() -> dict[str, str]:
    """Versions of what shapes the numbers, written into every metrics file."""
    from importlib import metadata

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("ltbm", "torch", "transformers", "ctranslate2", "pycocoevalcap", "jiwer"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
