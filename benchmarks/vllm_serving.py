"""Serving through vLLM with and without ltbm: throughput, time to first token, KV blocks.

Run in the vLLM venv (``make vllm-venv``)::

    python benchmarks/vllm_serving.py --model Qwen/Qwen2-Audio-7B-Instruct \\
        --settings none,ltbm:0.5,ltbm:0.25 --concurrency 1,8,32 --seconds 30 \\
        --out benchmarks/results/vllm_serving_<device>.json
    python benchmarks/vllm_serving.py --tiny --out benchmarks/results/vllm_serving_cpu_tiny.json

Each setting (``none``: stock vLLM; ``METHOD:KEEP``: ltbm's plugin) gets its own engine
(vLLM's ``AsyncLLM``, the engine behind its OpenAI server: continuous batching, paged KV
cache). For each concurrency level c, c clients each send their next request as soon as
the previous one is answered, until ``--requests`` (default 2c, at least 8) are done; every
request carries one clip of ``--seconds`` of real speech (the shipped clips, joined) and
decodes ``--max-tokens`` tokens (``ignore_eos``, so every request decodes the same number).
Recorded per cell: wall time, requests/s, output and total tokens/s, time to first token
(median and 90th percentile), prompt tokens per request, and the peak KV-cache blocks in use
(vLLM's own scheduler statistic, ``kv_cache_usage`` × blocks). The ratios against ``none`` at
the same concurrency come from the same run. ``--tiny`` builds a tiny random Qwen2-Audio
(``save_model(..., vllm=True)``): a check that the script works, not a performance figure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

import ltbm
from ltbm.io.audio import load_audio

SPEECH = Path(ltbm.__file__).parent / "data" / "speech"
PROMPTS = {
    "qwen2_audio": (
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Describe sound in one sentence.<|im_end|>\n<|im_start|>assistant\n"
    ),
    "audioflamingo3": (
        "<|im_start|>user\n<sound>Describe sound in one sentence.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint id or folder (Qwen2-Audio or AF3)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Qwen2-Audio")
    parser.add_argument("--settings", default="none,ltbm:0.5,ltbm:0.25")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=None, help="per level (default 2c)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per request")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument(
        "--engine-arg", action="append", default=[], metavar="KEY=JSON",
        help="another vLLM engine argument, e.g. tensor_parallel_size=2 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.tiny == bool(args.model):
        parser.error("give --model, or --tiny for the tiny random Qwen2-Audio")
    return args


def speech_clip(seconds: float, first: int = 0) -> np.ndarray:
    """``seconds`` of the shipped speech clips, joined in order from clip ``first``."""
    files = sorted(SPEECH.glob("speech_*.flac"))
    pieces, total, index = [], 0, first
    while total < seconds * 16000:
        pieces.append(load_audio(files[index % len(files)]))
        total += len(pieces[-1])
        index += 1
    return np.concatenate(pieces)[: int(seconds * 16000)]


def requests_for(prompt: str, seconds: float, count: int, level: int) -> list[dict]:
    """``count`` requests with distinct audio (rotated clips, a faint dither unique to the
    level and request), so no request is answered from another's encoder or prefix cache."""
    requests = []
    for index in range(count):
        rng = np.random.default_rng([level, index])
        clip = speech_clip(seconds, index) + rng.normal(0, 1e-4, int(seconds * 16000))
        audio = (clip.astype(np.float32), 16000)
        requests.append({"prompt": prompt, "multi_modal_data": {"audio": audio}})
    return requests


class PeakKV:
    """A vLLM stat logger that keeps the peak fraction of KV-cache blocks in use."""

    peak = 0.0

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        pass

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        if scheduler_stats is not None:
            PeakKV.peak = max(PeakKV.peak, scheduler_stats.kv_cache_usage)

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass


