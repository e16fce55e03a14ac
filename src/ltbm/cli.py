"""The ``ltbm`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ltbm.backbones.registry import backbone_help

app = typer.Typer(
    help="Compress the audio tokens of audio-language models, training-free.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def main() -> None:
    """ltbm: Local Temporal Bipartite Merging and its baselines for audio-language models."""


@app.command()
def methods(
    markdown: bool = typer.Option(
        False, "--markdown", help="Print the table as markdown (the README's method table)."
    ),
) -> None:
    """List the registered compression methods, their parameters (with defaults) and what
    they do."""
    from ltbm.methods.registry import method_table, method_table_markdown

    if markdown:
        typer.echo(method_table_markdown())
        return
    table = Table(expand=True)
    table.add_column("method", no_wrap=True)
    table.add_column("parameters", ratio=2)
    table.add_column("what it does", ratio=5)
    table.add_column("source", ratio=2)
    for row in method_table():
        table.add_row(*(_rendered(cell) for cell in row))
    console.print(table)


def _rendered(text: str) -> Text:
    """The method table's markdown as styled text: `code` in colour, *titles* in italics;
    the terminal shows no backticks or asterisks (and rich reads no [markup] in the words)."""
    styled = Text()
    for index, part in enumerate(text.split("`")):
        if index % 2:
            styled.append(part, style="cyan")
            continue
        for inner, piece in enumerate(part.split("*")):
            styled.append(piece, style="italic" if inner % 2 else "")
    return styled


@app.command()
def demo(
    audio: Path | None = typer.Argument(
        None, help="Your own audio file (≤ 30 s, any rate); default: the built-in speech set."
    ),
    out: Path = typer.Option(Path("ltbm-demo"), "--out", help="Folder for the picture."),
    clips: int = typer.Option(3, "--clips", min=1, help="Built-in clips to transcribe."),
    reference: str | None = typer.Option(
        None, "--reference", help="What AUDIO says, to score its word error rate."
    ),
    keep: list[float] = typer.Option(
        [0.5, 0.25], "--keep", help="Keep ratios to compare (repeat the option)."
    ),
    model: str = typer.Option(
        "tiny.en", "--model", help="Whisper tiny.en (default) or base (the base extra)."
    ),
) -> None:
    """Transcribe speech with Whisper (tiny.en by default) on this CPU, compressed by each
    method."""
    from ltbm.demo import builtin_clips, check_demo_audio, demo_tables, file_clip, run_demo
    from ltbm.run.options import check_out_dir

    if reference is not None and audio is None:
        raise ValueError("--reference says what AUDIO says: give the audio file too")
    if reference is not None and not reference.strip():
        raise ValueError("--reference is empty; give the words AUDIO says, or leave it out")
    check_out_dir(out)
    chosen = builtin_clips(clips) if audio is None else [file_clip(audio, reference)]
    check_demo_audio(chosen, console)
    result = run_demo(chosen, out, keep_ratios=keep, console=console, model=model)
    for table in demo_tables(result):
        console.print(table)
        console.print()
    seconds = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in result.timings.items())
    console.print(f"picture: {result.figure}\ntime: {seconds}")


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    return _numbers(text, float, option)


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    return _numbers(text, int, option)


def _numbers(text: str | None, kind: type, option: str) -> tuple | None:
    """A comma-separated option as a tuple (None when not given)."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{option} is empty; give at least one value")
    return values


