"""Randomly initialised audio LLMs of every family ltbm adapts, built from the real
transformers classes with no download: for the efficiency benchmark (compute does not depend
on the weights) and for offline tests (``save_model(model_type, folder)``).

``full`` builds the published architectures (Qwen2-Audio-7B: Whisper-large-v3-style encoder
and a 32-layer, 4096-wide Qwen LLM with 32 KV heads; Audio Flamingo 3: the same encoder and a
Qwen2.5-7B LLM with 4 KV heads). ``tiny`` keeps every shape rule (128 mel bins, 3000 frames,
750 tokens per 30 s window) with a few small layers, so the same code runs on a laptop CPU.
The tokenizer is a small word-level one holding every special token the processors need;
token ids stay below the architecture's vocabulary, so embedding and output layers keep
their real sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<sound>",
]
EXTRA_SPECIAL_TOKENS = [
    "<|sound_bos|>",
    "<|sound_eos|>",
    "<|pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
]
"""Special tokens of the later families, after the words."""
WORDS = (
    "[UNK] system user assistant You are a helpful assistant. Audio 1: 2: Generate the caption "
    "in English: Describe sound in one sentence. Transcribe input speech dog bark music rain"
).split()


def audio_first_template(marker: str) -> str:
    """A chat template in the style of Audio Flamingo 3's processor: the audio ``marker``
    first in a user turn, then its text."""
    return (
        "{% if messages[0]['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "{% for m in messages if m['content'] is not none %}"
        "<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% set audio = namespace(found=False) %}{% set text_buf = namespace(v='') %}"
        "{% for c in m['content'] %}"
        "{% if c.get('type') == 'audio' or 'audio' in c %}{% set audio.found = True %}"
        "{% elif c.get('type') == 'text' or 'text' in c %}"
        "{% set text_buf.v = text_buf.v + c['text'] %}{% endif %}"
        "{% endfor %}"
        "{% if audio.found %}{{ '" + marker + "' }}{% endif %}{{ text_buf.v }}"
        "{% endif %}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


AF3_CHAT_TEMPLATE = audio_first_template("<sound>")

# Published architecture sizes (the checkpoints' config.json files).
FULL_ENCODER = {"layers": 32, "heads": 20, "ffn": 5120, "width": 1280}
TINY_ENCODER = {"layers": 2, "heads": 2, "ffn": 64, "width": 32}
FULL_TEXT = {
    "qwen2_audio": {
        "vocab_size": 156032,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rope_theta": 10000.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
    },
    "audioflamingo3": {
        "vocab_size": 151936,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
    },
}
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
}


def tiny_tokenizer():
    """A word-level fast tokenizer: special tokens split out, words by whitespace."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS + EXTRA_SPECIAL_TOKENS
    words = [*SPECIAL_TOKENS, *WORDS, *(f"w{i}" for i in range(64)), *EXTRA_SPECIAL_TOKENS]
    vocab: dict[str, int] = {}
    for token in words:
        vocab.setdefault(token, len(vocab))  # one id per distinct token, no gaps
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="[UNK]",
        additional_special_tokens=specials[1:],
        # Named tokens the Omni processors read from their tokenizer.
        extra_special_tokens={
            "audio_token": "<|AUDIO|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
        },
    )


def text_config(model_type: str, size: str, tokenizer) -> dict[str, Any]:
    sizes = FULL_TEXT[model_type] if size == "full" else {**TINY_TEXT, "vocab_size": len(tokenizer)}
    return {
        "model_type": "qwen2",
        **sizes,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.pad_token_id,
    }


def model_config(model_type: str, size: str, tokenizer):
    """The transformers config of a synthetic model (``size``: "full" or "tiny"; "full" only
    for the families the efficiency benchmark measures)."""
    if (
        model_type not in FAMILIES
        or size not in ("full", "tiny")
        or (size == "full" and model_type not in FULL_TEXT)
    ):
        raise ValueError(
            f"synthetic models exist for {', '.join(MODEL_TYPES)} (tiny) and "
            f"{', '.join(FULL_TEXT)} (full); got {model_type!r}, {size!r}"
        )
    return FAMILIES[model_type].config(size, tokenizer)


