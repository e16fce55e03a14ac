"""What compression buys, measured: encoder, compression and prefill time, time to first
token, decode speed, peak memory and KV-cache bytes, per method × keep ratio × batch size ×
audio length, with the ideal line (the LLM prefilled with K random embeddings) in the same
run. Warm-up runs, then the median of timed runs, with device synchronisation on GPU.

Out-of-memory in one cell is recorded for that cell and the sweep goes on. A bench file
holds its identity (backbone, model, device, dtype, attention kernel, warm-up, repeats,
decode length, prompt, versions): rows are reused only under the same identity, and one
process at a time writes a bench file.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ltbm.backbones.hf.adapter import compress_tokens, parameter_count
from ltbm.backbones.hf.attention_capture import needs_attention
from ltbm.backbones.hf.pipeline import HFPipeline
from ltbm.core.budget import kept_tokens
from ltbm.methods.registry import DEFAULT_WINDOW
from ltbm.run.evaluate import LATER_PARAMETERS, SCORED, Cell


@dataclass
class BenchGrid:
    methods: tuple[str, ...] = ("ltbm", "global", "pool", "prune")
    keep_ratios: tuple[float, ...] = (1.0, 0.5, 0.25)
    batch_sizes: tuple[int, ...] = (1, 16)
    seconds: tuple[float, ...] = (30.0,)
    window: int = DEFAULT_WINDOW
    scorer: str = "norm"
    """prune's and segment_topk's scorer."""
    warmup: int = 1
    repeats: int = 5
    decode_tokens: int = 16

    def __post_init__(self) -> None:
        """Refuse settings that would measure nothing or divide by zero, before loading."""
        if not self.methods or not self.keep_ratios:
            raise ValueError("bench needs at least one method and one keep ratio")
        if any(not 0 < ratio <= 1 for ratio in self.keep_ratios):
            raise ValueError(
                f"--keep-ratios must lie in (0, 1] (1 measures the uncompressed baseline), got "
                f"{','.join(map(repr, self.keep_ratios))}"
            )
        if not self.batch_sizes or any(not _whole(b, 1) for b in self.batch_sizes):
            raise ValueError(f"--batch-sizes must be whole numbers ≥ 1, got {self.batch_sizes}")
        if not self.seconds or any(not 0 < s <= 600 for s in self.seconds):
            raise ValueError(f"--seconds must lie in (0, 600], got {self.seconds}")
        if not _whole(self.warmup, 0) or not _whole(self.repeats, 1):
            raise ValueError(
                f"--warmup must be ≥ 0 and --repeats ≥ 1, got {self.warmup}, {self.repeats}"
            )
        if not _whole(self.window, 1):
            raise ValueError(f"--window must be a whole number ≥ 1, got {self.window}")
        if not _whole(self.decode_tokens, 2):
            raise ValueError(
                f"--decode-tokens must be ≥ 2 (decode speed is M tokens minus the first), "
                f"got {self.decode_tokens}"
            )

    def cells(self) -> list[Cell]:
        """keep ratio 1 (or method none) is measured once, as the uncompressed baseline;
        none is never measured at another ratio, where it would be a mislabelled copy."""
        baseline = 1.0 in self.keep_ratios or "none" in self.methods
        cells = [Cell("none", 1.0)] if baseline else []
        for ratio in (r for r in self.keep_ratios if r < 1.0):
            for method in (m for m in self.methods if m != "none"):
                window = self.window if method == "ltbm" else None
                scorer = self.scorer if method in SCORED else None
                cells.append(Cell(method, ratio, window=window, scorer=scorer))
        return cells


def _whole(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device, warmup: int, repeats: int):
    """Median seconds of ``function`` after ``warmup`` calls, and its last result."""
    result = None
    for _ in range(warmup):
        result = function()
    synchronize(device)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        result = function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers cache (Cache with ``layers`` or legacy tuples)."""
    tensors = []
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            tensors += [getattr(layer, "keys", None), getattr(layer, "values", None)]
    else:
        for entry in cache:
            tensors += list(entry[:2])
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def clips(batch_size: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Synthetic 16 kHz clips (noise with a slow tone): timing does not depend on content."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return [
        (0.2 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.05 * rng.standard_normal(t.shape)).astype(
            np.float32
        )
        for i in range(batch_size)
    ]


