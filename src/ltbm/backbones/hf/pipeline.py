"""The pipeline every Hugging Face backbone shares: audio and prompts in, text out.

It never patches transformers: it runs the processor (one run of N placeholders per clip),
the family's adapter (encoder → method → projector, :mod:`ltbm.backbones.hf.adapter`),
rewrites each run to K placeholders (:mod:`ltbm.backbones.hf.placeholders`) and hands the LLM
``inputs_embeds`` with exactly K audio rows per clip, K from :func:`ltbm.kept_tokens`. The
drop-in context manager (:mod:`ltbm.backbones.hf.dropin`) reuses the same adapter inside a
forward pre-hook.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ltbm.backbones.base import Generation, check_flag, check_method_argument
from ltbm.backbones.hf.adapter import AudioAdapter, module_device_dtype, parameter_count
from ltbm.backbones.hf.clips import AudioSource, ChatMessages, Prompt, is_chat, pair, read_clip
from ltbm.backbones.hf.identity import hf_identity
from ltbm.backbones.hf.placeholders import (
    clip_runs,
    merge_audio_embeddings,
    pad_token_id,
    resize_placeholder_runs,
)
from ltbm.backbones.hf.size_aware import (
    biased_keys,
    check_biasable,
    key_bias,
    language_model_attention,
    slot_log_sizes,
)
from ltbm.io.audio import SAMPLE_RATE, AudioError, duration_seconds, is_silent
from ltbm.methods import Method

DEFAULT = object()
"""Sentinel for "the pipeline's bound setting" (method, size_aware) in
:meth:`HFPipeline.generate`."""


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
    llm_inputs: dict[str, torch.Tensor]
    """What else the LLM takes with these embeddings (e.g. time-aligned ``position_ids``)."""
    key_bias: torch.Tensor | None = None
    """Size-aware attention: ``[B, T]`` log(size) of the slot at each audio position (0
    elsewhere), added to the logits every query gives those keys; None when size-aware
    attention is off or every size is 1 (see :mod:`ltbm.backbones.hf.size_aware`)."""


class HFPipeline:
    """A transformers audio-language model with a compression method bound to it.

    ``generate(audios, prompts)`` loads the audio, renders the prompts, runs the processor,
    the encoder, the method and the projector, and generates from ``inputs_embeds`` with
    exactly K audio tokens per clip. Subclasses say how their encoder is called and how long
    a clip may be.

    ``size_aware=True``: the language model's attention gives each compressed token the
    weight of the frames it stands for (log(size) added to its logits, see
    :mod:`ltbm.backbones.hf.size_aware`); it needs attn_implementation eager or sdpa.
    """

    name: ClassVar[str]
    adapter_class: ClassVar[type[AudioAdapter]]

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        method: Method | None = None,
        size_aware: bool = False,
    ) -> None:
        model_type = getattr(model.config, "model_type", None)
        if model_type != self.adapter_class.model_type:
            raise TypeError(
                f"{type(self).__name__} needs a {self.adapter_class.model_type!r} model, got "
                f"model_type {model_type!r}; use ltbm.load(...) to pick the pipeline"
            )
        self.model = model.eval()
        self.processor = processor
        self.method = check_method_argument(method)
        self.adapter = self.adapter_class(model)
        self.tokenizer = processor.tokenizer
        self.audio_token: str = processor.audio_token
        self._check_audio_token()
        self.size_aware = check_flag("size_aware", size_aware)
        if self.size_aware:
            self.check_size_aware()

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
        *,
        size_aware: bool | object = DEFAULT,
        **generate_kwargs: Any,
    ) -> list[Generation]:
        """Generate one text per clip.

        ``prompts`` has one entry per clip (a single prompt is used for every clip);
        ``method`` overrides the bound method for this call (None: no compression), and
        ``size_aware`` the bound size-aware attention setting.
        Decoding is greedy unless ``generate_kwargs`` say otherwise (``do_sample=True``),
        so results are reproducible whatever the checkpoint's generation config says.
        Clips are processed ``batch_size`` at a time (default: all in one batch).
        """
        clips, prompt_list = pair(audios, prompts)
        size = batch_size or len(clips)
        results: list[Generation] = []
        for start in range(0, len(clips), size):
            batch = self.prepare(
                clips[start : start + size], prompt_list[start : start + size], method, size_aware
            )
            results += self._generate_batch(batch, max_new_tokens, generate_kwargs)
        return results

    def prepare(
        self,
        audios: AudioSource | Sequence[AudioSource],
        prompts: Prompt | Sequence[Prompt] = None,
        method: Method | None | object = DEFAULT,
        size_aware: bool | object = DEFAULT,
    ) -> PreparedBatch:
        """Everything up to the LLM: the inputs_embeds with K audio tokens per clip (and,
        size-aware, the bias of their keys: run a forward pass on it inside
        :meth:`size_aware_attention`)."""
        method = self._resolve_method(method)
        size_aware = self._resolve_size_aware(size_aware)
        inputs, samples, windows = self.encoder_inputs(audios, prompts)
        features, frame_mask = inputs[self.adapter.features_key], inputs[self.adapter.mask_key]
        audio = self.adapter.audio_embeddings(method, features, frame_mask, windows)
        lengths, kept = audio.audio_tokens, audio.kept_tokens
        self._check_processor_agrees(inputs, lengths)
        token_id, pad = self.adapter.audio_token_id, pad_token_id(self.tokenizer)
        input_ids, attention_mask = resize_placeholder_runs(
            inputs["input_ids"], inputs["attention_mask"], token_id, kept, pad
        )
        embeds = merge_audio_embeddings(
            self.model.get_input_embeddings(), input_ids, token_id, audio.rows
        )
        extra = [
            {"duration_s": round(duration_seconds(s), 3), "silent": is_silent(s), "windows": w}
            for s, w in zip(samples, windows, strict=True)
        ]
        # Host-built ids and mask go to the device without waiting for its queue.
        attention_mask = attention_mask.to(embeds.device, non_blocking=True)
        device_ids = input_ids.to(embeds.device, non_blocking=True)
        llm_inputs = self.adapter.llm_inputs(device_ids, attention_mask, audio)
        log_sizes = slot_log_sizes(audio.compressed) if size_aware else None
        bias = None if log_sizes is None else key_bias(input_ids, token_id, log_sizes)
        return PreparedBatch(
            embeds,
            attention_mask,
            input_ids,
            lengths,
            kept,
            extra,
            llm_inputs,
            None if bias is None else bias.to(embeds.device, non_blocking=True),
        )

    def encoder_inputs(
        self,
        audios: AudioSource | Sequence[AudioSource],
        prompts: Prompt | Sequence[Prompt] = None,
    ) -> tuple[Any, list[np.ndarray], list[int]]:
        """The processor's outputs (one placeholder run of N per clip, mel windows), the
        loaded 16 kHz samples and the windows per clip: everything the encoder step takes.
        ``prepare`` starts here; the efficiency benchmark times the encoder from here."""
        clips, prompt_list = pair(audios, prompts)
        samples = [self._load(index, clip) for index, clip in enumerate(clips)]
        inputs = self._process(prompt_list, samples)
        windows = self.windows(samples)
        self._check_not_too_short(samples, windows, inputs[self.adapter.mask_key])
        return inputs, samples, windows

    def check_method(self, method: Method | None) -> None:
        """Refuse, before any work, a method this backbone cannot feed (the evaluation
        harness calls it before the first item)."""
        self.adapter.check_method(self._resolve_method(method))

    def check_size_aware(self) -> None:
        """Refuse size-aware attention where the language model's attention kernel cannot
        take an additive bias (FlashAttention, flex attention): eager and sdpa can."""
        check_biasable(language_model_attention(self.model))

    def size_aware_attention(self, batch: PreparedBatch) -> AbstractContextManager[None]:
        """Context manager: inside it, the language model's forward passes give the audio
        keys of ``batch`` their size bias (nothing changes when ``batch.key_bias`` is None).
        ``generate`` uses it; call it around your own forward passes on a prepared batch."""
        if batch.key_bias is None:
            return nullcontext()
        return biased_keys(language_model_attention(self.model), batch.key_bias)

    def identity(self) -> dict[str, Any]:
        """Every setting that decides this pipeline's outputs, for a run's identity."""
        return hf_identity(self)

    def describe(self) -> dict[str, Any]:
        """Model, dtype, device, attention kernel, versions and method: written into results."""
        import transformers

        device, dtype = module_device_dtype(self.model)
        return {
            "backbone": self.name,
            "model": getattr(self.model.config, "_name_or_path", None) or None,
            "model_type": self.model.config.model_type,
            "parameters": parameter_count(self.model),
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
            "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
            "method": self.method.params() if self.method is not None else None,
            **({"size_aware": True} if self.size_aware else {}),
            "max_audio_seconds": self.max_seconds(),
            "frame_rate": self.adapter.frame_rate,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }

    def to(self, device: str | torch.device) -> HFPipeline:
        """Move the model (not sharded with device_map) to ``device``."""
        self.model.to(device)
        return self

    # --------------------------------------------------------------- per model
    @classmethod
    def check_environment(cls) -> None:
        """Refuse, before any weights are read, a family whose processor needs a package
        that is not installed (``ltbm.load`` calls it)."""

    @classmethod
    def load_processor(cls, source: str) -> Any:
        """The checkpoint's processor, for ``ltbm.load``."""
        import transformers

        return transformers.AutoProcessor.from_pretrained(source)

    @classmethod
    def finish_loading(cls, model: nn.Module, source: str) -> None:
        """What ``ltbm.load`` must do to the loaded weights beyond ``from_pretrained`` (e.g.
        activate an adapter the checkpoint ships); nothing by default."""

    def max_seconds(self) -> float:
        """Longest clip the model takes, in seconds."""
        raise NotImplementedError

    def feature_window_seconds(self, default: float = 30.0) -> float:
        """The processor's feature-extractor window (``chunk_length``): the limit of the
        families whose encoder takes one padded window per clip."""
        extractor = self.processor.feature_extractor
        return float(getattr(extractor, "chunk_length", default))

    def windows(self, samples: Sequence[np.ndarray]) -> list[int]:
        """How many 30 s processor windows each clip becomes."""
        return [1] * len(samples)

    def fallback_prompt(self, text: str) -> str:
        """The prompt for processors without a chat template: placeholder, then text."""
        return f"{self.audio_token}{text}"

    # ------------------------------------------------------------------ steps
    def _resolve_method(self, method: Method | None | object) -> Method | None:
        return self.method if method is DEFAULT else check_method_argument(method)

    def _resolve_size_aware(self, size_aware: bool | object) -> bool:
        if size_aware is DEFAULT:
            return self.size_aware
        size_aware = check_flag("size_aware", size_aware)
        if size_aware:
            self.check_size_aware()
        return size_aware

    def _process(self, prompts: list[Prompt], samples: list[np.ndarray]) -> Any:
        """The processor's own outputs (one placeholder run of N per clip, mel windows)."""
        texts = [self.render(prompt, index) for index, prompt in enumerate(prompts)]
        return self.processor(
            text=texts,
            audio=samples,
            return_tensors="pt",
            # Modality-specific: a flat `padding` would also reach the feature extractor,
            # whose windows must stay padded to 30 s.
            text_kwargs={"padding": True},
            audio_kwargs={"sampling_rate": SAMPLE_RATE},
        )

    def _load(self, index: int, clip: AudioSource) -> np.ndarray:
        """16 kHz mono float32 samples, refused when empty or longer than the model takes."""
        samples = read_clip(index, clip)
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

    def render(self, prompt: Prompt, index: int = 0) -> str:
        """Prompt text with exactly one audio placeholder (``index`` names it in errors)."""
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
        elif is_chat(prompt):
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

    def _room_for_new_tokens(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """``max_new_tokens``, capped where the prompt plus the answer would run past the
        language model's positions: a model that never stops would otherwise decode far past
        what it was built for (and for a long time) before ending in nonsense or an error."""
        positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if positions is None:
            return max_new_tokens
        if prompt_tokens >= positions:
            raise ValueError(
                f"the prompt with its audio is {prompt_tokens} tokens but the language model "
                f"has {positions} positions: use shorter clips or a stronger compression"
            )
        return min(max_new_tokens, positions - prompt_tokens)

    def _generate_batch(
        self, batch: PreparedBatch, max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> list[Generation]:
        """Generate from the prepared embeddings. The ids go along with them so that logits
        processors that look at the prompt (repetition_penalty, which the released
        generation configs set) see the same prompt as with the model's own inputs."""
        pad = pad_token_id(self.tokenizer)
        kwargs = {"do_sample": False, "pad_token_id": pad, **generate_kwargs}
        input_ids = batch.input_ids.to(batch.inputs_embeds.device, non_blocking=True)
        max_new_tokens = self._room_for_new_tokens(input_ids.shape[1], max_new_tokens)
        with torch.no_grad(), self.size_aware_attention(batch):
            output = self.adapter.llm_generate(
                input_ids=input_ids,
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                **batch.llm_inputs,
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
