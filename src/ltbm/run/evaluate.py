"""One evaluation run: a backbone × task × method × keep ratio (× window) cell.

Items are generated in batches and written one JSON line each as they finish; a killed run
resumes where it stopped and skips finished items; items that fail (bad audio, say) are
recorded with their error and the run goes on, and are tried again when the run resumes.
Under ``accelerate launch`` or ``torchrun`` each process takes every WORLD_SIZE-th item,
writes its own file, and the last process to finish merges all of them into one metrics file.

Every cell folder holds the run's identity (``identity.json``, see :mod:`ltbm.run.identity`):
a run resumes or reuses a folder only under the same identity, and each (cell, rank) has
one writer at a time (a lock file), so records are never mixed or written twice.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ltbm.backbones.base import Backbone, backbone_identity, default_max_new_tokens
from ltbm.io.audio import audio_warnings, load_audio
from ltbm.io.hashing import canonical, fingerprint
from ltbm.methods import Method, get_method
from ltbm.run.folder import (
    audio_digest,
    cell_lock,
    check_cell,
    clear_results,
    done_marker,
    finish_lock,
    is_complete,
    launch_finished,
    mark_done,
    other_selections,
    pending,
    selection_conflict,
    store_identity,
)
from ltbm.run.identity import RunConflict, plain
from ltbm.run.records import (
    RecordWriter,
    compact,
    read_records,
    shard_file,
    write_json_atomic,
)
from ltbm.run.scoring import record_fields, score_records
from ltbm.tasks.base import Item, Task, dataset_identity
from ltbm.tasks.prompts import prompt_template, render_prompt
from ltbm.tasks.subset import stratified_subset

NO_COMPRESSION = "none"


PARAMETERS = ("window", "scorer", "seed", "segments", "threshold", "weighting")
"""The method parameters a cell may name (its folder names them in the order window,
segments, threshold, scorer, weighting, seed)."""
LATER_PARAMETERS = ("segments", "threshold", "weighting")
"""Cell fields added after run identities existed: left out of a cell's identity while None,
so the folders and identities of earlier cells stay as they were."""
RANDOM_DEFAULT_SEED = 0
"""``random``'s seed when none is given (:class:`ltbm.methods.Random`'s default). A cell
names it, so a run without a seed and one with seed 0, the same computation, share one
folder (``random-r0.25-s0``, the name ``ltbm sweep`` always used)."""

ALWAYS_NAMED = {
    "segment_topk": ("segments", "scorer"),
    "adaptive_diverse": ("threshold", "weighting"),
}
"""Methods added with those fields: every parameter is named in the cell (its folder and
identity), its default filled in when not given, as ltbm's window is."""

SCORED = ("prune", "segment_topk")
"""Methods that take a ``scorer`` (attention or norm)."""

NAMED_IF_NOT = {("ltbm", "weighting"): "size", ("global", "weighting"): "size"}
"""A parameter added to an earlier method is named only when it is not its default (which
reproduces that method's earlier results)."""