def peak_memory_mib(device: torch.device) -> float:
    """Peak device memory since the last reset (GPU), or the process's peak resident
    memory (CPU, an upper bound over the whole run)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def prefill(model, embeds: torch.Tensor, mask: torch.Tensor):
    """One forward pass that fills the KV cache, with logits for the last position only
    (what ``generate`` computes for its first token)."""
    with torch.no_grad():
        try:
            return model(
                inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1
            )
        except TypeError:
            return model(inputs_embeds=embeds, attention_mask=mask, use_cache=True)


def measure_cell(pipeline: HFPipeline, cell: Cell, audios, prompt: str, grid: BenchGrid) -> dict:
    """Every figure of one cell. Raises torch.OutOfMemoryError upward to be recorded."""
    model = pipeline.model
    device = next(model.parameters()).device
    method = cell.build()
    warmup, repeats = grid.warmup, grid.repeats

    prepare_s, batch = timed(
        lambda: pipeline.prepare(audios, prompt, method), device, warmup, repeats
    )
    inputs, _, windows = pipeline.encoder_inputs(audios, prompt)
    adapter = pipeline.adapter
    # On the device beforehand, so the encoder's time holds no host-to-device copy.
    features = inputs[adapter.features_key].to(device, next(model.parameters()).dtype)
    frame_mask = inputs[adapter.mask_key].to(device)
    attention = needs_attention(method)

    def encode():
        with torch.no_grad():
            return adapter.encode(features, frame_mask, windows, attention)

    encoder_s, encoded = timed(encode, device, warmup, repeats)
    compression_s, _ = timed(lambda: compress_tokens(method, encoded), device, warmup, repeats)

    reset_peak(device)
    prefill_s, output = timed(
        lambda: prefill(model, batch.inputs_embeds, batch.attention_mask), device, warmup, repeats
    )
    peak = peak_memory_mib(device)
    kv_bytes = kv_cache_bytes(_cache_of(output))
    del output

    ideal = torch.randn_like(batch.inputs_embeds)
    ideal_s, ideal_output = timed(
        lambda: prefill(model, ideal, batch.attention_mask), device, warmup, repeats
    )
    del ideal_output

    # Decoding speed: generating M tokens minus generating one, both from the same input.
    first_s, _ = timed(lambda: _generate(adapter, batch, 1), device, 0, repeats)
    many_s, _ = timed(lambda: _generate(adapter, batch, grid.decode_tokens), device, 0, repeats)
    decode_s = many_s - first_s
    tokens = int(batch.attention_mask.sum())
    batch_size = len(audios)
    return {
        **cell_fields(cell),
        "batch_size": batch_size,
        "audio_seconds": len(audios[0]) / 16000,
        "audio_tokens": sum(batch.audio_tokens),
        "kept_tokens": sum(batch.kept_tokens),
        "kept_tokens_expected": sum(kept_tokens(n, cell.keep_ratio) for n in batch.audio_tokens),
        "sequence_tokens": tokens,
        "prepare_ms": prepare_s * 1e3,
        "encoder_ms": encoder_s * 1e3,
        "compression_ms": compression_s * 1e3,
        "prefill_ms": prefill_s * 1e3,
        "ideal_prefill_ms": ideal_s * 1e3,
        "pipeline_over_ideal": (compression_s + prefill_s) / ideal_s,
        "ttft_ms": (prepare_s + first_s) * 1e3,
        "decode_tokens_per_s": (
            batch_size * (grid.decode_tokens - 1) / decode_s if decode_s > 0 else None
        ),
        "peak_memory_mib": peak,
        "kv_cache_bytes": kv_bytes,
        "kv_cache_mib": kv_bytes / 2**20,
        "kv_bytes_per_token": kv_bytes / tokens,
    }


def _cache_of(output) -> Any:
    """The KV cache of a forward output (``cache`` in newer transformers, else
    ``past_key_values``)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def _generate(adapter, batch, new_tokens: int):
    """Decode through the adapter, as the pipeline does (a family may need to switch
    something on first, such as Granite Speech's LoRA adapter)."""
    with torch.no_grad():
        return adapter.llm_generate(
            # input_ids beside the embeddings, as the pipeline does, so a checkpoint's
            # repetition penalty sees the prompt.
            input_ids=batch.input_ids.to(batch.inputs_embeds.device),
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )


