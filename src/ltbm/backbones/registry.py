"""Backbones by name, for the command line and the evaluation harness."""

from __future__ import annotations

from ltbm.backbones.base import Backbone

BACKBONES = {
    "whisper-ct2": "Whisper through CTranslate2 (embedded default, CPU, no download); "
    "--model tiny.en (default) or base",
    "whisper-hf": "Whisper in PyTorch from the same weights (--model tiny.en or base); "
    "exposes the encoder's attention",
    "hf": "a Hugging Face ALM checkpoint or folder (--model); type read from its config",
    "qwen2-audio": "Qwen2-Audio (--model, default Qwen/Qwen2-Audio-7B-Instruct)",
    "audioflamingo3": "Audio Flamingo 3 (--model, default nvidia/audio-flamingo-3-hf)",
}
DEFAULT_MODELS = {
    "qwen2-audio": "Qwen/Qwen2-Audio-7B-Instruct",
    "audioflamingo3": "nvidia/audio-flamingo-3-hf",
}


def backbone_help() -> str:
    """The ``--backbone`` help of ``ltbm eval`` and ``ltbm sweep``: every name, and the
    Hugging Face families ``hf`` loads (every ``config.model_type`` ``ltbm.load`` reads)."""
    from ltbm.backbones.hf.loading import supported_model_types

    named = ", ".join(name for name in BACKBONES if name != "hf")
    return (
        f"{named}, or hf with --model (a checkpoint id or folder of any family ltbm.load "
        f"reads; its config's model_type is one of {', '.join(supported_model_types())})"
    )


def load_backbone(
    name: str,
    model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    frame_rate: int | None = None,
    beam_size: int | None = None,
) -> Backbone:
    """Build the named backbone. ``model`` is a checkpoint id or a local folder; for the
    Whisper backbones a shipped model's name (tiny.en, base) or a CTranslate2 folder.
    ``device``/``dtype`` are the device map and torch dtype of Hugging Face backbones,
    CTranslate2's device and compute type for whisper-ct2; ``frame_rate`` (25 or 50) is the
    Whisper backbones' token rate (the ALMs run at 25 Hz only); ``beam_size`` their decoder
    beam (default: 5 on whisper-ct2, greedy on whisper-hf)."""
    if beam_size is not None and name not in ("whisper-ct2", "whisper-hf"):
        raise ValueError(f"--beam sets the Whisper backbones' beam; {name} decodes greedily")
    beam = {} if beam_size is None else {"beam_size": beam_size}
    if name == "whisper-ct2":
        from ltbm.backbones.whisper.ct2 import WhisperCT2

        try:
            return WhisperCT2(
                model=model,
                frame_rate=frame_rate,
                device=device or "cpu",
                compute_type=dtype or "default",
                **beam,
            )
        except RuntimeError as error:  # CTranslate2 reports an unusable device or type so
            raise ValueError(
                f"whisper-ct2 cannot start on device {device or 'cpu'} with compute type "
                f"{dtype or 'default'} ({' '.join(str(error).split())}); use --device cpu "
                "or another --dtype"
            ) from None
    if name == "whisper-hf":
        from ltbm.backbones.whisper.hf import WhisperHF

        return WhisperHF.from_ct2(
            model, device=device or "cpu", dtype=dtype or "float32", frame_rate=frame_rate, **beam
        )
    if frame_rate not in (None, 25):
        raise ValueError(
            f"{name} runs its encoder at 25 Hz; frame_rate={frame_rate} is for the Whisper "
            "backbones"
        )
    if name in ("hf", *DEFAULT_MODELS):
        from ltbm.backbones.hf.loading import load

        model = model or DEFAULT_MODELS.get(name)
        if model is None:
            raise ValueError("--backbone hf needs --model (a checkpoint id or a local folder)")
        return load(model, method=None, device_map=device, torch_dtype=dtype)
    from ltbm.backbones.hf.loading import supported_model_types

    if name.replace("-", "_") in supported_model_types():
        raise ValueError(
            f"{name} is a Hugging Face family: pass --backbone hf --model <a {name} "
            "checkpoint id or folder> (the family is read from its config)"
        )
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} (hf loads every "
        f"family ltbm.load reads: {', '.join(supported_model_types())})"
    )
