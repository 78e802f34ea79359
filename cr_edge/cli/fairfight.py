"""``cr-edge fairfight``."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.cli.group import cli
from cr_edge.cli.types import DATA_HELP, label_option, task_option


@cli.command()
@click.option("--data", default="digits", show_default=True, help=DATA_HELP)
@label_option
@task_option(
    "classify",
    "What the label is; nets are compared on accuracy, MAE (regress) or ordinal accuracy.",
)
@click.option(
    "--budget",
    type=click.Choice(["quick", "standard", "full"]),
    default="quick",
    show_default=True,
    help="quick: CI smoke run (<3 min); standard: the tables of docs/benchmarks/fairfight.md; full: a cluster job.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Report folder [default: runs/fairfight-DATA].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Local worker processes [default: the usable cores].",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS|auto",
    help="Run the tasks on an existing Ray cluster instead of local processes.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite a report already in --out (finished runs in records/ are still reused).",
)
@click.option(
    "--reuse-stale",
    is_flag=True,
    help="Reuse finished runs that older training code made (by default a record whose "
    "code version differs from this checkout's is trained again).",
)
def fairfight(
    data: str,
    label: str | None,
    task: str,
    budget: str,
    out: Path | None,
    workers: int | None,
    ray_address: str | None,
    force: bool,
    reuse_stale: bool,
) -> None:
    """CR nets against tuned ReLU/GELU baselines: accuracy with CIs, size, latency, smoothness.

    Resumable: rerun the same command after an interrupt and finished runs are not redone.
    """
    from cr_edge.api import fairfight as run_fight
    from cr_edge.cli.progress import console, runs_bar
    from cr_edge.fairfight.report import markdown

    with runs_bar("fairfight") as phase:
        report = run_fight(
            data,
            budget,
            out,
            label,
            task,
            workers,
            ray_address,
            force,
            reuse_stale,
            progress=phase,
        )
    console.print(markdown(report))
    ex = report["execution"]
    console.print(
        f"wall time {ex['wall_seconds']:.0f} s ({ex['ran']} runs trained, {ex['reused']} reused)"
    )
