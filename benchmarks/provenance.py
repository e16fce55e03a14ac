"""What produced a benchmark's JSON: the command line and the git commit it ran on, so that a
figure quoted from the file can name its run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_record(script: str) -> dict:
    """``command`` (as typed, from the repository root), ``commit`` and ``dirty`` (uncommitted
    changes to tracked files outside ``benchmarks/results``: a run beside another
    benchmark's writing still measures the same code)."""

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *command], capture_output=True, text=True, cwd=Path(__file__).parent
            )
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":!results")
    return {
        "command": " ".join(["python", script, *sys.argv[1:]]),
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
    }
