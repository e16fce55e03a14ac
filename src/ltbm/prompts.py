"""Every prompt ltbm sends, per backbone and task kind, in one place.

Results record the exact prompt template used, so a number can always be traced to its
wording. Users override a template with ``--prompt`` (the harness passes it through
:func:`render_prompt`).
"""

from __future__ import annotations

from ltbm.tasks.base import Item, TaskKind

DEFAULT_PROMPTS: dict[str, dict[TaskKind, str]] = {
    "qwen2-audio": {
        "caption": "Generate the caption in English:",
        "mcq": "{question} Choose the correct option from the following choices:\n{choices}\n"
        "Answer with the option's text.",
        "asr": "Detect the language and recognize the speech: <|en|>",
    },
    "audioflamingo3": {
        "caption": "Describe the audio in one sentence.",
        "mcq": "{question} Choose the correct option from the following choices:\n{choices}\n"
        "Answer with the option's text.",
        "asr": "Transcribe the input speech.",
    },
    # Whisper takes no text prompt: it transcribes.
    "whisper-ct2": {"caption": "", "mcq": "", "asr": ""},
}


def prompt_template(backbone: str, kind: TaskKind, override: str | None = None) -> str:
    if override is not None:
        return override
    family = DEFAULT_PROMPTS.get(backbone)
    if family is None:
        # Tiny test models and future backbones use the Qwen2-Audio wording.
        family = DEFAULT_PROMPTS["qwen2-audio"]
    return family[kind]


def render_prompt(template: str, item: Item) -> str:
    """Fill a template with the item's question and choices (one per line, lettered)."""
    choices = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(item.choices or []))
    return template.format(question=item.question or "", choices=choices)
