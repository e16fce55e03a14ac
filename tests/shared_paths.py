"""Where the read-only shared test data (``shared/``: real dataset metadata, MMAU's official
scorer, real recordings) is, without copying any of it into the project.

CI checks the repository out next to ``shared/``; a git worktree may sit deeper. So:
``$LTBM_SHARED`` if set, else the first ``shared/`` that holds ``datasets/`` in a folder
above the repository, else ``/work/shared``. Tests that need a file skip, naming the path,
when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    if os.environ.get("LTBM_SHARED"):
        return Path(os.environ["LTBM_SHARED"]).expanduser()
    for folder in REPO.parents:
        if (folder / "shared" / "datasets").is_dir():
            return folder / "shared"
    return Path("/work/shared")


SHARED = shared_root()
MMAU_JSON = SHARED / "datasets" / "mmau" / "mmau-test-mini.json"
MMAU_OFFICIAL = SHARED / "datasets" / "mmau" / "official"
