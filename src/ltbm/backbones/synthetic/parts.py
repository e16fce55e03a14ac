"""The building blocks of the synthetic checkpoints: the tiny word-level tokenizer, the
encoder and text sizes (tiny and the published ones), and the feature extractor most
families share. The per-family table in :mod:`ltbm.backbones.synthetic.families` is made of
these."""

from __future__ import annotations

from typing import Any

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


def whisper_features(**kwargs):
    """The 128-bin Whisper feature extractor (30 s windows) most families use."""
    from transformers import WhisperFeatureExtractor

    settings = {"feature_size": 128, "sampling_rate": 16000, "return_attention_mask": True}
    return WhisperFeatureExtractor(**{**settings, **kwargs})