@dataclass(frozen=True)
class Cell:
    """The compression setting of one run. ``method="none"`` is the uncompressed baseline.

    ``size_aware``: the consumer's attention gives each compressed token the weight of the
    frames it stands for (:mod:`ltbm.backbones.hf.size_aware`). A cell with it has its own
    folder and identity; without it (the default) the identity is what it was before the
    option existed."""

    method: str = "ltbm"
    keep_ratio: float = 0.25
    window: int | None = None
    scorer: str | None = None
    seed: int | None = None
    size_aware: bool = False
    segments: int | None = None
    threshold: float | None = None
    weighting: str | None = None

    def __post_init__(self) -> None:
        ratio = self.keep_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise ValueError(f"keep_ratio must be a number in (0, 1], got {ratio!r}")
        object.__setattr__(self, "keep_ratio", float(ratio))
        if self.method == NO_COMPRESSION:
            # The uncompressed run keeps every token, whatever ratio was given: one
            # computation, one folder and identity (``Cell("none")`` and ``--method none``).
            object.__setattr__(self, "keep_ratio", 1.0)
            given = {k: v for k in PARAMETERS if (v := getattr(self, k)) is not None}
            if given:
                shown = ", ".join(f"{k} {v}" for k, v in given.items())
                raise ValueError(
                    f"method none (no compression) takes no parameter, got {shown}: the run "
                    "would be labelled with a setting it never used. Drop it (--window is "
                    "ltbm's, --scorer prune's), or pick the method it belongs to"
                )
        if self.method == "random" and self.seed is None:
            # One computation, one folder: no seed means random's default seed, named.
            object.__setattr__(self, "seed", RANDOM_DEFAULT_SEED)
        self._name_new_parameters()
        if not isinstance(self.size_aware, bool):
            raise ValueError(f"size_aware must be true or false, got {self.size_aware!r}")
        if self.size_aware and self.method == NO_COMPRESSION:
            raise ValueError(
                "size-aware attention weighs compressed tokens by their size; the uncompressed "
                "run has none to weigh: drop --size-aware for method none"
            )

    def _name_new_parameters(self) -> None:
        """Defaults of the later methods' parameters filled in; a later parameter of an
        earlier method dropped when it is its default (:data:`NAMED_IF_NOT`)."""
        if self.method in ALWAYS_NAMED:
            from ltbm.methods.registry import method_defaults

            defaults = method_defaults(self.method)
            for name in ALWAYS_NAMED[self.method]:
                if getattr(self, name) is None:
                    object.__setattr__(self, name, defaults[name])
        for (method, name), default in NAMED_IF_NOT.items():
            if self.method == method and getattr(self, name) == default:
                object.__setattr__(self, name, None)
        if isinstance(self.threshold, int) and not isinstance(self.threshold, bool):
            object.__setattr__(self, "threshold", float(self.threshold))

    def as_dict(self) -> dict[str, Any]:
        """The cell's settings as stored in its identity and metrics: ``size_aware`` only
        when set and the later parameters only when given, so cells without them keep the
        identities they had before those existed."""
        settings = asdict(self)
        if not self.size_aware:
            del settings["size_aware"]
        for name in LATER_PARAMETERS:
            if settings[name] is None:
                del settings[name]
        return settings

    def build(self) -> Method | None:
        if self.method == NO_COMPRESSION:
            return None
        params: dict[str, Any] = {}
        for name in PARAMETERS:
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return get_method(self.method, keep_ratio=self.keep_ratio, **params)

    @property
    def name(self) -> str:
        """Folder name of the cell, e.g. ``ltbm-r0.25-w3``, ``segment_topk-r0.25-S10-norm``
        or ``none``. The keep ratio is written as Python's shortest exact repr, so every
        distinct ratio has its own folder (0.3333333 and 0.33333334 no longer share one)."""
        if self.method == NO_COMPRESSION:
            return NO_COMPRESSION
        parts = [self.method, f"r{self.keep_ratio!r}"]
        if self.window is not None:
            parts.append(f"w{self.window}")
        if self.segments is not None:
            parts.append(f"S{self.segments}")
        if self.threshold is not None:
            parts.append(f"t{self.threshold!r}")
        if self.scorer is not None:
            parts.append(self.scorer)
        if self.weighting is not None:
            parts.append(f"{self.weighting}-weighted")
        if self.seed is not None:
            parts.append(f"s{self.seed}")
        if self.size_aware:
            parts.append("size-aware")
        return "-".join(parts)


NOT_IDENTITY = frozenset({"out_root", "batch_size", "backbone_folder"})
"""RunSettings fields that never change an item's output: where results go, and how many
items share a batch (generation is batch-independent). Every other field enters the run's
identity automatically, so a setting added later cannot be forgotten."""
SELECTION = frozenset({"limit", "subset", "subset_seed"})
"""RunSettings fields that choose *which* items run, not what each item gives: a cell's
records serve any selection (``--limit 3`` first, the whole set later), and its metrics
file records the selection it was computed over."""


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
    backbone_folder: str | None = None
    """The backbone's folder under the task (default: ``backbone``); e.g.
    ``whisper-ct2-25hz`` keeps 25 Hz runs apart from 50 Hz ones."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "limit"):
            value = getattr(self, name)
            if value is None and name != "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1, got {value!r}")

    def run_dir(self, cell: Cell) -> Path:
        return self.out_root / self.task / (self.backbone_folder or self.backbone) / cell.name

    def identity_fields(self) -> dict[str, Any]:
        """The fields that decide outputs (all but :data:`NOT_IDENTITY` and
        :data:`SELECTION`)."""
        skip = NOT_IDENTITY | SELECTION
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def selection_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in SELECTION}


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch: rank and world size from the launcher's variables
    (``accelerate launch`` and ``torchrun`` both set RANK and WORLD_SIZE)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Shard:
        try:
            rank = int(os.environ.get("RANK", "0"))
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise ValueError(
                f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE="
                f"{os.environ.get('WORLD_SIZE')!r} must be whole numbers (the launcher sets "
                "them; unset both for a single process)"
            ) from None
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
        return cls(rank, world_size)

    def take(self, items: list[Item]) -> list[Item]:
        return items[self.rank :: self.world_size]


def select_items(task: Task, settings: RunSettings) -> list[Item]:
    """The items this run evaluates: the task's items with audio, after the selection."""
    items = task.items()
    if settings.subset is not None:
        items = stratified_subset(items, settings.subset, settings.subset_seed)
    if settings.limit is not None:
        items = items[: settings.limit]
    return items


