"""Global Merge's accelerator path with its clips batched, against the same path looping over
clips in Python: the ratio of their times, measured side by side on one machine.

Run: ``python benchmarks/global_batching.py --out benchmarks/results/global_batching.json``

Each repeat times ``compress(tokens, method="global")`` (plan + apply) once batched (every
clip in one float64 multiply per block of rows, :mod:`ltbm.methods.dense_certified`) and
once looped (the same function called clip by clip), alternately, with the accelerator
path forced (:mod:`ltbm.core.device_path`; on a GPU machine pass ``--device cuda``); the
figure is the median of the per-repeat ratios. Both give the same plan (checked). The CPU
path's own time (the filtered search, :mod:`ltbm.methods.dense_scores`, which loops over
clips) is measured beside them for reference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from provenance import run_record

import ltbm
from ltbm.core.device_path import forced
from ltbm.methods import dense_certified, matching


def looped(x: torch.Tensor, length: torch.Tensor):
    """The batched function called clip by clip: what a Python loop over clips costs."""
    parts = [
        dense_certified.certified_best_partners(x[c : c + 1], length[c : c + 1])
        for c in range(x.shape[0])
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@contextlib.contextmanager
def variant(name: str):
    """Run ``compress`` as ``name``: batched or looped on the accelerator path, or the CPU
    path."""
    if name == "cpu path":
        yield
        return
    original = matching.certified_best_partners
    if name == "looped":
        matching.certified_best_partners = looped
    try:
        with forced("accelerator"):
            yield
    finally:
        matching.certified_best_partners = original


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(batch: int, n: int, dim: int, keep_ratio: float, repeats: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, n, dim, generator=generator).to(device)
    names = ["batched", "looped"] + (["cpu path"] if tokens.device.type == "cpu" else [])
    plans, times = {}, {name: [] for name in names}
    for name in names:  # warm-up, and the plans to compare
        with variant(name):
            plans[name] = ltbm.compress(tokens, None, "global", keep_ratio).plan.slot_index.cpu()
    same = all(torch.equal(plans[name], plans["batched"]) for name in names)
    for _ in range(repeats):
        for name in names:
            with variant(name):
                synchronize(tokens.device)
                start = time.perf_counter()
                ltbm.compress(tokens, None, "global", keep_ratio)
                synchronize(tokens.device)
                times[name].append(time.perf_counter() - start)
    ratios = [
        loop / batched for loop, batched in zip(times["looped"], times["batched"], strict=True)
    ]
    row = {
        "batch": batch,
        "n": n,
        "dim": dim,
        "same_plans": same,
        "looped_over_batched": statistics.median(ratios),
        "ratios": ratios,
        **{f"{name.replace(' ', '_')}_median_s": statistics.median(t) for name, t in times.items()},
    }
    if "cpu path" in times:
        row["accelerator_batched_over_cpu_path"] = statistics.median(
            b / c for b, c in zip(times["batched"], times["cpu path"], strict=True)
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[750, 3000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        row = measure(args.batch, n, args.dim, args.keep_ratio, args.repeats, args.device)
        rows.append(row)
        print(
            f"B={args.batch} N={n}: looped / batched {row['looped_over_batched']:.2f}x "
            f"(batched {row['batched_median_s'] * 1e3:.0f} ms, looped "
            f"{row['looped_median_s'] * 1e3:.0f} ms), same plans: {row['same_plans']}",
            flush=True,
        )
    if args.out is not None:
        record = {
            **run_record("benchmarks/global_batching.py"),
            "threads": args.threads,
            "device": args.device,
            "torch": torch.__version__,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
