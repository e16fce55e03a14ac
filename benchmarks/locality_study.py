"""The locality study (issue 11): does LTBM's window help, with intervals, on 327 real clips.

Runs `ltbm sweep` with the Whisper tiny.en default over both real speech folders in
`../shared/audio` (27 recordings in `speech/`, 300 LibriSpeech utterances in `librispeech/`),
stage by stage, most informative cells first, so a study cut short still answers the main
question. Every stage resumes: rerun the same command after a kill and finished cells are
reused, unfinished ones resumed. Each folder and frame rate has its own runs folder.

    python benchmarks/locality_study.py --out study-runs            # every stage
    python benchmarks/locality_study.py --out study-runs --stages 0,1  # the first two
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
DATA_FOLDERS = ("speech", "librispeech")


@dataclass(frozen=True)
class Stage:
    """One sweep: a frame rate and a grid of methods × keep ratios × windows."""

    frame_rate: int
    methods: str
    keep_ratios: str
    windows: str = "1"


STAGES = (
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


def sweep_command(stage: Stage, folder: Path, out: Path) -> list[str]:
    return [
        "ltbm",
        "sweep",
        "--backbone",
        "whisper-ct2",
        "--task",
        "speech",
        "--root",
        str(folder),
        "--frame-rate",
        str(stage.frame_rate),
        "--methods",
        stage.methods,
        "--keep-ratios",
        stage.keep_ratios,
        "--windows",
        stage.windows,
        "--scorer",
        "norm",
        "--out",
        str(out / f"{stage.frame_rate}hz-{folder.name}"),
    ]


def stage_numbers(text: str) -> list[int]:
    """``--stages 0,2``, each a stage that exists (argparse reports a bad one in one line)."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated numbers") from None
    wrong = [n for n in numbers if not 0 <= n < len(STAGES)]
    if wrong:
        raise argparse.ArgumentTypeError(f"no stage {wrong[0]}: stages are 0 to {len(STAGES) - 1}")
    return numbers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="runs folder of the study")
    parser.add_argument("--stages", type=stage_numbers, help="comma-separated stage numbers")
    parser.add_argument("--audio", type=Path, default=SHARED_AUDIO, help="the shared audio")
    args = parser.parse_args()
    chosen = range(len(STAGES)) if args.stages is None else args.stages
    for number in chosen:
        for name in DATA_FOLDERS:
            command = sweep_command(STAGES[number], args.audio / name, args.out)
            print(f"stage {number} {name}: {' '.join(command)}", flush=True)
            if subprocess.run(command).returncode != 0:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
