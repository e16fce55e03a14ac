"""Size-aware attention on the audio LLMs: the bias reaches the language model's attention
(a slot of size s gets exactly s times the unnormalised weight, at prefill and at every
decoding step), sizes all 1 change nothing bit for bit, SDPA and eager agree, kernels that
take no bias are refused, and the option works in the pipeline, the drop-in, the run
identity, the CLI and the sweep. Tiny random Qwen2-Audio and Audio Flamingo 3 checkpoints
built from the real transformers classes."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hf_checks import assert_behaves_as_before, processor_inputs
from tiny_models import build_audioflamingo3, build_qwen2_audio, tone
from typer.testing import CliRunner

import ltbm
from ltbm.backbones.hf.size_aware import biased_mask, language_model_attention
from ltbm.cli import app
from ltbm.run.evaluate import Cell, RunSettings, run_identity
from ltbm.run.sweep import Grid, read_sweep_config
from ltbm.tasks.speech import SpeechTask

transformers = pytest.importorskip("transformers")

PROMPTS = ["Generate the caption in English:", "Describe the sound in one sentence."]
EAGER = {"attn_implementation": "eager"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio"))


@pytest.fixture(scope="module")
def eager(qwen_dir):
    """Eager attention: the attention weights can be read back (``output_attentions``)."""
    return ltbm.load(str(qwen_dir), method=None, model_kwargs=EAGER)


@pytest.fixture(scope="module")
def sdpa(qwen_dir):
    return ltbm.load(str(qwen_dir), method=None)


@pytest.fixture(scope="module")
def clips():
    """Two clips of different lengths (75 and 182 encoder tokens): a left-padded batch."""
    return [tone(3.0), tone(7.3, 300.0, seed=1)]


def merging(keep_ratio: float = 0.25):
    return ltbm.get_method("ltbm", keep_ratio=keep_ratio, window=2)


# ----------------------------------------------------------------------------- helpers
def slot_factors(pipe, clips, prompts, method, batch) -> torch.Tensor:
    """``[B, T]``: the size of the slot at each audio position of ``batch`` (1 elsewhere),
    from the method's own plan on the encoder tokens, independently of the bias."""
    inputs, _, windows = pipe.encoder_inputs(clips, prompts)
    adapter = pipe.adapter
    audio = adapter.audio_embeddings(
        method, inputs[adapter.features_key], inputs[adapter.mask_key], windows
    )
    plan = audio.compressed.plan
    sizes = plan.sizes[plan.slot_mask].double()
    factors = torch.ones(batch.input_ids.shape, dtype=torch.float64)
    factors[batch.input_ids == adapter.audio_token_id] = sizes
    return factors


def first_layer_attention(pipe, batch, biased: bool) -> torch.Tensor:
    """Layer 0's attention weights ``[B, H, T, T]`` of a prefill (its inputs are the
    embeddings, the same with and without the bias)."""
    context = pipe.size_aware_attention(batch) if biased else torch.no_grad()
    with torch.no_grad(), context:
        output = pipe.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            output_attentions=True,
            **batch.llm_inputs,
        )
    return output.attentions[0].double()


def assert_weights_scale_by_size(plain, biased, factors, attention_mask) -> None:
    """For every query of a real token: biased / plain = size × (one constant), over the
    keys it sees; i.e. exp(logit + log s) = s · exp(logit) before the softmax normalises.
    (The rows of left padding see no key at all and are left out.)"""
    mask = attention_mask.bool()
    visible = (plain > 0) & mask[:, None, :, None] & mask[:, None, None, :]
    assert torch.equal(visible, (biased > 0) & mask[:, None, :, None] & mask[:, None, None, :])
    ratio = biased / plain.clamp(min=1e-300) / factors[:, None, None, :]
    ratio = torch.where(visible, ratio, torch.nan)
    constant = ratio.nanmean(dim=-1, keepdim=True)
    relative = (ratio / constant - 1).abs()
    # Exact up to float32 rounding (the softmax runs in float32): a size off by one would
    # be off by 1/s ≥ 1/8 here.
    assert float(relative[visible].max()) < 1e-5


