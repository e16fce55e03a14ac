"""The backbone adapter: what one family of transformers audio LLMs does differently.

Every audio LLM in transformers runs an encoder, maps its output to the LLM's width with a
projector, and scatters the result into a run of placeholder tokens per clip. An adapter
says only what differs: where the encoder output is taken (:meth:`AudioAdapter.encode`,
which returns the tokens a method compresses, N per clip, at ``frame_rate`` tokens per
second, after any frame stacking; ``EncodedAudio.projector_input`` when the projector takes
something else, e.g. tokens with a time embedding), the projector
(:meth:`AudioAdapter.project`), how the processor's rows of features make clips
(:meth:`AudioAdapter.clip_windows`), extra LLM inputs (:meth:`AudioAdapter.llm_inputs`) and
its limits (``attention_scorer``). Compression, the budget check and the
projection are shared here; placeholders and prompts are the pipeline's
(:mod:`ltbm.backbones.hf.pipeline`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ltbm.backbones.hf.attention_capture import needs_attention
from ltbm.core.budget import kept_tokens
from ltbm.core.syncs import host_list
from ltbm.methods import Method
from ltbm.methods.registry import Compressed


@dataclass
class EncodedAudio:
    """Encoder-space tokens of a batch of clips: ``tokens [C, N_max, D]`` (where the family
    compresses, before the projector), ``lengths [C]`` valid tokens per clip, and the signals
    a method may use (``queries``/``keys`` or ``scores``).

    The families compute ``lengths`` on the host, from the processor's mask, and hand them
    over as :func:`~ltbm.core.syncs.host_tensor`: the method then plans K and every shape
    without reading the device (lengths on the device are read back once).

    ``projector_input``, when set, is what the projector takes instead of ``tokens``, aligned
    with them token for token (e.g. tokens with a time embedding added): the method's plan,
    computed on ``tokens``, is applied to it, so slots are formed by the same sources."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    signals: dict[str, torch.Tensor] = field(default_factory=dict)
    projector_input: torch.Tensor | None = None

    def kept(self, compressed: Compressed | None) -> torch.Tensor:
        """``[C, K_max, ...]``: what reaches the projector after the method's plan."""
        if compressed is None:
            return self.tokens if self.projector_input is None else self.projector_input
        return compressed.tokens


@dataclass
class AudioEmbeddings:
    """What the LLM receives for a batch of clips: the projected rows of every clip in clip
    order ``[sum K, H]``, N and K per clip, and the method's result (None uncompressed),
    whose plan tells a family with time-aligned positions where each slot sits."""

    rows: torch.Tensor
    audio_tokens: list[int]
    kept_tokens: list[int]
    compressed: Compressed | None
    frame_lengths: list[int]
    """Valid mel frames of every processor window row, as the processor counted them."""


