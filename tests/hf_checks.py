"""Checks shared by the backbone families' tests."""

from __future__ import annotations

from contextlib import contextmanager

import torch

import ltbm
from ltbm.backbones.hf.placeholders import merge_audio_embeddings, resize_placeholder_runs

METHOD_CASES = [
    ("ltbm", {"window": 3}),
    ("global", {}),
    ("pool", {}),
    ("prune", {"scorer": "attention"}),
    ("prune", {"scorer": "norm"}),
    ("uniform", {}),
    ("random", {"seed": 3}),
    ("segment_topk", {"scorer": "attention"}),
    ("segment_topk", {"scorer": "norm", "segments": 4}),
    ("adaptive_diverse", {"weighting": "attention"}),
    ("adaptive_diverse", {"weighting": "size", "threshold": 0.5}),
    ("ltbm", {"window": 1, "weighting": "attention"}),
]
"""Every registered method; those reading attention with it and without."""


def method_id(case: tuple[str, dict]) -> str:
    name, params = case
    return "-".join([name, *map(str, params.values())])


def placeholder_counts(input_ids: torch.Tensor, token_id: int) -> list[int]:
    return (input_ids == token_id).sum(dim=1).tolist()


def cache_length(output) -> int:
    """Tokens held in the KV cache after generate (the field is `cache` from transformers
    5.2x on, `past_key_values` before)."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = output.past_key_values
    return int(cache.get_seq_length())


@contextmanager
def record_llm_inputs(model):
    """Record the inputs_embeds width and attention mask of every language-model call."""
    calls: list[tuple[int, torch.Tensor]] = []
    inner = model.model if hasattr(model, "model") else model

    def hook(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:  # a decoding step of a model that embeds ids in its LLM (Phi-4)
            embeds = kwargs["input_ids"]
        calls.append((embeds.shape[1], kwargs.get("attention_mask")))

    # Phi-4-multimodal's ``model.model`` is the language model itself.
    language_model = getattr(inner, "language_model", inner)
    handle = language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def text_tokens(pipe, clips, prompts) -> torch.Tensor:
    """Tokens of each prompt besides the audio, from the uncompressed batch."""
    batch = pipe.prepare(clips, prompts, method=None)
    return batch.attention_mask.sum(1) - torch.tensor(batch.audio_tokens)


def assert_llm_gets_k(pipe, clips, prompts, method, text: torch.Tensor, monkeypatch) -> None:
    """Through ``pipe.generate``: the LLM's prefill holds exactly K audio tokens per clip (K
    from the budget rule, for each clip's own N), the prompt width is text + K, and the KV
    cache after generating holds that prompt plus the new tokens."""
    batches = []
    prepare = pipe.prepare

    def spy(*args, **kwargs):
        batches.append(prepare(*args, **kwargs))
        return batches[-1]

    monkeypatch.setattr(pipe, "prepare", spy)
    with record_llm_inputs(pipe.model) as calls:
        results = pipe.generate(clips, prompts, method=method, max_new_tokens=2, min_new_tokens=2)
    [batch] = batches
    expected = [ltbm.kept_tokens(n, method.keep_ratio) for n in batch.audio_tokens]
    assert [r.kept_tokens for r in results] == batch.kept_tokens == expected
    assert [r.audio_tokens for r in results] == batch.audio_tokens
    token_id = pipe.adapter.audio_token_id
    assert placeholder_counts(batch.input_ids, token_id) == expected
    assert batch.attention_mask.sum(1).tolist() == (text + torch.tensor(expected)).tolist()
    width = int((text + torch.tensor(expected)).max())
    assert calls[0][0] == batch.inputs_embeds.shape[1] == width

    new = 3
    output = pipe.model.generate(
        input_ids=batch.input_ids,
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        return_dict_in_generate=True,
        **batch.llm_inputs,
    )
    assert cache_length(output) == width + new - 1


def processor_inputs(processor, texts, clips):
    """What a transformers user hands the model: left-padded text, 30 s mel windows."""
    return processor(
        text=texts,
        audio=clips,
        return_tensors="pt",
        text_kwargs={"padding": True, "padding_side": "left"},
        audio_kwargs={"sampling_rate": 16000},
    )


def assert_parity_with_transformers(pipe, clips, prompts, texts, method) -> None:
    """keep_ratio = 1 (or no method): same input ids, same logits and the same greedy tokens
    as the unmodified model on the processor's own inputs."""
    inputs = processor_inputs(pipe.processor, texts, clips)
    batch = pipe.prepare(clips, prompts, method=method)
    assert torch.equal(batch.input_ids, inputs["input_ids"])
    assert torch.equal(batch.attention_mask, inputs["attention_mask"])
    with torch.no_grad():
        reference = pipe.model(**inputs).logits
        ours = pipe.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            **batch.llm_inputs,
        ).logits
    valid = inputs["attention_mask"].bool()
    assert torch.equal(reference[valid], ours[valid])

    new = 6
    expected = pipe.model.generate(**inputs, max_new_tokens=new, do_sample=False)
    expected = expected[:, inputs["input_ids"].shape[1] :]
    tokens = pipe.model.generate(
        input_ids=batch.input_ids,
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=new,
        do_sample=False,
        **batch.llm_inputs,
    )
    assert torch.equal(tokens[:, batch.input_ids.shape[1] :], expected)
    results = pipe.generate(clips, prompts, method=method, max_new_tokens=new)
    decoded = pipe.processor.tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert [r.text for r in results] == [d.strip() for d in decoded]