def processor_for(model_type: str, tokenizer):
    return FAMILIES[model_type].processor(tokenizer)


def whisper_features(**kwargs):
    """The 128-bin Whisper feature extractor (30 s windows) most families use."""
    from transformers import WhisperFeatureExtractor

    settings = {"feature_size": 128, "sampling_rate": 16000, "return_attention_mask": True}
    return WhisperFeatureExtractor(**{**settings, **kwargs})


# ---------------------------------------------------------------- Qwen2-Audio, AF3, MF
def whisper_encoder(size: str) -> dict[str, int]:
    return FULL_ENCODER if size == "full" else TINY_ENCODER


def qwen2_audio_config(size: str, tokenizer):
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig

    encoder = whisper_encoder(size)
    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=128,
        encoder_layers=encoder["layers"],
        encoder_attention_heads=encoder["heads"],
        encoder_ffn_dim=encoder["ffn"],
        d_model=encoder["width"],
        max_source_positions=1500,
    )
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

    encoder, text = TINY_ENCODER, text_config("qwen2_5_omni", size, tokenizer)
    head_dim = TINY_TEXT["hidden_size"] // TINY_TEXT["num_attention_heads"]
    sections = [head_dim // 2 - 2 * (head_dim // 6), head_dim // 6, head_dim // 6]
    text.update(
        model_type="qwen2_5_omni_text",
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": sections},
    )
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5OmniThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": encoder["layers"],
            "encoder_attention_heads": encoder["heads"],
            "encoder_ffn_dim": encoder["ffn"],
            "d_model": encoder["width"],
            "output_dim": TINY_TEXT["hidden_size"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": TINY_TEXT["hidden_size"],
            "fullatt_block_indexes": [0],
        },
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
    encoder = TINY_ENCODER
    ids = tokenizer.convert_tokens_to_ids
    return Qwen3OmniMoeThinkerConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": encoder["layers"],
            "encoder_attention_heads": encoder["heads"],
            "encoder_ffn_dim": encoder["ffn"],
            "d_model": encoder["width"],
            "output_dim": TINY_TEXT["hidden_size"],
            "downsample_hidden_size": 8,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": TINY_TEXT["hidden_size"],
            "deepstack_visual_indexes": [0],
        },
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

    encoder = TINY_ENCODER
    text = {**TINY_TEXT, "model_type": "llama", "vocab_size": 256 + VOXTRAL_SPECIAL}
    text.update(pad_token_id=11, bos_token_id=1, eos_token_id=2)
    return VoxtralConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": encoder["layers"],
            "encoder_attention_heads": encoder["heads"],
            # Also the width of 4 stacked frames (the config's intermediate_size).
            "encoder_ffn_dim": 4 * encoder["width"],
            "d_model": encoder["width"],
            "max_source_positions": 1500,
        },
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
}
MODEL_TYPES = tuple(FAMILIES)


def build_model(
    model_type: str,
    size: str = "tiny",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """(model, processor) with random weights, initialised directly on ``device``."""
    import transformers

    tokenizer = tiny_tokenizer()
    config = model_config(model_type, size, tokenizer)
    model_class = getattr(transformers, FAMILIES[model_type].model_class)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config).eval()
    finally:
        torch.set_default_dtype(previous)
    processor = processor_for(model_type, tokenizer)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.do_sample = False
    # The released checkpoints set a repetition penalty; parity must hold with it too.
    model.generation_config.repetition_penalty = 1.3
    return model, processor


def save_model(model_type: str, path: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a synthetic checkpoint (model + processor) that ``ltbm.load`` reads back."""
    model, processor = build_model(model_type, size, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if FAMILIES[model_type].extra_files is not None:
        FAMILIES[model_type].extra_files(path)
    return path
