"""``ltbm demo``: a real model on real audio, on any laptop, in under a minute.

Whisper tiny.en (CTranslate2, CPU) transcribes a few clips of the built-in speech set, or
the user's own file, with its encoder frames compressed by each method at a few keep
ratios, and shows what survived: a table of tokens kept, transcripts and word error rates,
and a picture of which time frames each method merged into each kept token. The picture
is the point: LTBM's slots are short runs of neighbouring frames, Global Merge's may
gather frames from anywhere in the clip, pooling cuts blindly, pruning drops frames.

Each clip goes through the encoder once; every method compresses the same encoder frames.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ltbm.core.plan import Plan
from ltbm.io.audio import SAMPLE_RATE, AudioError, load_audio
from ltbm.methods import Method, get_method

DEMO_METHODS: dict[str, dict[str, Any]] = {
    "ltbm": {"window": 2},
    "global": {},
    "pool": {},
    "prune": {"scorer": "norm"},
}
"""Methods compared, with their parameters (prune by feature norm: CTranslate2's encoder
exposes no attention)."""
DEMO_KEEP_RATIOS = (0.5, 0.25)
DEMO_CLIPS = 3
TEXT_WIDTH = 60
SLOT_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
"""Neighbouring slots never share a colour, so a slot whose frames are not contiguous
shows as a colour that reappears away from its band."""
PRUNED_COLOUR = "#e8e8e8"


@dataclass
class DemoClip:
    """A clip the demo transcribes: name, samples at 16 kHz, reference (if known)."""

    name: str
    audio: np.ndarray
    reference: str | None = None


@dataclass
class DemoRow:
    """One line of the demo table: a method at a keep ratio, over all demo clips."""

    method: str
    keep_ratio: float
    kept_tokens: int
    audio_tokens: int
    transcript: str
    """Transcript of the first clip (the one in the picture)."""
    wer: float | None
    contiguous: float | None
    """Share of the pictured clip's slots whose source frames are one unbroken run (None
    where it means nothing: no compression, or one frame per slot as in pruning)."""
    seconds: float


@dataclass
class DemoResult:
    clips: list[str]
    reference: str | None
    rows: list[DemoRow]
    figure: Path
    timings: dict[str, float]
    backbone: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["figure"] = str(self.figure)
        return out


# ----------------------------------------------------------------------- inputs
def builtin_clips(count: int = DEMO_CLIPS) -> list[DemoClip]:
    """The first ``count`` clips of the built-in speech set, with their transcripts."""
    from ltbm.tasks.speech import SpeechTask

    items = SpeechTask.builtin().items()[: max(1, count)]
    return [DemoClip(i.id, load_audio(i.audio), i.references[0]) for i in items]


def file_clip(path: str | Path, reference: str | None = None) -> DemoClip:
    """The user's own file (any rate, any channel count libsndfile reads)."""
    path = Path(path)
    return DemoClip(path.stem, load_audio(path), reference)


