"""Tiny, randomly initialised Qwen2-Audio and Audio Flamingo 3 checkpoints for offline tests.

They come from :mod:`ltbm.backbones.synthetic` (the real transformers classes, processors
with a WhisperFeatureExtractor of 128 mel bins and 30 s windows, a small word-level
tokenizer) and are saved with ``save_pretrained`` so tests load them back through
``ltbm.load``, the real loading path. Only the sizes are small: the encoder still takes 3000
mel frames and makes 750 tokens per window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltbm.backbones.synthetic import save_model


def build_qwen2_audio(path: Path, seed: int = 0) -> Path:
    """Save a tiny Qwen2-Audio (Instruct-style chat template) to ``path``."""
    return save_model("qwen2_audio", path, "tiny", seed)


def build_audioflamingo3(path: Path, seed: int = 0) -> Path:
    """Save a tiny Audio Flamingo 3 (its processor's chat template) to ``path``."""
    return save_model("audioflamingo3", path, "tiny", seed)


def tone(seconds: float, frequency: float = 440.0, seed: int = 0) -> np.ndarray:
    """A 16 kHz test clip: a tone with a little noise, so encoder tokens differ in time."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    signal = 0.3 * np.sin(2 * np.pi * frequency * t * (1 + 0.5 * t / max(seconds, 1e-3)))
    return (signal + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def tiny_bench_args(
    out: Path,
    backbone: str = "qwen2-audio",
    methods: str = "ltbm,prune",
    keep_ratios: str = "1,0.25",
    batch_sizes: str = "1",
    seconds: str = "3",
) -> list[str]:
    """`ltbm bench` arguments for a quick CPU run on a tiny random architecture."""
    return [
        "bench", "--backbone", backbone, "--random-weights", "--size", "tiny",
        "--methods", methods, "--keep-ratios", keep_ratios, "--batch-sizes", batch_sizes,
        "--seconds", seconds, "--repeats", "1", "--warmup", "0", "--decode-tokens", "2",
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
