"""``cr-edge validate``."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.cli.group import cli
from cr_edge.cli.types import RUNTIME_HELP, RUNTIMES
from cr_edge.validate.outcome import DERIVATIVE_METHODS


@cli.command()
@click.argument(
    "artifacts",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
)
@click.option("--runtime", type=RUNTIMES, default="all", show_default=True, help=RUNTIME_HELP)
@click.option(
    "--ref",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Parity oracle [default: X.ref.npz, else model.ref.npz beside the artifact].",
)
@click.option(
    "--json", "json_out", type=click.Path(path_type=Path), help="Write the report as JSON."
)
@click.option(
    "--derivatives",
    type=click.Choice(DERIVATIVE_METHODS),
    default="auto",
    show_default=True,
    help="How derivatives are checked; auto: the X.jvp companion if present, else finite differences.",
)
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    help="Output absolute tolerance [default: by precision].",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    help="Output relative tolerance [default: by precision].",
)
@click.option(
    "--deriv-rtol", type=click.FloatRange(min=0), help="Derivative norm-relative tolerance."
)
@click.option(
    "--min-cosine",
    type=click.FloatRange(-1, 1),
    help="Least cosine between a JVP and the oracle's.",
)
@click.option(
    "--accept-failed-export",
    is_flag=True,
    help="Validate an export that failed its own cpu parity check (to see every failure).",
)
@click.option(
    "--on",
    metavar="NAME[,NAME]",
    help="Validate on these devices too (cr-edge device add); their rows are RUNTIME@NAME.",
)
def validate(
    artifacts: tuple[Path, ...],
    runtime: tuple[str, ...],
    ref: Path | None,
    json_out: Path | None,
    derivatives: str,
    atol: float | None,
    rtol: float | None,
    deriv_rtol: float | None,
    min_cosine: float | None,
    accept_failed_export: bool,
    on: str | None,
) -> None:
    """Check outputs and derivatives of artifacts against the PyTorch oracle, per runtime."""
    from cr_edge.artifacts.manifest import refuse_failed_export

    for artifact in artifacts:  # torch-free here, as cr_edge.api.validate does it
        refuse_failed_export(artifact, accept_failed_export)
    pending = None
    if on:  # started first: the devices start up and validate while this machine does
        from cr_edge.devices import launch

        argv = launch.validate_argv(
            runtime, derivatives, atol, rtol, deriv_rtol, min_cosine, accept_failed_export
        )
        pending = launch.start_validation(launch.parse_names(on), list(artifacts), argv, ref)

    from rich.console import Console

    from cr_edge.artifacts.atomic import write_json
    from cr_edge.validate.parity_table import render
    from cr_edge.validate.tolerances import Overrides
    from cr_edge.validate.validator import validate as run_validate

    overrides = Overrides(atol=atol, rtol=rtol, deriv_rtol=deriv_rtol, min_cosine=min_cosine)
    report = run_validate(list(artifacts), list(runtime), ref, overrides, derivatives)
    if pending is not None:
        from cr_edge.devices import commands, view

        report = commands.with_devices(report, pending)
    render(report, Console())
    reasons: list[str] = []
    if pending is not None:
        from cr_edge.devices.diagnosis import disagreements

        view.print_devices(report.devices, Console())
        reasons = disagreements(report.results, report.devices)
        for line in reasons:  # by how much on each side, and the CPU feature behind it
            click.echo(line)
    if json_out is not None:
        doc = report.to_json()
        if pending is not None:
            doc["disagreements"] = reasons
        write_json(json_out, doc)
    report.raise_for_status()
