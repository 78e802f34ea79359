"""``cr-edge quantize``."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.cli.group import cli
from cr_edge.cli.types import CERTIFY_HELP, NameList
from cr_edge.errors import CheckFailed
from cr_edge.quantize.policy import ACCURACY_LEVELS, METHODS, MODES, PINNED_BLOCKS, POLYS


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    help="w8 (int8 weights), dynamic, static, fp16, or nb8/nb4 (onnxruntime's MatMulNBits: "
    "8/4-bit weights in blocks); auto tries each and keeps the smallest that passes, is "
    "smaller than fp32 and no slower at batch 1 (a median within 3% is a tie; nb4 is only reported).",
)
@click.option(
    "--chain-precision",
    type=click.Choice(POLYS),
    default="float",
    show_default=True,
    help="Precision of the Horner chain (static mode).",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    help="Calibration .npz with array x [default: the oracle's x].",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="minmax",
    show_default=True,
    help="Activation calibration (static mode).",
)
@click.option(
    "--per-channel/--no-per-channel",
    default=True,
    show_default=True,
    help="One int8 scale per output channel of each weight.",
)
@click.option(
    "--equalize/--no-equalize",
    default=True,
    show_default=True,
    help="Cross-layer equalization of Gemm inputs before int8.",
)
@click.option(
    "--block",
    type=click.Choice([str(b) for b in PINNED_BLOCKS]),
    help="nb8/nb4 (and auto's MatMulNBits candidates): weights per block along K "
    "[default: chosen from the calibration error].",
)
@click.option(
    "--accuracy-level",
    type=click.Choice([str(a) for a in ACCURACY_LEVELS]),
    help="nb8/nb4: 4 multiplies int8 activations by the int8 weights, 0 computes in float "
    "[default: 4; auto tries both].",
)
@click.option(
    "--format",
    "formats",
    type=NameList(("onnx", "ort"), "format"),
    default="onnx",
    show_default=True,
    help="What to write: onnx, and ort for .ort copies (with required_operators.config) "
    "for onnxruntime mobile; a comma list.",
)
@click.option(
    "--require",
    is_flag=True,
    help="Exit 1 when --mode auto keeps fp32 (no candidate qualified).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite a quantization already in --out.",
)
@click.option(
    "--accept-failed-export",
    is_flag=True,
    help="Quantize an export that failed its own parity check.",
)
@click.option(
    "--certify-on",
    metavar="NAME[,NAME]",
    help=CERTIFY_HELP,
)
def quantize(
    model: Path,
    out: Path,
    mode: str,
    chain_precision: str,
    calib: Path | None,
    method: str,
    per_channel: bool,
    equalize: bool,
    block: str | None,
    accuracy_level: str | None,
    formats: tuple[str, ...],
    require: bool,
    force: bool,
    accept_failed_export: bool,
    certify_on: str | None,
) -> None:
    """Quantize an export (and its derivative companion) to int8 or fp16, with a parity report."""
    from cr_edge.api import quantize as run_quantize
    from cr_edge.quantize.candidates_table import print_quantize
    from cr_edge.quantize.policy import QuantConfig, QuantPolicy

    level = None if accuracy_level is None else int(accuracy_level)
    policy = QuantPolicy(
        mode, chain_precision, method, per_channel, equalize, int(block or 0), level
    )
    config = QuantConfig(out, policy, calib, "ort" in formats, require)
    result = run_quantize(model, config, force, accept_failed_export, certify_on)
    print_quantize(result)  # its notes say when no device could certify
    if result.chosen is not None and not result.chosen.passed:  # explicit policy, kept to inspect
        raise CheckFailed(f"{result.files['onnx']}: {result.chosen.why}")
