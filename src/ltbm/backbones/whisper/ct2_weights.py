"""Whisper in PyTorch from the CTranslate2 files ltbm already ships: read ``model.bin`` and
load it into transformers' ``WhisperForConditionalGeneration``.

The binary layout of a CTranslate2 ``model.bin`` (binary version 6, written by
``ctranslate2/specs/model_spec.py``, ``ModelSpec._serialize``; little-endian, as on every
platform CTranslate2 writes on):

    u32 binary version │ string spec name ("WhisperSpec") │ u32 spec revision (3)
    u32 variable count, then per variable:
        string name │ u8 rank │ u32 × rank shape │ u8 dtype │ u32 byte count │ bytes
    u32 alias count, then per alias: string alias │ string name it stands for

where a string is ``u16 length (with the terminating NUL) │ UTF-8 bytes │ NUL`` and the dtype
is the index in ``(float32, int8, int16, int32, float16, bfloat16)`` (CTranslate2's
``DataType`` enum). Scalars (rank 0) carry settings: ``num_heads``, ``pre_norm``,
``activation``... The Whisper models ltbm uses store float16 weights; CTranslate2 computes
in float32 on CPU, and so does the converted model here (the same values, widened).

Each variable maps to one transformers parameter (:func:`hf_state_dict`); CTranslate2's
converter (``converters/transformers.py``, ``WhisperLoader`` / ``BartLoader``) fused three of
them, which are split back here:

* ``*/self_attention/linear_0`` = q, k, v stacked (rows ``[q; k; v]``), the k rows of the
  bias zero: transformers' ``k_proj`` has no bias. A bias on the keys would add the same
  ``q·b`` to every logit of a query, which softmax ignores, so dropping it changes nothing;
* ``decoder/layer_i/attention/linear_1`` = the cross-attention's k, v stacked
  (``linear_0`` is its q, ``linear_2`` its output);
* ``decoder/projection/weight`` is an alias of ``decoder/embeddings/weight``: the output
  layer is tied to the token embedding, as in transformers.

Positions: the encoder's sinusoids and the decoder's learned positions are both stored
(``position_encodings/encodings``) and loaded as stored, not recomputed, so the model sees
exactly the float16-rounded sinusoids CTranslate2 uses.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

BINARY_VERSION = 6
SPEC_NAME = "WhisperSpec"
SPEC_REVISION = 3
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
"""CTranslate2's ``DataType`` enum order: the dtype byte of each variable indexes it."""
GELU = 3
"""``common_spec.Activation.GELU``: Whisper's decoder activation."""
EXPECTED_SETTINGS = {
    "decoder/activation": GELU,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
"""Scalar settings the transformers Whisper classes hard-code; a file with others is refused."""


class CT2FormatError(ValueError):
    """A ``model.bin`` that is not a CTranslate2 Whisper model this module can convert."""


@dataclass
class CT2Model:
    """The contents of a CTranslate2 ``model.bin``: spec name and revision, every variable as
    a tensor (scalars as 0-d tensors) and the aliases (alias → the variable it stands for)."""

    version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]

    def get(self, name: str) -> torch.Tensor:
        """A variable by name, following an alias."""
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int:
        return int(self.get(name).item())


class _Cursor:
    """Reads little-endian fields from the bytes of a model file, naming the file when it
    ends too early (a cut download)."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.path, self.pos = data, path, 0

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        self._need(size)
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.unpack("H")
        self._need(length)
        raw = bytes(self.data[self.pos : self.pos + length])
        self.pos += length
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"{self.path}: a name is not NUL-terminated at byte {self.pos}")
        return raw[:-1].decode("utf-8")

    def take(self, size: int) -> memoryview:
        self._need(size)
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def _need(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise CT2FormatError(
                f"{self.path} ends at byte {len(self.data)} in the middle of a field at byte "
                f"{self.pos}: the file is cut short; install or assemble the model again"
            )


def read_model_bin(path: str | Path) -> CT2Model:
    """Every variable of a CTranslate2 ``model.bin`` (binary version 6), as torch tensors."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    cursor = _Cursor(data, path)
    version = cursor.unpack("I")
    if version != BINARY_VERSION:
        raise CT2FormatError(
            f"{path} has CTranslate2 binary version {version}; ltbm reads version "
            f"{BINARY_VERSION} (CTranslate2 ≥ 3): convert the model again with a current "
            "ct2-transformers-converter"
        )
    spec = cursor.string()
    revision = cursor.unpack("I")
    variables = {}
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        shape = [cursor.unpack("I") for _ in range(cursor.unpack("B"))]
        dtype_id = cursor.unpack("B")
        if dtype_id >= len(DTYPES):
            raise CT2FormatError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
        variables[name] = _tensor(cursor.take(cursor.unpack("I")), DTYPES[dtype_id], shape, name)
    aliases = {}
    for _ in range(cursor.unpack("I")):
        alias = cursor.string()
        aliases[alias] = cursor.string()
    if cursor.pos != len(data):
        raise CT2FormatError(f"{path} has {len(data) - cursor.pos} bytes after its last field")
    return CT2Model(version, spec, revision, variables, aliases)


