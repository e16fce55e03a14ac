"""Each family's tiny synthetic checkpoint: its config (real transformers config classes,
tiny sizes) and its processor, in one table that :mod:`ltbm.backbones.synthetic` reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltbm.backbones.synthetic.parts import (
    AF3_CHAT_TEMPLATE,
    FULL_ENCODER,
    TINY_ENCODER,
    TINY_TEXT,
    audio_first_template,
    text_config,
    whisper_features,
)


# ---------------------------------------------------------------- Qwen2-Audio, AF3, MF
def whisper_encoder(size: str) -> dict[str, int]:
    return FULL_ENCODER if size == "full" else TINY_ENCODER


def whisper_audio_config(encoder: dict[str, int], **overrides: Any) -> dict[str, Any]:
    """An audio config in the Whisper encoder's key names (Qwen2-Audio, the Omni thinkers,
    Voxtral), 128 mel bins, sized by ``encoder``; ``overrides`` are the family's extras."""
    return {
        "num_mel_bins": 128,
        "encoder_layers": encoder["layers"],
        "encoder_attention_heads": encoder["heads"],
        "encoder_ffn_dim": encoder["ffn"],
        "d_model": encoder["width"],
        **overrides,
    }


def tiny_vision_config(**overrides: Any) -> dict[str, Any]:
    """The Omni thinkers' vision tower at its smallest: built because the config requires
    it, never run (ltbm feeds audio only)."""
    return {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_heads": 2,
        "out_hidden_size": TINY_TEXT["hidden_size"],
        **overrides,
    }


def qwen2_audio_config(size: str, tokenizer):
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig

    encoder = whisper_encoder(size)
    audio = Qwen2AudioEncoderConfig(**whisper_audio_config(encoder, max_source_positions=1500))
    return Qwen2AudioConfig(
        audio_config=audio.to_dict(),
        text_config=text_config("qwen2_audio", size, tokenizer),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )


def af3_encoder(size: str) -> dict[str, Any]:
    encoder = whisper_encoder(size)
    return {
        "model_type": "audioflamingo3_encoder",
        "num_mel_bins": 128,
        "num_hidden_layers": encoder["layers"],
        "num_attention_heads": encoder["heads"],
        "intermediate_size": encoder["ffn"],
        "hidden_size": encoder["width"],
        "max_source_positions": 1500,
    }


def audioflamingo3_config(size: str, tokenizer):
    from transformers import AudioFlamingo3Config

    return AudioFlamingo3Config(
        audio_config=af3_encoder(size),
        text_config=text_config("audioflamingo3", size, tokenizer),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"),
    )


def musicflamingo_config(size: str, tokenizer):
    from transformers import MusicFlamingoConfig

    return MusicFlamingoConfig(
        audio_config=af3_encoder(size),
        text_config=text_config("audioflamingo3", size, tokenizer),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"),
        audio_bos_token_id=tokenizer.convert_tokens_to_ids("<|sound_bos|>"),
        audio_eos_token_id=tokenizer.convert_tokens_to_ids("<|sound_eos|>"),
    )


def qwen2_audio_processor(tokenizer):
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor(feature_extractor=whisper_features(), tokenizer=tokenizer)


def audioflamingo3_processor(tokenizer):
    from transformers import AudioFlamingo3Processor

    return AudioFlamingo3Processor(
        feature_extractor=whisper_features(), tokenizer=tokenizer, chat_template=AF3_CHAT_TEMPLATE
    )


def musicflamingo_processor(tokenizer):
    from transformers import MusicFlamingoProcessor

    return MusicFlamingoProcessor(
        feature_extractor=whisper_features(), tokenizer=tokenizer, chat_template=AF3_CHAT_TEMPLATE
    )


# ---------------------------------------------------------------------------------- GLM-ASR
def glmasr_config(size: str, tokenizer):
    from transformers import GlmAsrConfig

    encoder = TINY_ENCODER
    audio = {
        "model_type": "glmasr_encoder",
        "num_mel_bins": 128,
        "num_hidden_layers": encoder["layers"],
        "num_attention_heads": encoder["heads"],
        "hidden_size": encoder["width"],
        "intermediate_size": 4 * encoder["width"],  # also the width of 4 stacked frames
        "max_position_embeddings": 1500,
    }
    text = {**text_config("glmasr", size, tokenizer), "model_type": "llama"}
    return GlmAsrConfig(
        audio_config=audio,
        text_config=text,
        audio_token_id=tokenizer.convert_tokens_to_ids("<|pad|>"),
    )


