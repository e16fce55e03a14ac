"""Tiny, randomly initialised Qwen2-Audio and Audio Flamingo 3 checkpoints for offline tests.

They are built from the real transformers classes (model, processor, WhisperFeatureExtractor
with 128 mel bins and 30 s windows) with a small word-level tokenizer holding every special
token the processors need, and saved with ``save_pretrained`` so tests load them back
through ``ltbm.load``, the real loading path. Only the sizes are small: the encoder still
takes 3000 mel frames and makes 750 tokens per window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
WORDS = (
    "[UNK] system user assistant You are a helpful assistant. Audio 1: 2: Generate the caption "
    "in English: Describe sound in one sentence. Transcribe input speech dog bark music rain"
).split()

# The real Audio Flamingo 3 processor template (convert_audioflamingo3_to_hf.py): the sound
# placeholder goes first in a user turn, then the text.
AF3_CHAT_TEMPLATE = (
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
    "{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}"
    "{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A word-level fast tokenizer: special tokens split out, words by whitespace."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS)}
    for index in range(64):
        vocab[f"w{index}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="[UNK]",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def _text_config(tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )


ENCODER = {
    "num_mel_bins": 128,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "d_model": 32,
    "max_source_positions": 1500,
}


def _feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, return_attention_mask=True
    )


def _finish(model, processor, tokenizer, path: Path) -> Path:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.do_sample = False
    # The released checkpoints set a repetition penalty: parity must hold with it.
    model.generation_config.repetition_penalty = 1.3
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_qwen2_audio(path: Path, seed: int = 0) -> Path:
    """Save a tiny Qwen2-Audio (Instruct-style chat template) to ``path``."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

    tokenizer = tiny_tokenizer()
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(**ENCODER).to_dict(),
        text_config=_text_config(tokenizer).to_dict(),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    processor = Qwen2AudioProcessor(feature_extractor=_feature_extractor(), tokenizer=tokenizer)
    return _finish(model, processor, tokenizer, path)


def build_audioflamingo3(path: Path, seed: int = 0) -> Path:
    """Save a tiny Audio Flamingo 3 (the real processor chat template) to ``path``."""
    from transformers import (
        AudioFlamingo3Config,
        AudioFlamingo3EncoderConfig,
        AudioFlamingo3ForConditionalGeneration,
        AudioFlamingo3Processor,
    )

    tokenizer = tiny_tokenizer()
    encoder = AudioFlamingo3EncoderConfig(
        num_mel_bins=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_size=32,
        max_source_positions=1500,
    )
    config = AudioFlamingo3Config(
        audio_config=encoder.to_dict(),
        text_config=_text_config(tokenizer).to_dict(),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"),
    )
    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(config).eval()
    processor = AudioFlamingo3Processor(
        feature_extractor=_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=AF3_CHAT_TEMPLATE,
    )
    return _finish(model, processor, tokenizer, path)


def tone(seconds: float, frequency: float = 440.0, seed: int = 0) -> np.ndarray:
    """A 16 kHz test clip: a tone with a little noise, so encoder tokens differ in time."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    signal = 0.3 * np.sin(2 * np.pi * frequency * t * (1 + 0.5 * t / max(seconds, 1e-3)))
    return (signal + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
