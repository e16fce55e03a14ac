"""Hashes of files and of settings: what run identities and weight checks are built from.

The lowest layer: backbones hash their weights and runs hash their identities with the same
two functions, so neither has to import the other."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (listings are small; weights may not be)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def canonical(value: Any) -> str:
    """JSON with sorted keys and no spacing: equal identities give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``identity``."""
    return hashlib.sha256(canonical(identity).encode("utf-8")).hexdigest()