def run_identity(
    backbone: Backbone, task: Task, cell: Cell, settings: RunSettings, template: str
) -> dict[str, Any]:
    """Everything that decides the outputs of one cell's items (see docs/design-notes.md):
    dataset, backbone, method with its exact parameters, and every output-deciding
    RunSettings field, resolved (``prompt`` is the template used, ``max_new_tokens`` the
    limit used, the backbone's default included), and the ltbm version."""
    from ltbm import __version__

    method = cell.build()
    max_new_tokens = settings.max_new_tokens or default_max_new_tokens(backbone)
    resolved = {"max_new_tokens": max_new_tokens, "prompt": template}
    return plain(
        {
            "schema": 1,
            "ltbm": __version__,
            "dataset": dataset_identity(task),
            "backbone": backbone_identity(backbone),
            "cell": cell.as_dict(),
            "method_params": method.params() if method is not None else None,
            "settings": {**settings.identity_fields(), **resolved},
        }
    )


def selection_of(settings: RunSettings, items: list[Item]) -> dict[str, Any]:
    """Which items a metrics file covers: the selection settings and the chosen ids."""
    ids = canonical([item.id for item in items]).encode("utf-8")
    digest = hashlib.sha256(ids).hexdigest()
    return plain({**settings.selection_fields(), "items": len(items), "ids_sha256": digest})


def evaluate(
    backbone: Backbone,
    task: Task,
    cell: Cell,
    settings: RunSettings,
    shard: Shard | None = None,
    progress: bool = True,
    *,
    fresh: bool = False,
    retry_failed: bool = True,
) -> Path:
    """Run (or resume) one cell; returns its folder. The metrics file is written by the last
    shard of the launch to finish, once the records cover every selected item.

    Resumes only under the same identity (else :class:`RunConflict`, before any work);
    ``fresh`` first removes the cell's earlier results; ``retry_failed`` (the default) runs
    items whose earlier attempt failed again. A cell already complete for this selection is
    left untouched."""
    shard = shard or Shard.from_environment()
    if fresh and shard.world_size > 1:
        raise RunConflict(
            "--fresh cannot be combined with a sharded launch (each process would delete the "
            "others' files); run it once without the launcher, or delete the cell's files"
        )
    started = time.time()
    run_dir = settings.run_dir(cell)
    method = cell.build()
    check = getattr(backbone, "check_method", None)
    if check is not None:  # refuse up front rather than record every item as failed
        check(method)
    check_size_aware(backbone, cell)
    items = select_items(task, settings)
    template = prompt_template(settings.backbone, task.kind, settings.prompt)
    check_template(template)
    check_prompt = getattr(backbone, "check_prompt", None)
    if check_prompt is not None:
        check_prompt(template)
    identity = run_identity(backbone, task, cell, settings, template)
    selection = selection_of(settings, items)
    with cell_lock(run_dir, shard.rank, shard.world_size):
        if fresh:
            clear_results(run_dir)
        check_cell(run_dir, identity)
        store_identity(run_dir, identity)
        records = read_records(run_dir)
        todo = pending(shard.take(items), records, retry_failed)
        records_file = shard_file(run_dir, shard.rank, shard.world_size)
        if not todo and is_complete(run_dir, identity, selection, retry_failed):
            compact(records_file)  # a line copied in by hand or a killed compaction
            return run_dir
        done_marker(run_dir, shard.rank).unlink(missing_ok=True)
        with RecordWriter(records_file) as writer:
            for batch in _batches(todo, settings.batch_size, progress, cell.name):
                for record in _run_batch(
                    backbone, batch, method, template, settings, cell.size_aware
                ):
                    writer.write(record)
        compact(records_file)
        with finish_lock(run_dir):
            mark_done(run_dir, shard.rank, shard.world_size, selection)
            if launch_finished(run_dir, shard.world_size, items, selection):
                finalize(
                    run_dir, backbone, task, items, cell, settings, template, identity, selection
                )
            else:
                refuse_other_selections(run_dir, shard, selection, started)
    return run_dir


def check_size_aware(backbone: Backbone, cell: Cell) -> None:
    """Refuse, before any item, a size-aware cell on a backbone that cannot bias its
    attention (CTranslate2's Whisper; an HF model on FlashAttention)."""
    if not cell.size_aware:
        return
    check = getattr(backbone, "check_size_aware", None)
    if check is None:
        raise ValueError(
            f"{backbone.name} cannot add a bias to its attention, so it has no size-aware "
            "attention; drop --size-aware, or use a PyTorch backbone (an HF audio LLM)"
        )
    check()


