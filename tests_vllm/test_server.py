"""``ltbm serve`` end to end: vLLM's OpenAI-compatible server (its real multi-process set-up,
the plugin loaded through its entry point) answers a chat request carrying ``input_audio``
and reports the compressed prompt length."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import soundfile

import ltbm
from ltbm.core.budget import kept_tokens

STARTUP_S = 300
"""Bound on the server's start: about 45 s on 2 busy cores."""

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'audio' %}"
    "Audio {{ loop.index }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-Audio-Instruct's layout (the tiny checkpoint ships no chat template): passed with
vLLM's own --chat-template, which ltbm serve hands on unchanged."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def wait_until_healthy(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    pytest.fail(f"the server did not start in {STARTUP_S} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """Interrupt the server's process group (API server and engine), as Ctrl-C would."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def test_ltbm_serve_answers_input_audio_with_compressed_prompt_tokens(checkpoints, clips, tmp_path):
    folder, clip = checkpoints["qwen2_audio"], clips["qwen2_audio"][1]
    template = tmp_path / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    port, log = free_port(), tmp_path / "server.log"
    command = [
        str(Path(sys.executable).with_name("ltbm")), "serve", str(folder),
        "--method", "ltbm", "--keep-ratio", "0.25",
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "4096", "--enforce-eager", "--chat-template", str(template),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    with log.open("w") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(server, url, log)
        wav = io.BytesIO()
        soundfile.write(wav, clip, 16000, format="WAV")
        audio = {"data": base64.b64encode(wav.getvalue()).decode(), "format": "wav"}
        content = [
            {"type": "input_audio", "input_audio": audio},
            {"type": "text", "text": "Describe sound in one sentence."},
        ]
        reply = post(
            url + "/v1/chat/completions",
            {
                "model": str(folder),
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 4,
                "temperature": 0,
            },
        )
    finally:
        stop(server)
    pipe = ltbm.load(str(folder), method=None)
    messages = [{"role": "user", "content": [{"type": "audio"}, content[1]]}]
    text = pipe.tokenizer.apply_chat_template(
        messages, chat_template=CHAT_TEMPLATE, add_generation_prompt=True, tokenize=True
    )
    text = text if isinstance(text, list) else text["input_ids"]
    n = pipe.prepare([clip], "<|AUDIO|>").audio_tokens[0]
    assert reply["usage"]["prompt_tokens"] == len(text) - 1 + kept_tokens(n, 0.25)
    assert reply["usage"]["completion_tokens"] == 4
    assert reply["choices"][0]["message"]["role"] == "assistant"
