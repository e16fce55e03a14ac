"""The ``ltbm`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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
def methods() -> None:
    """List the registered compression methods and their parameters."""
    from ltbm.methods.registry import METHODS, method_parameters

    table = Table("method", "parameters", "what it does")
    for name, cls in METHODS.items():
        params = ", ".join(["keep_ratio", *method_parameters(name)])
        table.add_row(name, params, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)


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
) -> None:
    """Transcribe speech with Whisper tiny.en on this CPU, compressed by each method."""
    from ltbm.audio import AudioError
    from ltbm.demo import builtin_clips, check_demo_audio, demo_table, file_clip, run_demo

    try:
        chosen = builtin_clips(clips) if audio is None else [file_clip(audio, reference)]
        check_demo_audio(chosen, console)
        result = run_demo(chosen, out, keep_ratios=keep, console=console)
    except (AudioError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(1) from None
    console.print(demo_table(result, console.width))
    seconds = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in result.timings.items())
    console.print(f"picture: {result.figure}\ntime: {seconds}")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


BackboneOption = typer.Option("whisper-ct2", help="whisper-ct2, hf, qwen2-audio, audioflamingo3")
ModelOption = typer.Option(None, help="checkpoint id or local folder of the backbone")
TaskOption = typer.Option("speech", help="speech, clotho, audiocaps or mmau")
RootOption = typer.Option(None, help="dataset folder in its usual layout")
CsvOption = typer.Option(None, help="Clotho/AudioCaps captions CSV")
JsonOption = typer.Option(None, "--json", help="MMAU questions JSON")
AudioDirOption = typer.Option(None, help="folder holding the dataset's audio")
OutOption = typer.Option(Path("runs"), help="where runs are written")


def _default_scorer(backbone: str) -> str:
    """prune's scorer: encoder attention, except on CTranslate2, which does not expose it."""
    return "norm" if backbone == "whisper-ct2" else "attention"


def _session(backbone: str, model, device, dtype, task: str, paths: dict, out: Path, **settings):
    """Load the task and the backbone and bind the run settings."""
    from ltbm.backbones.registry import load_backbone
    from ltbm.run.evaluate import RunSettings
    from ltbm.tasks import get_task

    task_object = get_task(task, **paths)
    coverage = task_object.coverage()
    console.print(f"[bold]{task}[/]: {coverage.found} of {coverage.listed} items have audio")
    model_object = load_backbone(backbone, model, device, dtype)
    run_settings = RunSettings(backbone=model_object.name, task=task, out_root=out, **settings)
    return model_object, task_object, run_settings


@app.command("eval")
def eval_command(
    backbone: str = BackboneOption,
    model: str = ModelOption,
    task: str = TaskOption,
    root: Path = RootOption,
    csv: Path = CsvOption,
    json_path: Path = JsonOption,
    audio_dir: Path = AudioDirOption,
    method: str = typer.Option("ltbm", help="a registered method, or none"),
    keep_ratio: float = typer.Option(0.25, help="fraction of audio tokens kept"),
    window: int = typer.Option(None, help="ltbm's window (default 2)"),
    scorer: str = typer.Option(None, help="prune's scorer: attention or norm"),
    seed: int = typer.Option(None, help="random's seed"),
    batch_size: int = typer.Option(4),
    max_new_tokens: int = typer.Option(None, help="default: the backbone's own"),
    prompt: str = typer.Option(None, help="override the prompt template"),
    limit: int = typer.Option(None, help="evaluate only the first N items"),
    device: str = typer.Option(None, help="device_map for Hugging Face backbones"),
    dtype: str = typer.Option(None, help="torch dtype for Hugging Face backbones"),
    out: Path = OutOption,
) -> None:
    """Evaluate one backbone × task × method × keep ratio; resumable, shardable."""
    import json

    from ltbm.methods.registry import DEFAULT_WINDOW
    from ltbm.run.evaluate import Cell, evaluate

    if method == "ltbm" and window is None:
        window = DEFAULT_WINDOW  # named in the run's folder, like every other parameter
    if method == "prune" and scorer is None:
        scorer = _default_scorer(backbone)
    cell = Cell(method, 1.0 if method == "none" else keep_ratio, window, scorer, seed)
    cell.build()  # refuse bad parameters before any model loads
    model_object, task_object, settings = _session(
        backbone,
        model,
        device,
        dtype,
        task,
        {"root": root, "csv": csv, "json": json_path, "audio_dir": audio_dir},
        out,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        prompt=prompt,
        limit=limit,
    )
    run_dir = evaluate(model_object, task_object, cell, settings)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        console.print_json(json.dumps(json.loads(metrics_path.read_text())["metrics"]))
    console.print(f"results in {run_dir}")