def cell_fields(cell: Cell) -> dict:
    """The cell's settings as a bench row names them (later parameters only when set)."""
    identity = cell.as_dict()
    fields = {k: identity[k] for k in ("method", "keep_ratio", "window", "scorer")}
    return {**fields, **{k: identity[k] for k in LATER_PARAMETERS if k in identity}}


def cell_key(row: dict) -> tuple:
    """What identifies a measured cell, to reuse it when a killed bench is run again."""
    names = ("method", "keep_ratio", "window", "scorer", *LATER_PARAMETERS)
    return tuple(row.get(k) for k in (*names, "batch_size", "audio_seconds"))


def run_bench(
    pipeline: HFPipeline,
    grid: BenchGrid,
    prompt: str,
    log=print,
    done: list[dict] | None = None,
    on_row=None,
) -> list[dict]:
    """All cells; an out-of-memory cell is recorded as such and the sweep goes on. Cells in
    ``done`` (from an earlier, interrupted run of the same bench) are kept, not remeasured;
    each row says which run measured it. ``on_row(rows)`` is called after every cell."""
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    reusable = {cell_key(r): r for r in done or [] if "error" not in r}
    results = []
    for seconds in grid.seconds:
        for batch_size in grid.batch_sizes:
            audios = None
            for cell in grid.cells():
                place = {"batch_size": batch_size, "audio_seconds": float(seconds)}
                row = reusable.get(cell_key({**cell.as_dict(), **place}))
                if row is None:
                    audios = audios if audios is not None else clips(batch_size, seconds)
                    row = {**_measure_or_oom(pipeline, cell, audios, prompt, grid), "run": run_id}
                results.append(row)
                log(_summary(row))
                if on_row is not None:
                    on_row(results)
    _add_savings(results)
    return results


def _measure_or_oom(pipeline, cell: Cell, audios, prompt: str, grid: BenchGrid) -> dict:
    try:
        return measure_cell(pipeline, cell, audios, prompt, grid)
    except torch.OutOfMemoryError as error:
        reset_peak(next(pipeline.model.parameters()).device)
        return {
            **cell_fields(cell),
            "batch_size": len(audios),
            "audio_seconds": len(audios[0]) / 16000,
            "error": "out of memory",
            "detail": str(error).splitlines()[0],
        }


def _add_savings(rows: list[dict]) -> None:
    """Compression time as a share of the prefill time it saves, against keep ratio 1 at
    the same batch size and audio length."""
    baseline = {
        (r["batch_size"], r["audio_seconds"]): r
        for r in rows
        if r["method"] == "none" and "error" not in r
    }
    for row in rows:
        base = baseline.get((row["batch_size"], row["audio_seconds"]))
        if base is None or "error" in row or row["method"] == "none":
            continue
        saved = base["prefill_ms"] - row["prefill_ms"]
        row["prefill_saved_ms"] = saved
        row["compression_share_of_saving"] = row["compression_ms"] / saved if saved > 0 else None
        row["prefill_vs_uncompressed"] = row["prefill_ms"] / base["prefill_ms"]
        row["kv_vs_uncompressed"] = row["kv_cache_bytes"] / base["kv_cache_bytes"]


def _summary(row: dict) -> str:
    if "error" in row:
        return f"B={row['batch_size']} {row['method']} r={row['keep_ratio']}: {row['error']}"
    return (
        f"B={row['batch_size']:3d} {row['audio_seconds']:5.0f}s {row['method']:7s} "
        f"r={row['keep_ratio']:<5g} K={row['kept_tokens']:6d} "
        f"prefill {row['prefill_ms']:8.1f} ms ideal {row['ideal_prefill_ms']:8.1f} ms "
        f"compress {row['compression_ms']:7.2f} ms KV {row['kv_cache_mib']:8.1f} MiB"
    )


