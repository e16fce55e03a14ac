"""The new methods in the harness: cells name every parameter, earlier cells keep their
folders and identities, sweeps build their cells, ``ltbm eval`` runs them on the embedded
Whisper (or refuses what it cannot feed, with the fix), and reports label them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from test_report import FAST, ONE_ERROR, asr_records, difference, write_cell
from typer.testing import CliRunner

from ltbm.cli import app
from ltbm.report.build import write_report
from ltbm.report.stats import StatsOptions, report_stats
from ltbm.run.evaluate import Cell
from ltbm.run.sweep import Grid, read_sweep_config

pytest.importorskip("jiwer")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


# ------------------------------------------------------------------------------ cells
def test_earlier_cells_keep_their_names_and_identities():
    """Cells written before the new parameters existed: same five fields, same folder."""
    for cell, name in [
        (Cell("ltbm", 0.25, window=1), "ltbm-r0.25-w1"),
        (Cell("prune", 0.25, scorer="norm"), "prune-r0.25-norm"),
        (Cell("random", 0.25, seed=3), "random-r0.25-s3"),
        (Cell("global", 0.25), "global-r0.25"),
        (Cell("none", 1.0), "none"),
    ]:
        old = {k: v for k, v in asdict(cell).items() if k in ("method", "keep_ratio")}
        old |= {"window": cell.window, "scorer": cell.scorer, "seed": cell.seed}
        assert cell.as_dict() == old
        assert cell.name == name
    # ltbm's and global's default weighting is the earlier behaviour: not named.
    assert Cell("ltbm", 0.25, window=1, weighting="size") == Cell("ltbm", 0.25, window=1)
    assert Cell("global", 0.25, weighting="size").name == "global-r0.25"


def test_new_cells_name_every_parameter():
    segment = Cell("segment_topk", 0.25)
    assert segment.name == "segment_topk-r0.25-S10-attention"
    assert segment.as_dict()["segments"] == 10 and segment.as_dict()["scorer"] == "attention"
    assert segment.build().params() == {
        "method": "segment_topk",
        "keep_ratio": 0.25,
        "segments": 10,
        "scorer": "attention",
    }
    adaptive = Cell("adaptive_diverse", 0.15, threshold=1, weighting="size")
    assert adaptive.name == "adaptive_diverse-r0.15-t1.0-size-weighted"
    assert adaptive.build().params()["threshold"] == 1.0
    assert Cell("adaptive_diverse", 0.25).name == "adaptive_diverse-r0.25-t0.9-attention-weighted"
    weighted = Cell("ltbm", 0.25, window=2, weighting="attention")
    assert weighted.name == "ltbm-r0.25-w2-attention-weighted"
    assert weighted.build().params()["weighting"] == "attention"
    with pytest.raises(ValueError, match="takes no parameter 'segments'"):
        Cell("ltbm", 0.25, window=1, segments=4).build()


def test_a_sweep_grid_builds_the_new_cells(tmp_path):
    grid = Grid(
        methods=("segment_topk", "adaptive_diverse", "ltbm"),
        keep_ratios=(0.25, 0.1),
        windows=(1,),
        scorer="attention",
        segments=5,
        threshold=0.8,
        weighting="attention",
    )
    assert [cell.name for cell in grid.cells()] == [
        "segment_topk-r0.25-S5-attention",
        "segment_topk-r0.1-S5-attention",
        "adaptive_diverse-r0.25-t0.8-attention-weighted",
        "adaptive_diverse-r0.1-t0.8-attention-weighted",
        "ltbm-r0.25-w1",
        "ltbm-r0.1-w1",
    ]
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["adaptive_diverse"]\nthreshold = 1.5\n')
    with pytest.raises(ValueError, match=r"threshold must be a cosine similarity in \[-1, 1\]"):
        read_sweep_config(config)
    config.write_text('methods = ["adaptive_diverse"]\nweighting = "mean"\n')
    with pytest.raises(ValueError, match="weighting must be size or attention"):
        read_sweep_config(config)


# ----------------------------------------------------------------- ltbm eval, CT2
def eval_args(out: Path, method: str) -> list[str]:
    return ["eval", "--task", "speech", "--method", method, "--limit", "1", "--out", str(out)]


def test_eval_runs_the_new_methods_on_whisper_ct2_with_exact_parameters(tmp_path):
    out = tmp_path / "runs"
    cells = out / "speech" / "whisper-ct2"
    segment = run(*eval_args(out, "segment_topk"), "--segments", "4")
    assert segment.exit_code == 0, segment.output
    adaptive = run(*eval_args(out, "adaptive_diverse"), "--threshold", "0.85")
    assert adaptive.exit_code == 0, adaptive.output
    for name, params in [
        ("segment_topk-r0.25-S4-norm", {"segments": 4, "scorer": "norm"}),
        ("adaptive_diverse-r0.25-t0.85-size-weighted", {"threshold": 0.85, "weighting": "size"}),
    ]:
        identity = json.loads((cells / name / "identity.json").read_text())["identity"]
        assert identity["method_params"] == {
            "method": name.split("-")[0],
            "keep_ratio": 0.25,
            **params,
        }
        metrics = json.loads((cells / name / "metrics.json").read_text())
        assert metrics["scored"] == 1 and metrics["cell_name"] == name


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--method", "segment_topk", "--scorer", "attention"], "use --scorer norm"),
        (["--method", "adaptive_diverse", "--weighting", "attention"], "use --weighting size"),
        (["--method", "ltbm", "--weighting", "attention"], "use --weighting size"),
    ],
)
def test_eval_refuses_attention_on_whisper_ct2_with_the_fix(tmp_path, args, fix):
    out = tmp_path / "runs"
    result = run("eval", "--task", "speech", "--limit", "1", "--out", str(out), *args)
    assert result.exit_code == 2, result.output
    assert fix in " ".join(result.output.split())
    assert not list(out.rglob("items*.jsonl"))


# ------------------------------------------------------------------------- report
def test_report_labels_and_compares_the_new_cells(tmp_path):
    root = tmp_path / "runs"
    write_cell(root, Cell("ltbm", 0.25, window=1), asr_records(ONE_ERROR))
    write_cell(root, Cell("segment_topk", 0.25, scorer="norm"), asr_records({}))
    write_cell(root, Cell("adaptive_diverse", 0.25, weighting="size"), asr_records(ONE_ERROR))
    write_cell(root, Cell("ltbm", 0.25, window=1, weighting="attention"), asr_records({}))
    options = StatsOptions(
        resamples=FAST.resamples,
        pairs=(("segment_topk", "ltbm"), ("adaptive_diverse", "ltbm"), ("ltbm", "ltbm")),
    )
    stats = report_stats([root], options)
    better = difference(stats, "segment_topk norm S=10", "ltbm w=1", 0.25)
    assert better["better"] == "segment_topk norm S=10" and better["wins"] == 4
    same = difference(stats, "adaptive_diverse t=0.9 size-weighted", "ltbm w=1", 0.25)
    assert same["ties"] == 4
    labels = {(d["a"], d["b"]) for d in stats["differences"]}
    assert ("ltbm w=1", "ltbm w=1 attention-weighted") in labels
    paths = write_report(root, options=options)
    header = paths["csv"].read_text().splitlines()[0].split(",")
    after_scorer = header.index("scorer") + 1
    assert header[after_scorer : after_scorer + 3] == ["segments", "threshold", "weighting"]
    table = paths["markdown"].read_text()
    assert "| segment_topk | 0.25 |  | norm | 10 |" in table
