"""Every prompt ltbm sends, per backbone and task kind, in one place.

Results record the exact template (``metrics.json``) and the rendered prompt (every item
record), so a number can always be traced to its wording. Users override a template with
``--prompt``; placeholders: ``{question}``, ``{choices}`` (one choice per line, as written,
no labels) and ``{lettered_choices}`` (one per line, labelled ``(A)``, ``(B)``, ...).

Multiple-choice (MMAU) defaults, and where they come from:

- MMAU is scored by the authors' rule on the raw output: the answer's words must appear
  and no word of a wrong choice (see :mod:`ltbm.metrics.mcq`). A letter ("B", "(B)") is
  therefore wrong, so every default lists the choices without letters and asks for the
  choice's own text.
- Qwen2-Audio: Qwen publishes no MMAU prompt. Its own evaluation code
  (github.com/QwenLM/Qwen2-Audio, ``eval_audio/``) covers ASR, speech translation, emotion,
  vocal sounds and AIR-Bench chat, each with a short task instruction, and the MMAU
  repository (github.com/Sakshi113/MMAU) ships the scorer only. So the default is ours:
  the question, the choices, and an instruction to answer with one choice's exact text.
- Audio Flamingo 3: its evaluation script (github.com/NVIDIA/audio-flamingo,
  ``llava/eval/eval_audio_bench.py``) sends the question text stored in its test JSONs
  (the AudioSkills release, not in the repository); evaluation code written for AF3 asks
  "{question} Choose the correct option from the following options:" followed by the
  options labelled (A), (B), .... The default keeps that wording, lists the options
  unlabelled and asks for the option's text, so that the official rule applies.
- Captions: Qwen2-Audio's default is its own caption prompt ("Generate the caption in
  English:", from its README).
"""

from __future__ import annotations

from ltbm.tasks.base import Item, TaskKind

DEFAULT_PROMPTS: dict[str, dict[TaskKind, str]] = {
    "qwen2-audio": {
        "caption": "Generate the caption in English:",
        "mcq": "{question}\nSelect one option from the following choices:\n{choices}\n"
        "Answer with the exact text of the correct choice.",
        "asr": "Detect the language and recognize the speech: <|en|>",
    },
    "audioflamingo3": {
        "caption": "Describe the audio in one sentence.",
        "mcq": "{question} Choose the correct option from the following options:\n{choices}\n"
        "Answer with the option's text.",
        "asr": "Transcribe the input speech.",
    },
    # Whisper takes no text prompt: it transcribes.
    "whisper-ct2": {"caption": "", "mcq": "", "asr": ""},
    "whisper-hf": {"caption": "", "mcq": "", "asr": ""},
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
    """Fill a template with the item's question and choices (see the module docstring)."""
    options = item.choices or []
    return template.format(
        question=item.question or "",
        choices="\n".join(options),
        lettered_choices="\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(options)),
    )