def glmasr_processor(tokenizer):
    from transformers import GlmAsrProcessor

    return GlmAsrProcessor(
        feature_extractor=whisper_features(),
        tokenizer=tokenizer,
        chat_template=audio_first_template("<|pad|>"),
    )


# ------------------------------------------------------------------------- Qwen2.5-Omni
def qwen2_5_omni_thinker_config(size: str, tokenizer):
    from transformers import Qwen2_5OmniThinkerConfig

    text = text_config("qwen2_5_omni", size, tokenizer)
    head_dim = TINY_TEXT["hidden_size"] // TINY_TEXT["num_attention_heads"]
    sections = [head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6]
    text.update(
        model_type="qwen2_5_omni_text",
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": sections},
    )
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5OmniThinkerConfig(
        audio_config=whisper_audio_config(TINY_ENCODER, output_dim=TINY_TEXT["hidden_size"]),
        vision_config=tiny_vision_config(fullatt_block_indexes=[0]),
        text_config=text,
        audio_token_index=ids("<|AUDIO|>"),
        image_token_index=ids("<|IMAGE|>"),
        video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        vision_end_token_id=ids("<|vision_eos|>"),
        user_token_id=ids("user"),
    )


def qwen2_5_omni_config(size: str, tokenizer):
    """The whole Omni model without its talker (speech output), as ltbm loads it."""
    from transformers import Qwen2_5OmniConfig

    thinker = qwen2_5_omni_thinker_config(size, tokenizer)
    return Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), enable_audio_output=False)


def qwen2_5_omni_processor(tokenizer):
    """Qwen2.5-Omni's own processor where torchvision is installed (it requires a video
    processor, even for audio); otherwise Qwen2-Audio's, which makes the same audio inputs
    (Whisper features padded to 30 s, ``feature_attention_mask``, ``<|AUDIO|>`` expanded to
    N by the same rule), so the tiny thinker still runs on a real processor's output."""
    from transformers.utils import is_torchvision_available

    template = audio_first_template("<|audio_bos|><|AUDIO|><|audio_eos|>")
    if not is_torchvision_available():
        from transformers import Qwen2AudioProcessor

        return Qwen2AudioProcessor(
            feature_extractor=whisper_features(), tokenizer=tokenizer, chat_template=template
        )
    from transformers import Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(),
        video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=whisper_features(),
        tokenizer=tokenizer,
        chat_template=template,
    )


# --------------------------------------------------------------------------- Qwen3-Omni
def qwen3_omni_moe_thinker_config(size: str, tokenizer):
    """A tiny thinker: 4 experts, 2 per token; the encoder's convolutions 8 channels wide."""
    from transformers import Qwen3OmniMoeThinkerConfig

    omni = qwen2_5_omni_thinker_config(size, tokenizer)
    text = {**omni.text_config.to_dict(), "model_type": "qwen3_omni_moe_text"}
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    ids = tokenizer.convert_tokens_to_ids
    audio = whisper_audio_config(
        TINY_ENCODER, output_dim=TINY_TEXT["hidden_size"], downsample_hidden_size=8
    )
    return Qwen3OmniMoeThinkerConfig(
        audio_config=audio,
        vision_config=tiny_vision_config(deepstack_visual_indexes=[0]),
        text_config=text,
        audio_token_id=ids("<|AUDIO|>"),
        image_token_id=ids("<|IMAGE|>"),
        video_token_id=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"),
        vision_start_token_id=ids("<|vision_bos|>"),
        user_token_id=ids("user"),
    )


def qwen3_omni_processor(tokenizer):
    """Qwen3-Omni's own processor; it needs torchvision (for its video processor), and no
    other processor counts audio tokens by its rule, so without torchvision there is none."""
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        raise ImportError(
            "Qwen3OmniMoeProcessor needs torchvision (pip install torchvision matching your "
            "torch); build the model alone with model_config('qwen3_omni_moe_thinker', ...)"
        )
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3OmniMoeProcessor

    return Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(),
        video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=whisper_features(),
        tokenizer=tokenizer,
        chat_template=audio_first_template("<|audio_bos|><|AUDIO|><|audio_eos|>"),
    )


