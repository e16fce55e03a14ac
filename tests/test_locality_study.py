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


def test_base_stages_name_the_sweeps_behind_the_committed_reports(tmp_path):
    """Stages 0 and 1 of ``--model base`` are the commands the README's base reports came
    from: 50 Hz keep 0.15 on every clip, 25 Hz keep 0.25 on the first 150 of each folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("locality_study", SCRIPT)
    study = importlib.util.module_from_spec(spec)
    sys.modules["locality_study"] = study  # its dataclasses look their module up
    spec.loader.exec_module(study)
    stages = study.stages_of("locality", "base")
    first = study.sweep_command("locality", "base", stages[0], Path("/a/librispeech"), tmp_path)
    second = study.sweep_command("locality", "base", stages[1], Path("/a/librispeech"), tmp_path)
    assert first[first.index("--keep-ratios") + 1] == "0.15" and "--limit" not in first
    assert first[-1] == str(tmp_path / "base-50hz-librispeech")
    assert second[second.index("--limit") + 1] == "150"
    assert second[second.index("--frame-rate") + 1] == "25"
    assert second[second.index("--model") + 1] == "base"
