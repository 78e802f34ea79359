"""``cr-edge export``."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.cli.group import cli
from cr_edge.cli.types import NameList


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--opset", type=click.IntRange(17, 21), default=17, show_default=True, help="ONNX opset."
)
@click.option(
    "--fixed-batch",
    type=click.IntRange(1),
    help="Fix the batch axis to this size [default: dynamic].",
)
@click.option(
    "--companion/--no-companion",
    default=True,
    show_default=True,
    help="Also write the derivative companion model.jvp.onnx.",
)
@click.option("--sensitivity", is_flag=True, help="Add the per-sample DREG sensitivity output.")
@click.option(
    "--domain-guard/--no-domain-guard",
    default=True,
    show_default=True,
    help="Clip polynomial inputs to their calibrated range plus a margin.",
)
@click.option(
    "--clip-guard/--minmax-guard",
    default=True,
    show_default=True,
    help="The guard as one scalar Clip per polynomial (its range rescaled in the previous "
    "layer; one node, and CoreML can run it), or as a per-channel Max/Min pair.",
)
@click.option(
    "--format",
    "formats",
    type=NameList("cr_edge.export.version_guard:FORMATS", "format"),
    default="onnx",
    show_default=True,
    help="What to write, a comma list of onnx, ort, executorch (onnx is always written).",
)
@click.option(
    "--int8", is_flag=True, help="The executorch format as PT2E int8 (XNNPACK quantizer)."
)
@click.option(
    "--runtime-version",
    help="Oldest runtime the export must load on, by --runtime's names: cpu==X (onnxruntime X), "
    "ort-mobile==X, executorch-xnnpack[==X].",
)
@click.option("--force", is_flag=True, help="Overwrite an export already in --out.")
def export(
    checkpoint: Path,
    out: Path,
    opset: int,
    fixed_batch: int | None,
    companion: bool,
    sensitivity: bool,
    domain_guard: bool,
    clip_guard: bool,
    formats: tuple[str, ...],
    int8: bool,
    runtime_version: str | None,
    force: bool,
) -> None:
    """Export a checkpoint: Horner-lowered ONNX, derivative companion, parity oracle, mobile files."""
    from rich.console import Console

    from cr_edge.api import export as run_export
    from cr_edge.cli.terminal import print_export
    from cr_edge.export.self_check import SelfCheckFailed
    from cr_edge.validate.parity_table import render

    try:
        result = run_export(
            checkpoint,
            out,
            force=force,
            opset=opset,
            fixed_batch=fixed_batch,
            companion=companion,
            sensitivity=sensitivity,
            domain_guard=domain_guard,
            clip_guard=clip_guard,
            formats=("onnx", *[f for f in formats if f != "onnx"]),
            int8=int8,
            runtime_version=runtime_version,
        )
    except SelfCheckFailed as e:  # written, kept, and failed: show what was checked
        print_export(e.result)
        render(e.result.check, Console())
        raise
    print_export(result)
