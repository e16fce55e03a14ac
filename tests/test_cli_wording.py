"""Errors the command line prints name its flags (``--json``, ``--root``), not the Python
keywords the library's messages use (``json=...``, ``root=...``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltbm.cli import app, cli_wording, command_flags

runner = CliRunner()


def flags_of(name: str) -> dict[str, str]:
    [command] = [c for c in app.registered_commands if c.callback.__name__.startswith(name)]
    return command_flags(command.callback.__wrapped__)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "MMAU needs json=... (or root=<folder with mmau-test-mini.json>). Pass json=...",
            "MMAU needs --json ... (or --root <folder with mmau-test-mini.json>). Pass --json ...",
        ),
        ("on whisper-ct2 prune with scorer='norm'", "on whisper-ct2 prune with --scorer norm"),
        (
            "window must be a positive integer, got 0; use method='global' for no window",
            "--window must be a positive integer, got 0; use --method global for no window",
        ),
        (
            "method 'pool' takes no parameter 'window'; it accepts 'keep_ratio'",
            "--method pool takes no parameter --window; it accepts --keep-ratio",
        ),
        ("pass audio_dir=<folder holding x/>", "pass --audio-dir <folder holding x/>"),
        ("keep_ratio must be in (0, 1], got 2.0", "--keep-ratio must be in (0, 1], got 2.0"),
        ("clips over 40 s; pass batch_size=1", "clips over 40 s; pass --batch-size 1"),
        ("or pass allow_outside_root=True", "or pass --allow-outside-root"),
        # Written-out calls are Python and stay as they are.
        (
            "build one with ltbm.get_method(name, keep_ratio=...)",
            "build one with ltbm.get_method(name, keep_ratio=...)",
        ),
        # English words that are also flags stay words unless their form marks a keyword.
        (
            "a json file in the root folder; the method sees every window",
            "a json file in the root folder; the method sees every window",
        ),
        ("seed 0 and a --window flag", "seed 0 and a --window flag"),
    ],
)
def test_eval_wording(message: str, expected: str):
    assert cli_wording(message, flags_of("eval")) == expected


def test_each_command_names_its_own_flag():
    message = "keep_ratio must be in (0, 1]; window must be ≥ 1"
    assert cli_wording(message, flags_of("sweep")).startswith("--keep-ratios must")
    assert cli_wording("window must be ≥ 1", flags_of("sweep")) == "--windows must be ≥ 1"
    assert cli_wording(message, flags_of("demo")).startswith("--keep must")
    assert cli_wording("pass json=...", flags_of("report")) == "pass json=..."  # no such flag


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_missing_dataset_names_the_flags(tmp_path: Path):
    out = invoke("eval", "--task", "mmau", "--out", str(tmp_path))
    assert "MMAU needs --json ... (or --root <folder" in out and "json=" not in out
    out = invoke(
        "eval", "--task", "clotho", "--root", str(tmp_path / "none"), "--out", str(tmp_path)
    )
    assert "pass --root <folder" in out and "--csv ... and --audio-dir ..." in out
    assert "root=" not in out and "audio_dir" not in out
    out = invoke("eval", "--task", "speech", "--csv", "x.csv", "--out", str(tmp_path))
    assert "takes a folder (--root ...) and nothing else (got --csv ...)" in out


def test_method_parameters_are_named_as_flags(tmp_path: Path):
    out = invoke("eval", "--method", "ltbm", "--window", "0", "--out", str(tmp_path))
    assert "--window must be a positive integer" in out and "--method global" in out
    out = invoke("eval", "--method", "pool", "--window", "2", "--out", str(tmp_path))
    assert "--method pool takes no parameter --window; it accepts --keep-ratio" in out
    out = invoke("sweep", "--keep-ratios", "2", "--out", str(tmp_path))
    assert "keep_ratio" not in out and "--keep-ratios" in out
    out = invoke("demo", "--keep", "2", "--out", str(tmp_path))
    assert "--keep must be in (0, 1]" in out


def test_a_config_file_message_keeps_the_files_keys(tmp_path: Path):
    config = tmp_path / "grid.toml"
    config.write_text("windows = [0]\n")
    out = invoke("sweep", "--config", str(config), "--out", str(tmp_path))
    assert f"{config}: windows must be" in out and "--windows" not in out