def _tensor(raw: memoryview, dtype: str, shape: list[int], name: str) -> torch.Tensor:
    torch_dtype = getattr(torch, dtype)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * torch_dtype.itemsize != len(raw):
        raise CT2FormatError(
            f"variable {name}: {len(raw)} bytes for shape {shape} of {dtype}; the file is damaged"
        )
    if dtype == "bfloat16":  # numpy has no bfloat16: read the bits, then view them
        array = np.frombuffer(raw, dtype=np.uint16).copy()
        return torch.from_numpy(array).view(torch.bfloat16).reshape(shape)
    return torch.from_numpy(np.frombuffer(raw, dtype=dtype).copy()).reshape(shape)


# ------------------------------------------------------------------------- name mapping
def layer_count(model: CT2Model, stack: str) -> int:
    """Layers of the encoder or decoder: the highest ``{stack}/layer_i`` plus one."""
    found = {
        int(m.group(1))
        for name in model.variables
        if (m := re.match(rf"{stack}/layer_(\d+)/", name))
    }
    return max(found) + 1 if found else 0


def check_whisper(model: CT2Model, path: Path | str = "model.bin") -> None:
    """Refuse a file that is not a float Whisper model with the settings transformers hard-codes."""
    if model.spec != SPEC_NAME:
        raise CT2FormatError(f"{path} holds a {model.spec}, not a {SPEC_NAME}")
    if model.revision != SPEC_REVISION:
        raise CT2FormatError(
            f"{path} has {SPEC_NAME} revision {model.revision}; ltbm maps revision "
            f"{SPEC_REVISION}: convert the model again with a current ct2-transformers-converter"
        )
    quantized = sorted(n for n in model.variables if n.endswith("weight_scale"))
    if quantized:
        raise CT2FormatError(
            f"{path} is quantized ({quantized[0]}, ...); convert the model with "
            "--quantization float16 or float32 to load it into PyTorch"
        )
    for name, expected in EXPECTED_SETTINGS.items():
        if name in model.variables and model.scalar(name) != expected:
            raise CT2FormatError(
                f"{path}: {name} = {model.scalar(name)}, but Whisper's transformers classes "
                f"assume {expected}"
            )