def logits_of(pipe, batch, biased: bool) -> torch.Tensor:
    """The LLM's logits of a prepared batch, with or without its size bias."""
    context = pipe.size_aware_attention(batch) if biased else torch.no_grad()
    with torch.no_grad(), context:
        return pipe.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            **batch.llm_inputs,
        ).logits


def no_hooks_left(pipe) -> bool:
    return not any(m._forward_pre_hooks for m in language_model_attention(pipe.model))


# ------------------------------------------------------------------------------- masks
def test_the_bias_joins_every_kind_of_mask_transformers_hands_attention():
    bias = torch.log(torch.tensor([[1.0, 2.0, 3.0, 1.0]]))
    lowest = torch.finfo(torch.float32).min
    additive = torch.tensor([[[[0.0, 0.0, lowest, lowest]]]])  # eager
    out = biased_mask(additive, bias, 1, True, torch.float32)[0, 0, 0]
    assert torch.equal(out[:2], bias[0, :2]) and (out[2:] == lowest).all()
    allowed = torch.tensor([[[[False, True, True, True]]]])  # sdpa with padding
    out = biased_mask(allowed, bias, 1, True, torch.float32)
    assert out[0, 0, 0, 0] == lowest and torch.equal(out[0, 0, 0, 1:], bias[0, 1:])
    # No mask: one query sees every key; several queries see the causal pattern sdpa's
    # is_causal applies (upper-left); cross-attention sees every key.
    assert torch.equal(biased_mask(None, bias, 1, True, torch.float32), bias[:, None, None])
    causal = biased_mask(None, bias, 4, True, torch.float32)[0, 0]
    assert torch.equal(causal.diagonal(), bias[0])
    assert (causal.triu(1)[causal.triu(1) != 0] == lowest).all()
    assert torch.equal(biased_mask(None, bias, 4, False, torch.float32), bias[:, None, None])


# ------------------------------------------------------------------ the bias reaches it
def test_a_slot_of_size_s_draws_s_times_the_weight_before_normalisation(eager, clips):
    method = merging()
    batch = eager.prepare(clips, PROMPTS, method, size_aware=True)
    factors = slot_factors(eager, clips, PROMPTS, method, batch)
    assert factors.max() >= 3  # real merging: several sizes above 1
    assert torch.allclose(batch.key_bias.double().exp(), factors)
    plain = first_layer_attention(eager, batch, biased=False)
    biased = first_layer_attention(eager, batch, biased=True)
    assert not torch.allclose(plain, biased)
    assert_weights_scale_by_size(plain, biased, factors, batch.attention_mask)
    assert no_hooks_left(eager)


def test_every_decoding_step_keeps_the_prompt_bias_and_new_tokens_get_none(eager, clips):
    """Through generate: at each decoding step, layer 0's weights over the prompt's keys
    carry the size factor, and over the generated tokens' keys a factor of 1."""
    method, steps = merging(), 3
    batch = eager.prepare(clips, PROMPTS, method, size_aware=True)
    factors = slot_factors(eager, clips, PROMPTS, method, batch)
    with torch.no_grad(), eager.size_aware_attention(batch):
        output = eager.model.generate(
            input_ids=batch.input_ids,
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_attentions=True,
            return_dict_in_generate=True,
        )
    width = batch.input_ids.shape[1]
    new = output.sequences[:, width:]
    # The same sequence in one plain forward pass: its rows are the unbiased weights.
    embeds = torch.cat([batch.inputs_embeds, eager.model.get_input_embeddings()(new)], 1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(new)], 1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        full = eager.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            output_attentions=True,
        )
    reference = full.attentions[0].double()
    for step in range(1, steps):
        keys = width + step
        biased = output.attentions[step][0].double()  # [B, H, 1, keys]
        plain = reference[:, :, keys - 1 : keys, :keys]
        grown = torch.cat([factors, torch.ones(factors.shape[0], step, dtype=factors.dtype)], 1)
        visible = plain > 1e-30
        ratio = torch.where(visible, biased / plain / grown[:, None, None, :], torch.nan)
        relative = (ratio / ratio.nanmean(dim=-1, keepdim=True) - 1).abs()
        assert float(relative[visible].max()) < 1e-4  # a cached step against a full pass
    assert no_hooks_left(eager)