LOGITS = {"do_sample": False, "return_dict_in_generate": True, "output_logits": True}


def assert_dropin_restores(pipe, clips, prompts, texts, method, users_inputs=None) -> None:
    """Inside ``ltbm.compressed`` the processor writes K placeholders per clip and the model's
    own forward gives the pipeline's logits; after the block, inputs, logits and greedy tokens
    are exactly those of before, and no hook or attribute is left behind.

    ``users_inputs()`` makes the processor's inputs as a user would (default:
    ``processor_inputs(processor, texts, clips)``), called before, inside and after."""
    model, processor = pipe.model, pipe.processor
    if users_inputs is None:

        def users_inputs():
            return processor_inputs(processor, texts, clips)

    before_inputs = users_inputs()
    with torch.no_grad():
        before_logits = model(**before_inputs).logits
    before_tokens = model.generate(**before_inputs, max_new_tokens=3, do_sample=False)

    with ltbm.compressed(model, processor, method):
        inputs = users_inputs()
        with torch.no_grad():
            inside = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, **LOGITS)
        assert generated.sequences.shape[1] == inputs["input_ids"].shape[1] + 3

    batch = pipe.prepare(clips, prompts, method=method)
    token_id = pipe.adapter.audio_token_id
    assert placeholder_counts(inputs["input_ids"], token_id) == batch.kept_tokens
    with torch.no_grad():
        expected = model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            **batch.llm_inputs,
        )
    valid = inputs["attention_mask"].bool()
    assert torch.equal(inside[valid], expected.logits[valid])
    ours = model.generate(
        input_ids=batch.input_ids,
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=3,
        min_new_tokens=3,
        **LOGITS,
        **batch.llm_inputs,
    )
    assert torch.equal(generated.sequences[:, -3:], ours.sequences[:, -3:])
    # Every decoding step's logits, so a step at the wrong position cannot pass.
    assert all(torch.equal(a, b) for a, b in zip(generated.logits, ours.logits, strict=True))

    after_inputs = users_inputs()
    assert all(torch.equal(after_inputs[k], before_inputs[k]) for k in before_inputs)
    wrapped = ("replace_audio_token", *getattr(pipe.adapter, "tokenizing_methods", ()))
    assert_behaves_as_before(
        model, processor, after_inputs, before_logits, before_tokens, 3, wrapped
    )


def assert_behaves_as_before(
    model, processor, inputs, logits, tokens, max_new_tokens, wrapped=("replace_audio_token",)
) -> None:
    """After ``ltbm.compressed``: ``inputs`` give the logits and the greedy tokens
    (``max_new_tokens`` of them) they gave before it, the processor has the class's own
    methods again (none of ``wrapped`` is left on the instance), and no hook is left on
    the model."""
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, logits)
    after = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    assert torch.equal(after, tokens)
    assert not set(wrapped) & set(vars(processor))
    assert not model._forward_pre_hooks


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows left-padded to the longest, with their attention mask: prompts as a
    processor with ``padding_side="left"`` writes them, for the model-level tests."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def model_level_inputs(model, adapter, inputs, method):
    """What the pipeline hands the LLM, built at the model level from processor-shaped
    ``inputs`` (one window per clip): the audio, K placeholders per clip, their rows."""
    clips = inputs["input_ids"].shape[0]
    audio = adapter.audio_embeddings(
        method, inputs[adapter.features_key], inputs[adapter.mask_key], [1] * clips
    )
    token = adapter.audio_token_id
    ids, mask = resize_placeholder_runs(
        inputs["input_ids"], inputs["attention_mask"], token, audio.kept_tokens, 0
    )
    embeds = merge_audio_embeddings(model.get_input_embeddings(), ids, token, audio.rows)
    return audio, ids, mask, embeds
