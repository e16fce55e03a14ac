"""A run's identity: everything that decides its outputs, stored beside its results.

A cell folder holds ``identity.json``; results are resumed or reused only under the same
identity, and any difference stops the run before it does any work, naming the setting that
differs and the way out (``--fresh`` or another ``--out``). Mixing records made under two
settings would give a number that belongs to neither, without a word.

The identity is a nested dict of plain JSON values; its fingerprint is the SHA-256 of its
canonical JSON. Floats are written by ``json`` as their shortest round-trip repr, so two
keep ratios that differ in any bit have different identities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ltbm.io.hashing import canonical, fingerprint

IDENTITY_FILE = "identity.json"
SCHEMA = 1
"""Bumped when the identity's layout changes, so older folders are refused, not misread."""


class RunConflict(ValueError):
    """Results on disk that the requested run must not resume, reuse or overwrite."""


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths text), so a stored
    identity compares equal to a freshly built one."""
    return json.loads(canonical(value))


def differences(
    stored: Any, current: Any, prefix: str = "", labels: tuple[str, str] = ("in the folder", "now")
) -> list[str]:
    """Dotted names of the settings that differ, with both values, e.g.
    ``backbone.frame_rate_hz: 50 in the folder, 25 now`` (``labels`` name the two sides)."""
    first, second = labels
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                found.append(f"{name}: absent {first}, {_short(current[key])} {second}")
            elif key not in current:
                found.append(f"{name}: {_short(stored[key])} {first}, absent {second}")
            else:
                found += differences(stored[key], current[key], name, labels)
        return found
    if stored == current:
        return []
    return [f"{prefix or 'identity'}: {_short(stored)} {first}, {_short(current)} {second}"]


def _short(value: Any, limit: int = 60) -> str:
    text = canonical(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_identity(run_dir: Path) -> dict[str, Any] | None:
    """The stored identity, or None where the folder has none."""
    path = run_dir / IDENTITY_FILE
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunConflict(
            f"{path} is damaged ({error}); delete the cell folder's results with --fresh, "
            "or write to another --out"
        ) from None
    if not isinstance(stored, dict):
        raise RunConflict(f"{path} is not an identity file; start over with --fresh")
    return stored


def check_identity(run_dir: Path, identity: dict[str, Any], has_results: bool) -> None:
    """Refuse to go on when the folder's results were made under another identity.

    A folder with results but no identity file was written by an older ltbm: its settings
    are unknown, so it is refused too. A folder without results may be reused freely.
    """
    stored = read_identity(run_dir)
    if stored is None:
        if has_results:
            raise RunConflict(
                f"{run_dir} holds results without {IDENTITY_FILE} (an older ltbm made them), "
                "so their settings are unknown. Pass --fresh to start this cell over, or "
                "another --out"
            )
        return
    if stored.get("fingerprint") == fingerprint(identity) or not has_results:
        return
    found = differences(stored.get("identity", {}), plain(identity))
    listed = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
    raise RunConflict(
        f"{run_dir} holds results made under other settings ({listed or 'fingerprint differs'}). "
        "Nothing was run. Pass --fresh to start this cell over, or another --out to keep both"
    )


def identity_payload(identity: dict[str, Any]) -> dict[str, Any]:
    """What ``identity.json`` holds: the schema, the fingerprint and the identity itself."""
    return {"schema": SCHEMA, "fingerprint": fingerprint(identity), "identity": plain(identity)}