@app.command()
def sweep(
    backbone: str = BackboneOption,
    model: str = ModelOption,
    task: str = TaskOption,
    root: Path = RootOption,
    csv: Path = CsvOption,
    json_path: Path = JsonOption,
    audio_dir: Path = AudioDirOption,
    methods: str = typer.Option("none,pool,prune,global,ltbm", help="comma-separated"),
    keep_ratios: str = typer.Option("0.5,0.25,0.15", help="comma-separated"),
    windows: str = typer.Option("1,2,4", help="ltbm windows, comma-separated"),
    scorer: str = typer.Option(None, help="prune's scorer (default: attention, norm on CT2)"),
    config: Path = typer.Option(
        None, help="TOML/JSON with methods, keep_ratios, windows, scorer and dataset paths"
    ),
    batch_size: int = typer.Option(4),
    max_new_tokens: int = typer.Option(None, help="default: the backbone's own"),
    prompt: str = typer.Option(None),
    limit: int = typer.Option(None),
    device: str = typer.Option(None),
    dtype: str = typer.Option(None),
    out: Path = OutOption,
) -> None:
    """Run the paper's grid (methods × keep ratios × windows), reusing finished cells,
    then write the report."""
    from ltbm.report import write_report
    from ltbm.run.sweep import Grid, load_grid
    from ltbm.run.sweep import sweep as run_sweep

    scorer = scorer or _default_scorer(backbone)
    grid = Grid(tuple(methods.split(",")), _floats(keep_ratios), _ints(windows), scorer)
    if config is not None:
        grid, paths = load_grid(config)
        unknown = sorted(set(paths) - {"root", "csv", "json", "audio_dir"})
        if unknown:
            raise typer.BadParameter(
                f"unknown keys {unknown} in {config}; it takes methods, keep_ratios, windows, "
                "scorer, seed and the dataset paths root, csv, json, audio_dir"
            )
        root, csv = root or paths.get("root"), csv or paths.get("csv")
        json_path = json_path or paths.get("json")
        audio_dir = audio_dir or paths.get("audio_dir")
    for cell in grid.cells():
        cell.build()
    model_object, task_object, settings = _session(
        backbone,
        model,
        device,
        dtype,
        task,
        {"root": root, "csv": csv, "json": json_path, "audio_dir": audio_dir},
        out,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        prompt=prompt,
        limit=limit,
    )
    run_sweep(model_object, task_object, grid, settings)
    paths = write_report(out / task / model_object.name)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


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
) -> None:
    """Tables (markdown, CSV, JSON), plots and paired-bootstrap statistics from finished runs."""
    from ltbm.report import write_report
    from ltbm.report_stats import DEFAULT_PAIRS, StatsOptions, parse_pairs

    try:
        given = {"resamples": resamples, "seed": seed, "level": level}
        options = StatsOptions(
            **{k: v for k, v in given.items() if v is not None},
            pairs=parse_pairs(pairs) if pairs else DEFAULT_PAIRS,
            pool_tasks=pool_tasks,
        )
        paths = write_report(runs_dirs, out, options)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
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
    window: int = typer.Option(2, help="ltbm's window"),
    scorer: str = typer.Option("norm", help="prune's scorer"),
    repeats: int = typer.Option(5, help="timed runs per cell (median reported)"),
    warmup: int = typer.Option(1),
    decode_tokens: int = typer.Option(16, help="tokens generated to time decoding"),
    device: str = typer.Option(None, help="cuda, cpu ... (default: cuda if available)"),
    dtype: str = typer.Option(None, help="bfloat16, float16, float32 (default: bf16 on GPU)"),
    out: Path = typer.Option(Path("runs/bench.json"), help="JSON output (plot beside it)"),
) -> None:
    """Efficiency: encoder, compression and prefill time, TTFT, decode speed, peak memory
    and KV bytes per method × keep ratio × batch × audio length, with the ideal line."""
    from ltbm.run.bench import BenchGrid, bench_to_files

    grid = BenchGrid(
        tuple(methods.split(",")),
        _floats(keep_ratios),
        _ints(batch_sizes),
        _floats(seconds),
        window,
        scorer,
        warmup,
        repeats,
        decode_tokens,
    )
    for cell in grid.cells():
        cell.build()
    paths = bench_to_files(
        backbone, model, random_weights, size, device, dtype, grid, out, log=console.print
    )
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


def run_cli() -> None:
    """The ``ltbm`` entry point: input problems (bad options, missing files, unreadable
    datasets, Java missing) end with their message and exit code 2, not a traceback."""
    from ltbm.metrics.captions import CaptionMetricsError

    try:
        app()
    except (ValueError, FileNotFoundError, CaptionMetricsError) as error:
        console.print(f"[bold red]error:[/] {error}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    run_cli()
