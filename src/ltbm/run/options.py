"""Checks of command-line values made before any model loads, each failing with one line
that names the option and the fix (the CLI turns them into exit code 2)."""

from __future__ import annotations

from pathlib import Path

HF_DTYPES = ("auto", "float32", "float16", "bfloat16")
"""Weights dtypes the Hugging Face backbones load in (float64 doubles memory for nothing;
8-bit formats need quantisation, which ltbm does not drive)."""
CT2_COMPUTE_TYPES = (
    "default",
    "auto",
    "float32",
    "float16",
    "bfloat16",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
)
"""CTranslate2 compute types, for ``--dtype`` with whisper-ct2."""
HF_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
WHISPER_BACKBONES = ("whisper-ct2", "whisper-hf")
"""The backbones that run Whisper at 50 or 25 Hz and take ``--model tiny.en|base``."""


def check_whole(option: str, value: int | None, low: int = 1) -> None:
    """``value`` is None (not given) or a whole number ≥ ``low``."""
    if value is not None and value < low:
        raise ValueError(f"{option} must be ≥ {low}, got {value}")


SEED_MAX = 2**63 - 1
"""The largest seed every generator ltbm seeds (torch, numpy) takes."""


def check_seed(option: str, value: int | None) -> None:
    """``value`` is None or a seed in [0, :data:`SEED_MAX`]: a larger one fails inside the
    generator on every item, a negative one is refused by numpy's."""
    if value is not None and not 0 <= value <= SEED_MAX:
        raise ValueError(f"{option} must be a whole number from 0 to 2**63 - 1, got {value}")


def check_out_dir(out: Path, option: str = "--out") -> None:
    """``out`` is a folder or can become one (it is created now, so a read-only parent
    shows before the work, not after)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; pass a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"{option} {out} cannot be created ({error.strerror or error}); pass a folder "
            "you can write to"
        ) from None


def check_out_file(out: Path, option: str = "--out") -> None:
    """``out`` is a file path (not a folder) whose folder can be created."""
    if out.is_dir():
        raise ValueError(f"{option} {out} is a folder; pass a file name such as {out}/bench.json")
    check_out_dir(out.parent, option + "'s folder")


def check_dtype(backbone: str, dtype: str | None) -> None:
    if dtype is None:
        return
    allowed = CT2_COMPUTE_TYPES if backbone == "whisper-ct2" else HF_DTYPES
    if dtype not in allowed:
        raise ValueError(f"--dtype {dtype} is not one of {', '.join(allowed)} for {backbone}")


def check_device(backbone: str, device: str | None) -> None:
    """A device name torch (Hugging Face backbones) or CTranslate2 (whisper-ct2) knows."""
    if device is None:
        return
    if backbone == "whisper-ct2":
        if device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--device {device} is not one of cpu, cuda, auto for whisper-ct2")
        return
    if device in HF_DEVICE_MAPS:
        if backbone == "whisper-hf":
            raise ValueError(f"--device {device}: whisper-hf takes one device (cpu, cuda:0)")
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"--device {device} is not a device name (cpu, cuda, cuda:1, mps) or a device map "
            f"({', '.join(HF_DEVICE_MAPS)})"
        ) from None
    check_device_present(parsed, device)


def check_device_present(parsed, device: str) -> None:
    """A CUDA or MPS device that this machine has (torch would fail with an assertion or
    an 'invalid device ordinal' once the weights are loaded)."""
    import torch

    if parsed.type == "meta":
        raise ValueError(f"--device {device} holds no weights, so nothing can run; use cpu or cuda")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise ValueError(
                f"--device {device}: this machine has {count} usable CUDA device(s); use "
                "--device cpu" + (f" or cuda:0 to cuda:{count - 1}" if count else "")
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def check_frame_rate(backbone: str, frame_rate: int | None) -> None:
    """25 or 50 Hz on the Whisper backbones; the audio-LLM encoders run at 25 Hz only."""
    if frame_rate is None:
        return
    if frame_rate not in (25, 50):
        raise ValueError(f"--frame-rate must be 25 or 50 (Hz), got {frame_rate}")
    if backbone not in WHISPER_BACKBONES and frame_rate != 25:
        raise ValueError(
            f"--frame-rate {frame_rate}: {backbone}'s encoder runs at 25 Hz only; the "
            "option chooses the Whisper backbones' rate (whisper-ct2, whisper-hf)"
        )


def check_beam(backbone: str, beam: int | None) -> None:
    """``--beam``: a whole number ≥ 1, for the Whisper backbones only."""
    if beam is None:
        return
    check_whole("--beam", beam)
    if backbone not in WHISPER_BACKBONES:
        raise ValueError(
            f"--beam sets the decoder beam of {' and '.join(WHISPER_BACKBONES)}; {backbone} "
            "decodes with its generation settings"
        )


def check_size_aware(backbone: str, size_aware: bool | None) -> None:
    """Size-aware attention adds a bias inside PyTorch attention; CTranslate2 takes none."""
    if size_aware and backbone == "whisper-ct2":
        raise ValueError(
            "--size-aware: whisper-ct2 runs Whisper in CTranslate2, whose attention takes no "
            "bias; use a PyTorch backbone (hf, qwen2-audio, audioflamingo3)"
        )