def test_audio_flamingo_3_gets_the_bias_across_windows(tmp_path):
    """AF3 compresses a clip over its windows joined in time; a 34 s clip has two."""
    pipe = ltbm.load(str(build_audioflamingo3(tmp_path / "af3")), method=None, model_kwargs=EAGER)
    clips, prompts, method = [tone(34.0), tone(2.0, 500.0, seed=2)], ["What is it?"] * 2, merging()
    batch = pipe.prepare(clips, prompts, method, size_aware=True)
    assert batch.audio_tokens[0] > 750  # one window holds 750 tokens: the clip spans two
    factors = slot_factors(pipe, clips, prompts, method, batch)
    assert factors.max() >= 3
    plain = first_layer_attention(pipe, batch, biased=False)
    biased = first_layer_attention(pipe, batch, biased=True)
    assert_weights_scale_by_size(plain, biased, factors, batch.attention_mask)
    ones = pipe.prepare(clips, prompts, ltbm.get_method("prune", keep_ratio=0.25), size_aware=True)
    assert ones.key_bias is None


@pytest.mark.parametrize(
    "model_type",
    ["musicflamingo", "glmasr", "voxtral", "qwen2_5_omni_thinker", "phi4_multimodal"],
)
def test_every_family_s_language_model_gets_the_bias(model_type, clips):
    """The other families (stacked frames, time-aligned positions, a model whose language
    model holds the audio encoder): the same factor, and generate runs with it."""
    from ltbm.backbones.synthetic import build_model

    try:
        model, processor = build_model(model_type)
    except ImportError as error:  # an optional processor dependency
        pytest.skip(str(error))
    model.set_attn_implementation("eager")
    pipe = ltbm.pipeline(model, processor)
    method = merging()
    batch = pipe.prepare(clips, PROMPTS, method, size_aware=True)
    factors = slot_factors(pipe, clips, PROMPTS, method, batch)
    assert factors.max() >= 3
    plain = first_layer_attention(pipe, batch, biased=False)
    biased = first_layer_attention(pipe, batch, biased=True)
    assert_weights_scale_by_size(plain, biased, factors, batch.attention_mask)
    assert len(pipe.generate(clips, PROMPTS, method, 3, size_aware=True)) == 2
    assert no_hooks_left(pipe)


# ------------------------------------------------------------------- sizes all one
@pytest.mark.parametrize(
    "method",
    [
        None,
        ltbm.get_method("ltbm", keep_ratio=1.0),
        ltbm.get_method("prune", keep_ratio=0.25, scorer="norm"),
        ltbm.get_method("uniform", keep_ratio=0.25),
    ],
    ids=["none", "ltbm-keep-1", "prune", "uniform"],
)
def test_sizes_all_one_change_nothing_bit_for_bit(sdpa, clips, method):
    batch = sdpa.prepare(clips, PROMPTS, method, size_aware=True)
    assert batch.key_bias is None
    plain = sdpa.prepare(clips, PROMPTS, method)
    assert torch.equal(logits_of(sdpa, batch, True), logits_of(sdpa, plain, False))
    texts = [r.text for r in sdpa.generate(clips, PROMPTS, method, 5, size_aware=True)]
    assert texts == [r.text for r in sdpa.generate(clips, PROMPTS, method, 5)]