def encoder_token_count(mel_frames: torch.Tensor) -> torch.Tensor:
    """Tokens a Whisper-style encoder with a final AvgPool(2) makes from ``mel_frames`` valid
    mel frames: conv2 (stride 2), then the pool. The processors' own rule, written out so
    that adapters call no private transformers method."""
    frames = (mel_frames - 1) // 2 + 1
    return ((frames - 2) // 2 + 1).clamp(min=0)


def budget(lengths: Sequence[int], method: Method | None) -> list[int]:
    """K per clip: the one budget rule, or N itself without compression."""
    if method is None:
        return [int(n) for n in lengths]
    return [kept_tokens(int(n), method.keep_ratio) for n in lengths]


def compress_tokens(method: Method | None, encoded: EncodedAudio) -> Compressed | None:
    """Run the method on the encoder tokens (None: no compression). Where the projector takes
    ``projector_input``, the result's tokens are that input under the method's plan.

    The budget is checked here, not trusted: the placeholder counts were fixed by the same
    rule before the encoder ran, so a method that returns another K would shift every
    token after it."""
    if method is None:
        return None
    lengths = host_list(encoded.lengths)
    with torch.no_grad():
        if encoded.projector_input is None:
            result = method(encoded.tokens, encoded.lengths, **encoded.signals)
        else:  # the plan is formed on the tokens and applied once, to what the projector takes
            plan = method.plan(encoded.tokens, encoded.lengths, **encoded.signals)
            result = Compressed(plan.apply(encoded.projector_input), plan.kept.clone(), plan)
    expected = budget(lengths, method)
    facts = result.plan.host_facts  # K as the plan states it on the host, if it does
    got = list(facts.kept) if facts is not None else result.lengths.tolist()
    if got != expected:
        raise RuntimeError(
            f"method {method!r} returned {got} tokens per clip but the budget rule "
            f"kept_tokens(N, {method.keep_ratio}) gives {expected} for N = {lengths}; every "
            "method must return exactly K tokens per clip"
        )
    return result


def valid_rows(x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Rows ``x[c, :lengths[c]]`` of every clip, concatenated in clip order: ``[sum, H]``.
    Sliced by the host's lengths (a boolean mask would make the host wait for its count)."""
    return torch.cat([x[clip, :length] for clip, length in enumerate(lengths)])


def pad_clips(clips: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``[n_c, ...]`` tensors into ``[C, max n_c, ...]``, zero-padded at the end."""
    width = max((c.shape[0] for c in clips), default=0)
    out = clips[0].new_zeros((len(clips), width, *clips[0].shape[1:]))
    for index, clip in enumerate(clips):
        out[index, : clip.shape[0]] = clip
    return out


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


def parameter_count(module: nn.Module) -> int:
    """How many parameters ``module`` holds (each shared tensor once): the model's size,
    which ties efficiency figures to runs of the same size (a tiny random architecture's
    figures must not describe a 7B checkpoint's runs)."""
    return sum(parameter.numel() for parameter in module.parameters())


def owner_of(model: nn.Module, *names: str) -> nn.Module:
    """The module that holds all of ``names`` as attributes: the model itself, ``model.model``
    (the ``...ForConditionalGeneration`` classes of transformers 5) or ``model.thinker``
    (the Omni models)."""
    for candidate in (model, getattr(model, "model", None), getattr(model, "thinker", None)):
        if candidate is not None and all(hasattr(candidate, name) for name in names):
            return candidate
    raise TypeError(
        f"{type(model).__name__} has no {'/'.join(names)}; ltbm supports the model classes "
        "listed by ltbm.backbones.hf.loading.supported_model_types()"
    )


class AudioAdapter:
    """How one model family turns processor outputs into the K audio rows the LLM receives.

    Subclasses set the processor keys, ``frame_rate`` and ``encode``; the component names
    (``tower_name``, ``projector_name``) and :meth:`project` when the family differs."""

    model_type: ClassVar[str]
    features_key: ClassVar[str] = "input_features"
    mask_key: ClassVar[str]
    frame_rate: ClassVar[float]
    """Tokens per second of audio where compression applies."""
    attention_scorer: ClassVar[bool] = True
    """Whether ``encode`` can give the attention scorer its signal."""
    tokenizing_methods: ClassVar[tuple[str, ...]] = ()
    """Processor methods whose tokenized output the drop-in resizes (N → K placeholders per
    clip), for processors that write placeholders outside ``replace_audio_token``."""
    tower_name: ClassVar[str] = "audio_tower"
    projector_name: ClassVar[str] = "multi_modal_projector"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.inner = owner_of(model, self.tower_name, self.projector_name)
        self.tower = getattr(self.inner, self.tower_name)
        self.projector = getattr(self.inner, self.projector_name)
        self.audio_token_id = int(model.config.audio_token_id)

    def encode(
        self,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
        attention: bool,
    ) -> EncodedAudio:
        """Encoder tokens per clip. ``features``/``frame_mask`` hold one row per processor
        window; ``windows`` says how many consecutive rows make each clip."""
        raise NotImplementedError

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[C, K_max, H]``: the kept tokens in the LLM's embedding space."""
        device, dtype = module_device_dtype(self.projector)
        # With a device_map the projector may sit on another device than the encoder.
        return self.projector(tokens.to(device, dtype))

    def llm_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio: AudioEmbeddings
    ) -> dict[str, torch.Tensor]:
        """Extra inputs the LLM needs beside ``inputs_embeds`` for the prompt with K
        placeholders per clip (the Omni thinkers: time-aligned positions); none by default."""
        return {}

    def llm_generate(self, **kwargs: Any) -> Any:
        """The model's ``generate`` on the prepared embeddings; a family whose ``generate``
        changes the model by its inputs (Granite Speech's LoRA adapter) overrides it."""
        return self.model.generate(**kwargs)

    def frame_mask(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The processor's mask of valid mel frames (``mask_key``), refused when absent;
        a family whose processor omits it when nothing is padded builds it."""
        if mask is None:
            raise ValueError(f"compressed audio needs {self.mask_key!r} from the processor")
        return mask

    def window_tokens(self, frame_mask: torch.Tensor) -> list[int]:
        """Encoder tokens of each window row, from its valid mel frames."""
        return host_list(encoder_token_count(frame_mask.sum(-1).long()))

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

    def check_method(self, method: Method | None) -> None:
        """Refuse, before any work, a method this family cannot feed."""
        if needs_attention(method) and not self.attention_scorer:
            instead = getattr(method, "without_attention", "") or "another method"
            raise ValueError(
                f"{self.model_type} gives no encoder attention to score or weigh tokens with; "
                f"use {method.name} with {instead}, or another method"
            )

    def audio_embeddings(
        self,
        method: Method | None,
        features: torch.Tensor,
        frame_mask: torch.Tensor,
        windows: Sequence[int],
    ) -> AudioEmbeddings:
        """Encoder → method → projector, for every clip of a batch."""
        self.check_method(method)
        with torch.no_grad():
            encoded = self.encode(features, frame_mask, windows, needs_attention(method))
            compressed = compress_tokens(method, encoded)  # checks K against the budget
            projected = self.project(encoded.kept(compressed))
        lengths = [int(n) for n in host_list(encoded.lengths)]
        kept_list = budget(lengths, method)
        return AudioEmbeddings(
            valid_rows(projected, kept_list),
            lengths,
            kept_list,
            compressed,
            host_list(frame_mask.sum(-1).long()),
        )