def engine_args(args: argparse.Namespace, model: str, setting: str):
    """vLLM's engine arguments for one setting: stock, or ltbm's overrides added."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from ltbm.vllm import hf_overrides, model_type_of

    extra = {key: json.loads(value) for key, value in (a.split("=", 1) for a in args.engine_arg)}
    kwargs = {"model": model, "dtype": args.dtype, "max_model_len": args.max_model_len, **extra}
    if setting != "none":
        method, keep = setting.split(":")
        kwargs["hf_overrides"] = hf_overrides(model_type_of(model), method, float(keep))
    return AsyncEngineArgs(**kwargs)


async def run_level(engine, requests: list[dict], concurrency: int, max_tokens: int) -> dict:
    """Every request, from ``concurrency`` clients; per-request timings."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    records: list[dict] = []

    async def client() -> None:
        while not queue.empty():
            request = queue.get_nowait()
            start, first, final = time.perf_counter(), None, None
            async for output in engine.generate(request, params, str(uuid.uuid4())):
                if first is None and output.outputs[0].token_ids:
                    first = time.perf_counter()
                final = output
            records.append(
                {
                    "ttft_s": first - start,
                    "latency_s": time.perf_counter() - start,
                    "prompt_tokens": len(final.prompt_token_ids),
                    "output_tokens": len(final.outputs[0].token_ids),
                }
            )

    PeakKV.peak = 0.0
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summarise(records, time.perf_counter() - start, concurrency)


def summarise(records: list[dict], wall: float, concurrency: int) -> dict:
    ttft = sorted(r["ttft_s"] for r in records)
    out = sum(r["output_tokens"] for r in records)
    prompt = sum(r["prompt_tokens"] for r in records)
    return {
        "concurrency": concurrency,
        "requests": len(records),
        "wall_s": round(wall, 4),
        "requests_per_s": round(len(records) / wall, 4),
        "output_tokens_per_s": round(out / wall, 2),
        "total_tokens_per_s": round((out + prompt) / wall, 2),
        "ttft_median_s": round(statistics.median(ttft), 4),
        "ttft_p90_s": round(ttft[min(len(ttft) - 1, math.ceil(0.9 * len(ttft)) - 1)], 4),
        "prompt_tokens_per_request": prompt / len(records),
        "kv_usage_peak": PeakKV.peak,
    }


async def measure(args, model: str, setting: str, prompt: str) -> dict:
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(engine_args(args, model, setting), stat_loggers=[PeakKV])
    try:
        config = engine.vllm_config.cache_config
        blocks, block_size = config.num_gpu_blocks, config.block_size
        warm_up = requests_for(prompt, args.seconds, 1, 10_000)
        await run_level(engine, warm_up, 1, args.max_tokens)  # not recorded
        levels = []
        for number, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
            total = args.requests or max(8, 2 * concurrency)
            requests = requests_for(prompt, args.seconds, total, number)
            level = await run_level(engine, requests, concurrency, args.max_tokens)
            level["kv_blocks_peak"] = round(level.pop("kv_usage_peak") * blocks)
            levels.append(level)
        return {"setting": setting, "kv_blocks_total": blocks, "block_size": block_size,
                "levels": levels}  # fmt: skip
    finally:
        engine.shutdown()
        del engine  # now, not at interpreter exit (where its __del__ shuts down again)
        gc.collect()


def with_ratios(results: list[dict]) -> list[dict]:
    """Each compressed level's throughput, TTFT and KV blocks over stock's at the same
    concurrency (same run)."""
    stock = next((r for r in results if r["setting"] == "none"), None)
    if stock is None:
        return results
    base = {level["concurrency"]: level for level in stock["levels"]}
    for result in results:
        for level in result["levels"]:
            ref = base.get(level["concurrency"])
            if ref is None or result is stock:
                continue
            level["vs_none"] = {
                key: round(level[key] / ref[key], 4) if ref[key] else None
                for key in ("output_tokens_per_s", "ttft_median_s", "kv_blocks_peak")
            }
    return results


def cpu_name() -> str:
    """The CPU's model name (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def environment(model: str, tiny: bool) -> dict:
    import torch
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    note = None
    if tiny:
        note = (
            "tiny random Qwen2-Audio: a smoke run that shows the script works, "
            "not a performance claim"
        )
    return {
        "model": "tiny random qwen2_audio (save_model(vllm=True))" if tiny else model,
        "device": device,
        "cuda": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "ltbm": ltbm.__version__,
        "python": platform.python_version(),
        "note": note,
    }


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if args.tiny:
            from ltbm.backbones.synthetic import save_model

            model = str(save_model("qwen2_audio", Path(scratch) / "tiny", vllm=True))
        from ltbm.vllm import model_type_of

        prompt = PROMPTS[model_type_of(model)]
        results = [
            asyncio.run(measure(args, model, setting, prompt))
            for setting in args.settings.split(",")
        ]
    report = {
        "environment": environment(model, args.tiny),
        "run": {k: v for k, v in vars(args).items() if k != "out"},
        "results": with_ratios(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