def test_sdpa_and_eager_agree_under_the_bias_at_every_step(eager, sdpa, clips):
    """Padded batches (SDPA gets a boolean mask) and one clip (no mask: is_causal at the
    prefill, nothing at a decoding step) give eager's logits at every step."""
    method = merging()
    for chosen, prompts in ((clips, PROMPTS), (clips[1:], PROMPTS[1:])):
        scores = []
        for pipe in (eager, sdpa):
            batch = pipe.prepare(chosen, prompts, method, size_aware=True)
            with torch.no_grad(), pipe.size_aware_attention(batch):
                output = pipe.model.generate(
                    input_ids=batch.input_ids,
                    inputs_embeds=batch.inputs_embeds,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=4,
                    min_new_tokens=4,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            scores.append(torch.stack(output.logits))
        assert torch.allclose(scores[0], scores[1], atol=1e-5)
        unbiased = sdpa.prepare(chosen, prompts, method)
        assert not torch.allclose(scores[1][0], logits_of(sdpa, unbiased, False)[:, -1])


# --------------------------------------------------------------------------- refusals
def test_kernels_that_take_no_bias_are_refused_with_the_ones_that_do(qwen_dir, sdpa):
    with pytest.raises(ValueError, match="'flash_attention_2' cannot take.*'sdpa' or 'eager'"):
        ltbm.load(
            str(qwen_dir),
            size_aware=True,
            model_kwargs={"attn_implementation": "flash_attention_2"},
        )
    with pytest.raises(TypeError, match="size_aware must be True or False"):
        ltbm.load(str(qwen_dir), size_aware="yes")
    config = sdpa.model.config.get_text_config()
    original = config._attn_implementation
    config._attn_implementation_internal = "flex_attention"
    try:
        with pytest.raises(ValueError, match="'flex_attention' cannot take"):
            sdpa.generate([tone(2.0)], "Hi", merging(), 2, size_aware=True)
        with pytest.raises(ValueError, match="'flex_attention' cannot take"):
            ltbm.compressed(sdpa.model, sdpa.processor, merging(), size_aware=True)
        with pytest.raises(ValueError, match="'flex_attention' cannot take"):
            ltbm.pipeline(sdpa.model, sdpa.processor, merging(), size_aware=True)
    finally:
        config._attn_implementation_internal = original


# ------------------------------------------------------------ pipeline and identity
def test_load_binds_size_aware_and_it_enters_the_pipeline_identity(qwen_dir, sdpa, clips):
    bound = ltbm.load(str(qwen_dir), keep_ratio=0.25, window=2, size_aware=True)
    assert bound.size_aware and bound.identity()["size_aware"] is True
    assert "size_aware" not in sdpa.identity()  # the default identity is as it was
    assert bound.describe()["size_aware"] is True
    method = merging()
    wrapped = ltbm.pipeline(sdpa.model, sdpa.processor, method, size_aware=True)
    batch = wrapped.prepare(clips, PROMPTS)
    assert batch.key_bias is not None
    texts = [r.text for r in bound.generate(clips, PROMPTS, max_new_tokens=6)]
    assert texts == [r.text for r in sdpa.generate(clips, PROMPTS, method, 6, size_aware=True)]
    assert texts == [r.text for r in wrapped.generate(clips, PROMPTS, max_new_tokens=6)]
    biased = logits_of(sdpa, batch, True)
    assert not torch.allclose(biased, logits_of(sdpa, batch, False))
    assert no_hooks_left(sdpa)


def test_the_drop_in_gives_the_pipeline_s_size_aware_logits_and_tokens(sdpa, clips):
    model, processor, method = sdpa.model, sdpa.processor, merging()
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": p}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for p in PROMPTS
    ]
    before_inputs = processor_inputs(processor, texts, clips)
    with torch.no_grad():
        before_logits = model(**before_inputs).logits
    before_tokens = model.generate(**before_inputs, max_new_tokens=4, do_sample=False)
    batch = sdpa.prepare(clips, PROMPTS, method, size_aware=True)
    with torch.no_grad(), sdpa.size_aware_attention(batch):
        expected_logits = model(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask
        ).logits
        expected_tokens = model.generate(
            input_ids=batch.input_ids,
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=4,
            do_sample=False,
        )
    with ltbm.compressed(model, processor, method, size_aware=True):
        inputs = processor_inputs(processor, texts, clips)
        with torch.no_grad():
            logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with ltbm.compressed(model, processor, method):
        with torch.no_grad():
            unbiased = model(**processor_inputs(processor, texts, clips)).logits
    valid = batch.attention_mask.bool()
    assert torch.equal(logits[valid], expected_logits[valid])
    assert not torch.allclose(logits[valid], unbiased[valid])
    assert torch.equal(tokens, expected_tokens)
    assert no_hooks_left(sdpa)
    assert_behaves_as_before(model, processor, before_inputs, before_logits, before_tokens, 4)