def _names(text: str | None, option: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise ValueError(f"{option} is empty; give at least one name")
    return values


BackboneOption = typer.Option("whisper-ct2", help=backbone_help())
ModelOption = typer.Option(
    None, help="checkpoint id or local folder; Whisper backbones: tiny.en (default) or base"
)
TaskOption = typer.Option("speech", help="speech, clotho, audiocaps or mmau")
RootOption = typer.Option(None, help="dataset folder in its usual layout")
CsvOption = typer.Option(None, help="Clotho/AudioCaps captions CSV")
JsonOption = typer.Option(None, "--json", help="MMAU questions JSON")
AudioDirOption = typer.Option(None, help="folder holding the dataset's audio")
OutOption = typer.Option(Path("runs"), help="where runs are written")
FrameRateOption = typer.Option(
    None, help="Whisper backbones' token rate: 50 (the encoder's, default) or 25 (the ALMs')"
)
SegmentsOption = typer.Option(None, help="segment_topk's segments per clip (default 10)")
ThresholdOption = typer.Option(
    None, help="adaptive_diverse's similarity threshold to join a run (default 0.9)"
)
WeightingOption = typer.Option(
    None,
    help="frames of a merged token weighted by size or attention: adaptive_diverse "
    "(default: attention, size on CT2), ltbm and global (default size)",
)
BeamOption = typer.Option(
    None, "--beam", help="Whisper decoder beam (default 5 on whisper-ct2, 1 on whisper-hf)"
)
FreshOption = typer.Option(
    False, "--fresh", help="delete this cell's earlier results and start it over"
)
RetryOption = typer.Option(
    True, "--retry-failed/--keep-failed", help="run items that failed before again on resume"
)
OutsideOption = typer.Option(
    False, "--allow-outside-root", help="accept listed audio paths outside the dataset folder"
)
DeviceOption = typer.Option(
    None, help="HF: device map (auto, cpu, cuda:0); whisper-ct2: cpu or cuda"
)
DtypeOption = typer.Option(
    None, help="HF: float32, float16, bfloat16, auto; whisper-ct2: a CTranslate2 compute type"
)
SizeAwareOption = typer.Option(
    False,
    "--size-aware",
    help="size-aware attention: each compressed token weighs as the frames it stands for "
    "(log(size) added to its attention logits; PyTorch backbones, eager or sdpa attention)",
)


def _default_scorer(backbone: str) -> str:
    """prune's and segment_topk's scorer: encoder attention, except on CTranslate2, which
    does not expose it."""
    return "norm" if backbone == "whisper-ct2" else "attention"


def _default_weighting(backbone: str) -> str:
    """adaptive_diverse's weighting: by encoder attention, except on CTranslate2."""
    return "size" if backbone == "whisper-ct2" else "attention"


def _check_run_options(
    backbone: str,
    device,
    dtype,
    frame_rate,
    out: Path,
    size_aware: bool,
    beam: int | None = None,
    **whole: int | None,
) -> None:
    """Every option checked before the dataset is read or a model loads."""
    from ltbm.run.options import (
        check_beam,
        check_device,
        check_dtype,
        check_frame_rate,
        check_out_dir,
        check_size_aware,
        check_whole,
    )

    for name, value in whole.items():
        check_whole("--" + name.replace("_", "-"), value)
    check_dtype(backbone, dtype)
    check_device(backbone, device)
    check_frame_rate(backbone, frame_rate)
    check_size_aware(backbone, size_aware)
    check_beam(backbone, beam)
    check_out_dir(out)


def _session(
    backbone: str,
    model,
    device,
    dtype,
    frame_rate,
    task: str,
    paths: dict,
    out: Path,
    beam: int | None = None,
    **settings,
):
    """Load the task and the backbone and bind the run settings."""
    from ltbm.backbones.registry import load_backbone
    from ltbm.run.evaluate import RunSettings
    from ltbm.tasks import get_task

    task_object = get_task(task, **paths)
    coverage = task_object.coverage()
    console.print(f"[bold]{task}[/]: {coverage.found} of {coverage.listed} items have audio")
    if settings.get("limit") is not None:
        console.print(
            f"--limit {settings['limit']}: the first items in the dataset's order, not a sample"
        )
    if settings.get("subset") is not None:
        console.print(_subset_line(settings["subset"], settings["subset_seed"], coverage.found))
    model_object = load_backbone(backbone, model, device, dtype, frame_rate, beam)
    run_settings = RunSettings(
        backbone=model_object.name,
        task=task,
        out_root=out,
        backbone_folder=getattr(model_object, "run_name", None),
        **settings,
    )
    return model_object, task_object, run_settings


def _subset_line(subset: int, seed: int, found: int) -> str:
    """What ``--subset`` takes: a sample, or the whole set when it asks for as many items
    as there are (the sample would be all of them, whatever the seed)."""
    if subset >= found:
        return (
            f"--subset {subset}: the whole set ({found} items with audio), not a sample; the "
            "seed changes nothing"
        )
    return f"--subset {subset}: a sample stratified by task and difficulty, seed {seed}"


def _failure_summary(metrics: dict) -> tuple[str | None, bool]:
    """A line on failed items, and whether every item failed (exit code 1)."""
    failed = metrics.get("failed_count", len(metrics.get("failed", [])))
    if not failed:
        return None, False
    example = metrics["failed"][0]
    line = (
        f"{failed} of {metrics['completed']} items failed "
        f"(e.g. {example['id']}: {example['error']})"
    )
    return line, metrics.get("scored", 0) == 0


@app.command("eval")
def eval_command(
    backbone: str = BackboneOption,
    model: str = ModelOption,
    task: str = TaskOption,
    root: Path = RootOption,
    csv: Path = CsvOption,
    json_path: Path = JsonOption,
    audio_dir: Path = AudioDirOption,
    method: str = typer.Option(
        "ltbm",
        help="a registered method (ltbm methods lists them: ltbm, global, pool, ...) or none",
    ),
    keep_ratio: float = typer.Option(0.25, help="fraction of audio tokens kept"),
    window: int = typer.Option(None, help="ltbm's window (default 1)"),
    scorer: str = typer.Option(
        None,
        help="prune's and segment_topk's scorer: attention or norm (default: attention, norm on "
        "whisper-ct2)",
    ),
    seed: int = typer.Option(None, help="seed of the --subset sample (default 0) and of random"),
    segments: int = SegmentsOption,
    threshold: float = ThresholdOption,
    weighting: str = WeightingOption,
    frame_rate: int = FrameRateOption,
    beam: int = BeamOption,
    size_aware: bool = SizeAwareOption,
    batch_size: int = typer.Option(4),
    max_new_tokens: int = typer.Option(None, help="default: the backbone's own"),
    prompt: str = typer.Option(None, help="override the prompt template"),
    limit: int = typer.Option(None, help="evaluate only the first N items (not a sample)"),
    subset: int = typer.Option(
        None, min=1, help="a sample of N items stratified by task/difficulty"
    ),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Path = OutOption,
    fresh: bool = FreshOption,
    retry_failed: bool = RetryOption,
    allow_outside_root: bool = OutsideOption,
) -> None:
    """Evaluate one backbone × task × method × keep ratio; resumable, shardable."""
    import json

    from ltbm.methods.registry import DEFAULT_WINDOW
    from ltbm.run.evaluate import Cell, Shard, evaluate
    from ltbm.run.folder import launch_note, metrics_are_current
    from ltbm.run.options import check_seed

    if method == "ltbm" and window is None:
        window = DEFAULT_WINDOW  # named in the run's folder, like every other parameter
    if method in ("prune", "segment_topk") and scorer is None:
        scorer = _default_scorer(backbone)
    if method == "adaptive_diverse" and weighting is None:
        weighting = _default_weighting(backbone)
    if limit is not None and subset is not None:
        raise typer.BadParameter("--limit and --subset exclude each other: pick one")
    if seed is not None and subset is None and method != "random":
        raise typer.BadParameter("--seed seeds --subset's sample and the random method: add one")
    check_seed("--seed", seed)
    cell_seed = seed if method == "random" else None
    cell = Cell(
        method,
        keep_ratio,
        window,
        scorer,
        cell_seed,
        size_aware=size_aware,
        segments=segments,
        threshold=threshold,
        weighting=weighting,
    )
    cell.build()  # refuse bad parameters before any model loads
    _check_run_options(
        backbone,
        device,
        dtype,
        frame_rate,
        out,
        size_aware,
        beam,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        limit=limit,
    )
    model_object, task_object, settings = _session(
        backbone,
        model,
        device,
        dtype,
        frame_rate,
        task,
        _paths(root, csv, json_path, audio_dir, allow_outside_root),
        out,
        beam,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        prompt=prompt,
        limit=limit,
        subset=subset,
        subset_seed=seed or 0,
    )
    run_dir = evaluate(
        model_object, task_object, cell, settings, fresh=fresh, retry_failed=retry_failed
    )
    metrics_path = run_dir / "metrics.json"
    if not metrics_are_current(run_dir):  # none yet, or an earlier launch's
        shard = Shard.from_environment()
        note = launch_note(run_dir, shard.rank, shard.world_size)
        line = f"this shard is done; the last shard to finish writes {metrics_path}"
        console.print(
            Text(line if note is None else f"this shard is done, but {note}"), soft_wrap=True
        )
        return
    metrics = json.loads(metrics_path.read_text())
    console.print_json(json.dumps(metrics["metrics"]))
    console.print(f"results in {run_dir}")
    line, all_failed = _failure_summary(metrics)
    if line:
        console.print(Text(line), soft_wrap=True)
    if all_failed:
        raise typer.Exit(1)


def _paths(root, csv, json_path, audio_dir, allow_outside_root) -> dict:
    return {
        "root": root,
        "csv": csv,
        "json": json_path,
        "audio_dir": audio_dir,
        "allow_outside_root": allow_outside_root or None,
    }


@app.command()
def sweep(
    backbone: str = BackboneOption,
    model: str = ModelOption,
    task: str = TaskOption,
    root: Path = RootOption,
    csv: Path = CsvOption,
    json_path: Path = JsonOption,
    audio_dir: Path = AudioDirOption,
    methods: str = typer.Option(None, help="comma-separated (default none,pool,prune,global,ltbm)"),
    keep_ratios: str = typer.Option(None, help="comma-separated (default 0.5,0.25,0.15)"),
    windows: str = typer.Option(None, help="ltbm windows, comma-separated (default 1,2,4)"),
    scorer: str = typer.Option(
        None,
        help="prune's and segment_topk's scorer: attention or norm (default: attention, norm on "
        "whisper-ct2)",
    ),
    seed: int = typer.Option(
        None, help="seed of random and of the --subset sample (default 0), as in eval"
    ),
    segments: int = SegmentsOption,
    threshold: float = ThresholdOption,
    weighting: str = typer.Option(
        None, help="adaptive_diverse's weighting (default: attention, size on CT2)"
    ),
    config: Path = typer.Option(
        None,
        help="TOML/JSON with the grid, dataset paths and run settings; a flag given too must "
        "agree with it",
    ),
    frame_rate: int = FrameRateOption,
    beam: int = BeamOption,
    size_aware: bool = typer.Option(
        False,
        "--size-aware",
        help="run every compressed cell with size-aware attention (sweep config: size_aware "
        "= true, or [false, true] for both ways)",
    ),
    batch_size: int = typer.Option(None, help="default 4"),
    max_new_tokens: int = typer.Option(None, help="default: the backbone's own"),
    prompt: str = typer.Option(None),
    limit: int = typer.Option(None, help="only the first N items (not a sample)"),
    subset: int = typer.Option(
        None, min=1, help="a sample of N items stratified by task/difficulty"
    ),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Path = OutOption,
    fresh: bool = typer.Option(False, "--fresh", help="start every cell of the grid over"),
    retry_failed: bool = RetryOption,
    allow_outside_root: bool = OutsideOption,
) -> None:
    """Run the paper's grid (methods × keep ratios × windows), reusing finished cells,
    then write the report."""
    from ltbm.report.build import write_report
    from ltbm.run.options import check_seed
    from ltbm.run.sweep import GRID_KEYS, Grid, merge_settings, read_sweep_config
    from ltbm.run.sweep import sweep as run_sweep

    check_seed("--seed", seed)
    flags = {
        "methods": _names(methods, "--methods"),
        "keep_ratios": _floats(keep_ratios, "--keep-ratios"),
        "windows": _ints(windows, "--windows"),
        "scorer": scorer,
        "seed": seed,
        "size_aware": (True,) if size_aware else None,
        "segments": segments,
        "threshold": threshold,
        "weighting": weighting,
        "root": None if root is None else str(root),
        "csv": None if csv is None else str(csv),
        "json": None if json_path is None else str(json_path),
        "audio_dir": None if audio_dir is None else str(audio_dir),
        "allow_outside_root": allow_outside_root or None,
        "frame_rate": frame_rate,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "prompt": prompt,
        "limit": limit,
    }
    if config is not None:
        values = merge_settings(read_sweep_config(config), flags, config)
    else:
        values = {k: v for k, v in flags.items() if v is not None}
    values.setdefault("scorer", _default_scorer(backbone))
    values.setdefault("weighting", _default_weighting(backbone))
    grid = Grid(**{k: v for k, v in values.items() if k in GRID_KEYS})
    for cell in grid.cells():
        cell.build()
    if limit is not None and subset is not None:
        raise typer.BadParameter("--limit and --subset exclude each other: pick one")
    _check_run_options(
        backbone,
        device,
        dtype,
        values.get("frame_rate"),
        out,
        any(grid.size_aware),
        beam,
        batch_size=values.get("batch_size"),
        max_new_tokens=values.get("max_new_tokens"),
        limit=values.get("limit"),
    )
    console.print(Text(f"grid: {grid.describe()}"), soft_wrap=True)
    paths = {k: values.get(k) for k in ("root", "csv", "json", "audio_dir", "allow_outside_root")}
    model_object, task_object, settings = _session(
        backbone,
        model,
        device,
        dtype,
        values.get("frame_rate"),
        task,
        paths,
        out,
        beam,
        batch_size=values.get("batch_size", 4),
        max_new_tokens=values.get("max_new_tokens"),
        prompt=values.get("prompt"),
        limit=values.get("limit"),
        subset=subset,
        subset_seed=values.get("seed", 0),
    )
    run_dirs = run_sweep(
        model_object, task_object, grid, settings, fresh=fresh, retry_failed=retry_failed
    )
    paths = write_report(run_dirs[0].parent)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")
    if _report_failures(run_dirs):
        raise typer.Exit(1)


def _report_failures(run_dirs: list[Path]) -> bool:
    """Print a line per cell with failed items; True when some cell failed entirely."""
    import json

    any_all_failed = False
    for run_dir in run_dirs:
        path = run_dir / "metrics.json"
        if not path.exists():
            continue
        line, all_failed = _failure_summary(json.loads(path.read_text()))
        if line:
            console.print(Text(f"{run_dir.name}: {line}"), soft_wrap=True)
        any_all_failed |= all_failed
    return any_all_failed


@app.command()
def report(
    runs_dirs: list[Path] = typer.Argument(..., help="folder(s) of runs (or a task's subfolder)"),
    out: Path = typer.Option(None, help="where to write (default: RUNS_DIR; needed with several)"),
    pool_tasks: bool = typer.Option(
        False, help="pool the tasks of one kind, backbone and frame rate into one item set"
    ),
    pairs: str = typer.Option(None, help="methods compared, A-B,A-B (ltbm-global,ltbm-pool)"),
    resamples: int = typer.Option(None, help="bootstrap resamples (10000)"),
    seed: int = typer.Option(None, help="bootstrap seed (0)"),
    level: float = typer.Option(None, help="confidence level of the intervals (0.95)"),
    bench: list[Path] = typer.Option(
        None,
        "--bench",
        help="bench JSON for the efficiency columns (repeatable); nothing else is searched "
        "(default: every bench*.json under the runs folders)",
    ),
) -> None:
    """Tables (markdown, CSV, JSON), plots and paired-bootstrap statistics from finished runs."""
    from ltbm.report.build import write_report
    from ltbm.report.stats import DEFAULT_PAIRS, StatsOptions, parse_pairs
    from ltbm.run.options import check_out_dir

    given = {"resamples": resamples, "seed": seed, "level": level}
    options = StatsOptions(
        **{k: v for k, v in given.items() if v is not None},
        pairs=parse_pairs(pairs) if pairs else DEFAULT_PAIRS,
        pool_tasks=pool_tasks,
    )
    if out is not None:
        check_out_dir(out)
    paths = write_report(runs_dirs, out, options, bench)
    typer.echo(paths["stats_markdown"].read_text())
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@app.command()
def bench(
    backbone: str = typer.Option("qwen2-audio", help="qwen2-audio or audioflamingo3"),
    model: str = typer.Option(None, help="checkpoint id or folder (omit with --random-weights)"),
    random_weights: bool = typer.Option(False, help="build the architecture, no download"),
    size: str = typer.Option("full", help="with --random-weights: full or tiny"),
    methods: str = typer.Option("ltbm,global,pool,prune", help="comma-separated"),
    keep_ratios: str = typer.Option("1,0.5,0.25", help="comma-separated"),
    batch_sizes: str = typer.Option("1,16", help="comma-separated"),
    seconds: str = typer.Option("30", help="audio length(s) in seconds, comma-separated"),
    window: int = typer.Option(None, help="ltbm's window (default 1)"),
    scorer: str = typer.Option("norm", help="prune's and segment_topk's scorer"),
    repeats: int = typer.Option(5, help="timed runs per cell (median reported)"),
    warmup: int = typer.Option(1),
    decode_tokens: int = typer.Option(16, help="tokens generated to time decoding (≥ 2)"),
    device: str = typer.Option(None, help="cuda, cpu ... (default: cuda if available)"),
    dtype: str = typer.Option(None, help="bfloat16, float16, float32 (default: bf16 on GPU)"),
    out: Path = typer.Option(Path("runs/bench.json"), help="JSON output (plot beside it)"),
    fresh: bool = typer.Option(
        False, "--fresh", help="discard the measurements already in --out and start over"
    ),
) -> None:
    """Efficiency: encoder, compression and prefill time, TTFT, decode speed, peak memory
    and KV bytes per method × keep ratio × batch × audio length, with the ideal line."""
    from ltbm.methods.registry import DEFAULT_WINDOW
    from ltbm.run.bench import BenchGrid, bench_to_files
    from ltbm.run.options import check_device, check_dtype, check_out_file

    grid = BenchGrid(
        _names(methods, "--methods"),
        _floats(keep_ratios, "--keep-ratios"),
        _ints(batch_sizes, "--batch-sizes"),
        _floats(seconds, "--seconds"),
        DEFAULT_WINDOW if window is None else window,
        scorer,
        warmup,
        repeats,
        decode_tokens,
    )
    for cell in grid.cells():
        cell.build()
    check_dtype(backbone, dtype)
    check_device(backbone, device)
    check_out_file(out)
    paths = bench_to_files(
        backbone,
        model,
        random_weights,
        size,
        device,
        dtype,
        grid,
        out,
        log=console.print,
        fresh=fresh,
    )
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="checkpoint id or local folder (Qwen2-Audio, AF3)"),
    method: str = typer.Option("ltbm", help="compression method (see ltbm methods)"),
    keep_ratio: float = typer.Option(0.25, help="fraction of audio tokens kept"),
    window: int = typer.Option(None, help="ltbm's window (default 1)"),
    scorer: str = typer.Option(None, help="prune's and segment_topk's scorer"),
    segments: int = SegmentsOption,
    threshold: float = ThresholdOption,
    weighting: str = typer.Option(
        None, help="ltbm's, global's, adaptive_diverse's weighting: size or attention"
    ),
    method_seed: int = typer.Option(None, help="random's seed (vLLM's own --seed passes on)"),
    print_command: bool = typer.Option(
        False, "--print-command", help="print the vLLM command instead of running it"
    ),
) -> None:
    """Serve MODEL with vLLM's OpenAI-compatible server, its audio compressed; every other
    option (--port, --tensor-parallel-size, --max-model-len ...) goes to vLLM as written."""
    import os
    import shlex
    import sys

    from ltbm.vllm.serve import server_command

    params = {"window": window, "scorer": scorer, "seed": method_seed, "segments": segments}
    params.update(threshold=threshold, weighting=weighting)
    args = server_command(model, method, keep_ratio, ctx.args, **params)
    if print_command:
        print(shlex.join([sys.executable, *args]))
        return
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *args])


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a fault of the environment (missing file, disk
    full, a package not installed, Java missing): reported in one line, exit code 2.
    Anything else is a bug in ltbm and keeps its traceback."""
    from ltbm.metrics.captions import CaptionMetricsError

    return (ValueError, OSError, ImportError, CaptionMetricsError)


def _report_error(error: BaseException, flags: dict[str, str] | None = None) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        # The system's own wording ("[Errno 21] Is a directory: ...") names no way out.
        message = (
            f"{error.strerror}: {error.filename}. Check that path (a folder where a file "
            "belongs, or the reverse; its permissions; free disk space), then run again"
        )
    elif flags:
        message = cli_wording(message, flags)
    console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


KEYWORD_OPTIONS = {
    "json": ("json_path",),
    "keep_ratio": ("keep_ratio", "keep_ratios", "keep"),
    "window": ("window", "windows"),
    "method": ("method", "methods"),
    "model_path": ("model",),
    "device_map": ("device",),
    "torch_dtype": ("dtype",),
    "compute_type": ("dtype",),
    "seed": ("seed", "method_seed"),
}
"""The library's keyword → the command's parameters that set it, first match wins (a
keyword not listed is the parameter of the same name)."""


def command_flags(callback) -> dict[str, str]:
    """Python keyword → the command's flag (``json`` → ``--json``, ``keep_ratio`` →
    ``--keep-ratios`` in sweep), for the parameters ``callback`` declares as options."""
    import inspect

    from typer.models import OptionInfo

    options = {}
    for name, parameter in inspect.signature(callback).parameters.items():
        info = parameter.default
        if isinstance(info, OptionInfo):
            declared = [d for d in info.param_decls or () if d.startswith("--")]
            options[name] = declared[0].split("/")[0] if declared else "--" + name.replace("_", "-")
    flags = dict(options)
    for keyword, candidates in KEYWORD_OPTIONS.items():
        found = next((options[c] for c in candidates if c in options), None)
        if found:
            flags[keyword] = found
    return flags


_CALL = re.compile(r"([A-Za-z_][\w.]*\([^()]*\))")
"""A Python call written out in a message (``get_method('ltbm', keep_ratio=...)``): left as
it is, since it is code for the Python API."""


METHOD_WORDS = frozenset({"method", "methods", "window", "windows", "scorer", "seed"})
"""Plain words that, quoted or before a quoted value, are a method's keyword in a message
(``takes no parameter 'window'``, ``method 'pool'``)."""


def cli_wording(message: str, flags: dict[str, str]) -> str:
    """A library message as the command line should print it: the Python keywords it names
    become the command's flags (``json=...`` → ``--json ...``, ``scorer='norm'`` →
    ``--scorer norm``, ``keep_ratio must`` → ``--keep-ratio must``, ``'window'`` →
    ``--window``, ``method 'pool'`` → ``--method pool``). Only keywords the command has a
    flag for are rewritten, only where their form marks them as keywords (a bare
    ``decode_tokens: 2 in the folder`` names a recorded setting and stays), and never inside
    a written-out call."""
    if not flags:
        return message
    every = _alternatives(flags)
    marked = _alternatives([k for k in flags if "_" in k or k in METHOD_WORDS])
    value = r"<[^>]*>|'[^']*'|\"[^\"]*\"|\.\.\.|[^\s,;)]+"
    rules = [
        (rf"(?<![\w.-])({every})=({value})?", lambda m: _flag_and_value(flags, m)),
        (rf"^({every})(?= must )", lambda m: flags[m[1]]),
        (rf"(?<![\w.'-])({marked}) '([^']*)'", lambda m: f"{flags[m[1]]} {m[2]}"),
        (rf"(?<![\w.-])'({marked})'(?!\w)", lambda m: flags[m[1]]),
    ]
    pieces = _CALL.split(message)  # text, call, text, ..., text: the calls stay as written
    for index in range(0, len(pieces), 2):
        for pattern, replace in rules:
            pieces[index] = re.sub(pattern, replace, pieces[index])
    return "".join(pieces)


def _alternatives(words) -> str:
    """A regex alternation of ``words``, longest first (``keep_ratios`` before
    ``keep_ratio``); one that matches nothing when there are none."""
    ordered = sorted(map(re.escape, words), key=len, reverse=True)
    return "|".join(ordered) or r"(?!x)x"


def _flag_and_value(flags: dict[str, str], match: re.Match) -> str:
    value = (match[2] or "").strip("'\"")
    return flags[match[1]] + ("" if value in ("", "True") else " " + value)  # a switch: no value


def _friendly(command):
    """Wrap a command so that user errors end with one line, in the command's own terms
    (its flags), and exit code 2. Messages about a ``--config`` file keep the file's keys."""
    flags = command_flags(command)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Exception as error:
            if not isinstance(error, _user_errors()):
                raise
            config = kwargs.get("config")
            about_config = config is not None and str(config) in str(error)
            _report_error(error, None if about_config else flags)
            raise typer.Exit(2) from None

    return wrapper


for _command in app.registered_commands:
    _command.callback = _friendly(_command.callback)


def run_cli() -> None:
    """The ``ltbm`` entry point: input problems (bad options, missing files, unreadable
    datasets, Java missing, a full disk) end with their message and exit code 2, not a
    traceback."""
    try:
        app()
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        _report_error(error)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run_cli()
