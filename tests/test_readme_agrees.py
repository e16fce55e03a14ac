"""What the README says about the command line is what the command line does: the method
table is the registry's, the backbone names of ``--help`` are those ``ltbm.load`` takes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltbm.cli import app
from ltbm.methods.registry import METHODS, Method, method_table, method_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def readme_table_after(heading: str) -> list[str]:
    """The lines of the first markdown table below ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def test_readme_method_table_is_the_registry_table():
    readme = readme_table_after("## Methods")
    assert readme == method_table_markdown().splitlines(), (
        "the README's method table differs from the registry's: paste the output of "
        "`ltbm methods --markdown` (the first paragraph of each method's docstring) into it"
    )
    assert [row.split(" | ")[0].strip("| `") for row in readme[2:]] == list(METHODS)


def test_methods_markdown_prints_the_readme_table():
    result = runner.invoke(app, ["methods", "--markdown"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == method_table_markdown()


def plain(cell: str) -> str:
    return cell.replace("`", "").replace("*", "")


def test_ltbm_methods_prints_every_row_with_defaults_and_no_markup():
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "3000"})
    assert result.exit_code == 0, result.output
    assert "`" not in result.output and "**" not in result.output
    lines = result.output.splitlines()
    for name, parameters, summary, source in method_table():
        [line] = [line for line in lines if line.startswith(f"│ {plain(name)} ")]
        assert plain(parameters) in line and plain(summary) in line and plain(source) in line
    assert "window (default 1)" in result.output
    assert "scorer (attention or norm; default attention)" in result.output
    assert "*" not in result.output  # the sources' titles are in italics, not asterisks


class Echo(Method):
    """Keeps the first K tokens: [a test's] method, with `brackets` rich must not eat.

    Later paragraphs stay out of the table."""

    name = "echo-test"
    choices = {"mode": ("first", "last", "middle")}

    def __init__(self, keep_ratio: float = 0.5, stride: int = 3, mode: str = "first") -> None:
        super().__init__(keep_ratio)
        self.stride, self.mode = stride, mode


def test_a_registered_method_gets_its_row(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(METHODS, Echo.name, Echo)
    row = method_table()[-1]
    assert row == (
        "`echo-test`",
        "`keep_ratio` (default 0.5), `stride` (default 3), "
        "`mode` (`first`, `last` or `middle`; default `first`)",
        "Keeps the first K tokens: [a test's] method, with `brackets` rich must not eat.",
        "",  # no source given
    )
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "3000"})
    assert "[a test's] method, with brackets rich must not eat." in result.output


def help_words(command: str) -> set[str]:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return {word.strip(",;()") for word in result.output.replace("│", " ").split()}


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_backbone_help_names_every_backbone_and_every_family_of_load(command):
    from ltbm.backbones.hf.loading import pipeline_class, supported_model_types
    from ltbm.backbones.registry import BACKBONES

    words = help_words(command)
    assert set(BACKBONES) <= words
    assert set(supported_model_types()) <= words
    for model_type in supported_model_types():  # each is one ltbm.load accepts
        assert pipeline_class(model_type) is not None


def test_a_family_name_as_backbone_points_to_hf(tmp_path: Path):
    result = runner.invoke(app, ["eval", "--backbone", "voxtral", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "voxtral is a Hugging Face family: pass --backbone hf --model" in result.output
