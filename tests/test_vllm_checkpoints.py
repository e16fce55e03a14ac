"""What of the vLLM plugin runs without vLLM: tiny checkpoints written for vLLM (which
ltbm's transformers path reads as well), and ``ltbm serve`` refusing, in one line, to start
where vLLM is not installed. The plugin itself is tested in its own venv (tests_vllm/)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import ltbm
from ltbm.backbones.synthetic import VLLM_TEXT_HEADS, build_model, save_model


def test_vllm_checkpoints_have_head_size_32_and_published_weight_names(tmp_path):
    folder = save_model("qwen2_audio", tmp_path / "q", vllm=True)
    text = json.loads((folder / "config.json").read_text())["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] == text["head_dim"] == 32
    with safe_open(folder / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert "language_model.model.embed_tokens.weight" in names
    assert "language_model.lm_head.weight" in names
    assert not any(name.startswith("language_model.model.model.") for name in names)


def test_vllm_checkpoints_load_in_transformers_with_every_weight(tmp_path):
    """transformers reads the renamed weights back, every one of them."""
    folder = save_model("audioflamingo3", tmp_path / "a", vllm=True, seed=1)
    built, _ = build_model("audioflamingo3", seed=1, text_heads=VLLM_TEXT_HEADS)
    loaded = ltbm.load(str(folder), method="ltbm", keep_ratio=0.5).model.state_dict()
    expected = built.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


def test_vllm_checkpoints_only_for_the_served_families(tmp_path):
    with pytest.raises(ValueError, match="vllm=True writes qwen2_audio, audioflamingo3"):
        save_model("glmasr", tmp_path / "g", vllm=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_ltbm_serve_without_vllm_says_how_to_install_it(tmp_path):
    command = [sys.executable, "-m", "ltbm.cli", "serve", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "ltbm.vllm needs vLLM, which is not installed" in lines[0]
    assert "pip install 'ltbm[vllm]'" in lines[0]
