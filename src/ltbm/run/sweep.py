"""A grid of cells (the paper's methods × keep ratios × windows) run one after another
with one loaded backbone; finished cells are reused, unfinished ones resumed.

Every cell's identity is checked before the first cell runs, so a sweep never stops
half-way on a folder made under other settings. A sweep config (TOML or JSON) holds the
grid and, optionally, dataset paths and run settings; each value is checked for its type
and range when the file is read, before any model loads.
"""

from __future__ import annotations

import json

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ltbm.backbones.base import Backbone
from ltbm.methods.adaptive import DEFAULT_THRESHOLD
from ltbm.methods.segments import DEFAULT_SEGMENTS
from ltbm.run.evaluate import (
    NO_COMPRESSION,
    Cell,
    RunSettings,
    Shard,
    check_size_aware,
    evaluate,
    run_identity,
)
from ltbm.run.folder import check_cell
from ltbm.run.options import check_seed
from ltbm.tasks.base import Task
from ltbm.tasks.prompts import prompt_template

PAPER_METHODS = ("none", "pool", "prune", "global", "ltbm")
PAPER_KEEP_RATIOS = (0.5, 0.25, 0.15)
PAPER_WINDOWS = (1, 2, 4)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty text, got {value!r}")
    return value


def _whole(key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{key} must be a whole number ≥ {low}, got {value!r}")
    return value


def _seed(key: str, value: Any) -> int:
    check_seed(key, _whole(key, value, low=0))
    return value


def _ratio(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{key} must hold numbers in (0, 1], got {value!r}")
    return float(value)


def _cosine(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
        raise ValueError(f"{key} must be a cosine similarity in [-1, 1], got {value!r}")
    return float(value)


def _weighting(key: str, value: Any) -> str:
    if value not in ("size", "attention"):
        raise ValueError(f"{key} must be size or attention, got {value!r}")
    return value


def _frame_rate(key: str, value: Any) -> int:
    if isinstance(value, bool) or value not in (25, 50):
        raise ValueError(f"{key} must be 25 or 50 (Hz), got {value!r}")
    return int(value)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _flags(key: str, value: Any) -> tuple[bool, ...]:
    """``true``, ``false`` or both (``[false, true]``): a bool or a list of bools."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, bool) for v in values):
        raise ValueError(
            f"{key} must be true, false or a list of them (e.g. {key} = [false, true] runs "
            f"every compressed cell both ways), got {value!r}"
        )
    return tuple(dict.fromkeys(values))


def _list_of(check: Callable[[str, Any], Any]) -> Callable[[str, Any], tuple]:
    def checked(key: str, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)):
            example = json.dumps([value]) if isinstance(value, (int, float, str)) else "[...]"
            raise ValueError(f"{key} must be a list, e.g. {key} = {example}; got {value!r}")
        if not value:
            raise ValueError(f"{key} must list at least one value")
        return tuple(check(key, v) for v in value)

    return checked


GRID_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "methods": _list_of(_text),
    "keep_ratios": _list_of(_ratio),
    "windows": _list_of(_whole),
    "scorer": _text,
    "seed": _seed,
    "size_aware": _flags,
    "segments": _whole,
    "threshold": _cosine,
    "weighting": _weighting,
}
RUN_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "root": _text,
    "csv": _text,
    "json": _text,
    "audio_dir": _text,
    "allow_outside_root": _flag,
    "frame_rate": _frame_rate,
    "max_new_tokens": _whole,
    "batch_size": _whole,
    "limit": _whole,
    "prompt": lambda key, value: value if isinstance(value, str) else _text(key, value),
}
"""Settings a sweep config may hold besides the grid: dataset paths and run settings."""


@dataclass
class Grid:
    """Which cells a sweep runs. ``windows`` apply to ltbm only; ``none`` runs once."""

    methods: tuple[str, ...] = PAPER_METHODS
    keep_ratios: tuple[float, ...] = PAPER_KEEP_RATIOS
    windows: tuple[int, ...] = PAPER_WINDOWS
    scorer: str = "norm"
    """prune's and segment_topk's scorer."""
    seed: int = 0
    """random's seed."""
    size_aware: tuple[bool, ...] = (False,)
    """Size-aware attention off, on, or both (every compressed cell run each way)."""
    segments: int = DEFAULT_SEGMENTS
    """segment_topk's S."""
    threshold: float = DEFAULT_THRESHOLD
    """adaptive_diverse's threshold."""
    weighting: str = "size"
    """adaptive_diverse's weighting (ltbm's stays "size" in a sweep; ``ltbm eval`` sets it)."""

    def __post_init__(self) -> None:
        for item in fields(self):
            setattr(self, item.name, GRID_KEYS[item.name](item.name, getattr(self, item.name)))

    def cells(self) -> list[Cell]:
        """Every distinct cell once, in grid order (a value listed twice runs once)."""
        cells = []
        for method in self.methods:
            if method == NO_COMPRESSION:
                cells.append(Cell(NO_COMPRESSION, 1.0))
                continue
            for ratio in self.keep_ratios:
                if method == "ltbm":
                    plain = [Cell("ltbm", ratio, window=w) for w in self.windows]
                elif method == "prune":
                    plain = [Cell("prune", ratio, scorer=self.scorer)]
                elif method == "segment_topk":
                    plain = [Cell(method, ratio, scorer=self.scorer, segments=self.segments)]
                elif method == "adaptive_diverse":
                    plain = [
                        Cell(method, ratio, threshold=self.threshold, weighting=self.weighting)
                    ]
                elif method == "random":
                    plain = [Cell("random", ratio, seed=self.seed)]
                else:
                    plain = [Cell(method, ratio)]
                cells += [replace(c, size_aware=on) for c in plain for on in self.size_aware]
        return list(dict.fromkeys(cells))

    def describe(self) -> str:
        """The grid in one line, as printed before a sweep runs."""
        names = [cell.name for cell in self.cells()]
        sizes = {(False,): "", (True,): " × size-aware"}.get(
            self.size_aware, " × size-aware off and on"
        )
        return (
            f"methods {','.join(self.methods)} × keep ratios "
            f"{','.join(repr(r) for r in self.keep_ratios)} × ltbm windows "
            f"{','.join(map(str, self.windows))}{sizes}: {len(names)} cells ({', '.join(names)})"
        )


def read_sweep_config(path: Path) -> dict[str, Any]:
    """The checked values of a sweep config (only the keys it holds)."""
    if not path.exists():
        raise FileNotFoundError(f"sweep config not found: {path}")
    if not path.is_file():
        raise ValueError(f"sweep config {path} is a folder; pass a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            config = tomllib.loads(text)
        else:
            config = json.loads(text, object_pairs_hook=_unique_keys)
    except ValueError as error:  # TOML and JSON syntax, UTF-8, a key given twice
        raise ValueError(f"sweep config {path} cannot be parsed: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"sweep config {path} must hold a table of keys, got {config!r}")
    if not config:
        raise ValueError(
            f"sweep config {path} is empty; give at least one key (e.g. methods = "
            '["ltbm", "pool"]), or leave --config out for the paper\'s grid'
        )
    checks = {**GRID_KEYS, **RUN_KEYS}
    unknown = sorted(set(config) - set(checks))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(unknown)} in {path}; it takes {', '.join(checks)}"
        )
    try:
        return {key: checks[key](key, value) for key, value in config.items()}
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: with a key given twice, one value would be
    dropped without a word."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the key(s) {', '.join(repeated)} appear twice; give each once")
    return dict(pairs)


def load_grid(path: Path) -> tuple[Grid, dict[str, Any]]:
    """The grid of a sweep config and its other (checked) settings."""
    config = read_sweep_config(path)
    grid = Grid(**{k: v for k, v in config.items() if k in GRID_KEYS})
    return grid, {k: v for k, v in config.items() if k not in GRID_KEYS}


def merge_settings(
    from_config: Mapping[str, Any], from_flags: Mapping[str, Any], config: Path
) -> dict[str, Any]:
    """Config values and command-line flags together: a key set in both places must agree
    (flags never silently win or lose); None in ``from_flags`` means "not given"."""
    merged = dict(from_config)
    for key, value in from_flags.items():
        if value is None:
            continue
        if key in merged and merged[key] != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"{flag} {_shown(value)} disagrees with {key} = {_shown(merged[key])} in "
                f"{config}; give it in one place"
            )
        merged[key] = value
    return merged


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
    return str(value)


def check_sweep(
    backbone: Backbone, task: Task, grid: Grid, settings: RunSettings, *, folders: bool = True
) -> None:
    """Refuse before any work: a cell whose method the backbone cannot feed, or (with
    ``folders``) a cell folder holding results made under other settings."""
    template = prompt_template(settings.backbone, task.kind, settings.prompt)
    check_method = getattr(backbone, "check_method", None)
    for cell in grid.cells():
        method = cell.build()
        if check_method is not None:
            check_method(method)
        check_size_aware(backbone, cell)
        if folders:
            identity = run_identity(backbone, task, cell, settings, template)
            check_cell(settings.run_dir(cell), identity)


def sweep(
    backbone: Backbone,
    task: Task,
    grid: Grid,
    settings: RunSettings,
    progress: bool = True,
    *,
    fresh: bool = False,
    retry_failed: bool = True,
) -> list[Path]:
    """Every cell of the grid: finished ones reused, others resumed (``fresh``: started
    over). All identities are checked first."""
    shard = Shard.from_environment()
    check_sweep(backbone, task, grid, settings, folders=not fresh)
    return [
        evaluate(
            backbone,
            task,
            cell,
            settings,
            shard=shard,
            progress=progress,
            fresh=fresh,
            retry_failed=retry_failed,
        )
        for cell in grid.cells()
    ]
