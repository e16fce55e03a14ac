"""The commit a benchmark run measured, for the provenance written into its JSON."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit the run measured, with ``+dirty`` when the tree had changes (results
    files aside: a run beside another benchmark's writing measures the same code)."""
    here = Path(__file__).parent

    def git(*command: str) -> str | None:
        done = subprocess.run(["git", *command], capture_output=True, text=True, cwd=here)
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")
    return None if commit is None else commit + ("+dirty" if dirty else "")
