"""Evaluation tasks by name.

``get_task("clotho", root="~/data/clotho")`` builds a task from paths; ``task_from_config``
does the same from a dict such as ``{"task": "audiocaps", "csv": ..., "audio_dir": ...}``.
Path keys: ``root`` (a folder in the dataset's usual layout), ``csv`` (Clotho, AudioCaps),
``json`` (MMAU), ``audio_dir`` (the audio folder; for MMAU the folder ``audio_id`` paths are
relative to). Each reader's module docstring lists the layouts it accepts.

New tasks register with :func:`register_task`. Optional task modules listed in
``_OPTIONAL`` (the speech task) are imported only when asked for, so a missing or broken
optional module never stops the others from loading.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ltbm.tasks.audiocaps import AudioCapsTask
from ltbm.tasks.base import Coverage, DatasetError, Item, Task, TaskKind
from ltbm.tasks.clotho import ClothoTask
from ltbm.tasks.mmau import MMAUTask

TaskFactory = Callable[[Mapping[str, Any]], Task]
"""Builds a task from its path config (see the module docstring for the keys)."""

TASKS: dict[str, TaskFactory] = {
    "clotho": ClothoTask.from_config,
    "audiocaps": AudioCapsTask.from_config,
    "mmau": MMAUTask.from_config,
}

_OPTIONAL: dict[str, tuple[str, str]] = {"speech": ("ltbm.tasks.speech", "SpeechTask")}
"""name -> (module, class): imported on first use. The class is built with its
``from_config(dict)`` if it has one, else with the config as keyword arguments; a module
may instead call :func:`register_task` itself when imported."""


def register_task(name: str, factory: TaskFactory) -> None:
    """Make ``name`` available to :func:`get_task` (a later registration replaces it)."""
    TASKS[name] = factory


def available_tasks() -> list[str]:
    """Names :func:`get_task` accepts, optional ones included."""
    return sorted(set(TASKS) | set(_OPTIONAL))


def get_task(name: str, **paths: Any) -> Task:
    """The task ``name`` built from path keyword arguments (``root``, ``csv``, ``json``,
    ``audio_dir``); ``None`` values are dropped so callers can pass unset options through."""
    return _factory(name)({key: value for key, value in paths.items() if value is not None})


def task_from_config(config: Mapping[str, Any]) -> Task:
    """The task named by ``config["task"]`` (or ``"name"``), built from the other keys."""
    settings = dict(config)
    name = settings.pop("task", None) or settings.pop("name", None)
    if not name:
        raise DatasetError(
            f"the task config needs a 'task' key, one of {', '.join(available_tasks())}"
        )
    return get_task(str(name), **settings)


def _factory(name: str) -> TaskFactory:
    if name not in TASKS and name in _OPTIONAL:
        _load_optional(name)
    try:
        return TASKS[name]
    except KeyError:
        raise DatasetError(
            f"unknown task {name!r}; available: {', '.join(available_tasks())}"
        ) from None


def _load_optional(name: str) -> None:
    module_name, class_name = _OPTIONAL[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise  # the module exists but one of its own imports is missing: show that
        raise DatasetError(f"task {name!r} is not part of this installation") from None
    if name in TASKS:  # the module registered itself
        return
    cls = getattr(module, class_name, None)
    if cls is None:
        raise DatasetError(f"{module_name} defines no {class_name} and registered no {name!r}")
    from_config = getattr(cls, "from_config", None)
    TASKS[name] = from_config if callable(from_config) else _keyword_factory(name, cls)


def _keyword_factory(name: str, cls: Callable[..., Task]) -> TaskFactory:
    """A factory passing the config as keyword arguments, with a DatasetError (not a bare
    TypeError) for a key the class does not take."""

    def build(config: Mapping[str, Any]) -> Task:
        try:
            return cls(**config)
        except TypeError as error:
            raise DatasetError(f"task {name!r} cannot take {sorted(config)}: {error}") from None

    return build


__all__ = [
    "TASKS",
    "AudioCapsTask",
    "ClothoTask",
    "Coverage",
    "DatasetError",
    "Item",
    "MMAUTask",
    "Task",
    "TaskFactory",
    "TaskKind",
    "available_tasks",
    "get_task",
    "register_task",
    "task_from_config",
]
