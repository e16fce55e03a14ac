"""The ``ltbm`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Compress the audio tokens of audio-language models, training-free.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def main() -> None:
    """ltbm: Local Temporal Bipartite Merging and its baselines for audio-language models."""


@app.command()
def methods() -> None:
    """List the registered compression methods and their parameters."""
    from ltbm.methods.registry import METHODS, method_parameters

    table = Table("method", "parameters", "what it does")
    for name, cls in METHODS.items():
        params = ", ".join(["keep_ratio", *method_parameters(name)])
        table.add_row(name, params, (cls.__doc__ or "").strip().splitlines()[0])
    console.print(table)


if __name__ == "__main__":
    app()
