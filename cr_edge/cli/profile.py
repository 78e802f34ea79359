"""``cr-edge profile``."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.cli.group import cli
from cr_edge.cli.types import RUNTIME_HELP, RUNTIMES, IntList


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runtime", type=RUNTIMES, default="all", show_default=True, help=RUNTIME_HELP)
@click.option(
    "--batch",
    type=IntList("1,8,64"),
    default="1",
    show_default=True,
    help="Batch sizes to run, a comma list.",
)
@click.option(
    "--threads",
    type=IntList("1,4", all_word="all"),
    help="Intra-op threads: a comma list, or all [default: the runtime's].",
)
@click.option(
    "--warmup",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="Untimed runs before timing.",
)
@click.option("--iters", type=click.IntRange(1), help="Timed runs per setting [default: 1000].")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Measure for this long per setting instead of --iters runs.",
)
@click.option("--per-op", is_flag=True, help="Top operators from onnxruntime's profiler.")
@click.option(
    "--memory/--no-memory",
    default=True,
    show_default=True,
    help="Peak RSS added by load and run, measured in a child process.",
)
@click.option(
    "--floor/--no-floor",
    default=True,
    show_default=True,
    help="Time an arithmetic-free twin of each model alongside it: FLOPs, GFLOP/s, dispatch share.",
)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), help="Write the report as JSON."
)
@click.option(
    "--plot", type=click.Path(path_type=Path), help="Latency distribution PNG (matplotlib)."
)
@click.option(
    "--on",
    metavar="NAME[,NAME]",
    help="Profile on these devices too, after this machine (cr-edge device add).",
)
def profile(
    artifacts: tuple[Path, ...],
    runtime: tuple[str, ...],
    batch: tuple[int, ...],
    threads: tuple[int, ...] | str | None,
    warmup: int,
    iters: int | None,
    seconds: float | None,
    per_op: bool,
    memory: bool,
    floor: bool,
    json_out: Path | None,
    plot: Path | None,
    on: str | None,
) -> None:
    """Latency, memory and per-op cost of artifacts on this machine; several are interleaved."""
    from cr_edge.api import profile as run_profile
    from cr_edge.artifacts.atomic import write_json
    from cr_edge.cli.progress import fraction_bar
    from cr_edge.profile import view as profile_view

    if plot is not None:
        profile_view.require_matplotlib()
    with fraction_bar() as on_progress:
        report = run_profile(
            list(artifacts),
            runtime,
            batch,
            threads,
            warmup,
            iters,
            seconds,
            per_op,
            memory,
            floor,
            on_progress,
            on,
        )
    profile_view.print_report(report)
    if on:
        from rich.console import Console

        from cr_edge.devices.view import print_profiles

        print_profiles(report.device_runs, Console())
    if json_out is not None:
        write_json(json_out, report.to_json())
    if plot is not None:
        profile_view.plot_latency(report, plot)
