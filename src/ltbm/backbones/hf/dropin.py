"""Drop-in compression for a model and processor you already hold.

::

    with ltbm.compressed(model, processor, ltbm.get_method("ltbm", keep_ratio=0.25)):
        inputs = processor(text=prompt, audio=audio, return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=64)

Inside the block two things change, both on these instances only and both undone exactly
on exit:

* the processor's public ``replace_audio_token`` (the method every transformers 5
  processor calls to expand one audio placeholder into N copies) returns K copies,
  K = ``kept_tokens(N, keep_ratio)``; for a family whose placeholders are written elsewhere
  (Voxtral: inside mistral-common's tokenizer), the public processor methods the adapter
  names in ``tokenizing_methods`` are wrapped instead, and each run of N placeholder ids in
  their tokenized output is rewritten to K (left-padded, as the ltbm pipeline does);
* a forward pre-hook (``register_forward_pre_hook(..., with_kwargs=True)``, public torch
  API) on the model sees ``input_ids`` and the audio features before ``forward`` runs,
  computes the compressed audio embeddings with the same code as the ltbm pipeline, and
  passes ``inputs_embeds`` instead, so the model's own merging code is skipped.

Why a pre-hook rather than replacing ``get_audio_features``: Qwen2-Audio has no such
method (its forward runs the encoder inline and counts tokens with a private helper), and
Audio Flamingo 3's receives the windows of all clips flattened, without the information
of which windows make which clip. The pre-hook sees ``input_ids``, whose placeholder runs
give each clip's K; from those AF3's windows are grouped (see ``group_windows``).

Text and audio must be processed inside the block (the placeholder counts are fixed by
the processor); inputs processed outside it are refused with a message.

``size_aware=True`` also hooks the language model's self-attention
(:mod:`ltbm.backbones.hf.size_aware`): the pre-hook, having placed the audio of a prompt,
sets log(size) as the bias of its audio keys, which holds for the decoding steps that
follow, until the next prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ltbm.backbones.base import check_flag, check_method_argument
from ltbm.backbones.hf.adapter import AudioAdapter
from ltbm.backbones.hf.placeholders import (
    clip_runs,
    merge_audio_embeddings,
    pad_token_id,
    resize_placeholder_runs,
)
from ltbm.backbones.hf.size_aware import (
    KeyBias,
    key_bias,
    language_model_attention,
    positional_names,
    slot_log_sizes,
)
from ltbm.core.budget import kept_tokens
from ltbm.methods import Method

_ACTIVE: set[int] = set()
"""ids of the models and processors currently under ``compressed``: nesting is refused."""


def claim(model: nn.Module, processor: Any) -> None:
    """Mark a model and processor as inside a ``compressed`` block (a family's own drop-in,
    as Whisper's, shares the refusal of nesting)."""
    keys = {id(model), id(processor)} - {id(None)}
    if keys & _ACTIVE:
        raise RuntimeError("this model or processor is already inside ltbm.compressed(...)")
    _ACTIVE.update(keys)


def release(model: nn.Module, processor: Any) -> None:
    _ACTIVE.difference_update({id(model), id(processor)})


class Compression:
    """The state of one ``compressed(...)`` block; :meth:`attach` / :meth:`detach` can also
    be called directly when a ``with`` block does not fit the code."""

    def __init__(
        self, model: nn.Module, processor: Any, method: Method | None, size_aware: bool = False
    ) -> None:
        from ltbm.backbones.hf.loading import pipeline_class, text_model

        check_method_argument(method)
        check_flag("size_aware", size_aware)
        _check_model(model)
        if processor is None:
            raise TypeError(
                "processor is None; pass the model's processor "
                "(transformers.AutoProcessor.from_pretrained(<checkpoint>)), which writes the "
                "audio placeholders ltbm resizes"
            )
        self.model = text_model(model)
        self.processor = processor
        self.method = method
        pipeline = pipeline_class(getattr(self.model.config, "model_type", None))
        self.adapter: AudioAdapter = pipeline.adapter_class(self.model)
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._saved: dict[str, tuple[bool, Any]] = {}
        """Each wrapped processor method: (whether the instance had its own, that one)."""
        self._position_shift: torch.Tensor | None = None
        self._parameters = positional_names(self.model.forward)
        self._key_bias: KeyBias | None = None
        if size_aware and method is not None:  # refused here if the kernel takes no bias
            self._key_bias = KeyBias(language_model_attention(self.model))

    # ------------------------------------------------------------------ attach
    def attach(self) -> Compression:
        keys = {id(self.model), id(self.processor)}
        if keys & _ACTIVE:
            raise RuntimeError("this model or processor is already inside ltbm.compressed(...)")
        if self.method is not None:
            try:
                self._wrap_processor()
                self._handle = self.model.register_forward_pre_hook(
                    self._pre_hook, with_kwargs=True
                )
            except BaseException:
                self.detach()  # whatever was changed before the failure is undone
                raise
        if self._key_bias is not None:
            self._key_bias.attach()
        _ACTIVE.update(keys)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._key_bias is not None:
            self._key_bias.detach()
        for name, (had_own, previous) in self._saved.items():
            if had_own:
                setattr(self.processor, name, previous)
            else:
                delattr(self.processor, name)
        self._saved = {}
        _ACTIVE.difference_update({id(self.model), id(self.processor)})

    def __enter__(self) -> Compression:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # --------------------------------------------------------------- processor
    def _wrap_processor(self) -> None:
        names = self.adapter.tokenizing_methods
        self._check_processor(names or ("replace_audio_token",))
        if names:
            for name in names:
                self._patch(name, self._resized_output(getattr(self.processor, name)))
        else:
            self._patch("replace_audio_token", self._resized_expansion())

    def _check_processor(self, names: tuple[str, ...]) -> None:
        """The processor has what ltbm wraps: the methods that write the placeholders, and
        (for ``replace_audio_token``) the audio token it writes; checked before anything is
        changed, so a tokenizer or another model's processor gets a message."""
        missing = [name for name in names if not callable(getattr(self.processor, name, None))]
        if "replace_audio_token" in names and not isinstance(
            getattr(self.processor, "audio_token", None), str
        ):
            missing.append("audio_token")
        if missing:
            family = getattr(self.model.config, "model_type", None)
            raise TypeError(
                f"the processor ({type(self.processor).__name__}) has no "
                f"{', '.join(missing)}, which ltbm.compressed needs to write K audio "
                f"placeholders; pass the {family} model's own processor "
                "(transformers.AutoProcessor.from_pretrained(<checkpoint>)), not its tokenizer"
            )

    def _patch(self, name: str, function: Any) -> None:
        """Set ``function`` as the processor instance's ``name``, remembering what to restore."""
        self._saved[name] = (name in vars(self.processor), getattr(self.processor, name))
        setattr(self.processor, name, function)

    def _resized_expansion(self) -> Any:
        """``replace_audio_token`` writing K placeholders where the processor writes N."""
        token, ratio = self.processor.audio_token, self.method.keep_ratio
        original = self.processor.replace_audio_token

        def replace_audio_token(audio_inputs: dict, audio_idx: int, **kwargs: Any) -> str:
            text = original(audio_inputs, audio_idx, **kwargs)
            count = text.count(token)
            if token * count not in text:
                raise RuntimeError(
                    f"the processor's expansion of {token!r} is not one run of placeholders; "
                    "ltbm cannot resize it"
                )
            return text.replace(token * count, token * kept_tokens(count, ratio), 1)

        return replace_audio_token

    def _resized_output(self, original: Any) -> Any:
        """``original`` (a processor method returning tokenized inputs) with each clip's run of
        N placeholder ids rewritten to K. Outputs without tensor ids (text) pass unchanged:
        they cannot carry audio to the model, and the pre-hook refuses inputs with N."""
        token_id, ratio = self.adapter.audio_token_id, self.method.keep_ratio
        pad = pad_token_id(self.processor.tokenizer)

        def tokenizing_method(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            ids = output.get("input_ids") if isinstance(output, Mapping) else None
            if not isinstance(ids, torch.Tensor):
                return output
            mask = output.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask
            counts = [kept_tokens(n, ratio) for n in clip_runs(ids, mask, token_id)]
            resized = resize_placeholder_runs(ids, mask, token_id, counts, pad)
            output["input_ids"], output["attention_mask"] = resized
            return output

        return tokenizing_method

    # ------------------------------------------------------------------- model
    def _pre_hook(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[tuple, dict[str, Any]] | None:
        inputs = dict(zip(self._parameters, args, strict=False))
        inputs.update(kwargs)
        adapter = self.adapter
        features = inputs.get(adapter.features_key)
        input_ids = inputs.get("input_ids")
        if input_ids is not None and input_ids.shape[-1] <= 1:
            return self._decoding_step(inputs)  # the audio is already in the cache
        self._position_shift = None  # a new prompt: no shift until its audio is placed
        if self._key_bias is not None:
            self._key_bias.bias = None  # nor a size bias
        if features is None or input_ids is None or inputs.get("inputs_embeds") is not None:
            return None
        images = sorted(k for k, v in inputs.items() if "pixel_values" in k and v is not None)
        if images:  # the model would not see them: its own embedding step is skipped
            raise ValueError(
                f"ltbm.compressed takes prompts with audio only, but this call also passes "
                f"{', '.join(images)}; run prompts with images outside the block"
            )
        frame_mask = adapter.frame_mask(features, inputs.get(adapter.mask_key))
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        placeholders = clip_runs(input_ids, attention_mask, adapter.audio_token_id)
        windows = adapter.clip_windows(adapter.window_tokens(frame_mask), placeholders, self.method)
        audio = adapter.audio_embeddings(self.method, features, frame_mask, windows)
        lengths, kept = audio.audio_tokens, audio.kept_tokens
        if kept != placeholders:
            raise ValueError(
                f"the prompts hold {placeholders} audio placeholders per clip, but compressing "
                f"{lengths} encoder tokens gives {kept}: process text and audio with the "
                "processor inside ltbm.compressed(...), so that it emits K placeholders"
            )
        embeds = merge_audio_embeddings(
            self.model.get_input_embeddings(), input_ids, adapter.audio_token_id, audio.rows
        )
        inputs.update(self._llm_inputs(input_ids, attention_mask, audio, inputs))
        self._set_key_bias(input_ids, audio)
        inputs.update(
            {
                "input_ids": None,
                "inputs_embeds": embeds,
                adapter.features_key: None,
                adapter.mask_key: None,
            }
        )
        return (), inputs

    def _llm_inputs(self, input_ids, attention_mask, audio, inputs) -> dict[str, Any]:
        """The family's extra LLM inputs. Time-aligned positions replace those ``generate``
        computed for the K-placeholder prompt; the difference at the last prompt token is
        kept, so the positions ``generate`` extends while decoding are shifted the same."""
        extra = self.adapter.llm_inputs(input_ids, attention_mask, audio)
        ours, given = extra.get("position_ids"), inputs.get("position_ids")
        if ours is not None and given is not None and given.shape == ours.shape:
            self._position_shift = ours[..., -1:] - given[..., -1:]
        return extra

    def _set_key_bias(self, input_ids: torch.Tensor, audio: Any) -> None:
        """Size-aware: the bias of this prompt's audio keys (None when every size is 1)."""
        if self._key_bias is None:
            return
        log_sizes = slot_log_sizes(audio.compressed)
        if log_sizes is not None:
            self._key_bias.bias = key_bias(input_ids, self.adapter.audio_token_id, log_sizes)

    def _decoding_step(self, inputs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        given = inputs.get("position_ids")
        if self._position_shift is None or given is None:
            return None
        return (), {**inputs, "position_ids": given + self._position_shift.to(given.device)}


def compressed(
    model: nn.Module,
    processor: Any,
    method: Method | None,
    *,
    size_aware: bool = False,
    **options: Any,
) -> Any:
    """Context manager: inside it, ``model.generate(**processor(text=..., audio=...))`` (or a
    plain forward) receives the audio compressed by ``method``. ``method=None`` changes
    nothing. ``size_aware=True``: the language model's attention also gives each compressed
    token the weight of the frames it stands for (eager or sdpa attention only). On exit
    the model and processor behave exactly as before.

    A family whose pipeline brings its own drop-in (``compression``: Whisper, which has no
    placeholders; its ``options`` are ``frame_rate`` and ``tail_seconds``) gets that one; the
    audio LLMs take no options."""
    own = _own_compression(model)
    if own is not None:
        return own(model, processor, method, size_aware=size_aware, **options)
    if options:
        raise TypeError(f"compressed() takes no {', '.join(sorted(options))} for this model")
    return Compression(model, processor, method, size_aware)


def _own_compression(model: Any) -> Any:
    """The family's own drop-in, or None (unsupported models are refused by Compression)."""
    from ltbm.backbones.hf.loading import pipeline_class

    config = getattr(model, "config", None)
    try:
        pipeline = pipeline_class(getattr(config, "model_type", None))
    except ValueError:
        return None
    return getattr(pipeline, "compression", None)


def _check_model(model: Any) -> None:
    """An audio-language model from transformers: a torch module with a config (which family
    it is, ``pipeline_class`` then says, or lists the supported ones)."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"ltbm.compressed takes a transformers audio-language model (e.g. "
            f"Qwen2AudioForConditionalGeneration.from_pretrained(...)), got "
            f"{type(model).__name__}; see the Backbones table in the README"
        )
