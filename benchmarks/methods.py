"""Time every compression method on CPU, in read passes and peak memory, and write JSON.

Run: ``python benchmarks/methods.py --out benchmarks/results/methods.json``

Tokens are random ``[B, N, D]`` with D = 1280 (the Qwen2-Audio / Audio Flamingo 3 encoder
width). Each cell (method, B, N, dtype, threads) runs in a fresh subprocess, and reports:

- **read passes**: the time of ``compress`` (plan + apply) divided by the time of one
  ``tokens.sum()`` over the same tensor, timed alternately in the same process with the same
  thread count; the median of the per-repeat ratios. One pass is the floor: reading the input
  once. Ratios measured side by side are robust to a busy machine; absolute times are not.
- **peak extra memory**: the resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs`` just before the call) minus the resident set before it, over the
  input's size, for the first call of the cell (every page the call touches counts, whatever
  allocates it: torch, numpy, Python). Linux only.
- **syncs**: the points where a GPU's host would wait for the device in one call
  (:class:`ltbm.core.syncs.SyncCounter`), counted once per cell, after the timed calls, with
  the accelerator path forced (:mod:`ltbm.core.device_path`); by kind in ``syncs_by_kind``.

``tome`` is ToMe's bipartite soft matching with its size-weighted merge, applied in rounds
until K remain (``benchmarks/tome_rounds.py``), so ``global`` is compared with the reference
it generalises in the same run. ``ltbm-torch`` is ``ltbm`` with the compiled loops switched
off (``LTBM_COMPILED=0``: torch operations, the same values), so the loops' speed-up is a
ratio from the same run; every cell records whether the loops ran.

``segment_topk`` (norm scorer) and ``adaptive_diverse`` (size weighting) run without encoder
attention, which random tokens do not have. ``adaptive_diverse``'s greedy choice is O(K·R·D)
with R up to N on random tokens (their neighbours are not similar, so few runs merge):
``--largest-n`` (default 3000) bounds the sizes it is measured at, since at N = 15000 one
call reads the runs' features K = 3750 times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from provenance import run_record

import ltbm
from ltbm.core.device_path import forced
from ltbm.core.syncs import SyncCounter

DEFAULT_METHODS = {
    "ltbm": {"window": 1},
    "ltbm-torch": {"window": 1},
    "global": {},
    "tome": {},
    "pool": {},
    "prune": {"scorer": "norm"},
    "segment_topk": {"scorer": "norm"},
    "adaptive_diverse": {"weighting": "size"},
    "uniform": {},
    "random": {},
}
QUADRATIC = ("adaptive_diverse",)
"""Methods measured only up to ``--largest-n`` tokens per clip."""
TORCH_ONLY = "-torch"
"""Suffix of a method measured with the compiled loops switched off."""
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def memory_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


def compressor(name: str, params: dict, keep_ratio: float):
    """The call a cell times: ``compress`` of a method, or ToMe in rounds."""
    if name == "tome":
        from tome_rounds import tome_rounds

        return lambda tokens: tome_rounds(tokens, ltbm.kept_tokens(tokens.shape[1], keep_ratio))
    method = ltbm.get_method(name.removesuffix(TORCH_ONLY), keep_ratio=keep_ratio, **params)
    return lambda tokens: method(tokens).tokens


def measure_cell(cell: dict) -> dict:
    """Passes and peak memory of one cell, in this process."""
    torch.set_num_threads(cell["threads"])
    generator = torch.Generator().manual_seed(0)
    shape = (cell["batch"], cell["n"], cell["dim"])
    tokens = torch.randn(shape, generator=generator).to(DTYPES[cell["dtype"]])
    call = compressor(cell["method"], cell["params"], cell["keep_ratio"])
    input_bytes = tokens.numel() * tokens.element_size()

    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to now
    before = memory_kib("VmRSS")
    out = call(tokens)  # also the warm-up
    peak_extra = (memory_kib("VmHWM") - before) * 1024
    kept = out.shape[1]
    del out

    method_s, sum_s, ratios = [], [], []
    while len(method_s) < cell["repeats"] and (not method_s or sum(method_s) < cell["budget_s"]):
        start = time.perf_counter()
        tokens.sum()
        read = time.perf_counter() - start
        start = time.perf_counter()
        call(tokens)
        took = time.perf_counter() - start
        method_s.append(took)
        sum_s.append(read)
        ratios.append(took / read)
    from ltbm.core import native_dots

    syncs = count_syncs(call, tokens)
    return {
        **cell,
        "compiled": native_dots.compiled is not None,
        "kept": kept,
        "median_s": statistics.median(method_s),
        "sum_median_s": statistics.median(sum_s),
        "passes": statistics.median(ratios),
        "passes_all": ratios,
        "runs": len(method_s),
        "input_bytes": input_bytes,
        "peak_extra_bytes": peak_extra,
        "peak_extra_over_input": peak_extra / input_bytes,
        "syncs": syncs.total,
        "syncs_by_kind": dict(syncs.by_kind),
    }


def count_syncs(call, tokens: torch.Tensor) -> SyncCounter:
    """The host's waits for the device in one call on the accelerator path (forced on CPU
    tensors): what a GPU would pay, whatever machine runs the cell."""
    with forced("accelerator"), SyncCounter() as syncs:
        call(tokens)
    return syncs


def run_cell_in_subprocess(cell: dict) -> dict:
    """A fresh process per cell: no heap left over from another cell hides its memory."""
    env = {**os.environ, "OMP_NUM_THREADS": str(cell["threads"])}
    if cell["method"].endswith(TORCH_ONLY):
        env["LTBM_COMPILED"] = "0"
    done = subprocess.run(
        [sys.executable, __file__, "--cell", json.dumps(cell)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def merged_rounds(results: list[dict]) -> dict:
    """One cell measured in several interleaved rounds: the median of each figure over the
    rounds (a busy machine slows some rounds, not a method), every repeat's ratio kept."""
    merged = dict(results[0])
    for key in ("median_s", "sum_median_s", "passes", "peak_extra_bytes", "peak_extra_over_input"):
        merged[key] = statistics.median(result[key] for result in results)
    merged["passes_all"] = [ratio for result in results for ratio in result["passes_all"]]
    merged["median_s_rounds"] = [result["median_s"] for result in results]
    merged["runs"] = sum(result["runs"] for result in results)
    return merged