# --------------------------------------------------------------------------------- Voxtral
VOXTRAL_SPECIAL = 64
"""Special tokens of the tiny tekken vocabulary; ``[AUDIO]`` must sit at 24, the id the
Voxtral processor hard-codes."""


def tekken_vocabulary() -> dict[str, Any]:
    """A tiny mistral-common ``tekken.json``: 256 byte tokens after the special tokens, the
    audio section Voxtral's processor needs (16 kHz, 12.5 tokens per second, 30 s chunks)."""
    import base64

    from mistral_common.tokens.tokenizers.base import SpecialTokens

    names = [token.value for token in SpecialTokens]
    audio = names.index("[AUDIO]")
    names = names[:audio] + [f"<SPECIAL_{i}>" for i in range(audio, 24)] + names[audio:]
    names += [f"<SPECIAL_{i}>" for i in range(len(names), VOXTRAL_SPECIAL)]
    return {
        "config": {
            "pattern": r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+",
            "num_vocab_tokens": 256,
            "default_vocab_size": 256 + VOXTRAL_SPECIAL,
            "default_num_special_tokens": VOXTRAL_SPECIAL,
            "version": "v7",
        },
        "vocab": [
            {"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None}
            for i in range(256)
        ],
        "special_tokens": [
            {"rank": i, "token_str": name, "is_control": True} for i, name in enumerate(names)
        ],
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "chunk_length_s": 30.0,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
        },
    }


def voxtral_config(size: str, tokenizer):
    from transformers import VoxtralConfig

    width = TINY_ENCODER["width"]
    text = {**TINY_TEXT, "model_type": "llama", "vocab_size": 256 + VOXTRAL_SPECIAL}
    text.update(pad_token_id=11, bos_token_id=1, eos_token_id=2)
    return VoxtralConfig(
        # encoder_ffn_dim is also the width of 4 stacked frames (the config's intermediate_size).
        audio_config=whisper_audio_config(
            TINY_ENCODER, encoder_ffn_dim=4 * width, max_source_positions=1500
        ),
        text_config=text,
        audio_token_id=24,
    )


def voxtral_processor(tokenizer):
    """Voxtral's processor with a mistral-common tokenizer of its own (``tokenizer``, the
    word-level one of the other families, is not used)."""
    import json
    import tempfile

    from transformers import VoxtralProcessor
    from transformers.tokenization_mistral_common import MistralCommonBackend

    # The backend reads its file again when saved, so the folder outlives this call.
    folder = tempfile.mkdtemp(prefix="ltbm-tekken-")
    (Path(folder) / "tekken.json").write_text(json.dumps(tekken_vocabulary()))
    mistral = MistralCommonBackend.from_pretrained(folder)
    return VoxtralProcessor(feature_extractor=whisper_features(), tokenizer=mistral)


def voxtral_files(folder: Path) -> None:
    """AutoProcessor must rebuild the mistral-common tokenizer, not convert its vocabulary."""
    import json

    config = {"tokenizer_class": "MistralCommonBackend"}
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config))


# --------------------------------------------------------------------------- Granite Speech
def granite_speech_config(size: str, tokenizer):
    """A tiny Granite Speech: the real conformer's 4 s attention blocks (``context_size``
    200) and 15-frame Q-Former windows, small widths, one Q-Former layer; no LoRA adapter."""
    from transformers import GraniteSpeechConfig

    encoder = TINY_ENCODER
    return GraniteSpeechConfig(
        text_config={**text_config("granite_speech", size, tokenizer), "model_type": "granite"},
        encoder_config={
            "input_dim": 160,
            "num_layers": encoder["layers"],
            "hidden_dim": encoder["width"],
            "num_heads": encoder["heads"],
            "feedforward_mult": 2,
            "output_dim": 8,
        },
        projector_config={
            "model_type": "blip_2_qformer",
            "hidden_size": encoder["width"],
            "num_hidden_layers": 1,
            "num_attention_heads": encoder["heads"],
            "intermediate_size": encoder["ffn"],
            "encoder_hidden_size": encoder["width"],
            "cross_attention_frequency": 1,
        },
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        has_lora_adapter=False,
    )


