"""Shared set-up of the vLLM tests: tiny checkpoints vLLM loads, real speech clips, engines
run in this process one after another, and ltbm's own transformers path as the reference.

These tests need the vLLM venv (``make test-vllm``); the main suite never collects them.
Engines run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one worker): on a 2-core
machine an engine then starts in seconds. The server test starts vLLM's real multi-process
server instead.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import ltbm  # noqa: E402
from ltbm.backbones.synthetic import save_model  # noqa: E402
from ltbm.io.audio import load_audio  # noqa: E402

SPEECH = Path(ltbm.__file__).parent / "data" / "speech"
MAX_NEW_TOKENS = 8
TOP = 5

PROMPTS = {
    "qwen2_audio": (
        "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
        "Describe sound in one sentence.<|im_end|>\n<|im_start|>assistant\n"
    ),
    "audioflamingo3": (
        "<|im_start|>user\n<sound>Describe sound in one sentence.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}
"""One raw prompt per family, placeholder written once: vLLM and ltbm's pipeline both take
it as written, so both tokenize the same text."""

ENGINE = {
    "dtype": "float32",
    "max_model_len": 4096,
    "max_num_seqs": 4,
    "enforce_eager": True,
    "enable_prefix_caching": False,
    "distributed_executor_backend": "uni",
    "seed": 0,
}
"""float32 as on ltbm's transformers path; eager (no compile time); no prefix caching
unless a test turns it on."""


def speech(*names: int) -> np.ndarray:
    """The shipped speech clips ``speech_NNN.flac``, joined in order (16 kHz mono)."""
    return np.concatenate([load_audio(SPEECH / f"speech_{n:03d}.flac") for n in names])


@pytest.fixture(scope="session")
def clips() -> dict[str, list[np.ndarray]]:
    """Two clips of different lengths per family; AF3's longer one spans two 30 s windows."""
    return {
        "qwen2_audio": [speech(3), speech(0, 1)],  # 3.3 s and 9.9 s
        "audioflamingo3": [speech(3), speech(*range(8))],  # 3.3 s and 36.9 s
    }


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints written for vLLM (head size 32, published weight names)."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        model_type: save_model(model_type, root / model_type, vllm=True) for model_type in PROMPTS
    }


@dataclass
class Output:
    """One request's result: prompt ids, greedy tokens, the first token's top-5 logprobs."""

    prompt_ids: list[int]
    tokens: list[int]
    top: dict[int, float]
    cached_tokens: int = 0


@contextmanager
def serving(folder: Path, settings: dict[str, Any] | None, **engine: Any) -> Iterator[Any]:
    """An in-process engine: stock vLLM (``settings`` None) or ltbm's plugin; shut down after."""
    from vllm import LLM

    import ltbm.vllm

    kwargs = {**ENGINE, **engine}
    if settings is None:
        llm = LLM(model=str(folder), **kwargs)
    else:
        llm = ltbm.vllm.llm(str(folder), **settings, **kwargs)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def generate(llm: Any, model_type: str, audios: list[np.ndarray]) -> list[Output]:
    """Greedy decoding of one request per clip, all submitted together (one batch)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, logprobs=TOP)
    requests = [
        {"prompt": PROMPTS[model_type], "multi_modal_data": {"audio": (audio, 16000)}}
        for audio in audios
    ]
    results = llm.generate(requests, params, use_tqdm=False)
    return [
        Output(
            list(r.prompt_token_ids),
            list(r.outputs[0].token_ids),
            {t: lp.logprob for t, lp in r.outputs[0].logprobs[0].items() if lp.rank <= TOP},
            r.num_cached_tokens or 0,
        )
        for r in results
    ]


def run(folder: Path, model_type: str, audios, settings, **engine) -> list[Output]:
    with serving(folder, settings, **engine) as llm:
        return generate(llm, model_type, audios)


@dataclass
class Reference:
    """ltbm's transformers path on the same inputs: prompt ids with K placeholders, N per
    clip, greedy tokens (up to the first end of sequence) and the first token's logprobs."""

    prompt_ids: list[list[int]]
    audio_tokens: list[int]
    tokens: list[list[int]]
    logprobs: torch.Tensor


def reference(pipe: Any, model_type: str, audios, method: Any) -> Reference:
    """Run ltbm's pipeline (prepare → the model's generate) with greedy decoding and no
    repetition penalty, the settings vLLM gets."""
    batch = pipe.prepare(audios, PROMPTS[model_type], method=method)
    tokenizer = pipe.tokenizer
    with torch.no_grad():
        out = pipe.model.generate(
            input_ids=batch.input_ids,
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            repetition_penalty=1.0,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    width = batch.input_ids.shape[1]
    tokens = []
    for row in out.sequences[:, width:].tolist():
        eos = tokenizer.eos_token_id
        tokens.append(row[: row.index(eos) + 1] if eos in row else row)
    prompt_ids = [
        ids[mask.bool()].tolist()
        for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True)
    ]
    logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
    return Reference(prompt_ids, batch.audio_tokens, tokens, logprobs)
