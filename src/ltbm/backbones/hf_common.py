"""What the Hugging Face backbones share: audio in, compressed audio embeddings out.

Qwen2-Audio and Audio Flamingo 3 have the same shape: a Whisper-style encoder (AvgPool and
LayerNorm at the end), a projector, and an LLM whose prompt holds one run of placeholder
tokens per clip. ltbm compresses between the encoder and the projector, so every piece
here works on three things the two models expose the same way: the encoder
(``audio_tower``), the projector (``multi_modal_projector``) and the text embedding layer.

The pipeline never patches transformers: it runs the encoder, compresses, projects, and
hands the LLM ``inputs_embeds`` with exactly K placeholders per clip, K from
:func:`ltbm.kept_tokens`. The drop-in context manager (:mod:`ltbm.backbones.dropin`)
reuses the same functions inside a forward pre-hook.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ltbm.audio import SAMPLE_RATE, AudioError, duration_seconds, is_silent, load_audio
from ltbm.backbones.base import Generation
from ltbm.budget import kept_tokens
from ltbm.methods import Method

AudioSource = str | Path | np.ndarray | torch.Tensor | tuple[np.ndarray, int]
"""A clip: a file path (any rate, read and resampled), mono samples at 16 kHz, or a
``(samples, sample_rate)`` pair at any rate (resampled)."""

ChatMessages = list[dict[str, Any]]
Prompt = str | ChatMessages | None
"""A plain string (wrapped in the chat template unless it already holds the audio
placeholder), chat messages with one ``{"type": "audio"}`` item, or None (audio only)."""

DEFAULT = object()
"""Sentinel for "the pipeline's bound method" in :meth:`HFPipeline.generate`."""


# --------------------------------------------------------------------------- token counts
def encoder_token_count(mel_frames: torch.Tensor) -> torch.Tensor:
    """Encoder tokens made from ``mel_frames`` valid mel frames: conv2 (stride 2), then the
    AvgPool (2). The same rule as the processors of both models, written out so that the
    adapters do not call a private transformers method."""
    frames = (mel_frames - 1) // 2 + 1
    return ((frames - 2) // 2 + 1).clamp(min=0)


def budget(lengths: Sequence[int], method: Method | None) -> list[int]:
    """K per clip: the one budget rule, or N itself without compression."""
    if method is None:
        return [int(n) for n in lengths]
    return [kept_tokens(int(n), method.keep_ratio) for n in lengths]


# ------------------------------------------------------------------------ attention capture
class AttentionCapture:
    """Records the queries and keys that an encoder self-attention layer computes.

    Forward hooks on the layer's own ``q_proj`` and ``k_proj`` see exactly what the layer
    feeds its attention kernel (before the query scaling, which the prune scorer applies
    itself), so the model keeps SDPA or FlashAttention: no eager attention, no attention
    matrix from the model. Used only when the method asks for attention.
    """

    def __init__(self, attention: nn.Module) -> None:
        for name in ("q_proj", "k_proj"):
            if not isinstance(getattr(attention, name, None), nn.Module):
                raise RuntimeError(
                    f"the encoder's last attention layer ({type(attention).__name__}) has no "
                    f"`{name}` module, so its queries and keys cannot be captured; use "
                    "prune with scorer='norm'"
                )
        self.attention = attention
        self.num_heads = int(attention.num_heads)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> AttentionCapture:
        for name in ("q_proj", "k_proj"):
            module = getattr(self.attention, name)
            self._handles.append(module.register_forward_hook(self._recorder(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, name: str):
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.outputs[name] = output.detach()

        return record

    def queries_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, heads, frames, head_dim]`` queries and keys of the last forward."""
        if set(self.outputs) != {"q_proj", "k_proj"}:
            raise RuntimeError(
                "the encoder ran but its last layer's q_proj/k_proj were not called; this "
                "transformers version computes attention differently: use scorer='norm'"
            )
        return self._heads(self.outputs["q_proj"]), self._heads(self.outputs["k_proj"])

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, width = x.shape
        return x.view(batch, frames, self.num_heads, width // self.num_heads).transpose(1, 2)


def last_attention(tower: nn.Module) -> nn.Module:
    """The self-attention module of the encoder's last layer."""
    try:
        return tower.layers[-1].self_attn
    except (AttributeError, IndexError, TypeError):
        raise RuntimeError(
            f"cannot find the last self-attention layer of {type(tower).__name__} "
            "(expected `layers[-1].self_attn`); use prune with scorer='norm'"
        ) from None


def needs_attention(method: Method | None) -> bool:
    return bool(getattr(method, "needs_attention", False)) if method is not None else False


# --------------------------------------------------------------------------- compression
@dataclass
class EncodedAudio:
    """Encoder-space tokens of a batch of clips: ``tokens [C, N_max, D]`` (after the encoder's
    AvgPool and LayerNorm, before the projector), ``lengths [C]`` valid tokens per clip, and
    the signals a method may use (``queries``/``keys`` or ``scores``)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    signals: dict[str, torch.Tensor] = field(default_factory=dict)


def compress_tokens(method: Method | None, encoded: EncodedAudio) -> tuple[torch.Tensor, list[int]]:
    """Run the method on the encoder tokens; return ``[C, K_max, D]`` and K per clip.

    The budget is checked here, not trusted: the placeholder counts were fixed by the same
    rule before the encoder ran, so a method that returns another K would shift every
    token after it."""
    lengths = encoded.lengths.tolist()
    if method is None:
        return encoded.tokens, lengths
    with torch.no_grad():
        result = method(encoded.tokens, encoded.lengths, **encoded.signals)
    expected = budget(lengths, method)
    got = result.lengths.tolist()
    if got != expected:
        raise RuntimeError(
            f"method {method!r} returned {got} tokens per clip but the budget rule "
            f"kept_tokens(N, {method.keep_ratio}) gives {expected} for N = {lengths}; every "
            "method must return exactly K tokens per clip"
        )
    return result.tokens, got


def valid_rows(x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Rows ``x[c, :lengths[c]]`` of every clip, concatenated in clip order: ``[sum, H]``."""
    width = x.shape[1]
    counts = torch.as_tensor(list(lengths), device=x.device)
    mask = torch.arange(width, device=x.device)[None, :] < counts[:, None]
    return x[mask]


def pad_clips(clips: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``[n_c, ...]`` tensors into ``[C, max n_c, ...]``, zero-padded at the end."""
    width = max((c.shape[0] for c in clips), default=0)
    out = clips[0].new_zeros((len(clips), width, *clips[0].shape[1:]))
    for index, clip in enumerate(clips):
        out[index, : clip.shape[0]] = clip
    return out


# ---------------------------------------------------------------------------- placeholders
def placeholder_runs(ids: Sequence[int], token_id: int) -> list[tuple[int, int]]:
    """``(start, length)`` of every run of ``token_id`` in one row of ids."""
    runs: list[tuple[int, int]] = []
    start = None
    for position, token in enumerate([*ids, None]):
        if token == token_id and start is None:
            start = position
        elif token != token_id and start is not None:
            runs.append((start, position - start))
            start = None
    return runs


def unpadded_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """The real (unpadded) ids of every row, whichever side the padding is on."""
    return [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]


def clip_runs(input_ids: torch.Tensor, attention_mask: torch.Tensor, token_id: int) -> list[int]:
    """Length of every placeholder run, in clip order (row by row, left to right)."""
    return [
        length
        for row in unpadded_rows(input_ids, attention_mask)
        for _, length in placeholder_runs(row, token_id)
    ]


def resize_placeholder_runs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_id: int,
    counts: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite every clip's run of placeholders to ``counts[c]`` copies, and left-pad.

    Left padding is what batched generation needs: every row's last real token sits at the
    end, where the first new token is predicted."""
    rows: list[list[int]] = []
    clip = 0
    for ids in unpadded_rows(input_ids, attention_mask):
        new: list[int] = []
        position = 0
        for start, length in placeholder_runs(ids, token_id):
            new += ids[position:start] + [token_id] * counts[clip]
            position = start + length
            clip += 1
        rows.append(new + ids[position:])
    if clip != len(counts):
        raise RuntimeError(f"found {clip} placeholder runs for {len(counts)} clips")
    width = max(len(r) for r in rows)
    ids_out = torch.full((len(rows), width), pad_id, dtype=input_ids.dtype)
    mask_out = torch.zeros((len(rows), width), dtype=attention_mask.dtype)
    for index, row in enumerate(rows):
        if row:
            ids_out[index, width - len(row) :] = torch.tensor(row, dtype=input_ids.dtype)
            mask_out[index, width - len(row) :] = 1
    return ids_out, mask_out


def merge_audio_embeddings(
    embedding: nn.Module, input_ids: torch.Tensor, token_id: int, audio: torch.Tensor
) -> torch.Tensor:
    """Text embeddings of ``input_ids`` with the placeholder positions replaced, in order, by
    the rows of ``audio [sum K, H]``: the same ``masked_scatter`` both models use."""
    input_ids = input_ids.to(embedding.weight.device)
    embeds = embedding(input_ids)
    mask = (input_ids == token_id).unsqueeze(-1)
    placeholders = int(mask.sum())
    if placeholders != audio.shape[0]:
        raise ValueError(
            f"the prompts hold {placeholders} audio placeholders but the compressed audio has "
            f"{audio.shape[0]} tokens"
        )
    return embeds.masked_scatter(mask, audio.to(embeds.device, embeds.dtype))


def inner_model(model: nn.Module) -> nn.Module:
    """The module that owns ``audio_tower`` and ``multi_modal_projector`` (``model.model`` for
    the ``...ForConditionalGeneration`` classes of transformers 5)."""
    for candidate in (model, getattr(model, "model", None)):
        if candidate is not None and hasattr(candidate, "audio_tower"):
            if hasattr(candidate, "multi_modal_projector"):
                return candidate
    raise TypeError(
        f"{type(model).__name__} has no audio_tower/multi_modal_projector; ltbm supports "
        "Qwen2AudioForConditionalGeneration and AudioFlamingo3ForConditionalGeneration"
    )


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


# --------------------------------------------------------------------------------- adapter
class AudioAdapter:
    """How one model family turns processor outputs into encoder-space tokens.

    Subclasses set the keys of the processor outputs and implement :meth:`encode`; all the
    rest (compression, projection, placeholders) is shared."""

    model_type: ClassVar[str]
    features_key: ClassVar[str] = "input_features"
    mask_key: ClassVar[str]

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.inner = inner_model(model)
        self.tower = self.inner.audio_tower
        self.projector = self.inner.multi_modal_projector
        self.audio_token_id = int(model.config.audio_token_id)

    def encode(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
        attention: bool,
    ) -> EncodedAudio:
        """Encoder tokens per clip. ``features``/``frame_mask`` hold one row per 30 s window;
        ``windows`` says how many consecutive rows make each clip."""
        raise NotImplementedError

    def clip_windows(
        self, window_tokens: Sequence[int], placeholders: Sequence[int], method: Method | None
    ) -> list[int]:
        """How many consecutive window rows make each clip, given each window's tokens and
        each clip's placeholder count (drop-in use, where only the tensors are seen). One
        window per clip unless a subclass says otherwise."""
        if len(window_tokens) != len(placeholders):
            raise ValueError(
                f"the prompts hold {len(placeholders)} audio placeholder runs but "
                f"{len(window_tokens)} clips of features were given"
            )
        return [1] * len(placeholders)

    def window_tokens(self, frame_mask: torch.Tensor) -> list[int]:
        """Encoder tokens of each window row, from its valid mel frames."""
        return encoder_token_count(frame_mask.sum(-1).long()).tolist()

    def audio_embeddings(
        self,
        method: Method | None,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
    ) -> tuple[torch.Tensor, list[int], list[int]]:
        """Encoder → method → projector. Returns the projected rows of every clip in clip
        order ``[sum K, H]``, N per clip and K per clip."""
        with torch.no_grad():
            encoded = self.encode(features, frame_mask, windows, needs_attention(method))
            tokens, kept = compress_tokens(method, encoded)
            # With a device_map the projector may sit on another device than the encoder.
            device, dtype = module_device_dtype(self.projector)
            projected = self.projector(tokens.to(device, dtype))
        return valid_rows(projected, kept), encoded.lengths.tolist(), kept


# -------------------------------------------------------------------------------- pipeline
@dataclass
class PreparedBatch:
    """What the LLM receives for a batch: ``inputs_embeds [B, T, H]`` and ``attention_mask``
    (left padded), the ``input_ids`` they stand for (K placeholders per clip), and N and K per
    clip. Useful to run a forward pass or time a prefill without generating."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    input_ids: torch.Tensor
    audio_tokens: list[int]
    kept_tokens: list[int]
    extra: list[dict[str, Any]]


class HFPipeline:
    """A transformers audio-language model with a compression method bound to it.

    ``generate(audios, prompts)`` loads the audio, renders the prompts, runs the processor,
    the encoder, the method and the projector, and generates from ``inputs_embeds`` with
    exactly K audio tokens per clip. Subclasses say how their encoder is called and how long
    a clip may be.
    """

    name: ClassVar[str]
    adapter_class: ClassVar[type[AudioAdapter]]

    def __init__(self, model: nn.Module, processor: Any, method: Method | None = None) -> None:
        model_type = getattr(model.config, "model_type", None)
        if model_type != self.adapter_class.model_type:
            raise TypeError(
                f"{type(self).__name__} needs a {self.adapter_class.model_type!r} model, got "
                f"model_type {model_type!r}; use ltbm.load(...) to pick the pipeline"
            )
        self.model = model.eval()
        self.processor = processor
        self.method = method
        self.adapter = self.adapter_class(model)
        self.tokenizer = processor.tokenizer
        self.audio_token: str = processor.audio_token
        self._check_audio_token()

    def _check_audio_token(self) -> None:
        token_id = self.tokenizer.convert_tokens_to_ids(self.audio_token)
        if token_id != self.adapter.audio_token_id:
            raise ValueError(
                f"the tokenizer maps {self.audio_token!r} to id {token_id} but the model expects "
                f"audio at id {self.adapter.audio_token_id}: model and processor do not match"
            )

    # ------------------------------------------------------------------ public
    def generate(
        self,
        audios: AudioSource | Sequence[AudioSource],
        prompts: Prompt | Sequence[Prompt] = None,
        method: Method | None | object = DEFAULT,
        max_new_tokens: int = 128,
        batch_size: int | None = None,
        **generate_kwargs: Any,
    ) -> list[Generation]:
        """Generate one text per clip.

        ``prompts`` has one entry per clip (a single prompt is used for every clip);
        ``method`` overrides the bound method for this call (None: no compression).
        Decoding is greedy unless ``generate_kwargs`` say otherwise (``do_sample=True``),
        so results are reproducible whatever the checkpoint's generation config says.
        Clips are processed ``batch_size`` at a time (default: all in one batch).
        """
        clips, prompt_list = self._pair(audios, prompts)
        size = batch_size or len(clips)
        results: list[Generation] = []
        for start in range(0, len(clips), size):
            batch = self.prepare(
                clips[start : start + size], prompt_list[start : start + size], method
            )
            results += self._generate_batch(batch, max_new_tokens, generate_kwargs)
        return results

    def prepare(
        self,
        audios: AudioSource | Sequence[AudioSource],
        prompts: Prompt | Sequence[Prompt] = None,
        method: Method | None | object = DEFAULT,
    ) -> PreparedBatch:
        """Everything up to the LLM: the inputs_embeds with K audio tokens per clip."""
        method = self._resolve_method(method)
        inputs, samples, windows = self.encoder_inputs(audios, prompts)
        features, frame_mask = inputs[self.adapter.features_key], inputs[self.adapter.mask_key]
        audio, lengths, kept = self.adapter.audio_embeddings(method, features, frame_mask, windows)
        self._check_processor_agrees(inputs, lengths)
        token_id = self.adapter.audio_token_id
        input_ids, attention_mask = resize_placeholder_runs(
            inputs["input_ids"], inputs["attention_mask"], token_id, kept, self._pad_id()
        )
        embeds = merge_audio_embeddings(
            self.model.get_input_embeddings(), input_ids, token_id, audio
        )
        extra = [
            {"duration_s": round(duration_seconds(s), 3), "silent": is_silent(s), "windows": w}
            for s, w in zip(samples, windows, strict=True)
        ]
        return PreparedBatch(
            embeds, attention_mask.to(embeds.device), input_ids, lengths, kept, extra
        )

    def encoder_inputs(
        self,
        audios: AudioSource | Sequence[AudioSource],
        prompts: Prompt | Sequence[Prompt] = None,
    ) -> tuple[Any, list[np.ndarray], list[int]]:
        """The processor's outputs (one placeholder run of N per clip, mel windows), the
        loaded 16 kHz samples and the windows per clip: everything the encoder step takes.
        ``prepare`` starts here; the efficiency benchmark times the encoder from here."""
        clips, prompt_list = self._pair(audios, prompts)
        samples = [self._load(index, clip) for index, clip in enumerate(clips)]
        texts = [self._render(index, prompt) for index, prompt in enumerate(prompt_list)]
        inputs = self._process(texts, samples)
        windows = self.windows(samples)
        self._check_not_too_short(samples, windows, inputs[self.adapter.mask_key])
        return inputs, samples, windows

    def describe(self) -> dict[str, Any]:
        """Model, dtype, device, attention kernel, versions and method: written into results."""
        import transformers

        device, dtype = module_device_dtype(self.model)
        return {
            "backbone": self.name,
            "model": getattr(self.model.config, "_name_or_path", None) or None,
            "model_type": self.model.config.model_type,
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "method": self.method.params() if self.method is not None else None,
            "max_audio_seconds": self.max_seconds(),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }

    def to(self, device: str | torch.device) -> HFPipeline:
        """Move the model (not sharded with device_map) to ``device``."""
        self.model.to(device)
        return self

    # --------------------------------------------------------------- per model
    def max_seconds(self) -> float:
        """Longest clip the model takes, in seconds."""
        raise NotImplementedError

    def windows(self, samples: Sequence[np.ndarray]) -> list[int]:
        """How many 30 s processor windows each clip becomes."""
        return [1] * len(samples)

    def fallback_prompt(self, text: str) -> str:
        """The prompt for processors without a chat template: placeholder, then text."""
        return f"{self.audio_token}{text}"

    # ------------------------------------------------------------------ steps
    def _resolve_method(self, method: Method | None | object) -> Method | None:
        method = self.method if method is DEFAULT else method
        if method is not None and not isinstance(method, Method):
            raise TypeError(
                f"method must be an ltbm Method or None, got {type(method).__name__}; build "
                "one with ltbm.get_method(name, keep_ratio=..., ...)"
            )
        return method

    def _process(self, texts: list[str], samples: list[np.ndarray]) -> Any:
        """The processor's own outputs (one placeholder run of N per clip, mel windows)."""
        return self.processor(
            text=texts,
            audio=samples,
            return_tensors="pt",
            # Modality-specific: a flat `padding` would also reach the feature extractor,
            # whose windows must stay padded to 30 s.
            text_kwargs={"padding": True},
            audio_kwargs={"sampling_rate": SAMPLE_RATE},
        )

    def _pair(
        self, audios: AudioSource | Sequence[AudioSource], prompts: Prompt | Sequence[Prompt]
    ) -> tuple[list[AudioSource], list[Prompt]]:
        """One prompt per clip: a single prompt (or None) applies to every clip. A 1-D array
        is one clip; a 2-D array is a batch of equal-length clips, one per row (pass
        multi-channel audio inside a list)."""
        clips = [audios] if _is_single_clip(audios) else list(audios)
        if not clips:
            raise ValueError("no audio given: pass one clip or a list of clips")
        if prompts is None or isinstance(prompts, str) or _is_chat(prompts):
            return clips, [prompts] * len(clips)
        prompt_list = list(prompts)
        if len(prompt_list) != len(clips):
            raise ValueError(
                f"got {_count(len(clips), 'audio clip')} but {_count(len(prompt_list), 'prompt')}"
                "; pass one prompt per clip, or a single prompt (a string) for every clip"
            )
        return clips, prompt_list

    def _load(self, index: int, clip: AudioSource) -> np.ndarray:
        """16 kHz mono float32 samples, refused when empty or longer than the model takes."""
        rate = SAMPLE_RATE
        if _is_rated_clip(clip):
            clip, rate = clip
        if isinstance(clip, torch.Tensor):
            clip = clip.detach().cpu().float().numpy()
        try:
            samples = (
                load_audio(clip)
                if isinstance(clip, (str, Path))
                else load_audio(clip, sample_rate=int(rate))
            )
        except AudioError as error:
            raise AudioError(f"clip {index}: {error}") from None
        limit = self.max_seconds()
        seconds = duration_seconds(samples)
        if seconds > limit:
            raise AudioError(
                f"clip {index} lasts {seconds:.1f} s but {self.name} takes at most "
                f"{limit:g} s per clip; {self._too_long_hint()}"
            )
        return samples

    def _too_long_hint(self) -> str:
        return "split it into shorter clips"

    def _render(self, index: int, prompt: Prompt) -> str:
        """Prompt text with exactly one audio placeholder."""
        if isinstance(prompt, str) and self.audio_token in prompt:
            text = prompt  # a raw prompt, written for the model (e.g. a base checkpoint)
        elif prompt is None or isinstance(prompt, str):
            content: list[dict[str, Any]] = [{"type": "audio"}]
            if prompt:
                content.append({"type": "text", "text": prompt})
            messages = [{"role": "user", "content": content}]
            if getattr(self.processor, "chat_template", None) is None:
                text = self.fallback_prompt(prompt or "")
            else:
                text = self._apply_template(messages)
        elif _is_chat(prompt):
            if getattr(self.processor, "chat_template", None) is None:
                raise ValueError(
                    f"prompt {index} is a chat, but the processor has no chat template; pass "
                    f"a plain string with one {self.audio_token!r} placeholder instead"
                )
            text = self._apply_template(prompt)
        else:
            raise TypeError(
                f"prompt {index} must be a string, chat messages (a list of dicts) or None, "
                f"got {type(prompt).__name__}"
            )
        count = text.count(self.audio_token)
        if count != 1:
            raise ValueError(
                f"prompt {index} holds {count} audio placeholders after templating; it needs "
                "exactly one per clip. In chat messages put one {'type': 'audio'} item in the "
                "content of a user message (ltbm does not insert it for you); in a raw string "
                f"write {self.audio_token!r} once"
            )
        return text

    def _apply_template(self, messages: ChatMessages) -> str:
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def _check_not_too_short(
        self, samples: Sequence[np.ndarray], windows: Sequence[int], frame_mask: torch.Tensor
    ) -> None:
        tokens = self.adapter.window_tokens(frame_mask)
        position = 0
        for index, count in enumerate(windows):
            if sum(tokens[position : position + count]) == 0:
                raise AudioError(
                    f"clip {index} is too short ({len(samples[index])} samples, "
                    f"{duration_seconds(samples[index]) * 1000:.0f} ms): the encoder makes no "
                    "token from it; clips need at least about 25 ms of audio"
                )
            position += count

    def _check_processor_agrees(self, inputs: Any, lengths: list[int]) -> None:
        """The processor expanded each placeholder to N copies by its own rule; ours must
        give the same N, or K would be computed from the wrong length."""
        runs = clip_runs(inputs["input_ids"], inputs["attention_mask"], self.adapter.audio_token_id)
        if runs != lengths:
            raise RuntimeError(
                f"the processor made {runs} audio placeholders per clip but the encoder gives "
                f"{lengths} tokens: this transformers version counts audio tokens differently "
                "from ltbm; please report it"
            )

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return int(pad if pad is not None else 0)

    def _generate_batch(
        self, batch: PreparedBatch, max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> list[Generation]:
        """Generate from the prepared embeddings. The ids go along with them so that logits
        processors that look at the prompt (repetition_penalty, which the released
        generation configs set) see the same prompt as with the model's own inputs."""
        kwargs = {"do_sample": False, "pad_token_id": self._pad_id(), **generate_kwargs}
        input_ids = batch.input_ids.to(batch.inputs_embeds.device)
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids,
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                **kwargs,
            )
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        new_tokens = sequences[:, input_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [
            Generation(text.strip(), n, k, extra)
            for text, n, k, extra in zip(
                texts, batch.audio_tokens, batch.kept_tokens, batch.extra, strict=True
            )
        ]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _is_rated_clip(clip: Any) -> bool:
    """A ``(samples, sample_rate)`` pair."""
    return (
        isinstance(clip, tuple)
        and len(clip) == 2
        and isinstance(clip[0], (np.ndarray, torch.Tensor))
        and isinstance(clip[1], (int, np.integer))
    )


def _is_single_clip(audios: Any) -> bool:
    if isinstance(audios, (str, Path)) or _is_rated_clip(audios):
        return True
    if isinstance(audios, (np.ndarray, torch.Tensor)):
        return audios.ndim == 1
    return False


def _is_chat(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)
