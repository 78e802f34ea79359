"""The ``cr-edge`` command line: one thin function per command, no logic of its own.

Every deliberate failure is a ``CrEdgeError``; ``main`` turns it into one line on
stderr and its exit code (2 bad input, 1 failed check), never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cr_edge import __version__
from cr_edge.errors import CheckFailed, CrEdgeError, InputError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CrEdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cr-edge")
def cli() -> None:
    """Train, export, quantize, validate and profile ChainzRule networks for the edge."""


def _widths(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError as e:
        raise InputError(f"--hidden {value!r}: give comma-separated widths such as 64,32") from e


def _refuse_existing(out: Path, marker: str, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder; choose another path")
    if (out / marker).exists() and not force:
        raise InputError(f"--out {out}: already holds {marker}; pass --force to overwrite")


@cli.command()
@click.option("--recipe", help="A zoo recipe name (see models/) or a .toml file.")
@click.option(
    "--data", help="Built-in dataset (digits, breast-cancer, wine, mnist1d) or a CSV/NPZ/IDX file."
)
@click.option("--target", help="CSV column holding the labels.")
@click.option("--arch", type=click.Choice(["mlp", "conv"]))
@click.option("--hidden", help="Comma-separated hidden widths, e.g. 64,32.")
@click.option("--activation", type=click.Choice(["poly", "relu", "gelu"]))
@click.option("--degree", type=click.IntRange(1, 8), help="Polynomial degree (1..8).")
@click.option(
    "--dreg", "dreg_lambda", type=click.FloatRange(min=0), help="DREG lambda; 0 disables."
)
@click.option("--epochs", type=click.IntRange(1))
@click.option("--batch-size", type=click.IntRange(1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", type=int)
@click.option(
    "--clip-grad",
    type=click.FloatRange(min=0),
    help="Gradient-norm clipping threshold; 0 disables [default: 5].",
)
@click.option(
    "--range-penalty",
    type=click.FloatRange(min=0),
    help="Weight of the penalty on pre-activations outside each polynomial's fit range [default: 10].",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint folder.")
@click.option("--force", is_flag=True, help="Overwrite a checkpoint already in --out.")
def train(
    recipe: str | None,
    data: str | None,
    target: str | None,
    arch: str | None,
    hidden: str | None,
    activation: str | None,
    degree: int | None,
    dreg_lambda: float | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    clip_grad: float | None,
    range_penalty: float | None,
    device: str,
    out: Path,
    force: bool,
) -> None:
    """Train a CR net (or a baseline) under DREG and write a checkpoint folder."""
    from cr_edge.progress import epoch_bar
    from cr_edge.recipe import Recipe, load_recipe
    from cr_edge.report import print_metrics
    from cr_edge.train import train as run_training

    if recipe is None and data is None:
        raise InputError("give --recipe NAME or --data SOURCE (try --recipe digits-cr)")
    _refuse_existing(out, "config.json", force)
    base = load_recipe(recipe) if recipe else Recipe(name=Path(str(data)).stem)
    chosen = base.replace(
        data=data,
        target=target,
        arch=arch,
        hidden=_widths(hidden),
        activation=activation,
        degree=degree,
        dreg=dreg_lambda,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        clip_grad=clip_grad,
        range_penalty=range_penalty,
    )
    with epoch_bar(chosen.epochs, f"train {chosen.name}") as on_epoch:
        result = run_training(chosen, out, device=device, on_epoch=on_epoch)
    print_metrics(f"{chosen.name} -> {result.checkpoint}", result.metrics)


def _batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise InputError(f"--batch {value!r}: give 'dynamic' or a positive integer")
    return size


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17..21).")
@click.option("--batch", default="dynamic", show_default=True, help="'dynamic' or a fixed size.")
@click.option(
    "--derivatives/--no-derivatives",
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
    "--target", default="onnx", show_default=True, help="Comma-separated: onnx, ort, executorch."
)
@click.option("--int8", is_flag=True, help="ExecuTorch target: PT2E int8 (XNNPACK quantizer).")
@click.option(
    "--target-runtime",
    help="Refuse an export this runtime cannot load: onnxruntime==X, ort-mobile==X or executorch.",
)
@click.option("--force", is_flag=True, help="Overwrite an export already in --out.")
def export(
    checkpoint: Path,
    out: Path,
    opset: int,
    batch: str,
    derivatives: bool,
    sensitivity: bool,
    domain_guard: bool,
    target: str,
    int8: bool,
    target_runtime: str | None,
    force: bool,
) -> None:
    """Export a checkpoint: Horner-lowered ONNX, derivative companion, parity oracle, mobile files."""
    from cr_edge.export.exporter import ExportOptions
    from cr_edge.export.exporter import export as run_export
    from cr_edge.report import print_export

    _refuse_existing(out, "model.onnx", force)
    targets = tuple(t.strip() for t in target.split(",") if t.strip())
    options = ExportOptions(
        opset=opset,
        batch=_batch(batch),
        derivatives=derivatives,
        sensitivity=sensitivity,
        domain_guard=domain_guard,
        targets=("onnx", *[t for t in targets if t != "onnx"]),
        int8=int8,
        target_runtime=target_runtime,
    )
    print_export(run_export(checkpoint, out, options))


@cli.command()
@click.argument(
    "artifacts",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
)
@click.option(
    "--runtime",
    default="all",
    show_default=True,
    help="Comma list of cpu, ort-mobile, xnnpack, nnapi, coreml, executorch-xnnpack; or all.",
)
@click.option(
    "--ref",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Parity oracle (default: X.ref.npz, else model.ref.npz beside the artifact).",
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="JSON report file.")
@click.option(
    "--derivatives",
    type=click.Choice(["auto", "companion", "finite-differences"]),
    default="auto",
    show_default=True,
    help="auto: the X.jvp companion if present.",
)
@click.option("--atol", type=float, help="Output absolute tolerance (default: by precision).")
@click.option("--rtol", type=float, help="Output relative tolerance (default: by precision).")
@click.option("--deriv-rtol", type=float, help="Derivative norm-relative tolerance.")
@click.option("--min-cosine", type=float, help="Least cosine between JVP and the oracle's.")
def validate(
    artifacts: tuple[Path, ...],
    runtime: str,
    ref: Path | None,
    json_out: Path | None,
    derivatives: str,
    atol: float | None,
    rtol: float | None,
    deriv_rtol: float | None,
    min_cosine: float | None,
) -> None:
    """Check outputs and derivatives of artifacts against the PyTorch oracle, per runtime."""
    from rich.console import Console

    from cr_edge.atomic import write_json
    from cr_edge.runtimes.sandbox import probe
    from cr_edge.validate.parity_table import render
    from cr_edge.validate.tolerances import Overrides
    from cr_edge.validate.validator import validate as run_validate

    overrides = Overrides(atol=atol, rtol=rtol, deriv_rtol=deriv_rtol, min_cosine=min_cosine)
    for path in artifacts:
        probe(path)  # a crash inside onnxruntime on a hostile file becomes an error, not a signal
    report = run_validate(list(artifacts), runtime, ref, overrides, derivatives)
    render(report, Console())
    if json_out is not None:
        write_json(json_out, report.to_json())
    report.raise_for_status()


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--runtime",
    default="cpu",
    show_default=True,
    help="cpu, ort-mobile, xnnpack, nnapi, coreml, executorch-xnnpack, a comma list, or all.",
)
@click.option("--batch", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", help="Intra-op threads: N, a comma list, or all (default: runtime's).")
@click.option("--warmup", type=click.IntRange(0), default=50, show_default=True)
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
    "--json", "json_out", type=click.Path(path_type=Path), help="Write the report as JSON."
)
@click.option(
    "--plot", type=click.Path(path_type=Path), help="Latency distribution PNG (matplotlib)."
)
def profile(
    artifacts: tuple[Path, ...],
    runtime: str,
    batch: str,
    threads: str | None,
    warmup: int,
    iters: int | None,
    seconds: float | None,
    per_op: bool,
    memory: bool,
    json_out: Path | None,
    plot: Path | None,
) -> None:
    """Latency, memory and per-op cost of artifacts on this machine; several are interleaved."""
    from cr_edge.atomic import write_json
    from cr_edge.profile import view as profile_view
    from cr_edge.profile.profiler import ProfileOptions, parse_batches, parse_threads
    from cr_edge.profile.profiler import profile as run_profile
    from cr_edge.runtimes.sandbox import probe

    if iters is not None and seconds is not None:
        raise InputError("give --iters or --seconds, not both")
    if plot is not None:
        profile_view.require_matplotlib()
    options = ProfileOptions(
        runtimes=runtime,
        batches=parse_batches(batch),
        threads=parse_threads(threads),
        warmup=warmup,
        iters=iters or 1000,
        seconds=seconds,
        per_op=per_op,
        memory=memory,
    )
    for path in artifacts:
        probe(path)  # a crash inside onnxruntime on a hostile file becomes an error, not a signal
    with profile_view.progress_bar() as on_progress:
        report = run_profile(list(artifacts), options, on_progress)
    profile_view.print_report(report)
    if json_out is not None:
        write_json(json_out, report.to_json())
    if plot is not None:
        profile_view.plot_latency(report, plot)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--mode", default="auto", show_default=True, help="dynamic, static, fp16 or auto.")
@click.option(
    "--poly",
    default="float",
    show_default=True,
    help="Horner chain: float, int16 or int8 (static mode).",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    help="Calibration .npz with array x (default: the oracle's x).",
)
@click.option(
    "--method",
    default="minmax",
    show_default=True,
    help="Static calibration: minmax, percentile, entropy or interval.",
)
@click.option("--per-channel/--no-per-channel", default=True, show_default=True)
@click.option(
    "--equalize/--no-equalize",
    default=True,
    show_default=True,
    help="Cross-layer equalization of Gemm inputs before int8.",
)
@click.option(
    "--ort",
    "ort_format",
    is_flag=True,
    help="Also write .ort copies for the onnxruntime mobile package.",
)
@click.option("--force", is_flag=True, help="Overwrite a quantization already in --out.")
def quantize(
    model: Path,
    out: Path,
    mode: str,
    poly: str,
    calib: Path | None,
    method: str,
    per_channel: bool,
    equalize: bool,
    ort_format: bool,
    force: bool,
) -> None:
    """Quantize an export (and its derivative companion) to int8 or fp16, with a parity report."""
    from cr_edge.quantize.candidates_table import print_quantize
    from cr_edge.quantize.policy import QuantPolicy
    from cr_edge.quantize.quantizer import quantize as run_quantize

    policy = QuantPolicy(mode, poly, method, per_channel, equalize)
    _refuse_existing(out, "quantize.json", force)
    result = run_quantize(model, out, policy, calib, ort_format)
    print_quantize(result)
    if not result.chosen.passed:  # an explicit policy is written for inspection, but it failed
        raise CheckFailed(f"{result.files['onnx']}: {result.chosen.why}")


@cli.command()
@click.option("--recipe", default="digits-cr", show_default=True, help="Zoo name or .toml file.")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder [default: runs/RECIPE].")
@click.option(
    "--runtime",
    default="all",
    show_default=True,
    help="Runtimes to validate on (comma-separated, or all).",
)
@click.option("--epochs", type=click.IntRange(1), help="Override the recipe's epochs.")
@click.option("--force", is_flag=True, help="Overwrite a run folder that holds results.")
def pipeline(recipe: str, out: Path | None, runtime: str, epochs: int | None, force: bool) -> None:
    """Train, export, quantize, validate and profile in one go, with one summary."""
    from cr_edge.pipeline import STAGES, raise_for_failures, run_pipeline
    from cr_edge.progress import stage_bar
    from cr_edge.recipe import load_recipe
    from cr_edge.report import print_summary

    chosen = load_recipe(recipe).replace(epochs=epochs)
    with stage_bar(STAGES, f"pipeline {chosen.name}") as on_stage:
        result = run_pipeline(
            chosen, out or Path("runs") / chosen.name, runtime, force, on_stage=on_stage
        )
    print_summary(result.summary)
    raise_for_failures(result)


@cli.command()
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="digits, breast-cancer, wine, mnist1d, or a CSV/NPZ/IDX file.",
)
@click.option("--target", help="CSV column holding the labels.")
@click.option("--budget", type=click.Choice(["quick", "full"]), default="quick", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Report folder [default: runs/fairfight-DATASET].",
)
@click.option("--force", is_flag=True, help="Overwrite a folder that holds a report.")
def fairfight(dataset: str, target: str | None, budget: str, out: Path | None, force: bool) -> None:
    """CR nets against ReLU/GELU baselines at equal terms: accuracy, size, latency, smoothness."""
    from cr_edge.fairfight.fight import fairfight as run_fight
    from cr_edge.fairfight.report import markdown
    from cr_edge.progress import console, entry_bar

    out = out or Path("runs") / f"fairfight-{Path(dataset).stem}"
    _refuse_existing(out, "report.json", force)
    with entry_bar("fairfight") as on_entry:
        report = run_fight(dataset, budget, out, target, on_entry=on_entry)
    console.print(markdown(report))


def main() -> None:
    cli(prog_name="cr-edge")


if __name__ == "__main__":
    sys.exit(main())
