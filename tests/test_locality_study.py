"""The locality study's driver refuses a stage that does not exist in one line, before any
sweep starts (it used to end in an IndexError or ValueError traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "locality_study.py"


@pytest.mark.parametrize(
    ("stages", "expected"),
    [("9", "no stage 9: stages are 0 to 5"), ("x,1", "'x,1' is not comma-separated numbers")],
)
def test_a_bad_stage_is_refused_before_any_sweep(tmp_path, stages, expected):
    out = tmp_path / "study"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--stages", stages],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert expected in completed.stderr and "Traceback" not in completed.stderr
    assert not out.exists()
