"""Time every compression method on CPU and write the figures as JSON.

Run: ``python benchmarks/methods.py --out benchmarks/results/methods.json``

Tokens are random ``[B, N, D]`` float32 with D = 1280 (the Qwen2-Audio / Audio Flamingo 3
encoder width). Every cell runs in this one process, so the ratios it reports (LTBM versus
Global at N = 15000; LTBM's growth from N = 750 to N = 15000) compare like with like.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import ltbm

DEFAULT_METHODS = {
    "ltbm": {"window": 2},
    "global": {},
    "pool": {},
    "prune": {"scorer": "norm"},
    "uniform": {},
    "random": {},
}


def time_method(
    name: str, params: dict, tokens: torch.Tensor, keep_ratio: float, repeats: int, budget_s: float
) -> dict:
    """Median wall time of ``compress`` (plan + apply) over up to ``repeats`` runs; stops
    repeating once ``budget_s`` is spent so the slow global cells stay bounded."""
    method = ltbm.get_method(name, keep_ratio=keep_ratio, **params)
    method(tokens)  # warm-up at full size: the allocator's first large pages are not timed
    times = []
    while len(times) < repeats and (not times or sum(times) < budget_s):
        start = time.perf_counter()
        result = method(tokens)
        times.append(time.perf_counter() - start)
    return {
        "method": name,
        "params": params,
        "median_s": statistics.median(times),
        "runs": len(times),
        "kept": int(result.lengths[0]),
    }


def run(
    sizes: list[int],
    batches: list[int],
    dim: int,
    keep_ratio: float,
    repeats: int,
    budget_s: float,
    methods: dict[str, dict],
) -> dict:
    cells = []
    for batch in batches:
        for n in sizes:
            tokens = torch.randn(batch, n, dim, generator=torch.Generator().manual_seed(0))
            for name, params in methods.items():
                cell = time_method(name, params, tokens, keep_ratio, repeats, budget_s)
                cell.update(batch=batch, n=n, dim=dim)
                print(
                    f"B={batch:2d} N={n:6d} {name:8s} {cell['median_s'] * 1e3:10.1f} ms", flush=True
                )
                cells.append(cell)
    return {"cells": cells, "ratios": ratios(cells, sizes, batches)}


def ratios(cells: list[dict], sizes: list[int], batches: list[int]) -> dict:
    """The issue's targets, as ratios from this run."""
    time_of = {(c["method"], c["batch"], c["n"]): c["median_s"] for c in cells}
    out = {}
    small, large = min(sizes), max(sizes)
    for batch in batches:
        local = time_of.get(("ltbm", batch, large))
        global_ = time_of.get(("global", batch, large))
        if local and global_:
            out[f"global_over_ltbm_B{batch}_N{large}"] = global_ / local
        if local and time_of.get(("ltbm", batch, small)):
            out[f"ltbm_growth_B{batch}_N{small}_to_N{large}"] = (
                local / time_of[("ltbm", batch, small)]
            )
    return out


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ltbm": ltbm.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[750, 3000, 15000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="stop repeating a cell once this many seconds are spent",
    )
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/methods.json"))
    args = parser.parse_args()

    methods = {name: DEFAULT_METHODS.get(name, {}) for name in args.methods}
    result = run(
        args.sizes, args.batches, args.dim, args.keep_ratio, args.repeats, args.budget_s, methods
    )
    result.update(machine=machine(), keep_ratio=args.keep_ratio)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
