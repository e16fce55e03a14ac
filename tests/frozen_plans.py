"""Frozen plans: the regression reference for every change to a method's kernel.

``python tests/frozen_plans.py --write`` recomputes the plans of ``ltbm`` (windows 1-4) and
``global`` for a fixed set of inputs (seeds, shapes, mixed lengths, junk and NaN padding,
exact ties, float32/float16/bfloat16, several keep ratios), then those of the methods added
later (``segment_topk``, ``adaptive_diverse``, attention-weighted ``ltbm``/``global``, with
seeded random queries and keys where attention is read) on the same inputs, and stores them
in ``tests/data/frozen_plans.json.gz``; ``tests/test_frozen_plans.py`` checks that today's
code gives the same plans (slot of every source, K, every round's merged pairs, and the
weights where they are not all one). Rewrite the file only for a deliberate change of an
algorithm, and say why in the commit.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import torch

import ltbm

FROZEN = Path(__file__).parent / "data" / "frozen_plans.json.gz"

WINDOWS: list[int | None] = [1, 2, 3, 4, None]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SHAPES = [
    # (batch, width, dim, lengths, padding): padding is what lies past each clip's length.
    (3, 64, 16, [64, 37, 0], "junk"),
    (2, 33, 7, [33, 20], "nan"),
    (1, 120, 24, [120], "none"),
    (2, 90, 1280, [90, 61], "junk"),
    (4, 41, 5, [41, 2, 3, 40], "zeros"),
    (2, 48, 12, [48, 48], "ties"),
    (2, 400, 40, [400, 333], "junk"),
]
SEEDS = [0, 1]
KEEP_RATIOS = [0.1, 0.25, 0.5]
LATER_METHODS: list[tuple[str, dict]] = [
    ("segment_topk", {"scorer": "norm", "segments": 10}),
    ("segment_topk", {"scorer": "attention", "segments": 4}),
    ("adaptive_diverse", {"weighting": "size", "threshold": 0.2}),
    ("adaptive_diverse", {"weighting": "attention", "threshold": 0.5}),
    ("ltbm", {"window": 2, "weighting": "attention"}),
    ("global", {"weighting": "attention"}),
]
"""The methods and settings added after the first frozen plans, frozen on the same inputs.
Thresholds suit random tokens, whose cosine similarities lie near zero."""


def make_tokens(
    seed: int, shape: tuple[int, int, int, list[int], str], dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens of one case, with the case's padding content."""
    batch, width, dim, lengths, padding = shape
    generator = torch.Generator().manual_seed(seed * 1000 + width * 7 + dim)
    tokens = torch.randn(batch, width, dim, generator=generator)
    if padding == "ties":  # exact repeats: ties that the tie rules must break
        tokens[:, 1::3] = tokens[:, 0:1]
        tokens[:, 10:20] = tokens[:, 30:40]
    lengths_t = torch.tensor(lengths)
    pad = torch.arange(width)[None, :] >= lengths_t[:, None]
    fill = {
        "junk": 1e4 * torch.randn(batch, width, dim, generator=generator),
        "nan": torch.full((batch, width, dim), float("nan")),
        "zeros": torch.zeros(batch, width, dim),
    }.get(padding)
    if fill is not None:
        tokens = torch.where(pad[:, :, None], fill, tokens)
    return tokens.to(dtype), lengths_t


def cases() -> Iterator[tuple[str, torch.Tensor, torch.Tensor, str, dict]]:
    """Every frozen case: (key, tokens, lengths, method, params)."""
    yield from merge_cases()
    yield from later_cases()


def merge_cases() -> Iterator[tuple[str, torch.Tensor, torch.Tensor, str, dict]]:
    """The first frozen cases: ltbm's windows and global."""
    count = 0
    for seed in SEEDS:
        for shape in SHAPES:
            for dtype_name, dtype in DTYPES.items():
                tokens, lengths = make_tokens(seed, shape, dtype)
                for window in WINDOWS:
                    ratio = KEEP_RATIOS[count % len(KEEP_RATIOS)]
                    count += 1
                    method = "global" if window is None else "ltbm"
                    params = {} if window is None else {"window": window}
                    batch, width, dim, _, padding = shape
                    key = (
                        f"seed={seed} shape={batch}x{width}x{dim} padding={padding} "
                        f"dtype={dtype_name} method={method} window={window} keep={ratio}"
                    )
                    yield key, tokens, lengths, method, {"keep_ratio": ratio, **params}


def later_cases() -> Iterator[tuple[str, torch.Tensor, torch.Tensor, str, dict]]:
    """The later methods on the same inputs; attention from seeded random queries and keys
    (two heads of width 8, NaN past each clip's length where the padding is NaN)."""
    count = 0
    for seed in SEEDS:
        for shape in SHAPES:
            for dtype_name, dtype in DTYPES.items():
                tokens, lengths = make_tokens(seed, shape, dtype)
                for method, params in LATER_METHODS:
                    ratio = KEEP_RATIOS[count % len(KEEP_RATIOS)]
                    count += 1
                    batch, width, dim, _, padding = shape
                    setting = " ".join(f"{k}={v}" for k, v in params.items())
                    key = (
                        f"seed={seed} shape={batch}x{width}x{dim} padding={padding} "
                        f"dtype={dtype_name} method={method} {setting} keep={ratio}"
                    )
                    signals = {}
                    if "attention" in params.values():
                        signals = attention_signals(seed, shape)
                    yield key, tokens, lengths, method, {"keep_ratio": ratio, **params, **signals}


def attention_signals(seed: int, shape: tuple[int, int, int, list[int], str]) -> dict:
    batch, width, dim, lengths, padding = shape
    generator = torch.Generator().manual_seed(seed * 1000 + width * 7 + dim + 1)
    queries, keys = torch.randn(2, batch, 2, width, 8, generator=generator)
    if padding == "nan":
        pad = torch.arange(width)[None, None, :, None] >= torch.tensor(lengths)[:, None, None, None]
        queries, keys = queries.masked_fill(pad, float("nan")), keys.masked_fill(pad, float("nan"))
    return {"queries": queries, "keys": keys}


def plan_record(plan: ltbm.Plan) -> dict:
    """What is frozen of a plan: every source's slot, K per clip, every round's pairs, and
    the weights when some are not one (attention weighting)."""
    record = {
        "slot_index": plan.slot_index.tolist(),
        "kept": plan.kept.tolist(),
        "history": [edges.tolist() for edges in plan.history],
    }
    if not plan.unit_weights:  # 8 significant digits: float32's, and compared to 1e-5
        record["weights"] = [[float(f"{w:.8g}") for w in row] for row in plan.weights.tolist()]
    return record


def compute() -> dict[str, dict]:
    return {
        key: plan_record(ltbm.compress(tokens, lengths, method, **params).plan)
        for key, tokens, lengths, method, params in cases()
    }


def load() -> dict[str, dict]:
    return json.loads(gzip.decompress(FROZEN.read_bytes()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"(re)write {FROZEN}")
    args = parser.parse_args()
    plans = compute()
    if args.write:
        FROZEN.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(plans, separators=(",", ":"), sort_keys=True)
        FROZEN.write_bytes(gzip.compress(text.encode(), mtime=0))
        print(f"wrote {len(plans)} plans to {FROZEN} ({FROZEN.stat().st_size} bytes)")
        return
    frozen = load()
    changed = [key for key in plans if frozen.get(key) != plans[key]]
    print(f"{len(plans) - len(changed)} of {len(plans)} plans unchanged")
    for key in changed:
        print(f"changed: {key}")


if __name__ == "__main__":
    main()
