"""Every audio LLM family ltbm adapts, each from a tiny random checkpoint built with the real
transformers classes (``ltbm.backbones.synthetic.save_model``) and loaded with ``ltbm.load``:
at keep 1 the logits and greedy tokens equal the unmodified model's own; at keep 0.25 the LLM
receives exactly K audio tokens per clip, two clips of different lengths in one batch; the
drop-in context manager restores the model exactly. Qwen2-Audio and AF3 have their own
files with more checks."""

from __future__ import annotations

import pytest
import torch
from hf_checks import (
    assert_dropin_restores,
    assert_llm_gets_k,
    assert_parity_with_transformers,
    text_tokens,
)
from tiny_models import tone

import ltbm
from ltbm.backbones.hf.loading import pipeline_class
from ltbm.backbones.synthetic import save_model

pytest.importorskip("transformers")

PROMPTS = ["Describe the sound in one sentence.", "Transcribe the input speech."]

FAMILIES = {
    # model_type: (clip seconds, N per clip, tokens per second where compression applies)
    "musicflamingo": ([3.0, 35.3], [75, 882], 25.0),
    "glmasr": ([3.0, 35.3], [37, 441], 12.5),
    "qwen2_5_omni_thinker": ([3.0, 7.3], [75, 182], 25.0),
    "phi4_multimodal": ([3.0, 7.3], [38, 91], 12.5),
    # Processors that need a package CI lacks (see the README's Backbones table): these run
    # wherever it is installed, and are checked at the model level in their own files.
    "granite_speech": ([3.0, 7.3], [30, 75], 10.0),
    "qwen3_omni_moe_thinker": ([3.0, 7.3], [39, 95], 12.5),
}
NEEDS = {"granite_speech": "torchaudio", "qwen3_omni_moe_thinker": "torchvision"}
"""The package a family's real processor needs beyond ltbm's own dependencies."""


def family_params() -> list:
    from transformers.utils import is_torchaudio_available, is_torchvision_available

    present = {"torchaudio": is_torchaudio_available(), "torchvision": is_torchvision_available()}
    return [
        pytest.param(
            model_type,
            marks=pytest.mark.skipif(
                model_type in NEEDS and not present[NEEDS[model_type]],
                reason=f"its processor needs {NEEDS.get(model_type)}",
            ),
        )
        for model_type in FAMILIES
    ]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """Every test here runs single-threaded (see conftest)."""


@pytest.fixture(scope="module", params=family_params())
def family(request, tmp_path_factory):
    """(model_type, pipeline with no method, clips, chat-templated texts)."""
    model_type = request.param
    folder = save_model(model_type, tmp_path_factory.mktemp(model_type))
    pipe = ltbm.load(str(folder), method=None)
    seconds = FAMILIES[model_type][0]
    clips = [tone(s, 300.0 + 100 * i, seed=i) for i, s in enumerate(seconds)]
    texts = [pipe.render(p) for p in PROMPTS]
    return model_type, pipe, clips, texts


def test_load_detects_the_family(family):
    model_type, pipe, _, _ = family
    assert type(pipe) is pipeline_class(model_type)
    info = pipe.describe()
    assert (info["model_type"], info["frame_rate"]) == (model_type, FAMILIES[model_type][2])


def test_three_lines_give_n_and_k(family):
    model_type, pipe, clips, _ = family
    method = ltbm.get_method("ltbm", keep_ratio=0.25)
    results = pipe.generate(clips, PROMPTS[0], method=method, max_new_tokens=2)
    expected = FAMILIES[model_type][1]
    assert [r.audio_tokens for r in results] == expected
    assert [r.kept_tokens for r in results] == [ltbm.kept_tokens(n, 0.25) for n in expected]


@pytest.mark.parametrize("method", [None, ltbm.get_method("ltbm", keep_ratio=1.0)])
def test_keep_one_matches_the_models_own_generate(family, method):
    _, pipe, clips, texts = family
    assert_parity_with_transformers(pipe, clips, PROMPTS, texts, method)


@pytest.mark.parametrize(
    "method",
    [
        ltbm.get_method("ltbm", keep_ratio=0.25),
        ltbm.get_method("prune", keep_ratio=0.25, scorer="norm"),
    ],
    ids=["ltbm", "prune-norm"],
)
def test_llm_gets_exactly_k_per_clip(family, method, monkeypatch):
    _, pipe, clips, _ = family
    text = text_tokens(pipe, clips, PROMPTS)
    assert_llm_gets_k(pipe, clips, PROMPTS, method, text, monkeypatch)


def test_dropin_restores_the_model_exactly(family):
    _, pipe, clips, texts = family
    assert_dropin_restores(pipe, clips, PROMPTS, texts, ltbm.get_method("ltbm", keep_ratio=0.25))


def test_attention_scorer_works_or_is_refused_up_front(family):
    _, pipe, clips, _ = family
    prune = ltbm.get_method("prune", keep_ratio=0.25, scorer="attention")
    if pipe.adapter.attention_scorer:
        kept = pipe.prepare(clips, PROMPTS, method=prune).kept_tokens
        assert kept == [ltbm.kept_tokens(n, 0.25) for n in FAMILIES[family[0]][1]]
    else:
        with pytest.raises(ValueError, match="scorer='norm'"):
            pipe.check_method(prune)


def test_bfloat16_gives_k_tokens(family, tmp_path):
    """GPU users load in bfloat16: every family's path keeps the dtype and the budget."""
    model_type, _, clips, _ = family
    folder = save_model(model_type, tmp_path / model_type)
    pipe = ltbm.load(str(folder), method="ltbm", keep_ratio=0.25, torch_dtype="bfloat16")
    batch = pipe.prepare(clips, PROMPTS)
    assert batch.inputs_embeds.dtype == torch.bfloat16
    assert batch.kept_tokens == [ltbm.kept_tokens(n, 0.25) for n in FAMILIES[model_type][1]]
    [first, _] = pipe.generate(clips, PROMPTS, max_new_tokens=2)
    assert first.kept_tokens == batch.kept_tokens[0]