def plot_bench(rows: list[dict], path) -> None:
    """Prefill time and KV memory against keep ratio, one line per method and batch size,
    with the ideal K-token prefill dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if "error" not in r]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for batch, seconds in sorted({(r["batch_size"], r["audio_seconds"]) for r in good}):
        group = [r for r in good if (r["batch_size"], r["audio_seconds"]) == (batch, seconds)]
        base = [r for r in group if r["method"] == "none"]
        for method in sorted({r["method"] for r in group} - {"none"}):
            points = sorted(
                base + [r for r in group if r["method"] == method], key=lambda r: r["keep_ratio"]
            )
            label = f"{method} B={batch} {seconds:g}s"
            ratios = [r["keep_ratio"] for r in points]
            time_axis.plot(ratios, [r["prefill_ms"] for r in points], marker="o", label=label)
            memory_axis.plot(ratios, [r["kv_cache_mib"] for r in points], marker="o", label=label)
        ideal = sorted(group, key=lambda r: r["keep_ratio"])
        time_axis.plot(
            [r["keep_ratio"] for r in ideal],
            [r["ideal_prefill_ms"] for r in ideal],
            linestyle="--",
            color="grey",
            label=f"ideal B={batch} {seconds:g}s",
        )
    time_axis.set(ylabel="LLM prefill (ms)", title="prefill time")
    memory_axis.set(ylabel="KV cache (MiB)", title="KV-cache memory")
    for axis in (time_axis, memory_axis):  # as ltbm report's plots: less kept to the right
        axis.set_xlabel("keep ratio (stronger compression →)")
        axis.invert_xaxis()
    time_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


BACKBONE_TYPES = {"qwen2-audio": "qwen2_audio", "audioflamingo3": "audioflamingo3"}
PROMPTS = {
    "qwen2-audio": "Generate the caption in English:",
    "audioflamingo3": "Describe the audio in one sentence.",
}


def load_pipeline(
    backbone: str,
    model: str | None,
    random_weights: bool,
    size: str,
    device: str | None,
    dtype: str | None,
) -> HFPipeline:
    """The pipeline to measure: a real checkpoint, or the architecture with random weights."""
    from ltbm.backbones.hf.loading import load, pipeline_class
    from ltbm.backbones.synthetic import build_model

    if backbone not in BACKBONE_TYPES:
        raise ValueError(f"bench supports {', '.join(BACKBONE_TYPES)}; got {backbone!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_dtype = "bfloat16" if device.startswith("cuda") else "float32"
    torch_dtype = getattr(torch, dtype or default_dtype)
    if random_weights:
        model_type = BACKBONE_TYPES[backbone]
        network, processor = build_model(model_type, size, device=device, dtype=torch_dtype)
        return pipeline_class(model_type)(network, processor)
    if model is None:
        raise ValueError("pass --model (a checkpoint id or folder) or --random-weights")
    return load(model, method=None, device_map=device, torch_dtype=torch_dtype)


def bench_identity(payload: dict[str, Any], grid: BenchGrid, prompt: str) -> dict[str, Any]:
    """Every setting a bench row's figures depend on besides its own cell, batch size and
    audio length (which key each row): the machine, the model, the measurement protocol and
    the versions of the code that runs."""
    from ltbm import __version__

    versions = payload["versions"]
    return {
        **{k: payload[k] for k in ("backbone", "model", "device", "device_name", "dtype")},
        "attn_implementation": payload["attn_implementation"],
        "warmup": grid.warmup,
        "repeats": grid.repeats,
        "decode_tokens": grid.decode_tokens,
        "prompt": prompt,
        "ltbm": __version__,
        "torch": versions.get("torch"),
        "transformers": versions.get("transformers"),
        "platform": versions.get("platform"),
    }


ROW_KEYS = ("method", "keep_ratio", "batch_size", "audio_seconds")
MEASURED_KEYS = ("prefill_ms", "compression_ms", "kv_cache_bytes")
"""Keys every stored bench row needs, and those a row without an error needs as numbers."""


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"a cell is a JSON {type(row).__name__}, not an object"
    needed = ROW_KEYS + (() if "error" in row else MEASURED_KEYS)
    missing = [key for key in needed if key not in row]
    if missing:
        return f"a cell lacks {', '.join(missing)}"
    numbers = ("keep_ratio", "batch_size", "audio_seconds", *needed[len(ROW_KEYS) :])
    wrong = [k for k in numbers if isinstance(row[k], bool) or not isinstance(row[k], (int, float))]
    return f"a cell's {', '.join(wrong)} are not numbers" if wrong else None


def previous_rows(out, identity: dict[str, Any], fresh: bool) -> list[dict]:
    """The rows of an earlier run of the same bench, to keep; a bench file measured under
    another identity is refused (or, with ``fresh``, discarded)."""
    import json

    from ltbm.run.identity import RunConflict, differences, plain

    if fresh or not out.exists():
        return []
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunConflict(f"{out} is damaged ({error}); pass --fresh or another --out") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("cells", []), list):
        raise RunConflict(
            f"{out} is not a bench file (a JSON object whose 'cells' are a list); pass "
            "--fresh or another --out"
        )
    rows = previous.get("cells", [])
    if not rows:
        return []
    problem = next(filter(None, map(_row_problem, rows)), None)
    if problem:
        raise RunConflict(f"{out} is damaged ({problem}); pass --fresh or another --out")
    if "identity" not in previous:
        raise RunConflict(
            f"{out} holds measurements from an older ltbm without their settings; pass "
            "--fresh to measure again, or another --out"
        )
    found = differences(previous["identity"], plain(identity))
    if found:
        raise RunConflict(
            f"{out} holds measurements made under other settings ({'; '.join(found[:6])}). "
            "Nothing was measured. Pass --fresh to start over, or another --out to keep both"
        )
    return rows


def bench_to_files(
    backbone,
    model,
    random_weights,
    size,
    device,
    dtype,
    grid: BenchGrid,
    out,
    log=print,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run the grid and write JSON, a markdown table and a plot beside each other. The JSON
    is rewritten after every cell; run again after a kill, the same bench (same identity,
    see :func:`bench_identity`) keeps the cells already measured."""
    from pathlib import Path

    from ltbm.run.evaluate import versions
    from ltbm.run.folder import writer_lock
    from ltbm.run.records import write_json_atomic

    out = Path(out)
    pipeline = load_pipeline(backbone, model, random_weights, size, device, dtype)
    where = next(pipeline.model.parameters()).device
    payload = {
        "backbone": backbone,
        "model": model or f"random weights ({size})",
        "parameters": parameter_count(pipeline.model),
        "device": where.type,
        "device_name": torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu",
        "dtype": str(next(pipeline.model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": getattr(pipeline.model.config, "_attn_implementation", None),
        "grid": dict(grid.__dict__),
        "versions": versions(),
    }
    payload["identity"] = bench_identity(payload, grid, PROMPTS[backbone])

    def save(rows: list[dict]) -> None:
        write_json_atomic(out, {**payload, "cells": rows})

    with writer_lock(out.with_suffix(".lock")):
        done = previous_rows(out, payload["identity"], fresh)
        rows = run_bench(pipeline, grid, PROMPTS[backbone], log=log, done=done, on_row=save)
        save(rows)
    payload["cells"] = rows
    table = out.with_suffix(".md")
    table.write_text(bench_table(payload))
    plot = out.with_suffix(".png")
    plot_bench(rows, plot)
    return {"json": out, "markdown": table, "plot": plot}


def bench_table(payload: dict) -> str:
    header = [
        "batch",
        "audio s",
        "method",
        "keep",
        "audio tokens→LLM",
        "encoder ms",
        "compress ms",
        "prefill ms",
        "ideal ms",
        "TTFT ms",
        "decode tok/s",
        "peak MiB",
        "KV MiB",
    ]
    lines = [
        f"{payload['backbone']} · {payload['model']} · {payload['device_name']} · "
        f"{payload['dtype']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in payload["cells"]:
        if "error" in r:
            lines.append(
                f"| {r['batch_size']} | {r['audio_seconds']:g} | {r['method']} | "
                f"{r['keep_ratio']:g} | {r['error']} |" + " |" * 8
            )
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["batch_size"]),
                    f"{r['audio_seconds']:g}",
                    r["method"],
                    f"{r['keep_ratio']:g}",
                    f"{r['audio_tokens']}→{r['kept_tokens']}",
                    f"{r['encoder_ms']:.1f}",
                    f"{r['compression_ms']:.2f}",
                    f"{r['prefill_ms']:.1f}",
                    f"{r['ideal_prefill_ms']:.1f}",
                    f"{r['ttft_ms']:.1f}",
                    _number(r["decode_tokens_per_s"], ".1f"),
                    f"{r['peak_memory_mib']:.0f}",
                    f"{r['kv_cache_mib']:.1f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