# ------------------------------------------------------------------------- run
def run_demo(
    clips: Sequence[DemoClip],
    out: str | Path = "ltbm-demo",
    keep_ratios: Sequence[float] = DEMO_KEEP_RATIOS,
    methods: dict[str, dict[str, Any]] | None = None,
    backbone: Any | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Transcribe ``clips`` uncompressed and with every method at every keep ratio; write
    the picture (and ``demo.json``) into ``out``. ``backbone`` defaults to a fresh
    :class:`~ltbm.backbones.whisper.ct2.WhisperCT2`; pass one to reuse a loaded model."""
    if not clips:
        raise ValueError("the demo needs at least one clip")
    console = console or Console()
    methods = DEMO_METHODS if methods is None else methods
    configs: list[tuple[str, float, Method | None]] = [("none", 1.0, None)]
    for ratio in keep_ratios:
        configs += [(n, ratio, get_method(n, keep_ratio=ratio, **p)) for n, p in methods.items()]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("loading Whisper tiny.en", total=len(configs) + 2)
        if backbone is None:
            from ltbm.backbones.whisper.ct2 import WhisperCT2

            backbone = WhisperCT2()
        timings["load_s"] = time.perf_counter() - start
        progress.update(task, advance=1, description=f"encoding {len(clips)} clip(s)")
        tick = time.perf_counter()
        encoded = backbone.encode([clip.audio for clip in clips])
        timings["encode_s"] = time.perf_counter() - tick
        rows, plans = [], []
        for name, ratio, method in configs:
            progress.update(task, advance=1, description=f"{name} at keep {ratio:g}")
            row, plan = _transcribe(backbone, encoded, clips, name, ratio, method)
            rows.append(row)
            plans.append(plan)
        progress.update(task, advance=1, description="drawing")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        figure = draw_demo(
            clips[0],
            encoded[0],
            rows,
            plans,
            backbone.frame_seconds,
            out / f"demo_{_safe(clips[0].name)}.png",
        )
    timings["total_s"] = time.perf_counter() - start
    result = DemoResult(
        [c.name for c in clips], clips[0].reference, rows, figure, timings, backbone.describe()
    )
    (out / "demo.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return result


def _transcribe(backbone, encoded, clips, name, ratio, method) -> tuple[DemoRow, Plan | None]:
    """Compress every clip with one method, decode, score; return the row and the plan."""
    tick = time.perf_counter()
    compressed = backbone.compress(encoded, method)
    generations = backbone.decode(encoded, compressed)
    wer = _wer(clips, [g.text for g in generations])
    plan = None if compressed is None else _clip_plan(compressed.plan, 0, encoded[0].valid)
    row = DemoRow(
        method=name,
        keep_ratio=ratio,
        kept_tokens=sum(g.kept_tokens for g in generations),
        audio_tokens=sum(g.audio_tokens for g in generations),
        transcript=generations[0].text,
        wer=wer,
        contiguous=None if plan is None or plan.is_selection else contiguity(plan),
        seconds=time.perf_counter() - tick,
    )
    return row, plan


def _wer(clips: Sequence[DemoClip], texts: list[str]) -> float | None:
    """Corpus WER over the clips that have a reference (None when none has)."""
    pairs = [(c.reference, t) for c, t in zip(clips, texts, strict=True) if c.reference]
    if not pairs:
        return None
    from ltbm.metrics.wer import word_error_rate

    return word_error_rate([r for r, _ in pairs], [t for _, t in pairs]).wer


def _clip_plan(plan: Plan, index: int, length: int) -> Plan:
    """The plan of one clip of a batch, cut to that clip's ``length`` valid frames."""
    return Plan(
        plan.slot_index[index : index + 1, :length],
        plan.weights[index : index + 1, :length],
        plan.kept[index : index + 1],
    )


def contiguity(plan: Plan) -> float:
    """Share of slots (clip 0) whose source frames form one unbroken run: 1.0 for pooling
    and, by construction, nearly so for LTBM; lower when merging reaches across time."""
    spans = plan.spans[0]
    sizes = plan.sizes[0]
    real = plan.slot_mask[0]
    unbroken = (spans[:, 1] - spans[:, 0] + 1) == sizes
    return float(unbroken[real].float().mean()) if bool(real.any()) else 1.0


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "clip"


# ------------------------------------------------------------------------ show
def demo_table(result: DemoResult, width: int | None = None) -> Table:
    """The demo's rich table: one row per method and keep ratio. Transcripts are cut to
    fit ``width`` (the console's) so that every row stays on one line."""
    table = Table(title=f"Whisper tiny.en on {', '.join(result.clips)}", title_justify="left")
    widths = {"method": 6, "keep": 4, "tokens kept": 11, "WER": 5, "contiguous": 10}
    for header, column_width in widths.items():
        justify = "left" if header == "method" else "right"
        table.add_column(header, no_wrap=True, min_width=column_width, justify=justify)
    table.add_column(f"transcript of {result.clips[0]}")
    fixed = sum(widths.values()) + 3 * (len(widths) + 1) + 1  # borders and padding
    text_width = TEXT_WIDTH if width is None else max(16, min(TEXT_WIDTH, width - fixed))
    for row in result.rows:
        table.add_row(
            row.method,
            f"{row.keep_ratio:g}",
            f"{row.kept_tokens}/{row.audio_tokens}",
            "–" if row.wer is None else f"{row.wer:.3f}",
            "–" if row.contiguous is None else f"{row.contiguous:.0%}",
            _shorten(row.transcript, text_width),
        )
    return table


def _shorten(text: str, width: int = TEXT_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def draw_demo(
    clip: DemoClip,
    encoded: Any,
    rows: Sequence[DemoRow],
    plans: Sequence[Plan | None],
    frame_seconds: float,
    path: Path,
) -> Path:
    """Log-mel spectrogram on top, then one strip per compressed configuration: each
    encoder frame coloured by the kept token it went into (grey: dropped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ltbm.backbones.whisper.mel import log_mel_spectrogram

    strips = [(row, plan) for row, plan in zip(rows, plans, strict=True) if plan is not None]
    seconds = len(clip.audio) / SAMPLE_RATE
    height = 2.2 + 0.42 * len(strips)
    fig, axes = plt.subplots(
        len(strips) + 1,
        1,
        figsize=(11, height),
        sharex=True,
        gridspec_kw={"height_ratios": [4] + [1] * len(strips)},
    )
    mel = log_mel_spectrogram(clip.audio)[:, : int(round(seconds * 100))]
    axes[0].imshow(
        mel, aspect="auto", origin="lower", cmap="magma", extent=(0, seconds, 0, mel.shape[0])
    )
    axes[0].set_ylabel("mel bin")
    title = (
        clip.name if clip.reference is None else f"{clip.name}: “{_shorten(clip.reference, 90)}”"
    )
    axes[0].set_title(title, fontsize=10, loc="left")
    cmap = ListedColormap([PRUNED_COLOUR, *SLOT_COLOURS])
    for axis, (row, plan) in zip(axes[1:], strips, strict=True):
        slots = plan.slot_index[0].numpy()
        colour = np.where(slots >= 0, 1 + slots % len(SLOT_COLOURS), 0)[None, :]
        end = len(slots) * frame_seconds
        axis.imshow(
            colour,
            aspect="auto",
            cmap=cmap,
            vmin=0,
            vmax=len(SLOT_COLOURS),
            interpolation="nearest",
            extent=(0, end, 0, 1),
        )
        axis.set_yticks([])
        label = f"{row.method} {row.keep_ratio:g}\n{int(plan.kept[0])}/{len(slots)}"
        axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        _mark_broken_slots(axis, plan, frame_seconds)
        if row.contiguous is not None:
            axis.text(
                1.005,
                0.5,
                f"{row.contiguous:.0%} contiguous",
                transform=axis.transAxes,
                fontsize=7,
                va="center",
            )
    axes[-1].set_xlabel(
        "time (s). Strips: encoder frames coloured by the kept token they feed; grey: dropped; "
        "black: one token made of frames that are not neighbours"
    )
    axes[-1].set_xlim(0, seconds)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mark_broken_slots(axis: Any, plan: Plan, frame_seconds: float) -> None:
    """Join the frames of every slot that is not one unbroken run with a black line, so
    merges that reach across time stand out (Global Merge does this; LTBM cannot)."""
    if plan.is_selection:
        return
    slots = plan.slot_index[0]
    spans, sizes = plan.spans[0], plan.sizes[0]
    broken = ((spans[:, 1] - spans[:, 0] + 1) != sizes) & plan.slot_mask[0]
    for slot in broken.nonzero()[:, 0].tolist():
        frames = (slots == slot).nonzero()[:, 0].numpy()
        times = (frames + 0.5) * frame_seconds
        axis.plot([times[0], times[-1]], [0.5, 0.5], color="black", linewidth=0.8)
        axis.plot(times, np.full(len(times), 0.5), "o", color="black", markersize=2.5)


def check_demo_audio(clips: Sequence[DemoClip], console: Console) -> None:
    """Warn about clips Whisper will struggle with; refuse those it cannot take."""
    from ltbm.io.audio import is_silent

    for clip in clips:
        seconds = len(clip.audio) / SAMPLE_RATE
        if seconds > 30:
            raise AudioError(
                f"{clip.name} lasts {seconds:.1f} s; Whisper takes at most 30 s per clip. Cut "
                f"a piece out first, e.g. `sox in.wav piece.wav trim 0 30`"
            )
        if is_silent(clip.audio):
            console.print(
                f"[yellow]warning:[/] {clip.name} is silent (RMS below -80 dBFS); Whisper "
                "tends to invent a word or two on silence"
            )
