"""The proxy studies on 327 real clips: locality (LTBM against Global Merge and pooling) on
Whisper tiny.en and base through CTranslate2, and the attention-based and newer methods on
the same two models in PyTorch.

Runs `ltbm sweep` over both real speech folders in `../shared/audio` (27 recordings in
`speech/`, 300 LibriSpeech utterances in `librispeech/`), stage by stage, most informative
cells first, so a study cut short still answers its main question. Every stage resumes: rerun
the same command after a kill and finished cells are reused, unfinished ones resumed. Each
study, model, folder and frame rate has its own runs folder.

    python benchmarks/locality_study.py --out study-runs                  # tiny.en, CT2
    python benchmarks/locality_study.py --out study-runs --model base     # base, CT2
    python benchmarks/locality_study.py --out study-runs --study pytorch --model base
    python benchmarks/locality_study.py --out study-runs --stages 0,1     # the first two
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
DATA_FOLDERS = ("speech", "librispeech")
MODELS = ("tiny.en", "base")


@dataclass(frozen=True)
class Stage:
    """One sweep: a frame rate and a grid of methods × keep ratios × windows."""

    frame_rate: int
    methods: str
    keep_ratios: str
    windows: str = "1"
    scorer: str = "norm"
    size_aware: bool = False
    limit: int | None = None
    """Only the first ``limit`` clips of each folder (a later stage without it reuses them)."""


TINY_CT2 = (
    # The core comparison at 50 Hz, strongest compression first.
    Stage(50, "none,ltbm,global,pool", "0.15,0.25"),
    Stage(50, "ltbm,global,pool", "0.1"),
    # The ALMs' frame rate.
    Stage(25, "none,ltbm,global,pool", "0.25,0.5", windows="1,2"),
    # How the window matters.
    Stage(50, "ltbm", "0.15,0.25,0.1", windows="2,4"),
    # The rest of the grid.
    Stage(50, "ltbm,global,pool", "0.5", windows="1,2,4"),
    Stage(50, "prune", "0.5,0.25,0.15,0.1"),
)
"""The locality study on tiny.en, as committed in benchmarks/results/locality-{50,25}hz."""

BASE_CT2 = (
    # The locality question first: the two committed reports are stages 0 and 1.
    Stage(50, "none,ltbm,global", "0.15"),
    Stage(25, "none,ltbm,global", "0.25", limit=150),
    # The rest of the grid (stage 2 reuses stage 1's clips).
    Stage(25, "none,ltbm,global,pool", "0.25"),
    Stage(50, "pool", "0.15"),
    Stage(50, "ltbm,global,pool", "0.25,0.1"),
    Stage(25, "ltbm,global,pool", "0.5"),
)
"""The locality study replicated on Whisper base (window 1)."""

PYTORCH = (
    # The attention-based and newer methods beside the paper's, strongest compression first.
    Stage(50, "none,ltbm,global,pool,segment_topk,adaptive_diverse", "0.15", scorer="attention"),
    Stage(50, "ltbm,global", "0.15", size_aware=True),
    Stage(25, "none,ltbm,global,pool,segment_topk,adaptive_diverse", "0.25", scorer="attention"),
    Stage(25, "ltbm,global", "0.25", size_aware=True),
    Stage(50, "prune", "0.15,0.25", scorer="attention"),
    Stage(50, "ltbm,global,pool,segment_topk,adaptive_diverse", "0.25", scorer="attention"),
    Stage(50, "ltbm,global", "0.25", size_aware=True),
    Stage(50, "ltbm,global,pool,segment_topk,adaptive_diverse", "0.1", scorer="attention"),
    Stage(50, "ltbm,global", "0.1", size_aware=True),
)
"""Whisper in PyTorch (greedy): the encoder's attention is reachable, and the decoder's
cross-attention takes the size-aware bias."""


@dataclass(frozen=True)
class Study:
    backbone: str
    stages: tuple[Stage, ...]


STUDIES = {"locality": Study("whisper-ct2", TINY_CT2), "pytorch": Study("whisper-hf", PYTORCH)}


def stages_of(study: str, model: str) -> tuple[Stage, ...]:
    if study == "locality":
        return TINY_CT2 if model == "tiny.en" else BASE_CT2
    return STUDIES[study].stages


def runs_folder(out: Path, study: str, model: str, stage: Stage, folder: Path) -> Path:
    """``50hz-speech`` for the tiny.en locality study (the committed layout), else prefixed
    by the model and, for the PyTorch study, ``hf``."""
    name = f"{stage.frame_rate}hz-{folder.name}"
    prefix = {"locality": "", "pytorch": "hf-"}[study]
    if study == "pytorch" or model != "tiny.en":
        prefix += f"{model}-"
    return out / f"{prefix}{name}"


def sweep_command(study: str, model: str, stage: Stage, folder: Path, out: Path) -> list[str]:
    command = ["ltbm", "sweep", "--backbone", STUDIES[study].backbone]
    if model != "tiny.en":
        command += ["--model", model]
    command += ["--task", "speech", "--root", str(folder), "--frame-rate", str(stage.frame_rate)]
    command += ["--methods", stage.methods, "--keep-ratios", stage.keep_ratios]
    command += ["--windows", stage.windows, "--scorer", stage.scorer]
    if stage.size_aware:
        command.append("--size-aware")
    if stage.limit is not None:
        command += ["--limit", str(stage.limit)]
    return command + ["--out", str(runs_folder(out, study, model, stage, folder))]


def stage_numbers(text: str) -> list[int]:
    """``--stages 0,2`` (checked against the chosen study in :func:`main`)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated numbers") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="runs folder of the study")
    parser.add_argument("--study", choices=sorted(STUDIES), default="locality")
    parser.add_argument("--model", choices=MODELS, default="tiny.en")
    parser.add_argument("--stages", type=stage_numbers, help="comma-separated stage numbers")
    parser.add_argument("--audio", type=Path, default=SHARED_AUDIO, help="the shared audio")
    args = parser.parse_args()
    stages = stages_of(args.study, args.model)
    chosen = range(len(stages)) if args.stages is None else args.stages
    wrong = [n for n in chosen if not 0 <= n < len(stages)]
    if wrong:
        parser.error(f"no stage {wrong[0]}: stages are 0 to {len(stages) - 1}")
    for number in chosen:
        for name in DATA_FOLDERS:
            command = sweep_command(
                args.study, args.model, stages[number], args.audio / name, args.out
            )
            print(f"stage {number} {name}: {' '.join(command)}", flush=True)
            if subprocess.run(command).returncode != 0:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