def hf_state_dict(model: CT2Model) -> dict[str, torch.Tensor]:
    """Every transformers parameter of ``WhisperForConditionalGeneration`` from the CTranslate2
    variables, as float32 (``proj_out.weight`` is tied to the token embedding by the model)."""
    out: dict[str, torch.Tensor] = {}
    get = model.get

    def linear(target: str, source: str, bias: bool = True) -> None:
        out[f"{target}.weight"] = get(f"{source}/weight")
        if bias:
            out[f"{target}.bias"] = get(f"{source}/bias")

    def norm(target: str, source: str) -> None:
        out[f"{target}.weight"] = get(f"{source}/gamma")
        out[f"{target}.bias"] = get(f"{source}/beta")

    def fused(target: str, source: str, parts: tuple[str, ...]) -> None:
        """Split a stacked projection; the k part's bias is dropped (see the module doc)."""
        weights = get(f"{source}/weight").chunk(len(parts))
        biases = get(f"{source}/bias").chunk(len(parts))
        for part, weight, bias in zip(parts, weights, biases, strict=True):
            out[f"{target}.{part}_proj.weight"] = weight
            if part != "k":
                out[f"{target}.{part}_proj.bias"] = bias

    for stack in ("encoder", "decoder"):
        prefix = f"model.{stack}"
        out[f"{prefix}.embed_positions.weight"] = get(f"{stack}/position_encodings/encodings")
        norm(f"{prefix}.layer_norm", f"{stack}/layer_norm")
        for i in range(layer_count(model, stack)):
            src, dst = f"{stack}/layer_{i}", f"{prefix}.layers.{i}"
            fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q", "k", "v"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if stack == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k", "v"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    out["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    return {name: value.float().contiguous() for name, value in out.items()}


# ------------------------------------------------------------------------ configuration
def read_vocabulary(model_dir: Path) -> list[str]:
    """The model's tokens, one per line of ``vocabulary.txt`` (timestamps included)."""
    lines = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def whisper_config(model: CT2Model, ct2_config: dict[str, Any], vocabulary: list[str]) -> Any:
    """transformers' ``WhisperConfig`` from the shapes and scalars of the weights, the token
    ids of the vocabulary and the suppression lists of CTranslate2's ``config.json``."""
    from transformers import WhisperConfig

    conv1 = model.get("encoder/conv1/weight")
    embeddings = model.get("decoder/embeddings/weight")
    if len(vocabulary) != embeddings.shape[0]:
        raise CT2FormatError(
            f"vocabulary.txt has {len(vocabulary)} tokens but the embedding has "
            f"{embeddings.shape[0]} rows: the model folder mixes files of two models"
        )
    end = vocabulary.index("<|endoftext|>")
    return WhisperConfig(
        vocab_size=embeddings.shape[0],
        num_mel_bins=conv1.shape[1],
        d_model=conv1.shape[0],
        encoder_layers=layer_count(model, "encoder"),
        decoder_layers=layer_count(model, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads"),
        decoder_attention_heads=model.scalar("decoder/num_heads"),
        encoder_ffn_dim=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=model.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=model.get("decoder/position_encodings/encodings").shape[0],
        decoder_start_token_id=vocabulary.index("<|startoftranscript|>"),
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        tie_word_embeddings=True,
        scale_embedding=False,
        activation_function="gelu",
    )


def generation_config(config: Any, ct2_config: dict[str, Any], vocabulary: list[str]) -> Any:
    """The generation settings CTranslate2 applies by default: the same suppressed tokens (at
    every step, and at the first step), the no-timestamps token and, for a multilingual model,
    the language and task tokens that ``generate(language=..., task=...)`` looks up."""
    from transformers import GenerationConfig

    index = {token: i for i, token in enumerate(vocabulary)}
    languages = {vocabulary[i]: i for i in ct2_config.get("lang_ids") or []}
    multilingual = "<|transcribe|>" in index and len(languages) > 1 and "<|en|>" in languages
    settings: dict[str, Any] = {
        "decoder_start_token_id": config.decoder_start_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "suppress_tokens": list(config.suppress_tokens),
        "begin_suppress_tokens": list(config.begin_suppress_tokens),
        "no_timestamps_token_id": index["<|notimestamps|>"],
        "max_length": config.max_target_positions,
        "is_multilingual": multilingual,
        "alignment_heads": ct2_config.get("alignment_heads"),
    }
    if multilingual:
        settings["lang_to_id"] = languages
        settings["task_to_id"] = {"transcribe": index["<|transcribe|>"]}
        if "<|translate|>" in index:
            settings["task_to_id"]["translate"] = index["<|translate|>"]
    return GenerationConfig(**settings)


def load_whisper(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """``WhisperForConditionalGeneration`` with the weights of a CTranslate2 Whisper folder
    (``model.bin``, ``config.json``, ``vocabulary.txt``), in eval mode on the CPU.

    The model is built on the meta device and the converted tensors are assigned to it, so
    nothing is initialised twice and the stored positions are kept as stored. Every parameter
    must be covered, and no variable left over, or the conversion is refused."""
    from transformers import WhisperForConditionalGeneration

    model_dir = Path(model_dir)
    ct2 = read_model_bin(model_dir / "model.bin")
    check_whisper(ct2, model_dir / "model.bin")
    ct2_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    vocabulary = read_vocabulary(model_dir)
    config = whisper_config(ct2, ct2_config, vocabulary)
    config._attn_implementation = "sdpa"
    state = hf_state_dict(ct2)
    check_coverage(ct2, state)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise CT2FormatError(f"{model_dir}: no CTranslate2 variable for {missing[:3]}")
    model.generation_config = generation_config(config, ct2_config, vocabulary)
    return model.to(dtype).eval()


def check_coverage(model: CT2Model, state: dict[str, torch.Tensor]) -> None:
    """Every weight variable of the file went somewhere: a variable the mapping does not know
    (a newer spec, another architecture) would otherwise be dropped silently."""
    settings = {name for name, value in model.variables.items() if value.dim() == 0}
    left = sorted(set(model.variables) - settings - _mapped_sources(model))
    if left:
        raise CT2FormatError(
            f"the CTranslate2 file has variables ltbm does not map to transformers: {left[:5]}"
        )
    if not state:
        raise CT2FormatError("the CTranslate2 file holds no weights")


def _mapped_sources(model: CT2Model) -> set[str]:
    """The non-scalar variable names :func:`hf_state_dict` reads."""
    names = {
        "encoder/conv1/weight",
        "encoder/conv1/bias",
        "encoder/conv2/weight",
        "encoder/conv2/bias",
        "decoder/embeddings/weight",
    }
    for stack in ("encoder", "decoder"):
        names |= {f"{stack}/position_encodings/encodings"}
        names |= {f"{stack}/layer_norm/gamma", f"{stack}/layer_norm/beta"}
        blocks = ["self_attention/linear_0", "self_attention/linear_1", "ffn/linear_0"]
        blocks += ["ffn/linear_1"]
        norms = ["self_attention/layer_norm", "ffn/layer_norm"]
        if stack == "decoder":
            blocks += ["attention/linear_0", "attention/linear_1", "attention/linear_2"]
            norms += ["attention/layer_norm"]
        for i in range(layer_count(model, stack)):
            for block in blocks:
                names |= {f"{stack}/layer_{i}/{block}/weight", f"{stack}/layer_{i}/{block}/bias"}
            for norm in norms:
                names |= {f"{stack}/layer_{i}/{norm}/gamma", f"{stack}/layer_{i}/{norm}/beta"}
    return names
