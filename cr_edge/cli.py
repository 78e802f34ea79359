"""The ``cr-edge`` command line: one function per command, parsing and printing only.

Options are typed (``click.Choice``, ranges, the comma lists of ``cli_types``) so a
bad value fails before any work. The checks a Python caller needs too (existing
folders, the sandboxed load of untrusted models) live in the library. Every
deliberate failure is a ``CrEdgeError`` or a click usage error; the group turns
either into one line on stderr and its exit code (2 bad input, 1 failed check),
never a traceback. Anything else that escapes a command is a bug, but a user still
gets one line, exit 1 and a hint: ``cr-edge --debug COMMAND`` shows the traceback.

One word, one meaning across commands: ``--data`` a dataset, ``--label`` the CSV
label column, ``--data-format`` a CSV's layout, ``--format`` what export writes, ``--runtime`` where a model runs,
``--batch`` batch sizes to run, ``--derivatives`` how derivatives are checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cr_edge import __version__
from cr_edge.atomic import refuse_existing
from cr_edge.cli_types import IntList, NameList
from cr_edge.errors import CheckFailed, CrEdgeError, InputError
from cr_edge.quantize.policy import METHODS, MODES, POLYS
from cr_edge.task_metrics import TASKS
from cr_edge.validate.outcome import DERIVATIVE_METHODS

RUNTIMES = NameList("cr_edge.runtimes.registry:RUNTIME_NAMES", "runtime", all_word="all")
RUNTIME_HELP = "cpu, ort-mobile, xnnpack, nnapi, coreml, executorch-xnnpack: a comma list, or all."


class _Group(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]):
        from cr_edge.folder_lock import describe_process

        name, command, rest = super().resolve_command(ctx, args)
        describe_process(f"cr-edge {name}")  # how other writers' messages name this process
        return name, command, rest

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CrEdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except click.UsageError as e:  # one line, as for every other bad input
            command = f"cr-edge {ctx.invoked_subcommand or ''}".strip()
            click.echo(f"error: {e.format_message()} (see {command} --help)", err=True)
            ctx.exit(e.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own usage errors and exits: it prints them
        except Exception as e:  # the last resort: an unexpected error is still one line
            if ctx.params.get("debug"):
                raise
            what = (str(e).strip().splitlines() or [""])[0]
            click.echo(
                f"error: unexpected {type(e).__name__}{': ' + what if what else ''} "
                "(a bug in cr-edge; rerun with cr-edge --debug ... for the traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cr-edge")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """Train, export, quantize, validate and profile ChainzRule networks for the edge."""


@cli.command()
@click.option("--recipe", help="A zoo recipe name (see models/) or a .toml file.")
@click.option(
    "--data",
    help="Built-in dataset (digits, breast-cancer, wine, mnist1d, diabetes, anes96) "
    "or a CSV/NPZ/IDX file.",
)
@click.option("--label", help="CSV column holding the labels (CSV data only).")
@click.option("--text-column", help="Text CSV: the column holding the text (a header row).")
@click.option(
    "--data-format",
    type=click.Choice(["auto", "header", "yelp"]),
    help='CSV layout: a header row, or Yelp\'s headerless "label","text" rows [default: auto].',
)
@click.option(
    "--task",
    type=click.Choice(TASKS),
    help="What the label is: classes, a number, or ordered classes (e.g. 1-5 stars).",
)
@click.option(
    "--loss", type=click.Choice(["auto", "mse", "huber"]), help="Regression loss (--task regress)."
)
@click.option("--arch", type=click.Choice(["mlp", "conv"]), help="Network shape.")
@click.option(
    "--hidden",
    type=IntList("64,32", distinct=False),
    help="Comma-separated hidden widths, e.g. 64,32.",
)
@click.option(
    "--activation",
    type=click.Choice(["poly", "relu", "gelu"]),
    help="poly: a CR net; relu/gelu: a baseline.",
)
@click.option("--degree", type=click.IntRange(1, 8), help="Polynomial degree (1..8).")
@click.option(
    "--poly-form",
    type=click.Choice(["monomial", "depressed"]),
    help="depressed: learn p(z) = P(z + s) without the z**(n-1) term, the form export lowers "
    "to in 2n-3 nodes; monomial: learn the coefficients of z**k.",
)
@click.option(
    "--dreg", "dreg_lambda", type=click.FloatRange(min=0), help="DREG lambda; 0 disables."
)
@click.option(
    "--epochs", type=click.IntRange(1), help="Most epochs (early stopping may end sooner)."
)
@click.option("--batch-size", type=click.IntRange(1), help="Training mini-batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate.")
@click.option("--seed", type=int, help="Seed for the split, the initialisation and the batches.")
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
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: cuda when available.",
)
@click.option(
    "--nproc",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Processes for DistributedDataParallel (torch.distributed.run); at most the cores "
    "unless --force.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint folder.")
@click.option(
    "--force", is_flag=True, help="Overwrite a checkpoint already in --out; allow --nproc > cores."
)
def train(
    recipe: str | None,
    data: str | None,
    label: str | None,
    text_column: str | None,
    data_format: str | None,
    task: str | None,
    loss: str | None,
    arch: str | None,
    hidden: tuple[int, ...] | None,
    activation: str | None,
    degree: int | None,
    poly_form: str | None,
    dreg_lambda: float | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    clip_grad: float | None,
    range_penalty: float | None,
    device: str,
    nproc: int,
    out: Path,
    force: bool,
) -> None:
    """Train a CR net (or a baseline) under DREG and write a checkpoint folder."""
    from cr_edge.api import train as run_training
    from cr_edge.progress import epoch_bar
    from cr_edge.recipe import Recipe, load_recipe
    from cr_edge.terminal import print_metrics

    if recipe is None and data is None:
        raise InputError("give --recipe NAME or --data SOURCE (try --recipe digits-cr)")
    refuse_existing(out, "config.json", force)  # before the recipe's data is read
    base = load_recipe(recipe) if recipe else Recipe(name=Path(str(data)).stem)
    chosen = base.replace(
        data=data,
        label=label,
        text_column=text_column,
        data_format=data_format,
        task=task,
        loss=loss,
        arch=arch,
        hidden=hidden,
        activation=activation,
        degree=degree,
        poly_form=poly_form,
        dreg=dreg_lambda,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        clip_grad=clip_grad,
        range_penalty=range_penalty,
    )
    if nproc > 1:
        from cr_edge.distributed import check_nproc, train_distributed

        check_nproc(nproc, force)
        click.echo(f"train {chosen.name}: {nproc} processes (torch.distributed.run)", err=True)
        result = train_distributed(chosen, out, nproc, device)
    else:
        with epoch_bar(chosen.epochs, f"train {chosen.name}") as on_epoch:
            result = run_training(chosen, out, device, force=force, on_epoch=on_epoch)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    print_metrics(f"{chosen.name} -> {result.checkpoint}", result.metrics)


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
    help="Oldest runtime the export must load on: onnxruntime==X, ort-mobile==X, executorch[==X].",
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
    from cr_edge.export.self_check import SelfCheckFailed
    from cr_edge.terminal import print_export
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
    "--force",
    is_flag=True,
    help="Validate an export that failed its own cpu parity check (to see every failure).",
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
    force: bool,
) -> None:
    """Check outputs and derivatives of artifacts against the PyTorch oracle, per runtime."""
    from rich.console import Console

    from cr_edge.atomic import write_json
    from cr_edge.manifest import refuse_failed_export
    from cr_edge.validate.parity_table import render
    from cr_edge.validate.tolerances import Overrides
    from cr_edge.validate.validator import validate as run_validate

    overrides = Overrides(atol=atol, rtol=rtol, deriv_rtol=deriv_rtol, min_cosine=min_cosine)
    for artifact in artifacts:  # torch-free here, as cr_edge.api.validate does it
        refuse_failed_export(artifact, force)
    report = run_validate(list(artifacts), list(runtime), ref, overrides, derivatives)
    render(report, Console())
    if json_out is not None:
        write_json(json_out, report.to_json())
    report.raise_for_status()


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runtime", type=RUNTIMES, default="cpu", show_default=True, help=RUNTIME_HELP)
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
) -> None:
    """Latency, memory and per-op cost of artifacts on this machine; several are interleaved."""
    from cr_edge.atomic import write_json
    from cr_edge.profile import view as profile_view
    from cr_edge.profile.profiler import ProfileOptions, thread_counts
    from cr_edge.profile.profiler import profile as run_profile

    if iters is not None and seconds is not None:
        raise InputError("give --iters or --seconds, not both")
    if plot is not None:
        profile_view.require_matplotlib()
    options = ProfileOptions(
        runtimes=",".join(runtime),
        batches=batch,
        threads=thread_counts(threads),
        warmup=warmup,
        iters=iters or 1000,
        seconds=seconds,
        per_op=per_op,
        memory=memory,
        floor=floor,
    )
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
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    help="w8 (int8 weights), dynamic, static or fp16; auto tries each and keeps the "
    "smallest that passes, is smaller than fp32 and within 1.25x its batch-1 latency.",
)
@click.option(
    "--poly",
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
    "--ort",
    "ort_format",
    is_flag=True,
    help="Also write .ort copies and their required_operators.config for onnxruntime mobile.",
)
@click.option(
    "--require",
    is_flag=True,
    help="Exit 1 when --mode auto keeps fp32 (no candidate qualified).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite a quantization already in --out; take an export that failed its own check.",
)
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
    require: bool,
    force: bool,
) -> None:
    """Quantize an export (and its derivative companion) to int8 or fp16, with a parity report."""
    from cr_edge.manifest import refuse_failed_export
    from cr_edge.quantize.candidates_table import print_quantize
    from cr_edge.quantize.policy import QuantConfig, QuantPolicy
    from cr_edge.quantize.quantizer import quantize as run_quantize

    policy = QuantPolicy(mode, poly, method, per_channel, equalize)
    config = QuantConfig(out, policy, calib, ort_format, require)
    refuse_existing(out, "quantize.json", force)
    refuse_failed_export(model, force)  # torch-free here, as cr_edge.api.quantize does it
    result = run_quantize(model, config)
    print_quantize(result)
    if result.chosen is not None and not result.chosen.passed:  # explicit policy, kept to inspect
        raise CheckFailed(f"{result.files['onnx']}: {result.chosen.why}")


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
def pipeline(
    recipe: str, out: Path | None, runtime: tuple[str, ...], epochs: int | None, force: bool
) -> None:
    """Train, export, quantize, validate and profile in one go, with one summary."""
    from cr_edge.pipeline import STEPS, raise_for_failures, run_pipeline
    from cr_edge.progress import step_bar
    from cr_edge.recipe import load_recipe
    from cr_edge.terminal import print_summary

    chosen = load_recipe(recipe).replace(epochs=epochs)
    with step_bar(STEPS, f"pipeline {chosen.name}") as on_step:
        result = run_pipeline(
            chosen, out or Path("runs") / chosen.name, ",".join(runtime), force, on_step=on_step
        )
    print_summary(result.summary, result.out)
    raise_for_failures(result)


@cli.command()
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="Built-in dataset (digits, breast-cancer, wine, mnist1d, diabetes, anes96) or a "
    "CSV/NPZ/IDX file.",
)
@click.option("--label", help="CSV column holding the labels (CSV data only).")
@click.option(
    "--task",
    type=click.Choice(TASKS),
    default="classify",
    show_default=True,
    help="What the label is; nets are compared on accuracy, MAE (regress) or ordinal accuracy.",
)
@click.option(
    "--budget",
    type=click.Choice(["quick", "standard", "full"]),
    default="quick",
    show_default=True,
    help="quick: CI smoke run (<3 min); standard: the README's tables; full: a cluster job.",
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
    help="Rewrite a folder that holds a report (finished runs in records/ are still reused).",
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
) -> None:
    """CR nets against tuned ReLU/GELU baselines: accuracy with CIs, size, latency, smoothness.

    Resumable: rerun the same command after an interrupt and finished runs are not redone.
    """
    from cr_edge.fairfight.engine import Engine, default_workers
    from cr_edge.fairfight.fight import fairfight as run_fight
    from cr_edge.fairfight.report import markdown
    from cr_edge.progress import console, runs_bar

    out = out or Path("runs") / f"fairfight-{Path(data).stem}"
    refuse_existing(out, "report.json", force)
    engine = Engine(workers=workers or default_workers(), ray=ray_address)
    with runs_bar("fairfight") as phase:
        report = run_fight(data, budget, out, label, engine=engine, progress=phase, task=task)
    console.print(markdown(report))
    ex = report["execution"]
    console.print(
        f"wall time {ex['wall_seconds']:.0f} s ({ex['ran']} runs trained, {ex['reused']} reused)"
    )


def main() -> None:
    cli(prog_name="cr-edge")


if __name__ == "__main__":
    sys.exit(main())