def granite_speech_processor(tokenizer):
    """Granite Speech's own processor; its feature extractor needs torchaudio."""
    from ltbm.backbones.families.granite_speech import GraniteSpeechPipeline

    GraniteSpeechPipeline.check_environment()
    from transformers import GraniteSpeechFeatureExtractor, GraniteSpeechProcessor

    return GraniteSpeechProcessor(
        audio_processor=GraniteSpeechFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=audio_first_template("<|AUDIO|>"),
    )


# ------------------------------------------------------------------------ Phi-4-multimodal
def phi4_multimodal_config(size: str, tokenizer):
    """A tiny Phi-4-multimodal: a 2-block conformer (8x time reduction, as released), a
    one-layer vision tower (built by the model, never used for audio) and a 2-layer LLM."""
    from transformers import Phi4MultimodalConfig

    ids = tokenizer.convert_tokens_to_ids
    width = TINY_ENCODER["width"]
    audio = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_blocks": TINY_ENCODER["layers"],
        "num_attention_heads": TINY_ENCODER["heads"],
        "ext_pw_out_channel": width,
        "depthwise_separable_out_channel": width,
        "nemo_conv_channels": 8,
        "audio_token_id": ids("<|AUDIO|>"),
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "crop_size": 28,
        "image_token_id": ids("<|IMAGE|>"),
    }
    text = text_config("phi4_multimodal", size, tokenizer)
    text.pop("model_type")
    return Phi4MultimodalConfig(**text, audio_config=audio, vision_config=vision)


def phi4_multimodal_processor(tokenizer):
    """Phi-4-multimodal's own processor. Its image processor needs torchvision; without it a
    plain ``BaseImageProcessor`` stands in (images are never processed here), so the audio
    path (feature extractor, ``replace_audio_token``) is the library's own."""
    from transformers import Phi4MultimodalFeatureExtractor, Phi4MultimodalProcessor
    from transformers.image_processing_utils import BaseImageProcessor
    from transformers.utils import is_torchvision_available

    images = BaseImageProcessor()
    if is_torchvision_available():
        from transformers import Phi4MultimodalImageProcessor

        images = Phi4MultimodalImageProcessor()
    return Phi4MultimodalProcessor(
        image_processor=images,
        audio_processor=Phi4MultimodalFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=audio_first_template("<|AUDIO|>"),
    )


@dataclass(frozen=True)
class Family:
    """How to build one family's synthetic checkpoint from the real transformers classes."""

    model_class: str
    config: Callable[[str, Any], Any]
    processor: Callable[[Any], Any]
    extra_files: Callable[[Path], None] | None = None
    """Writes what ``from_pretrained`` needs beside the weights and the processor."""


FAMILIES: dict[str, Family] = {
    "qwen2_audio": Family(
        "Qwen2AudioForConditionalGeneration", qwen2_audio_config, qwen2_audio_processor
    ),
    "audioflamingo3": Family(
        "AudioFlamingo3ForConditionalGeneration", audioflamingo3_config, audioflamingo3_processor
    ),
    "musicflamingo": Family(
        "MusicFlamingoForConditionalGeneration", musicflamingo_config, musicflamingo_processor
    ),
    "glmasr": Family("GlmAsrForConditionalGeneration", glmasr_config, glmasr_processor),
    "qwen2_5_omni_thinker": Family(
        "Qwen2_5OmniThinkerForConditionalGeneration",
        qwen2_5_omni_thinker_config,
        qwen2_5_omni_processor,
    ),
    "qwen3_omni_moe_thinker": Family(
        "Qwen3OmniMoeThinkerForConditionalGeneration",
        qwen3_omni_moe_thinker_config,
        qwen3_omni_processor,
    ),
    "voxtral": Family(
        "VoxtralForConditionalGeneration", voxtral_config, voxtral_processor, voxtral_files
    ),
    "qwen2_5_omni": Family(
        "Qwen2_5OmniForConditionalGeneration",
        qwen2_5_omni_config,
        qwen2_5_omni_processor,
        lambda folder: torch.save({}, Path(folder) / "spk_dict.pt"),  # no voices: no talker
    ),
    "granite_speech": Family(
        "GraniteSpeechForConditionalGeneration", granite_speech_config, granite_speech_processor
    ),
    "phi4_multimodal": Family(
        "Phi4MultimodalForCausalLM", phi4_multimodal_config, phi4_multimodal_processor
    ),
}
MODEL_TYPES = tuple(FAMILIES)
