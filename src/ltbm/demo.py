"""``ltbm demo``: a real model on real audio, on any laptop, in under a minute.

Whisper tiny.en (or base; CTranslate2, CPU) transcribes a few clips of the built-in speech
set, or the user's own file, with its encoder frames compressed by each method at a few keep
ratios, and shows what survived: a table of totals over the clips (tokens kept, word
error rate, how many kept tokens are one unbroken run of frames), each clip's full
transcripts, and a picture of which time frames each method merged into each kept token.
The picture is the point: at its default window of 1, every LTBM token is one unbroken run
of neighbouring frames; Global Merge's may gather frames from anywhere in the clip, pooling
cuts blindly, pruning drops frames.

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
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ltbm.core.plan import Plan
from ltbm.io.audio import SAMPLE_RATE, AudioError, load_audio
from ltbm.methods import Method, get_method
from ltbm.methods.registry import DEFAULT_WINDOW

DEMO_METHODS: dict[str, dict[str, Any]] = {
    "ltbm": {"window": DEFAULT_WINDOW},
    "global": {},
    "pool": {},
    "prune": {"scorer": "norm"},
}
"""Methods compared, with their parameters: LTBM at its default window (the one the README
describes), prune by feature norm (CTranslate2's encoder exposes no attention)."""
DEMO_KEEP_RATIOS = (0.5, 0.25)
DEMO_CLIPS = 3
TITLE_WIDTH = 90
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
class ClipOutcome:
    """One clip under one configuration."""

    clip: str
    kept_tokens: int
    audio_tokens: int
    transcript: str
    wer: float | None
    """This clip's word error rate (None without a reference)."""
    contiguous: float | None
    """Share of this clip's kept tokens whose source frames are one unbroken run (None where
    it means nothing: no compression, or one frame per token as in pruning)."""


@dataclass
class DemoRow:
    """One configuration (a method at a keep ratio) over every demo clip: totals over the
    clips, and each clip's own outcome."""

    method: str
    keep_ratio: float
    params: dict[str, Any]
    """The method's own parameters (LTBM's window, prune's scorer)."""
    kept_tokens: int
    """Tokens kept, summed over the clips."""
    audio_tokens: int
    """Encoder tokens before compression, summed over the clips."""
    wer: float | None
    """Word error rate over all the clips' words (errors summed over summed reference
    words); None when no clip has a reference."""
    contiguous: float | None
    """Share of all the clips' kept tokens whose source frames are one unbroken run."""
    seconds: float
    clips: list[ClipOutcome]

    @property
    def label(self) -> str:
        """The method as the table names it: with its window or scorer."""
        extra = " ".join(f"w={v}" if k == "window" else str(v) for k, v in self.params.items())
        return f"{self.method} {extra}".strip()


@dataclass
class DemoResult:
    """Everything ``ltbm demo`` shows, also written to ``demo.json``."""

    clips: list[str]
    references: list[str | None]
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
    model: str | None = None,
) -> DemoResult:
    """Transcribe ``clips`` uncompressed and with every method at every keep ratio; write
    the picture (and ``demo.json``) into ``out``. ``backbone`` defaults to a fresh
    :class:`~ltbm.backbones.whisper.ct2.WhisperCT2` of ``model`` (tiny.en or base); pass one
    to reuse a loaded model."""
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
        label = f"loading Whisper {model or 'tiny.en'}"
        task = progress.add_task(label, total=len(configs) + 2)
        if backbone is None:
            from ltbm.backbones.whisper.ct2 import WhisperCT2

            backbone = WhisperCT2(model=model)
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
        [c.name for c in clips],
        [c.reference for c in clips],
        rows,
        figure,
        timings,
        backbone.describe(),
    )
    (out / "demo.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return result


def _transcribe(backbone, encoded, clips, name, ratio, method) -> tuple[DemoRow, Plan | None]:
    """Compress every clip with one method, decode, score; return the row and the plan of
    the first clip (the pictured one)."""
    tick = time.perf_counter()
    compressed = backbone.compress(encoded, method)
    generations = backbone.decode(encoded, compressed)
    plans = [
        None if compressed is None else _clip_plan(compressed.plan, i, clip.valid)
        for i, clip in enumerate(encoded)
    ]
    outcomes = [
        ClipOutcome(
            clip=clip.name,
            kept_tokens=generation.kept_tokens,
            audio_tokens=generation.audio_tokens,
            transcript=generation.text,
            wer=_wer([clip], [generation.text]),
            contiguous=_contiguity_or_none(plan),
        )
        for clip, generation, plan in zip(clips, generations, plans, strict=True)
    ]
    params = (
        {}
        if method is None
        else {k: v for k, v in method.params().items() if k not in ("method", "keep_ratio")}
    )
    row = DemoRow(
        method=name,
        keep_ratio=ratio,
        params=params,
        kept_tokens=sum(o.kept_tokens for o in outcomes),
        audio_tokens=sum(o.audio_tokens for o in outcomes),
        wer=_wer(clips, [g.text for g in generations]),
        contiguous=None if compressed is None else _contiguity_or_none(compressed.plan),
        seconds=time.perf_counter() - tick,
        clips=outcomes,
    )
    return row, plans[0]


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


def unbroken_slots(plan: Plan) -> torch.Tensor:
    """``[B, K_max]`` bool: the real slots whose source frames form one unbroken run (a
    slot of n frames spanning exactly n positions)."""
    spans, sizes = plan.spans, plan.sizes
    return ((spans[..., 1] - spans[..., 0] + 1) == sizes) & plan.slot_mask


def contiguity(plan: Plan) -> float:
    """Share of the plan's kept tokens (all clips) whose source frames form one unbroken run:
    1.0 for pooling and for LTBM at window 1; lower when merging reaches across time."""
    real = int(plan.slot_mask.sum())
    return int(unbroken_slots(plan).sum()) / real if real else 1.0


def _contiguity_or_none(plan: Plan | None) -> float | None:
    """:func:`contiguity`, or None where it means nothing (no compression, or a selection:
    one frame per token)."""
    return None if plan is None or plan.is_selection else contiguity(plan)


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
def demo_tables(result: DemoResult) -> list[Table]:
    """What ``ltbm demo`` prints: the totals over the clips, then one table per clip with
    its full transcripts (wrapped to the terminal, never cut)."""
    return [totals_table(result)] + [
        clip_table(result, index) for index in range(len(result.clips))
    ]


def _model_name(result: DemoResult) -> str:
    """The model the demo ran (tiny.en or base), from the backbone's description."""
    return str(result.backbone.get("model") or "tiny.en").split("/")[-1]


def totals_table(result: DemoResult) -> Table:
    """One row per method and keep ratio, summed over every clip."""
    count = len(result.clips)
    scope = "the clip" if count == 1 else f"all {count} clips"
    table = Table(
        title=f"Whisper {_model_name(result)}: totals over {scope} ({', '.join(result.clips)})",
        title_justify="left",
        caption=(
            f"tokens kept: kept / encoder tokens, summed over {scope}. WER: word error rate "
            f"over {scope}' words together. contiguous: share of the kept tokens made of one "
            "unbroken run of frames (– where each token is one frame)."
        ),
        caption_justify="left",
    )
    table.add_column("method", no_wrap=True)
    for header in ("keep", "tokens kept", "WER", "contiguous"):
        table.add_column(header, no_wrap=True, justify="right")
    for row in result.rows:
        table.add_row(
            row.label,
            f"{row.keep_ratio:g}",
            f"{row.kept_tokens}/{row.audio_tokens}",
            _format_wer(row.wer),
            "–" if row.contiguous is None else f"{row.contiguous:.0%}",
        )
    return table


def clip_table(result: DemoResult, index: int) -> Table:
    """One clip: each configuration's tokens kept, word error rate and full transcript."""
    name = result.clips[index]
    reference = result.references[index] if result.references else None
    title = name if reference is None else f"{name}. Reference: {reference}"
    table = Table(title=title, title_justify="left")
    table.add_column("method", no_wrap=True)
    for header in ("keep", "kept", "WER"):
        table.add_column(header, no_wrap=True, justify="right")
    table.add_column("transcript", overflow="fold", ratio=1)
    for row in result.rows:
        outcome = row.clips[index]
        table.add_row(
            row.label,
            f"{row.keep_ratio:g}",
            f"{outcome.kept_tokens}/{outcome.audio_tokens}",
            _format_wer(outcome.wer),
            outcome.transcript,
        )
    return table


def _format_wer(wer: float | None) -> str:
    return "–" if wer is None else f"{wer:.3f}"


def _shorten(text: str, width: int) -> str:
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
        clip.name
        if clip.reference is None
        else f"{clip.name}: “{_shorten(clip.reference, TITLE_WIDTH)}”"
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
        label = f"{row.label} {row.keep_ratio:g}\n{int(plan.kept[0])}/{len(slots)}"
        axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        _mark_broken_slots(axis, plan, frame_seconds)
        pictured = row.clips[0].contiguous  # this clip's own share, not the total's
        if pictured is not None:
            axis.text(
                1.005,
                0.5,
                f"{pictured:.0%} contiguous",
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
    broken = ~unbroken_slots(plan)[0] & plan.slot_mask[0]
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
