"""``cr-edge pipeline``."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.cli.group import cli
from cr_edge.cli.types import CERTIFY_HELP, RUNTIME_HELP, RUNTIMES


@cli.command()
@click.option(
    "--recipe",
    default="digits-cr",
    show_default=True,
    help="A zoo recipe name (see models/) or a .toml file.",
)
@click.option("--out", type=click.Path(path_type=Path), help="Run folder [default: runs/RECIPE].")
@click.option(
    "--runtime",
    type=RUNTIMES,
    default="all",
    show_default=True,
    help="Runtimes to export for, validate and profile on: " + RUNTIME_HELP,
)
@click.option("--epochs", type=click.IntRange(1), help="Override the recipe's epochs.")
@click.option("--force", is_flag=True, help="Overwrite a run folder that holds results.")
@click.option(
    "--certify-on", metavar="NAME[,NAME]", default="auto", show_default=True, help=CERTIFY_HELP
)
@click.option(
    "--on",
    metavar="NAME[,NAME]",
    help="Validate and profile on these devices too (cr-edge device add); rows RUNTIME@NAME.",
)
def pipeline(
    recipe: str,
    out: Path | None,
    runtime: tuple[str, ...],
    epochs: int | None,
    force: bool,
    certify_on: str,
    on: str | None,
) -> None:
    """Train, export, quantize, validate and profile in one go, with one summary."""
    from cr_edge.api import pipeline as run_pipeline
    from cr_edge.cli.progress import step_bar
    from cr_edge.cli.terminal import print_summary
    from cr_edge.pipeline import STEPS, raise_for_failures
    from cr_edge.recipe import load_recipe

    chosen = load_recipe(recipe).replace(epochs=epochs)
    with step_bar(STEPS, f"pipeline {chosen.name}") as on_step:
        result = run_pipeline(
            chosen, out, runtime, force=force, on_step=on_step, certify_on=certify_on, on=on
        )
    print_summary(result.summary, result.out)
    raise_for_failures(result)
