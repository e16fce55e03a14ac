"""A grid of cells (the paper's methods × keep ratios × windows) run one after another
with one loaded backbone; finished cells are reused, unfinished ones resumed."""

from __future__ import annotations

import json

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltbm.backbones.base import Backbone
from ltbm.run.evaluate import NO_COMPRESSION, Cell, RunSettings, Shard, evaluate
from ltbm.tasks.base import Task

PAPER_METHODS = ("none", "pool", "prune", "global", "ltbm")
PAPER_KEEP_RATIOS = (0.5, 0.25, 0.15)
PAPER_WINDOWS = (1, 2, 4)


@dataclass
class Grid:
    """Which cells a sweep runs. ``windows`` apply to ltbm only; ``none`` runs once."""

    methods: tuple[str, ...] = PAPER_METHODS
    keep_ratios: tuple[float, ...] = PAPER_KEEP_RATIOS
    windows: tuple[int, ...] = PAPER_WINDOWS
    scorer: str = "norm"
    seed: int = 0
    """random's seed."""

    def cells(self) -> list[Cell]:
        cells = []
        for method in self.methods:
            if method == NO_COMPRESSION:
                cells.append(Cell(NO_COMPRESSION, 1.0))
                continue
            for ratio in self.keep_ratios:
                if method == "ltbm":
                    cells.extend(Cell("ltbm", ratio, window=w) for w in self.windows)
                elif method == "prune":
                    cells.append(Cell("prune", ratio, scorer=self.scorer))
                elif method == "random":
                    cells.append(Cell("random", ratio, seed=self.seed))
                else:
                    cells.append(Cell(method, ratio))
        return cells


def load_grid(path: Path) -> tuple[Grid, dict[str, Any]]:
    """Read a sweep config (TOML or JSON). Keys: methods, keep_ratios, windows, scorer, seed,
    and
    anything else (backbone, model, task, paths, batch_size ...) returned as the rest."""
    if not path.exists():
        raise FileNotFoundError(f"sweep config not found: {path}")
    text = path.read_text()
    config = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    grid_keys = {"methods", "keep_ratios", "windows", "scorer", "seed"}
    grid = Grid(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in grid_keys}
    )
    return grid, {k: v for k, v in config.items() if k not in grid_keys}


def is_finished(
    run_dir: Path, limit: int | None, subset: int | None = None, subset_seed: int = 0
) -> bool:
    """A cell is reused only when its metrics cover every item of the same selection."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return False
    metrics = json.loads(metrics_path.read_text())
    stored = metrics.get("settings", {})
    same_selection = (stored.get("limit"), stored.get("subset")) == (limit, subset)
    if subset is not None:
        same_selection = same_selection and stored.get("subset_seed") == subset_seed
    return same_selection and metrics.get("completed") == metrics.get("items")


def sweep(
    backbone: Backbone,
    task: Task,
    grid: Grid,
    settings: RunSettings,
    progress: bool = True,
) -> list[Path]:
    shard = Shard.from_environment()
    run_dirs = []
    for cell in grid.cells():
        run_dir = settings.run_dir(cell)
        if not is_finished(run_dir, settings.limit, settings.subset, settings.subset_seed):
            evaluate(backbone, task, cell, settings, shard=shard, progress=progress)
        run_dirs.append(run_dir)
    return run_dirs
