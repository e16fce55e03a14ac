"""MMAU prompts ask for the choice's text (a letter is wrong by the official rule), and the
rendered prompt lists every choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltbm.tasks.base import Item
from ltbm.tasks.prompts import DEFAULT_PROMPTS, prompt_template, render_prompt

ITEM = Item(
    id="q",
    audio=Path("q.wav"),
    references=["Woman"],
    question="Who is speaking?",
    choices=["Man", "Woman", "Child", "Robot"],
)


@pytest.mark.parametrize("backbone", ["qwen2-audio", "audioflamingo3", "some-new-model"])
def test_default_mcq_prompts_list_unlabelled_choices_and_ask_for_text(backbone: str) -> None:
    prompt = render_prompt(prompt_template(backbone, "mcq"), ITEM)
    assert prompt.startswith("Who is speaking?")
    assert "Man\nWoman\nChild\nRobot" in prompt
    assert "(A)" not in prompt and "letter" not in prompt.lower()
    assert "text" in prompt


def test_lettered_choices_remain_available_to_overrides() -> None:
    template = prompt_template("qwen2-audio", "mcq", "{question}\n{lettered_choices}")
    assert (
        render_prompt(template, ITEM)
        == "Who is speaking?\n(A) Man\n(B) Woman\n(C) Child\n(D) Robot"
    )


def test_every_backbone_has_a_prompt_for_every_task_kind() -> None:
    for prompts in DEFAULT_PROMPTS.values():
        assert set(prompts) == {"caption", "mcq", "asr"}