def grid(args: argparse.Namespace) -> list[dict]:
    """The float32 grid of every method, then the half-precision cells of the merging ones."""
    base = {
        "dim": args.dim,
        "keep_ratio": args.keep_ratio,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
    }
    cells = []
    for threads in args.threads:
        for batch in args.batches:
            for n in args.sizes:
                for name in args.methods:
                    if name in QUADRATIC and n > args.largest_n:
                        continue
                    params = DEFAULT_METHODS.get(name, {})
                    cells.append(
                        {**base, "method": name, "params": params, "batch": batch, "n": n}
                        | {"dtype": "float32", "threads": threads}
                    )
        for dtype in args.half_dtypes:
            for name in args.half_methods:
                params = DEFAULT_METHODS.get(name, {})
                cells.append(
                    {**base, "method": name, "params": params, "batch": max(args.batches)}
                    | {"n": max(args.sizes), "dtype": dtype, "threads": threads}
                )
    return cells


def summary(cells: list[dict]) -> dict:
    """The issue's targets, as ratios from this run (float32 unless named)."""
    time_of = {
        (c["method"], c["batch"], c["n"], c["threads"], c["dtype"]): c["median_s"] for c in cells
    }
    out = {}
    sizes = sorted({c["n"] for c in cells})
    small, large = sizes[0], sizes[-1]
    for batch in sorted({c["batch"] for c in cells}):
        for threads in sorted({c["threads"] for c in cells}):
            tag = f"B{batch}_N{large}_threads{threads}"

            def get(method, n=large, batch=batch, threads=threads, dtype="float32"):
                return time_of.get((method, batch, n, threads, dtype))

            if get("ltbm") and get("global"):
                out[f"global_over_ltbm_{tag}"] = get("global") / get("ltbm")
            if get("tome") and get("global"):
                out[f"global_speed_over_tome_{tag}"] = get("tome") / get("global")
            if get("ltbm") and get("ltbm", small):
                out[f"ltbm_growth_N{small}_to_{tag}"] = get("ltbm") / get("ltbm", small)
            for dtype in sorted({c["dtype"] for c in cells}):
                plain, compiled = get("ltbm" + TORCH_ONLY, dtype=dtype), get("ltbm", dtype=dtype)
                if plain and compiled:
                    out[f"compiled_speedup_ltbm_{dtype}_{tag}"] = plain / compiled
    return out


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "ltbm": ltbm.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[750, 3000, 15000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="stop repeating a cell after this many s"
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument(
        "--largest-n",
        type=int,
        default=3000,
        help=f"largest N for {', '.join(QUADRATIC)} (quadratic in N)",
    )
    parser.add_argument("--half-methods", nargs="*", default=["ltbm", "ltbm-torch", "global"])
    parser.add_argument("--half-dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the grid this many times, cells interleaved"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods.json"))
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(measure_cell(json.loads(args.cell))))
        return

    runs: dict[str, list[dict]] = {}
    run = run_record("benchmarks/methods.py")
    for _ in range(args.rounds):
        for cell in grid(args):
            result = run_cell_in_subprocess(cell)
            runs.setdefault(json.dumps(cell, sort_keys=True), []).append(result)
            print(
                f"threads={cell['threads']} {cell['dtype']:8s} B={cell['batch']:2d} "
                f"N={cell['n']:6d} {cell['method']:8s} {result['median_s'] * 1e3:10.1f} ms "
                f"{result['passes']:7.1f} passes  peak +{result['peak_extra_over_input']:.2f}x  "
                f"{result['syncs']:3d} syncs",
                flush=True,
            )
            cells = [merged_rounds(results) for results in runs.values()]
            output = {"cells": cells, "summary": summary(cells), "machine": machine(), "run": run}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(output, indent=2))
    print(json.dumps(summary(cells), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