def refuse_other_selections(
    run_dir: Path, shard: Shard, selection: dict[str, Any], started: float
) -> None:
    """Raise when a rank of this launch finished the cell, while this one ran, under another
    selection: then no rank can ever write the metrics. A marker of another selection left
    before this rank started may be an earlier launch's, whose rank of this launch is still
    to come: the command line says so instead (:func:`ltbm.run.folder.other_selections`)."""
    others = other_selections(run_dir, shard.rank, shard.world_size, selection)
    during = [entry for entry in others if entry[2] >= started]
    if during:
        raise RunConflict(selection_conflict(run_dir, during, selection))


def check_template(template: str) -> None:
    """Refuse a prompt template that cannot be filled, before any item runs."""
    probe = Item(id="probe", audio=Path("probe.wav"), question="q", choices=["a", "b"])
    try:
        render_prompt(template, probe)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"the prompt template {template!r} cannot be filled ({type(error).__name__}: "
            f"{error}); it may use {{question}} and {{choices}}, and {{{{ }}}} for a literal "
            "brace"
        ) from None


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
    size_aware: bool = False,
) -> list[dict[str, Any]]:
    """Generate for a batch; an item whose audio fails is recorded with its error, and a
    batch that fails as a whole is retried item by item so one bad clip costs one record."""
    records, audios, ready, warnings = [], [], [], []
    for item in batch:
        try:
            audios.append(load_audio(item.audio))
            ready.append(item)
            warnings.append(audio_warnings(audios[-1]))
        except Exception as error:  # noqa: BLE001 - any unreadable clip is recorded, not fatal
            records.append(_failure(item, error))
    if not ready:
        return records
    prompts = [render_prompt(template, item) for item in ready]
    start = time.perf_counter()
    try:
        options: dict[str, Any] = (
            {} if settings.max_new_tokens is None else {"max_new_tokens": settings.max_new_tokens}
        )
        if size_aware:  # only then: backbones without the option never see it
            options["size_aware"] = True
        generations = backbone.generate(audios, prompts, method, **options)
    except Exception as error:  # noqa: BLE001
        if len(ready) == 1:
            return [*records, _failure(ready[0], error)]
        for item in ready:
            records.extend(_run_batch(backbone, [item], method, template, settings, size_aware))
        return records
    seconds = (time.perf_counter() - start) / len(ready)
    for item, prompt, generation, flags in zip(ready, prompts, generations, warnings, strict=True):
        record = {
            "id": item.id,
            "audio_sha256": audio_digest(item.audio),
            "finished_at": time.time(),
            "prediction": generation.text,
            "references": item.references,
            "prompt": prompt,
            "audio_tokens": generation.audio_tokens,
            "kept_tokens": generation.kept_tokens,
            "seconds": seconds,
            "meta": item.meta,
            **record_fields(item, generation.text),
        }
        if flags:
            record["audio_warnings"] = flags
        records.append(record)
    return records


def _failure(item: Item, error: Exception) -> dict[str, Any]:
    return {
        "id": item.id,
        "audio_sha256": audio_digest(item.audio),
        "finished_at": time.time(),
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
    identity: dict[str, Any],
    selection: dict[str, Any],
) -> dict[str, Any]:
    """Merge every shard's records and write ``metrics.json`` with the full configuration,
    the identity's fingerprint and the selection it covers."""
    records = read_records(run_dir)
    ordered = [records[item.id] for item in items if item.id in records]
    succeeded = [r for r in ordered if "error" not in r]
    scores = score_records(task, items, succeeded, run_dir)
    failed = [{"id": r["id"], "error": r["error"]} for r in ordered if "error" in r]
    payload = {
        "task": settings.task,
        "task_kind": task.kind,
        "backbone": settings.backbone_folder or settings.backbone,
        "backbone_name": settings.backbone,
        "fingerprint": fingerprint(identity),
        "selection": selection,
        "cell": cell.as_dict(),
        "cell_name": cell.name,
        "method_params": identity["method_params"],
        "prompt_template": template,
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k not in ("out_root", "details")},
            **settings.details,
        },
        "items": len(items),
        "item_ids": [item.id for item in items],
        "completed": len(ordered),
        "scored": len(succeeded),
        "failed_count": len(failed),
        "failed": failed,
        "audio_warnings": sum(1 for r in succeeded if r.get("audio_warnings")),
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
