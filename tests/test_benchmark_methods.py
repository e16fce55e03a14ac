"""The methods benchmark writes a JSON that names the run behind its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_methods_benchmark_records_its_command_and_commit(tmp_path):
    out = tmp_path / "methods.json"
    args = ["--sizes", "16", "--batches", "1", "--dim", "8", "--threads", "1", "--repeats", "1"]
    args += ["--methods", "ltbm", "ltbm-torch", "tome", "--half-methods", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "methods.py"), *args],
        check=True, capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    written = json.loads(out.read_text())
    assert [(c["method"], c["n"], c["kept"]) for c in written["cells"]] == [
        ("ltbm", 16, 4),
        ("ltbm-torch", 16, 4),
        ("tome", 16, 4),
    ]
    # ltbm-torch runs with the compiled loops switched off, and the ratio of the two is kept
    from ltbm.core import native_dots

    on = {c["method"]: c["compiled"] for c in written["cells"]}
    assert on["ltbm"] == (native_dots.compiled is not None)
    assert on["ltbm-torch"] is False
    assert "compiled_speedup_ltbm_float32_B1_N16_threads1" in written["summary"]
    # every cell counts the syncs of one call on the accelerator path, where the compiled
    # loops play no part: ltbm and ltbm-torch wait as often
    syncs = {c["method"]: c["syncs"] for c in written["cells"]}
    assert syncs["ltbm"] == syncs["ltbm-torch"] > 0
    assert all(sum(c["syncs_by_kind"].values()) == c["syncs"] for c in written["cells"])
    run = written["run"]
    assert run["command"] == "python benchmarks/methods.py " + " ".join(args)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    if head.returncode == 0:
        assert run["commit"] == head.stdout.strip() and isinstance(run["dirty"], bool)


def test_methods_benchmark_times_the_new_methods_and_bounds_the_quadratic_one(tmp_path):
    out = tmp_path / "methods.json"
    args = ["--sizes", "16", "32", "--batches", "2", "--dim", "8", "--threads", "1"]
    args += ["--repeats", "1", "--methods", "segment_topk", "adaptive_diverse"]
    args += ["--largest-n", "16", "--half-methods", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "methods.py"), *args],
        check=True, capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    cells = json.loads(out.read_text())["cells"]
    assert [(c["method"], c["n"], c["kept"], c["params"]) for c in cells] == [
        ("segment_topk", 16, 4, {"scorer": "norm"}),
        ("adaptive_diverse", 16, 4, {"weighting": "size"}),
        ("segment_topk", 32, 8, {"scorer": "norm"}),
    ]
    assert all(c["passes"] > 0 for c in cells)
