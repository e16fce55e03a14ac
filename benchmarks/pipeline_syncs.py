"""Count the host's waits for the device in each step of the Hugging Face pipeline.

Run: ``python benchmarks/pipeline_syncs.py --out benchmarks/results/pipeline_syncs.json``

A tiny random Qwen2-Audio (or Audio Flamingo 3) built from the real transformers classes
generates from a batch of clips with every registered method and without compression; a
:class:`~ltbm.core.syncs.SyncCounter` counts the synchronisations of each step, named by
wrapping the pipeline's own functions (the run is the pipeline's ``generate``, unchanged):
processor → encoder → compress → projector → scatter (K placeholders, the embeddings) →
generate → decode. On a CPU machine the accelerator path is forced
(:mod:`ltbm.core.device_path`), except in the processor, which runs on the host on every
machine. The steps that run transformers' code (encoder, projector, generate) take
transformers' own CPU branches, so their counts are those of its CPU code; on a GPU machine
(``--device cuda``) every count is of reads of device tensors only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from provenance import run_record

import ltbm
from ltbm.backbones.hf import adapter as adapter_module
from ltbm.backbones.hf.loading import pipeline_class
from ltbm.backbones.synthetic import build_model
from ltbm.core.device_path import forced
from ltbm.core.syncs import SyncCounter
from ltbm.run.bench import BACKBONE_TYPES, PROMPTS, clips

STEPS = ("processor", "encoder", "compress", "projector", "scatter", "generate", "decode")
PARAMS = {"ltbm": {"window": 1}, "prune": {"scorer": "norm"}}


def labelled(counter: SyncCounter, function: Callable, step: str, after: str) -> Callable:
    """``function`` whose syncs count under ``step``, and whatever follows under ``after``.
    The processor works on the host on every machine: its step runs on the automatic path,
    where reads of CPU tensors are not waits for a device."""

    def wrapper(*args, **kwargs):
        counter.step = step
        try:
            with forced("auto") if step == "processor" else contextlib.nullcontext():
                return function(*args, **kwargs)
        finally:
            counter.step = after

    return wrapper


def count_steps(
    pipeline, method, audios, prompt: str, new_tokens: int, sites: bool = False
) -> SyncCounter:
    """The synchronisations of one ``generate`` call, by step (``by_step``)."""
    counter = SyncCounter(sites=sites)
    adapter = pipeline.adapter
    patches = [
        (pipeline, "encoder_inputs", "processor", "encoder"),
        (adapter, "encode", "encoder", "compress"),
        (adapter_module, "compress_tokens", "compress", "projector"),
        (adapter, "project", "projector", "scatter"),
        (adapter, "llm_generate", "generate", "decode"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in patches]
    try:
        for owner, name, step, after in patches:
            setattr(owner, name, labelled(counter, getattr(owner, name), step, after))
        with counter:
            counter.step = "processor"
            pipeline.generate(audios, prompt, method=method, max_new_tokens=new_tokens)
    finally:
        for owner, name, original in originals:
            if owner is adapter_module:
                setattr(owner, name, original)
            else:
                delattr(owner, name)  # the instance attribute hid the class's method
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONE_TYPES), default="qwen2-audio")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--sites", action="store_true", help="print where each sync happens")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, processor = build_model(BACKBONE_TYPES[args.backbone], "tiny", device=args.device)
    pipeline = pipeline_class(BACKBONE_TYPES[args.backbone])(model, processor)
    audios = clips(args.batch_size, args.seconds)
    prompt = PROMPTS[args.backbone]
    rows = []
    for name in ["none", *sorted(ltbm.METHODS)]:
        method = None
        if name != "none":
            method = ltbm.get_method(name, keep_ratio=args.keep_ratio, **PARAMS.get(name, {}))
            if method.needs_attention:
                continue
        with forced("accelerator"):
            counter = count_steps(pipeline, method, audios, prompt, args.new_tokens, args.sites)
        steps = {step: counter.by_step.get(step, 0) for step in STEPS}
        rows.append({"method": name, **steps, "total": sum(steps.values())})
        print(f"{name:10s} " + " ".join(f"{step} {steps[step]:3d}" for step in STEPS), flush=True)
        for site, count in counter.by_site.most_common() if args.sites else ():
            print(f"    {count:3d} {site}")
    if args.out is not None:
        record = {
            **run_record("benchmarks/pipeline_syncs.py"),
            "backbone": args.backbone,
            "device": args.device,
            "batch_size": args.batch_size,
            "seconds": args.seconds,
            "keep_ratio": args.keep_ratio,
            "new_tokens": args.new_tokens,
            "ltbm": ltbm.__version__,
            "torch": torch.__version__,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