# ------------------------------------------------------------------ runs and the CLI
def test_a_size_aware_cell_has_its_own_folder_and_identity(sdpa, tmp_path):
    plain, aware = Cell("ltbm", 0.25, window=1), Cell("ltbm", 0.25, window=1, size_aware=True)
    assert plain.name == "ltbm-r0.25-w1" and aware.name == "ltbm-r0.25-w1-size-aware"
    task, settings = SpeechTask.builtin(), RunSettings("qwen2-audio", "speech", tmp_path)
    before = run_identity(sdpa, task, plain, settings, "x")
    after = run_identity(sdpa, task, aware, settings, "x")
    # Without the option the cell is stored with the five keys it always had.
    assert before["cell"] == {
        "method": "ltbm",
        "keep_ratio": 0.25,
        "window": 1,
        "scorer": None,
        "seed": None,
    }
    assert after["cell"] == {**before["cell"], "size_aware": True}
    assert settings.run_dir(plain) != settings.run_dir(aware)
    with pytest.raises(ValueError, match="uncompressed run has none"):
        Cell("none", 1.0, size_aware=True)


def test_sweep_config_and_grid_take_size_aware(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["none", "ltbm"]\nwindows = [1]\nsize_aware = [false, true]\n')
    grid = Grid(**read_sweep_config(config))
    names = [cell.name for cell in Grid(**{**vars(grid), "keep_ratios": (0.25,)}).cells()]
    assert names == ["none", "ltbm-r0.25-w1", "ltbm-r0.25-w1-size-aware"]
    assert "size-aware off and on" in grid.describe()
    config.write_text('size_aware = "yes"\n')
    with pytest.raises(ValueError, match="size_aware must be true, false or a list"):
        read_sweep_config(config)


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.slow
def test_eval_and_sweep_run_size_aware_cells_beside_plain_ones(qwen_dir, tmp_path):
    out = tmp_path / "runs"
    common = ["--backbone", "hf", "--model", str(qwen_dir), "--limit", "1", "--out", str(out)]
    common += ["--max-new-tokens", "3"]
    result = _invoke("eval", *common, "--keep-ratio", "0.25", "--size-aware")
    assert result.exit_code == 0, result.output
    folder = out / "speech" / "qwen2-audio"
    identity = json.loads((folder / "ltbm-r0.25-w1-size-aware" / "identity.json").read_text())
    assert identity["identity"]["cell"]["size_aware"] is True
    config = tmp_path / "grid.toml"
    config.write_text(
        'methods = ["ltbm"]\nkeep_ratios = [0.25]\nwindows = [1]\nsize_aware = [false, true]\n'
    )
    result = _invoke("sweep", *common, "--config", str(config))
    assert result.exit_code == 0, result.output
    assert (folder / "ltbm-r0.25-w1" / "metrics.json").exists()
    report = (folder / "report.md").read_text()
    assert "ltbm w=1 size-aware" in report
    paired = _invoke("report", str(folder), "--pairs", "ltbm-ltbm", "--resamples", "200")
    assert paired.exit_code == 0, paired.output
    with (folder / "report-differences.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["a"], r["b"]) for r in rows} == {("ltbm w=1", "ltbm w=1 size-aware")}
    refused = _invoke("eval", "--size-aware", "--limit", "1", "--out", str(out))
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "whisper-ct2 runs Whisper in CTranslate2" in " ".join(refused.output.split())
